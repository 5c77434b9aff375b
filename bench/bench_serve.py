"""`zoo serve` under bounded load on loopback, side by side with OnnxClassifier in-process.

    python bench/bench_serve.py [--bundle Net] [--seconds 3] [--payload tensor image]
                                [--concurrency 1 8 64] [--json OUT]

For each payload (``tensor``: one preprocessed FP32 image per request, sent with the
binary tensor extension; ``image``: one JPEG per request as a BYTES input), the
server (``python -m zoo serve BUNDLE --port 0 --no-access-log``, a subprocess) is
driven by a minimal async HTTP/1.1 client (asyncio streams on uvloop, keep-alive
connections, closed loop: each request waits for the previous answer) at each
concurrency, once with dynamic batching (the defaults) and once without
(``--max-batch-size 1``). The same bundle is then called in-process through
:class:`zoo.deploy.OnnxClassifier` with batches of the same sizes (``run`` + ``softmax``
for tensors, ``probabilities`` of the decoded JPEGs for images): the limit a network
server approaches. Ratios: server / in-process at the same batch size, and batching /
no batching. The floor: a do-nothing ASGI app on the same uvicorn, driven the same way
(the most any server on this stack answers, whatever its model).

Last, an overload run: requests arrive open-loop at twice the measured capacity
(batched, concurrency 64) for ``--seconds`` over 512 connections; every request must be
answered (200) or refused (503 with Retry-After) within 100 ms of its arrival, none may
hang (5 s client timeout), and the server's RSS must stay bounded (sampled from /proc).
The client and the server share the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

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


def start_server(bundle: str, *extra: str, floor: bool = False
                 ) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), str(ROOT / "plugins"), os.environ.get("PYTHONPATH", "")])}
    command = ([sys.executable, "-c", FLOOR_APP] if floor else
               [sys.executable, "-m", "zoo", "serve", bundle, "--port", "0", "--no-access-log",
                "--log-level", "warning", *extra])
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if " at http" not in line:
        proc.kill()
        raise SystemExit(f"zoo serve did not start: {line!r}")
    return proc, line.split(" at ")[1].split()[0]


#: The floor: a do-nothing ASGI app on the same uvicorn (httptools, uvloop), answering every
#: request with 2 bytes after reading its body. No server on this stack can do better.
FLOOR_APP = """
import socket, sys, uvicorn
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
sock = socket.socket()
sock.bind(("127.0.0.1", 0))
sock.listen(2048)
print(f"floor at http://127.0.0.1:{sock.getsockname()[1]}/", flush=True)
uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])
"""


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class Connection:
    """One keep-alive HTTP/1.1 connection sending prepared POSTs: a minimal client, so that
    the load generator takes little of the CPU the server shares with it on loopback."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, url: str) -> Connection:
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        return cls(reader, writer)

    async def request(self, raw: bytes) -> tuple[int, dict[str, str]]:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if line:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
        await self.reader.readexactly(int(headers.get("content-length", "0")))
        return status, headers

    def close(self) -> None:
        self.writer.close()


def http_requests(url: str, bodies: list[bytes], headers: list[dict[str, str]]) -> list[bytes]:
    """The full HTTP/1.1 requests, prepared once."""
    parts = urlsplit(url)
    out = []
    for body, extra in zip(bodies, headers, strict=True):
        lines = [f"POST {parts.path} HTTP/1.1", f"Host: {parts.netloc}",
                 f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in extra.items())]
        out.append(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    return out


async def closed_loop(url: str, requests: list[bytes], concurrency: int,
                      seconds: float) -> dict[str, Any]:
    """``concurrency`` clients, each sending its next request when answered, for ``seconds``."""
    latencies: list[float] = []
    failures = 0
    connections = [await Connection.open(url) for _ in range(concurrency)]

    async def client(k: int, until: float, record: bool) -> None:
        nonlocal failures
        i, connection = k, connections[k]
        while time.perf_counter() < until:
            start = time.perf_counter()
            status, _ = await connection.request(requests[i % len(requests)])
            if record:
                latencies.append(time.perf_counter() - start)
                failures += status != 200
            i += concurrency

    warm = time.perf_counter() + min(1.0, seconds / 3)
    await asyncio.gather(*(client(k, warm, False) for k in range(concurrency)))
    start = time.perf_counter()
    await asyncio.gather(*(client(k, start + seconds, True) for k in range(concurrency)))
    elapsed = time.perf_counter() - start
    for connection in connections:
        connection.close()
    return {"throughput": len(latencies) / elapsed, "p50_ms": percentile(latencies, 0.5) * 1e3,
            "p99_ms": percentile(latencies, 0.99) * 1e3, "requests": len(latencies),
            "failures": failures}


async def open_loop(url: str, requests: list[bytes], rate: float, seconds: float,
                    pid: int, connections: int = 512) -> dict[str, Any]:
    """Requests at ``rate`` per second whatever the answers, for ``seconds``, over a pool of
    ``connections`` keep-alive connections; latency counts from each request's scheduled
    start, so time spent waiting for a free connection counts too."""
    results: list[tuple[int, float]] = []
    wire: list[float] = []  # from writing the request to the answer: the server's part
    rss = [rss_mib(pid)]
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(connections):
        idle.put_nowait(await Connection.open(url))

    async def one(i: int, scheduled: float) -> None:
        connection = await idle.get()
        sent = time.perf_counter()
        try:
            status, headers = await asyncio.wait_for(
                connection.request(requests[i % len(requests)]), 5.0)
            if status == 503 and "retry-after" not in headers:
                status = -503
            idle.put_nowait(connection)
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            status = -1
            connection.close()
            idle.put_nowait(await Connection.open(url))
        results.append((status, time.perf_counter() - scheduled))
        wire.append(time.perf_counter() - sent)

    tasks = []
    begin = time.perf_counter()
    n = int(rate * seconds)
    for i in range(n):
        scheduled = begin + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, scheduled)))
        if i % 500 == 0:
            rss.append(rss_mib(pid))
    offered = n / (time.perf_counter() - begin)
    await asyncio.gather(*tasks)
    rss.append(rss_mib(pid))
    while not idle.empty():
        idle.get_nowait().close()
    ok = [s for st, s in results if st == 200]
    refused = [s for st, s in results if st == 503]
    return {"offered_rate": offered, "requests": len(results), "answered": len(ok),
            "refused_503": len(refused), "other": sum(st not in (200, 503) for st, _ in results),
            "hung": sum(st == -1 for st, _ in results), "connections": connections,
            "answered_p99_ms": percentile(ok, 0.99) * 1e3,
            "answered_max_ms": max(ok, default=float("nan")) * 1e3,
            "refused_max_ms": max(refused, default=0.0) * 1e3,
            "over_100ms": sum(s > 0.1 for _, s in results),
            "wire_p50_ms": percentile(wire, 0.5) * 1e3, "wire_p99_ms": percentile(wire, 0.99) * 1e3,
            "wire_over_100ms": sum(s > 0.1 for s in wire),
            "rss_start_mib": rss[0], "rss_max_mib": max(rss), "rss_end_mib": rss[-1]}


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


def run(coroutine: Any) -> Any:
    """asyncio.run, on uvloop where it is installed (a lighter client)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def run_payload(args: argparse.Namespace, payload: str, log: Callable[[str], None]
                ) -> dict[str, Any]:
    clf = OnnxClassifier(args.bundle, threads=args.threads)
    bodies, headers, inputs = make_bodies(clf, payload)
    rows: dict[str, Any] = {"server": {}, "in_process": {}}
    for mode, extra in (("batching", []), ("no batching", ["--max-batch-size", "1"])):
        proc, base = start_server(args.bundle, "--threads", str(args.threads), *extra)
        url = f"{base}v2/models/{args.bundle}/infer"
        requests = http_requests(url, bodies, headers)
        try:
            for c in args.concurrency:
                result = run(closed_loop(url, requests, c, args.seconds))
                rows["server"][f"{mode}/{c}"] = result
                log(f"  {payload} {mode:<11} c={c:<3} {result['throughput']:8.0f} req/s  "
                    f"p50 {result['p50_ms']:6.2f} ms  p99 {result['p99_ms']:6.2f} ms")
            if mode == "batching":
                capacity = rows["server"][f"batching/{max(args.concurrency)}"]["throughput"]
                rows["overload"] = run(open_loop(url, requests, 2 * capacity, args.seconds,
                                                 proc.pid))
                log(f"  {payload} overload: {json.dumps(rows['overload'])}")
        finally:
            proc.terminate()
            rows.setdefault("exit_codes", []).append(proc.wait(timeout=30))
    for c in args.concurrency:
        rows["in_process"][c] = in_process(clf, payload, inputs, c, args.seconds / 2)
    proc, base = start_server(args.bundle, floor=True)
    url = f"{base}v2/models/{args.bundle}/infer"
    try:
        rows["floor"] = {c: run(closed_loop(url, http_requests(url, bodies, headers), c,
                                            args.seconds / 2)) for c in args.concurrency}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return rows


def format_table(payload: str, rows: dict[str, Any], concurrency: list[int]) -> str:
    lines = [f"payload: {payload}",
             "| concurrency = batch | server, batching req/s (p50 / p99 ms) | server, no batching "
             "req/s (p50 / p99 ms) | in-process img/s (p50 ms per batch) | uvicorn floor req/s "
             "| batching / in-process | batching / no batching |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for c in concurrency:
        b, n = rows["server"][f"batching/{c}"], rows["server"][f"no batching/{c}"]
        p = rows["in_process"][c]
        lines.append(f"| {c} | {b['throughput']:,.0f} ({b['p50_ms']:.2f} / {b['p99_ms']:.2f}) | "
                     f"{n['throughput']:,.0f} ({n['p50_ms']:.2f} / {n['p99_ms']:.2f}) | "
                     f"{p['throughput']:,.0f} ({p['p50_ms']:.2f}) | "
                     f"{rows['floor'][c]['throughput']:,.0f} | "
                     f"{b['throughput'] / p['throughput']:.0%} | "
                     f"{b['throughput'] / n['throughput']:.1f}x |")
    o = rows["overload"]
    lines.append(f"overload at 2x capacity ({o['offered_rate']:,.0f} req/s offered, "
                 f"{o['requests']} requests): {o['answered']} answered (p99 "
                 f"{o['answered_p99_ms']:.1f} ms, max {o['answered_max_ms']:.1f} ms), "
                 f"{o['refused_503']} refused 503 (max {o['refused_max_ms']:.1f} ms), "
                 f"{o['other']} other, {o['hung']} hung, {o['over_100ms']} over 100 ms from "
                 f"their arrival; on the wire (request written to answer read) p50 "
                 f"{o['wire_p50_ms']:.1f} ms, p99 {o['wire_p99_ms']:.1f} ms, "
                 f"{o['wire_over_100ms']} over 100 ms; server "
                 f"RSS {o['rss_start_mib']:.0f} -> max {o['rss_max_mib']:.0f} -> "
                 f"{o['rss_end_mib']:.0f} MiB; exit codes after SIGTERM {rows['exit_codes']}")
    return "\n".join(lines)


def targets(payload: str, rows: dict[str, Any], concurrency: list[int]) -> list[str]:
    """The issue's done-when targets, each PASS or MISS, for one payload."""
    top, mid = max(concurrency), 8 if 8 in concurrency else concurrency[len(concurrency) // 2]
    b, n = rows["server"][f"batching/{top}"], rows["server"][f"no batching/{top}"]
    p8 = rows["server"][f"batching/{mid}"]
    o = rows["overload"]
    checks = [
        (f"batching at c={top} >= 50% of in-process batch {top}",
         b["throughput"] >= 0.5 * rows["in_process"][top]["throughput"]),
        (f"batching at c={top} >= 3x no batching", b["throughput"] >= 3 * n["throughput"]),
        (f"p99 <= 3x p50 at c={mid}", p8["p99_ms"] <= 3 * p8["p50_ms"]),
        ("overload: every request 200 or 503 within 100 ms, none hung",
         o["other"] == 0 and o["hung"] == 0 and o["over_100ms"] == 0),
        ("overload: server RSS grows < 50 MiB", o["rss_max_mib"] - o["rss_start_mib"] < 50),
    ]
    return [f"  {'PASS' if ok else 'MISS'} {payload}: {what}" for what, ok in checks]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="Net")
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--payload", nargs="*", default=["tensor", "image"],
                        choices=("tensor", "image"))
    parser.add_argument("--concurrency", type=int, nargs="*", default=[1, 8, 64])
    parser.add_argument("--threads", type=int, default=1,
                        help="onnxruntime threads, server and in-process (default 1)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    results = {}
    for payload in args.payload:
        results[payload] = run_payload(args, payload, lambda s: print(s, file=sys.stderr))
    print(f"{args.bundle} on {os.cpu_count()} CPUs, onnxruntime threads {args.threads}, "
          f"{args.seconds:g} s per measurement")
    for payload, rows in results.items():
        print(format_table(payload, rows, args.concurrency))
    print("targets:")
    for payload, rows in results.items():
        print("\n".join(targets(payload, rows, args.concurrency)))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
