"""Load generators for ``bench/bench_serve.py``: wrk where installed, and asyncio.

* closed loop (``concurrency`` connections, each sending its next request when
  answered): `wrk <https://github.com/wg/wrk>`_ (``apt-get install wrk``), a C client
  that takes a fraction of the CPU the server shares with it on loopback; else a
  minimal asyncio client on uvloop;
* open loop (requests at a fixed rate whatever the answers, for the overload run): the
  asyncio client, requests evenly spaced over a pool of connections, each request's
  time counted from its scheduled start (so time spent waiting for the client counts
  against the server: a conservative figure). No C tool on Debian does this: wrk2 is
  not packaged, and h2load's ``--rps`` starts every connection's requests together,
  so 512 connections send in synchronized bursts of 512.

Each returns a dict: ``throughput`` (answered requests, status 200, a second: a 503
that a full queue answers at once is not throughput), ``p50_ms``, ``p99_ms`` (over every
request, refusals included), ``requests``, ``failures`` (the others) for the closed loop;
counts and latencies by status for the open loop.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

#: Connections of the open-loop (overload) run.
OPEN_LOOP_CONNECTIONS = 512
#: A request unanswered this long counts as hung.
HUNG_S = 5.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def rss_mib(pids: list[int]) -> float:
    """The resident memory of these processes together (MiB)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a server's workers)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        todo += [int(c) for c in children]
    return out


class RssSampler:
    """Samples the resident memory of a process tree every ``interval_s`` in a thread."""

    def __init__(self, pid: int, interval_s: float = 0.2) -> None:
        self.pid, self.interval_s = pid, interval_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.samples.append(rss_mib(process_tree(self.pid)))
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(rss_mib(process_tree(self.pid)))


# -- wrk ----------------------------------------------------------------------------------


def _lua(body_file: Path, headers: dict[str, str]) -> str:
    lines = ['wrk.method = "POST"', f'local f = io.open("{body_file.as_posix()}", "rb")',
             "wrk.body = f:read(\"*all\")", "f:close()"]
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    return "\n".join(lines) + "\n"


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def wrk_closed_loop(url: str, body: bytes, headers: dict[str, str], concurrency: int,
                    seconds: float, warm_s: float = 1.0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        body_file, script = Path(tmp) / "body", Path(tmp) / "post.lua"
        body_file.write_bytes(body)
        script.write_text(_lua(body_file, headers))
        base = ["wrk", "-t1", f"-c{concurrency}", "--latency", "-s", str(script)]
        subprocess.run([*base, f"-d{max(1, round(warm_s))}s", url], capture_output=True,
                       check=True, timeout=60)
        out = subprocess.run([*base, f"-d{max(1, round(seconds))}s", url], capture_output=True,
                             text=True, check=True, timeout=seconds + 60).stdout
    return wrk_result(out)


def wrk_result(out: str) -> dict[str, Any]:
    """The closed loop's result from wrk's report (``--latency``)."""
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.MULTILINE))
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       out)
    refused = int(non2xx.group(1)) if non2xx else 0  # answered, but not with a 200
    failures = refused + (sum(int(g) for g in errors.groups()) if errors else 0)
    answered = rate * (total - refused) / total if total else 0.0
    return {"throughput": answered, "p50_ms": _ms(latency["50"]),
            "p99_ms": _ms(latency["99"]), "requests": total, "failures": failures,
            "client": "wrk"}


def _open_loop_result(times: list[tuple[int, float]], *, offered: float, rate: float,
                      hung: int, rss: list[float], connections: int,
                      client: str, wire: list[float]) -> dict[str, Any]:
    ok = [s for st, s in times if st == 200]
    refused = [s for st, s in times if st in (429, 503)]
    return {"target_rate": rate, "offered_rate": offered, "requests": len(times),
            "answered": len(ok), "refused": len(refused),
            "other": sum(st not in (200, 429, 503) for st, _ in times), "hung": hung,
            "connections": connections,
            "answered_p50_ms": percentile(ok, 0.5) * 1e3,
            "answered_p99_ms": percentile(ok, 0.99) * 1e3,
            "answered_max_ms": max(ok, default=float("nan")) * 1e3,
            "refused_p99_ms": percentile(refused, 0.99) * 1e3,
            "refused_max_ms": max(refused, default=0.0) * 1e3,
            "over_100ms": sum(s > 0.1 for _, s in times),
            "wire_p50_ms": percentile(wire, 0.5) * 1e3, "wire_p99_ms": percentile(wire, 0.99) * 1e3,
            "wire_over_100ms": sum(s > 0.1 for s in wire),
            "rss_start_mib": rss[0], "rss_max_mib": max(rss), "rss_end_mib": rss[-1],
            "client": client}


# -- the asyncio client ---------------------------------------------------------------------


class Connection:
    """One keep-alive HTTP/1.1 connection sending prepared requests."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, url: str) -> Connection:
        parts = urlsplit(url)
        return cls(*await asyncio.open_connection(parts.hostname, parts.port))

    async def request(self, raw: bytes) -> int:
        self.writer.write(raw)
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        length = re.search(r"(?im)^content-length:\s*(\d+)", head)
        await self.reader.readexactly(int(length.group(1)) if length else 0)
        return int(head.split()[1])

    def close(self) -> None:
        self.writer.close()


def http_request(url: str, body: bytes, headers: dict[str, str]) -> bytes:
    parts = urlsplit(url)
    lines = [f"POST {parts.path} HTTP/1.1", f"Host: {parts.netloc}",
             f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _closed_loop(url: str, raw: bytes, concurrency: int, seconds: float
                       ) -> dict[str, Any]:
    latencies: list[float] = []
    failures = 0
    connections = [await Connection.open(url) for _ in range(concurrency)]

    async def client(connection: Connection, until: float, record: bool) -> None:
        nonlocal failures
        while time.perf_counter() < until:
            start = time.perf_counter()
            status = await connection.request(raw)
            if record:
                latencies.append(time.perf_counter() - start)
                failures += status != 200

    warm = time.perf_counter() + min(1.0, seconds / 3)
    await asyncio.gather(*(client(c, warm, False) for c in connections))
    start = time.perf_counter()
    await asyncio.gather(*(client(c, start + seconds, True) for c in connections))
    elapsed = time.perf_counter() - start
    for connection in connections:
        connection.close()
    return {"throughput": (len(latencies) - failures) / elapsed,
            "p50_ms": percentile(latencies, 0.5) * 1e3,
            "p99_ms": percentile(latencies, 0.99) * 1e3, "requests": len(latencies),
            "failures": failures, "client": "asyncio"}


async def _open_loop(url: str, raw: bytes, rate: float, seconds: float, server_pid: int
                     ) -> dict[str, Any]:
    times: list[tuple[int, float]] = []
    wire: list[float] = []  # from writing the request to reading the answer: the server's part
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(OPEN_LOOP_CONNECTIONS):
        idle.put_nowait(await Connection.open(url))

    async def one(scheduled: float) -> None:
        connection = await idle.get()
        sent = time.perf_counter()
        try:
            status = await asyncio.wait_for(connection.request(raw), HUNG_S)
            idle.put_nowait(connection)
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            status = -1
            connection.close()
            idle.put_nowait(await Connection.open(url))
        times.append((status, time.perf_counter() - scheduled))  # from its scheduled start
        wire.append(time.perf_counter() - sent)

    tasks = []
    with RssSampler(server_pid) as rss:
        begin = time.perf_counter()
        for i in range(int(rate * seconds)):
            scheduled = begin + i / rate
            if (delay := scheduled - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(scheduled)))
        offered = len(tasks) / (time.perf_counter() - begin)
        await asyncio.gather(*tasks)
    while not idle.empty():
        idle.get_nowait().close()
    return _open_loop_result(times, offered=offered, rate=rate,
                             hung=sum(st == -1 for st, _ in times), rss=rss.samples,
                             connections=OPEN_LOOP_CONNECTIONS, client="asyncio", wire=wire)


def _run(coroutine: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def closed_loop(url: str, body: bytes, headers: dict[str, str], concurrency: int,
                seconds: float, client: str) -> dict[str, Any]:
    if client == "wrk":
        return wrk_closed_loop(url, body, headers, concurrency, seconds)
    return _run(_closed_loop(url, http_request(url, body, headers), concurrency,  # type: ignore[no-any-return]
                             seconds))


def open_loop(url: str, body: bytes, headers: dict[str, str], rate: float, seconds: float,
              server_pid: int) -> dict[str, Any]:
    return _run(_open_loop(url, http_request(url, body, headers), rate,  # type: ignore[no-any-return]
                           seconds, server_pid))
