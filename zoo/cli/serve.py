"""``zoo serve``: bundles behind the Open Inference Protocol (KServe V2), torch-free.

Needs the ``serve`` extra (``pip install "zoo[serve]"``: Starlette, uvicorn,
prometheus-client, python-multipart, orjson), imported only when the command runs,
so that ``zoo list`` stays fast. ``--triton-repository DIR`` writes a Triton model
repository for the same bundles instead of serving them (no extra needed).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import TYPE_CHECKING

from zoo.errors import ZooError
from zoo.host.registry import Registry

if TYPE_CHECKING:
    from zoo.serve.models import ServeSettings
    from zoo.serve.repository import ModelSource

#: The modules of the serve extra (import name: distribution).
SERVE_MODULES = {"starlette": "starlette", "uvicorn": "uvicorn",
                 "prometheus_client": "prometheus-client", "orjson": "orjson"}
INSTALL_HINT = 'pip install "zoo[serve]"'
#: The most worker processes ``--workers`` accepts.
MAX_WORKERS = 64


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "serve", help="serve bundles over the Open Inference Protocol (KServe V2), with a "
        "web page", description="Serve bundles on onnxruntime over the Open Inference Protocol "
        "(KServe V2 REST, the API of Triton, KServe, MLServer and OpenVINO Model Server) with "
        "dynamic batching, a web page at / and Prometheus metrics at /metrics. SIGTERM drains "
        "in-flight requests and exits 0.", epilog="examples:\n"
        "  zoo serve Net                          http://127.0.0.1:8000/\n"
        "  zoo serve Net fast=exports/NetRes-cifar2 --host 0.0.0.0 --port 8080\n"
        "  zoo serve Net --expect-sha256 Net=HEX  refuse any other bundle\n"
        "  zoo serve Net --triton-repository models   write a Triton model repository")
    p.add_argument("bundles", nargs="+", metavar="[NAME=]BUNDLE",
                   help="bundle directories or shipped bundle names (e.g. Net), served as "
                        "their name, their directory's name, or NAME")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="port (0: a free one)")
    g = p.add_argument_group("dynamic batching and limits")
    g.add_argument("--max-batch-size", type=int, default=64, metavar="N",
                   help="rows per onnxruntime call, and per request (1: no batching)")
    g.add_argument("--max-queue-delay-ms", type=float, default=0.0, metavar="MS",
                   help="how long the oldest request may wait for a batch to fill")
    g.add_argument("--max-queue-size", type=int, default=256, metavar="ROWS",
                   help="rows waiting per model; beyond, 503 with Retry-After at once")
    g.add_argument("--max-queue-wait-ms", type=float, default=50.0, metavar="MS",
                   help="refuse (503) a request still queued after MS instead of answering it "
                        "late (0: never)")
    g.add_argument("--max-loop-lag-ms", type=float, default=25.0, metavar="MS",
                   help="refuse inference requests (503) while the event loop runs this late "
                        "(0: never)")
    g.add_argument("--timeout", type=float, default=10.0, metavar="S",
                   help="answer 504 to a request still waiting after S seconds")
    g.add_argument("--max-body-bytes", type=int, default=16 << 20, metavar="N",
                   help="largest request body (413 beyond)")
    g.add_argument("--max-image-pixels", type=int, default=4096 * 4096, metavar="N",
                   help="largest image, checked from its header before decoding (413 beyond)")
    g.add_argument("--top-k", type=int, default=5, metavar="K",
                   help="classes in top_labels when a request does not say (top_k)")
    g.add_argument("--threads", type=int, default=1, metavar="N",
                   help="onnxruntime intra-op threads per model")
    g.add_argument("--graph", default="onnx", metavar="FORMAT",
                   help="which ONNX graph of each bundle runs: onnx (float32) or a format "
                        "holding one, e.g. int8 (its version ends in -int8)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="server processes sharing the port (SO_REUSEPORT), each with its own "
                        "copy of the models: one per core to use")
    p.add_argument("--expect-sha256", action="append", default=[], metavar="[NAME=]HEX",
                   help="refuse a bundle whose manifest has another SHA-256 (repeatable: "
                        "NAME=HEX per model; a bare HEX when one bundle is served)")
    p.add_argument("--log-level", default="info",
                   choices=("debug", "info", "warning", "error"), help="log level")
    p.add_argument("--no-access-log", action="store_true",
                   help="no JSON line per request on stderr")
    p.add_argument("--triton-repository", metavar="DIR",
                   help="write a Triton model repository (DIR/NAME/config.pbtxt, "
                        "1/model.onnx, labels.txt) for the bundles instead of serving them")
    p.add_argument("--force", action="store_true",
                   help="with --triton-repository: replace existing model directories")
    p.set_defaults(handler=serve_command)


def _importable(*modules: str) -> bool:
    for module in modules:
        try:
            importlib.import_module(module)
            return True
        except ImportError:
            continue
    return False


def require_serve_extra() -> None:
    """A one-line ZooError naming the install command when the serve extra is missing."""
    missing = [dist for module, dist in SERVE_MODULES.items() if not _importable(module)]
    if not _importable("python_multipart", "multipart"):
        missing.append("python-multipart")
    if missing:
        raise ZooError(f"zoo serve needs {', '.join(missing)}: {INSTALL_HINT}")


def _settings(args: argparse.Namespace) -> ServeSettings:
    from zoo.deploy import check_threads
    from zoo.serve.models import ServeSettings

    checks = [("--max-batch-size", args.max_batch_size, 1), ("--max-body-bytes",
              args.max_body_bytes, 1024), ("--max-image-pixels", args.max_image_pixels, 1),
              ("--top-k", args.top_k, 1)]
    for flag, value, least in checks:
        if value < least:
            raise ZooError(f"{flag} must be at least {least}, got {value}")
    if args.max_queue_size < args.max_batch_size:
        raise ZooError(f"--max-queue-size ({args.max_queue_size}) must be at least "
                       f"--max-batch-size ({args.max_batch_size})")
    if not 0 <= args.max_queue_delay_ms <= 10_000:
        raise ZooError(f"--max-queue-delay-ms must be from 0 to 10000, got "
                       f"{args.max_queue_delay_ms:g}")
    for flag, ms in (("--max-loop-lag-ms", args.max_loop_lag_ms),
                     ("--max-queue-wait-ms", args.max_queue_wait_ms)):
        if not 0 <= ms <= 60_000:
            raise ZooError(f"{flag} must be from 0 to 60000, got {ms:g}")
    if 0 < args.max_queue_wait_ms <= args.max_queue_delay_ms:
        raise ZooError(f"--max-queue-wait-ms ({args.max_queue_wait_ms:g}) must exceed "
                       f"--max-queue-delay-ms ({args.max_queue_delay_ms:g}), or be 0")
    if not 0 < args.timeout <= 3600:
        raise ZooError(f"--timeout must be above 0 and at most 3600 seconds, got "
                       f"{args.timeout:g}")
    if not 0 <= args.port <= 65535:
        raise ZooError(f"--port must be from 0 to 65535, got {args.port}")
    check_threads(args.threads, "--threads")
    return ServeSettings(max_batch_size=args.max_batch_size,
                         max_queue_delay_s=args.max_queue_delay_ms / 1000,
                         max_queue_rows=args.max_queue_size, timeout_s=args.timeout,
                         max_body_bytes=args.max_body_bytes,
                         max_image_pixels=args.max_image_pixels, top_k=args.top_k,
                         threads=args.threads, max_loop_lag_s=args.max_loop_lag_ms / 1000,
                         max_queue_wait_s=args.max_queue_wait_ms / 1000, graph=args.graph)


def serve_command(args: argparse.Namespace, registry: Registry) -> int:
    from zoo.serve.repository import parse_pins, parse_sources

    sources = parse_sources(args.bundles)
    pins = parse_pins(args.expect_sha256, [s.name for s in sources])
    if args.triton_repository is not None:
        return _write_triton(args, sources, pins, registry)
    require_serve_extra()
    settings = _settings(args)
    from zoo.serve.repository import load_models
    from zoo.serve.server import configure_logging, serve

    if not 1 <= args.workers <= MAX_WORKERS:
        raise ZooError(f"--workers must be from 1 to {MAX_WORKERS}, got {args.workers}")
    configure_logging(args.log_level)  # what loading the models warns of is logged as JSON
    models = load_models(sources, settings, pins=pins, registry=registry)
    served = ", ".join(f"{m.name} ({m.version})" for m in models)
    workers = f" with {args.workers} workers" if args.workers > 1 else ""

    def announce(url: str) -> None:
        print(f"zoo serve: {served} at {url}{workers} (SIGTERM or Ctrl-C stops)", flush=True)

    if args.workers == 1:
        return serve(models, settings, host=args.host, port=args.port,
                     log_access=not args.no_access_log, log_level=args.log_level,
                     announce=announce)
    from zoo.serve.workers import BundleRef, serve_workers

    bundles = [BundleRef.of(m) for m in models]
    del models  # each worker loads its own: the parent keeps no onnxruntime session
    return serve_workers(bundles, settings, workers=args.workers, host=args.host,
                         port=args.port, log_access=not args.no_access_log,
                         log_level=args.log_level, announce=announce)


def _write_triton(args: argparse.Namespace, sources: list[ModelSource], pins: dict[str, str],
                  registry: Registry) -> int:
    from zoo.bundles.store import resolve_bundle
    from zoo.deploy.triton import triton_problems, write_triton_bundle

    if args.max_batch_size < 1:
        raise ZooError(f"--max-batch-size must be at least 1, got {args.max_batch_size}")
    written = []
    for source in sources:
        path = resolve_bundle(source.bundle, registry=registry)
        written.append(write_triton_bundle(
            path, args.triton_repository, name=source.name, expect_sha256=pins.get(source.name),
            force=args.force, max_batch_size=args.max_batch_size,
            max_queue_delay_us=round(args.max_queue_delay_ms * 1000),
            max_queue_size=args.max_queue_size, threads=args.threads))
    for target in written:
        try:
            _, problems = triton_problems(target)
        except ZooError as exc:  # no tritonclient: written, not checked against the schema
            print(f"zoo serve: warning: {exc}", file=sys.stderr)
            problems = []
        if problems:
            raise ZooError(f"the Triton model {target} is inconsistent: {'; '.join(problems)}")
        print(f"wrote {target} (config.pbtxt, 1/model.onnx, labels.txt)")
    print(f"serve it: tritonserver --model-repository={args.triton_repository}")
    return 0
