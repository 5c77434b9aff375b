"""`zoo serve` under bounded load on loopback, side by side with OnnxClassifier in-process.

    python bench/bench_serve.py [--bundle Net] [--seconds 4] [--payload tensor image]
                                [--concurrency 1 8 64] [--workers 1 2] [--client auto]
                                [--json OUT]

For each payload (``tensor``: one preprocessed FP32 image per request, sent with the
binary tensor extension; ``image``: one JPEG per request as a BYTES input) and each
number of worker processes, the server (``python -m zoo serve BUNDLE --port 0
--workers W --no-access-log``, a subprocess) is driven at each concurrency in a closed
loop (each connection sends its next request when answered), once with dynamic
batching (the defaults) and once without (``--max-batch-size 1``). The load comes
from wrk where it is installed (``apt-get install wrk``: a C client, so that the load
generator takes little of the CPU it shares with the server), else from an asyncio
client (:mod:`serve_load`). The same bundle is called in-process through
:class:`zoo.deploy.OnnxClassifier` with batches of the same sizes (``run`` +
``softmax`` for tensors, ``probabilities`` of the decoded JPEGs for images), with the
server's onnxruntime threads: the limit one server process approaches. The floor: a
do-nothing ASGI app on the same uvicorn, in as many processes, driven the same way
(the most any server on this stack answers, whatever its model); beside it a
do-nothing Starlette route (reading the body, answering two bytes): what the framework
alone costs (zoo serve answers ``/infer`` on plain ASGI, under Starlette's routing).

Ratios: one worker against in-process (both one onnxruntime call at a time), and
batching against no batching at the same number of workers. Beside each throughput
target the run prints this stack's ceiling (:func:`ceiling`): the floor's rate, and where
the workers fill every core, a do-nothing request's cost and the model's own added on the
cores they share; a target past it is out of reach for any server on this stack here.

Last, for each number of workers, an overload run: requests arrive open-loop at twice
the measured capacity (batched, top concurrency) for ``--seconds``, evenly spaced,
over 512 connections (the asyncio client); every request must be answered (200) or
refused (503 with Retry-After) within 100 ms of its scheduled start, none may hang
(5 s), and the server's resident memory (every worker) must stay bounded. Client and
server share the machine's cores.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from serve_load import closed_loop, have_wrk, open_loop, percentile

from zoo.deploy import OnnxClassifier, softmax

ROOT = Path(__file__).resolve().parents[1]
HEADER = "Inference-Header-Content-Length"


def make_bodies(clf: OnnxClassifier, payload: str, n: int = 64
                ) -> tuple[list[bytes], list[dict[str, str]], list[Any]]:
    """``n`` request bodies and headers, and the same inputs for the in-process calls."""
    rng = np.random.default_rng(0)
    c, (h, w) = clf.channels, clf.size
    bodies, headers, inputs = [], [], []
    for _ in range(n):
        pixels = rng.integers(0, 256, (h, w, c), dtype=np.uint8)
        if payload == "tensor":
            x = clf.preprocess(pixels.transpose(2, 0, 1)[None])
            raw = x.tobytes()
            tensor = {"name": clf.input_name, "shape": list(x.shape), "datatype": "FP32",
                      "parameters": {"binary_data_size": len(raw)}}
            inputs.append(x[0])
        else:
            buffer = io.BytesIO()
            Image.fromarray(pixels.squeeze()).save(buffer, "JPEG", quality=90)
            jpeg = buffer.getvalue()
            raw = len(jpeg).to_bytes(4, "little") + jpeg
            tensor = {"name": clf.input_name, "shape": [1], "datatype": "BYTES",
                      "parameters": {"binary_data_size": len(raw)}}
            inputs.append(jpeg)
        header = json.dumps({"inputs": [tensor], "outputs": [
            {"name": "probabilities", "parameters": {"binary_data": True}}]}).encode()
        bodies.append(header + raw)
        headers.append({HEADER: str(len(header)), "Content-Type": "application/octet-stream"})
    return bodies, headers, inputs


def start_server(bundle: str, *extra: str, workers: int = 1, floor: str | None = None
                 ) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), str(ROOT / "plugins"), os.environ.get("PYTHONPATH", "")])}
    command = ([sys.executable, "-c", FLOOR_APPS[floor], str(workers)] if floor else
               [sys.executable, "-m", "zoo", "serve", bundle, "--port", "0", "--no-access-log",
                "--log-level", "warning", "--workers", str(workers), *extra])
    # a session of its own: the floor's forked processes stop with it (stop())
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if " at http" not in line:
        proc.kill()
        raise SystemExit(f"zoo serve did not start: {line!r}")
    return proc, line.split(" at ")[1].split()[0]


#: The floors' processes: ``app`` (defined before this) on the same uvicorn (httptools,
#: uvloop) in N processes sharing the port (SO_REUSEPORT, as zoo serve's workers).
_FLOOR_PROCESSES = """
def listen(port):
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(2048)
    return sock
sock = listen(0)
port = sock.getsockname()[1]
for _ in range(int(sys.argv[1]) - 1):
    if os.fork() == 0:
        sock.close()
        sock = listen(port)
        break
else:
    print(f"floor at http://127.0.0.1:{port}/", flush=True)
uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])
"""

#: The floor: a do-nothing ASGI app answering every request with 2 bytes after reading its
#: body. No server on this stack can do better.
FLOOR_APP = """
import os, socket, sys, uvicorn
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})
""" + _FLOOR_PROCESSES

#: The framework's floor: a do-nothing Starlette route in the same processes.
STARLETTE_FLOOR_APP = """
import os, socket, sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
async def infer(request):
    await request.body()
    return Response(b"{}", media_type="application/json")
app = Starlette(routes=[Route("/v2/models/{name}/infer", infer, methods=["POST"])])
""" + _FLOOR_PROCESSES

FLOOR_APPS = {"uvicorn": FLOOR_APP, "starlette": STARLETTE_FLOOR_APP}


def stop(proc: subprocess.Popen[str], group: bool = False) -> int:
    """SIGTERM to the server (zoo serve stops its own workers), or to its whole group."""
    if group:
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.terminate()
    return proc.wait(timeout=60)


def in_process(clf: OnnxClassifier, payload: str, inputs: list[Any], batch: int,
               seconds: float) -> dict[str, Any]:
    chunk = inputs[:batch]
    if payload == "tensor":
        x = np.ascontiguousarray(np.stack(chunk))

        def call() -> object:
            return softmax(clf.run(x))
    else:
        def call() -> object:
            return clf.probabilities([Image.open(io.BytesIO(j)) for j in chunk])
    for _ in range(5):
        call()
    times: list[float] = []
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return {"throughput": batch * len(times) / sum(times),
            "p50_ms": percentile(times, 0.5) * 1e3, "p99_ms": percentile(times, 0.99) * 1e3}


def run_payload(args: argparse.Namespace, payload: str, log: Callable[[str], None]
                ) -> dict[str, Any]:
    clf = OnnxClassifier(args.bundle, threads=args.threads)
    bodies, headers, inputs = make_bodies(clf, payload)
    body, header = bodies[0], headers[0]
    rows: dict[str, Any] = {"server": {}, "in_process": {}, "floor": {}, "starlette": {},
                            "overload": {}, "exit_codes": {}}
    for c in args.concurrency:
        rows["in_process"][str(c)] = in_process(clf, payload, inputs, c, args.seconds / 2)
    for workers in args.workers:
        for mode, extra in (("batching", []), ("no batching", ["--max-batch-size", "1"])):
            proc, base = start_server(args.bundle, "--threads", str(args.threads), *extra,
                                      workers=workers)
            url = f"{base}v2/models/{args.bundle}/infer"
            try:
                for c in args.concurrency:
                    result = closed_loop(url, body, header, c, args.seconds, args.closed)
                    rows["server"][f"{workers}/{mode}/{c}"] = result
                    log(f"  {payload} w={workers} {mode:<11} c={c:<3} "
                        f"{result['throughput']:8.0f} req/s  p50 {result['p50_ms']:6.2f} ms  "
                        f"p99 {result['p99_ms']:6.2f} ms  failures {result['failures']}")
                if mode == "batching":
                    top = max(args.concurrency)
                    capacity = rows["server"][f"{workers}/batching/{top}"]["throughput"]
                    over = open_loop(url, body, header, 2 * capacity, args.seconds, proc.pid)
                    rows["overload"][str(workers)] = over
                    log(f"  {payload} w={workers} overload: {json.dumps(over)}")
            finally:
                rows["exit_codes"][f"{workers}/{mode}"] = stop(proc)
        for floor, key in (("uvicorn", "floor"), ("starlette", "starlette")):
            proc, base = start_server(args.bundle, floor=floor, workers=workers)
            url = f"{base}v2/models/{args.bundle}/infer"
            try:
                for c in args.concurrency:
                    rows[key][f"{workers}/{c}"] = closed_loop(url, body, header, c,
                                                              args.seconds / 2, args.closed)
            finally:
                stop(proc, group=True)
    return rows


def _cell(r: dict[str, Any]) -> str:
    return f"{r['throughput']:,.0f} ({r['p50_ms']:.2f} / {r['p99_ms']:.2f})"


def format_table(payload: str, rows: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [f"payload: {payload}",
             "| workers | concurrency = batch | server, batching req/s (p50 / p99 ms) | "
             "server, no batching req/s (p50 / p99 ms) | in-process img/s, one process "
             "(p50 ms per batch) | uvicorn floor req/s | Starlette floor req/s | "
             "batching / in-process | batching / no batching |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for workers in args.workers:
        for c in args.concurrency:
            b = rows["server"][f"{workers}/batching/{c}"]
            n = rows["server"][f"{workers}/no batching/{c}"]
            p = rows["in_process"][str(c)]
            lines.append(f"| {workers} | {c} | {_cell(b)} | {_cell(n)} | "
                         f"{p['throughput']:,.0f} ({p['p50_ms']:.2f}) | "
                         f"{rows['floor'][f'{workers}/{c}']['throughput']:,.0f} | "
                         f"{rows['starlette'][f'{workers}/{c}']['throughput']:,.0f} | "
                         f"{b['throughput'] / p['throughput']:.0%} | "
                         f"{b['throughput'] / n['throughput']:.1f}x |")
    for workers in args.workers:
        o = rows["overload"][str(workers)]
        lines.append(
            f"\noverload, {workers} worker(s), {o['client']}: {o['target_rate']:,.0f} req/s "
            f"asked, {o['offered_rate']:,.0f} offered, {o['requests']} requests over "
            f"{o['connections']} connections: {o['answered']} answered (p50 "
            f"{o['answered_p50_ms']:.1f}, p99 {o['answered_p99_ms']:.1f}, max "
            f"{o['answered_max_ms']:.1f} ms), {o['refused']} refused 503 (p99 "
            f"{o['refused_p99_ms']:.1f}, max {o['refused_max_ms']:.1f} ms), {o['other']} "
            f"other, {o['hung']} hung, {o['over_100ms']} over 100 ms from their scheduled "
            f"start; on the wire (request written to answer read) p50 {o['wire_p50_ms']:.1f}, "
            f"p99 {o['wire_p99_ms']:.1f} ms, {o['wire_over_100ms']} over 100 ms; server RSS "
            f"{o['rss_start_mib']:.0f} -> max "
            f"{o['rss_max_mib']:.0f} -> {o['rss_end_mib']:.0f} MiB")
    codes = ", ".join(f"{k}: {v}" for k, v in rows["exit_codes"].items())
    lines.append(f"\nexit statuses after SIGTERM: {codes}")
    return "\n".join(lines)


def ceiling(rows: dict[str, Any], workers: int, c: int, cpus: int) -> float:
    """The most requests a second that a server on this stack could answer at concurrency
    ``c``: the do-nothing floor's rate; where the workers fill every core (the client shares
    them too), the floor's cost and the model's own (the in-process time per image, one
    process) added on those cores: ``1 / (1 / floor + 1 / (cpus * in_process))``."""
    floor = float(rows["floor"][f"{workers}/{c}"]["throughput"])
    if workers < cpus:
        return floor
    return 1.0 / (1.0 / floor + 1.0 / (cpus * rows["in_process"][str(c)]["throughput"]))


def targets(payload: str, rows: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """The issue's done-when targets, each PASS or MISS, for one payload, with what this
    stack allows at most on this machine (:func:`ceiling`) beside the throughput ones."""
    concurrency = args.concurrency
    top, mid = max(concurrency), 8 if 8 in concurrency else concurrency[len(concurrency) // 2]
    checks: list[tuple[str, bool]] = []
    for workers in args.workers:
        b = rows["server"][f"{workers}/batching/{top}"]["throughput"]
        n = rows["server"][f"{workers}/no batching/{top}"]["throughput"]
        p = rows["in_process"][str(top)]["throughput"]
        most = ceiling(rows, workers, top, args.cpus)
        framework = rows["starlette"][f"{workers}/{top}"]["throughput"]
        p8 = rows["server"][f"{workers}/batching/{mid}"]
        checks += [
            (f"{workers} worker(s), batching at c={top} >= 50% of in-process batch {top} "
             f"(here {b / p:.0%}; ceiling {most / p:.0%}; a do-nothing Starlette route "
             f"{framework / p:.0%})", b >= 0.5 * p),
            (f"{workers} worker(s), batching at c={top} >= 3x no batching (here "
             f"{b / n:.1f}x; ceiling {most / n:.1f}x)", b >= 3 * n),
            (f"{workers} worker(s), p99 <= 3x p50 at c={mid}", p8["p99_ms"] <= 3 * p8["p50_ms"]),
        ]
    for workers in args.workers:
        o = rows["overload"][str(workers)]
        checks += [
            (f"{workers} worker(s), overload: every request 200 or 503 within 100 ms, none "
             "hung", o["other"] == 0 and o["hung"] == 0 and o["over_100ms"] == 0),
            (f"{workers} worker(s), overload: server RSS grows < 50 MiB",
             o["rss_max_mib"] - o["rss_start_mib"] < 50)]
    return [f"  {'PASS' if ok else 'MISS'} {payload}: {what}" for what, ok in checks]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="Net")
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    parser.add_argument("--payload", nargs="*", default=["tensor", "image"],
                        choices=("tensor", "image"))
    parser.add_argument("--concurrency", type=int, nargs="*", default=[1, 8, 64])
    parser.add_argument("--workers", type=int, nargs="*", default=None,
                        help="server processes (default: 1 and the number of CPUs)")
    parser.add_argument("--threads", type=int, default=1,
                        help="onnxruntime threads, server and in-process (default 1)")
    parser.add_argument("--client", choices=("auto", "wrk", "asyncio"), default="auto",
                        help="closed-loop load generator: wrk, the asyncio client, or wrk "
                             "where installed (auto)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    cpus = args.cpus = os.cpu_count() or 1
    args.workers = args.workers or sorted({1, cpus})
    if args.client == "wrk" and not have_wrk():
        parser.error("--client wrk needs wrk: apt-get install wrk")
    args.closed = "wrk" if args.client != "asyncio" and have_wrk() else "asyncio"
    results = {}
    for payload in args.payload:
        results[payload] = run_payload(args, payload, lambda s: print(s, file=sys.stderr))
    print(f"{args.bundle} on {cpus} CPUs, onnxruntime threads {args.threads}, "
          f"{args.seconds:g} s per measurement, closed loop by {args.closed}, open loop by "
          "asyncio")
    for payload, rows in results.items():
        print(format_table(payload, rows, args))
    print("targets:")
    for payload, rows in results.items():
        print("\n".join(targets(payload, rows, args)))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
