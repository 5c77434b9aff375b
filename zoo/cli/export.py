"""``zoo export`` and ``zoo verify``: verified ONNX bundles (torch is imported only when run)."""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import Any

from zoo.cli import completers
from zoo.cli.help import set_help_tail
from zoo.cli.options import add_weights_option, parse_pairs
from zoo.errors import ZooError
from zoo.host.registry import Registry
from zoo.spec import fields
from zoo.spec.manifest import DEFAULT_ATOL, DEFAULT_RTOL

#: The width the formats' options are wrapped to in ``zoo export --help``.
HELP_WIDTH = 79


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "export", help="export a run or an architecture to a verified ONNX bundle",
        description="Write a bundle (model.pt, model.onnx, manifest.json) after checking the "
        "ONNX graph against PyTorch with onnxruntime; a bundle that fails is never written.")
    completers.attach(p.add_argument(
        "source", metavar="RUN_DIR|BUNDLE|ARCH",
        help="a training run directory; a bundle (a directory, or a declared name such as "
             "Net-cifar2: written again, in other formats say); or an architecture name "
             "(fresh weights)"), completers.models)
    completers.attach(p.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
        help="hyperparameter or shape override for an architecture name (repeatable)"),
        completers.set_keys)
    p.add_argument("--out", metavar="DIR",
                   help="bundle directory (default: EXPORTS/NAME, NAME identifying the source: "
                        "the run's folder, <bundle>-<formats>, <Arch>-untrained-seed<N>; "
                        "EXPORTS is $ZOO_EXPORTS, else ~/.local/share/zoo/exports, where zoo "
                        "predict NAME finds it)")
    p.add_argument("--force", action="store_true", help="replace an existing bundle atomically")
    p.add_argument("--opset", type=int, metavar="N",
                   help="ONNX opset (default 17); the same as --format-option onnx.opset=N")
    p.add_argument("--exporter", choices=("torchscript", "dynamo"), default=None,
                   help="torch.onnx exporter (torchscript is 20-30x faster here); the same as "
                        "--format-option onnx.exporter=NAME")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best",
                   help="which checkpoint of a run to export")
    p.add_argument("--atol", type=float, default=DEFAULT_ATOL,
                   help="absolute tolerance of ONNX vs PyTorch")
    p.add_argument("--rtol", type=float, default=DEFAULT_RTOL,
                   help="relative tolerance of ONNX vs PyTorch")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the initial weights when exporting an architecture")
    add_weights_option(p, "ARCH")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    completers.attach(p.add_argument(
        "--format", dest="formats", default="onnx", metavar="F[,F]",
        help="export formats besides onnx (always written), comma-separated, each verified: "
             "see 'installed formats' below"), completers.formats)
    p.add_argument("--quantize", choices=("int8",), default=None,
                   help="also write a quantized graph (the int8 format: calibrated on training "
                        "images, refused if it loses over 0.5 points on the held-out split)")
    p.add_argument("--data-dir", metavar="DIR",
                   help="where the weights' training data lies, for formats that need it "
                        "(int8) when the source is a bundle (a run knows its own)")
    completers.attach(p.add_argument(
        "--format-option", dest="format_options", action="append", default=[],
        metavar="F.KEY=VALUE",
        help="an option of export format F (repeatable), e.g. onnx.opset=18"),
        completers.format_options)
    p.set_defaults(handler=export_command)
    set_help_tail(p, installed_formats)

    p = subparsers.add_parser(
        "verify", help="re-check a bundle: checksums, manifest, ONNX vs PyTorch")
    completers.attach(p.add_argument("bundle", metavar="BUNDLE",
                                     help="a bundle directory or name (e.g. Net or Net-cifar2)"),
                      completers.bundles)
    add_weights_option(p, "BUNDLE")
    p.add_argument("--atol", type=float, help="absolute tolerance (default: the manifest's)")
    p.add_argument("--rtol", type=float, help="relative tolerance (default: the manifest's)")
    p.add_argument("--expect-sha256", metavar="HEX",
                   help="refuse the bundle unless its manifest has this SHA-256")
    p.add_argument("--accuracy", action="store_true",
                   help="measure again the accuracy formats such as int8 measured on the "
                        "held-out split (loads the weights' training data)")
    p.add_argument("--data-dir", metavar="DIR",
                   help="with --accuracy: where the training data lies (a bundle records "
                        "only its folder's name)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=verify_command)


def installed_formats() -> str:
    """The ``installed formats`` section of ``zoo export --help``: name, summary, options."""
    from zoo.host.registry import default_registry
    from zoo.spec.exportformat import REQUIRED_FORMAT

    specs = default_registry().formats()
    width = max((len(name) for name in specs), default=0)
    lines = ["installed formats (--format NAME, --format-option NAME.KEY=VALUE):"]
    indent = " " * (width + 4)
    for name, spec in sorted(specs.items(), key=lambda item: item[0] != REQUIRED_FORMAT):
        prov = spec.provenance
        always = " (always written)" if name == REQUIRED_FORMAT else ""
        lines.append(f"  {name:<{width}}  {spec.summary}{always}")
        if prov and prov.distribution != "zoo":
            lines.append(f"{indent}from {prov.describe()}")
        options = fields.describe(spec.options)
        lines.append(f"{indent}options:" + ("" if options else " none"))
        for option in options:  # NAME=DEFAULT (ACCEPTED) DESCRIPTION
            lines.extend(textwrap.wrap(option, width=HELP_WIDTH, initial_indent=indent + "  ",
                                       subsequent_indent=indent + "    "))
    return "\n".join(lines)


def format_options(pairs: list[str]) -> dict[str, dict[str, Any]]:
    """``["onnx.opset=18"]`` -> ``{"onnx": {"opset": 18}}``."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in parse_pairs(pairs, "--format-option").items():
        name, dot, option = key.partition(".")
        if not dot or not name or not option:
            raise ZooError(f"--format-option takes FORMAT.KEY=VALUE, got {key!r}")
        out.setdefault(name, {})[option] = value
    return out


def export_command(args: argparse.Namespace, registry: Registry) -> int:
    from zoo.exporter import formats

    options = format_options(args.format_options)
    if args.quantize:
        args.formats = f"{args.formats},{args.quantize}"
    # bad --format and --format-option values fail here, before the exporter imports torch
    formats.format_options(formats.parse_formats(args.formats, registry), options)
    from zoo.exporter.write import export
    from zoo.spec.manifest import VerificationError

    try:
        result = export(args.source, overrides=parse_pairs(args.sets, "--set"), out=args.out,
                        force=args.force, opset=args.opset, exporter=args.exporter,
                        atol=args.atol, rtol=args.rtol, checkpoint=args.checkpoint,
                        seed=args.seed, registry=registry, formats=args.formats,
                        options=options, weights=args.weights, data_dir=args.data_dir)
    except VerificationError as exc:
        print(exc.report.format(), file=sys.stderr)
        raise
    manifest = result.manifest
    if args.json:
        print(manifest.to_json(), end="")
        return 0
    print(manifest.verification.format())
    reference = manifest.verification.ort_latency_ms_batch1
    for name, record in manifest.formats.items():
        print(record.format(name, reference))
        latency = record.ort_latency_ms_batch1
        if latency is not None and reference is not None and latency > reference:
            print(f"zoo: warning: the {name} graph is slower than the float32 graph at batch 1 "
                  f"on this CPU ({latency:.3f} ms against {reference:.3f} ms)", file=sys.stderr)
    print(f"exported {manifest.architecture} ({manifest.export.exporter} exporter, opset "
          f"{manifest.export.opset}, {manifest.total_bytes / 1024:.1f} KiB) to {result.path}")
    print(f"bundle sha256 {result.sha256} (pin it: --expect-sha256)")
    return 0


def verify_command(args: argparse.Namespace, registry: Registry) -> int:
    from zoo.exporter.verify import verify_bundle

    report = verify_bundle(args.bundle, atol=args.atol, rtol=args.rtol, registry=registry,
                           expect_sha256=args.expect_sha256, weights=args.weights,
                           accuracy=args.accuracy, data_dir=args.data_dir)
    if args.json:
        print(report.model_dump_json(
            indent=2, exclude={"path", *(() if report.formats else ("formats",))}))
    else:
        print(f"bundle sha256 {report.sha256}")
        print("SHA-256 sums, manifest and weights (weights_only): ok")
        print("graph input and output shapes agree with the manifest: ok")
        print(report.format())
    return 0 if report.passed else 1
