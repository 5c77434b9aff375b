"""The benchmarks under bench/ run against today's API (a small run of each kind).

They are not timed here (speed claims are what their own output shows); these runs
catch an API they call that moved or changed, and check the numbers they compute
that do not depend on the machine.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, timeout: float = 240) -> str:
    # ZOO_CACHE_DIR stays the session's (conftest): the kernels are built once, not per script
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_roofline_counts_a_training_step_and_sets_a_measurement_against_the_peak() -> None:
    out = _run("bench/bench_roofline.py", "--gemm-size", "128",
               "--measured", "Net=1000", "--floor-steps", "1")
    # Net per image: forward 1.507 MFLOP (convolutions 0.885 + 0.590, linear layers 0.033),
    # backward the weight gradient of conv1 (its input needs none) and both gradients of
    # the others: 3.638 MFLOP in all
    net = re.search(r"^Net +([\d.]+) +[\d,]+ +[\d,]+ +1,000 +(\d+) ", out, re.M)
    assert net is not None, out
    assert net.group(1) == "3.6"
    assert int(net.group(2)) == 4  # 1,000 img/s x 3.6 MFLOP = 3.6 GFLOP/s, rounded
    deep = re.search(r"^NetResDeep +([\d.]+) ", out, re.M)
    assert deep is not None and 140 < float(deep.group(1)) < 150, out
    assert re.search(r"float32 [\d,]+ GFLOP/s, bfloat16 [\d,]+ GFLOP/s", out)
    # the per-step floor: a one-image step, a 64-image one, 64 over the first, its share
    floors = re.findall(r"^(Net\w*) +([\d.]+) +([\d.]+) +[\d,]+ +(\d+)%$", out, re.M)
    assert [f[0] for f in floors] == sorted(f[0] for f in floors) and len(floors) == 7, out
    for _, one, full, share in floors:  # times under the suite's load: no order between them
        assert float(one) > 0 and float(full) > 0
        # the share comes from the times before they are rounded to 0.01 ms, which moves it
        # by more than a point where a load spike makes the one-image step the longer
        low = 100 * (float(one) - 0.005) / (float(full) + 0.005)
        high = 100 * (float(one) + 0.005) / (float(full) - 0.005)
        assert low - 1 <= int(share) <= high + 1, (one, full, share)
    assert "features:" in out


def test_train_throughput_compares_the_trainer_with_the_book_and_an_expert_loop() -> None:
    out = _run("bench/bench_train_throughput.py", "--arch", "Net", "--size", "400",
               "--rounds", "1", "--expert", "channels-last")
    assert "features:" in out
    assert re.search(r"^ +Net \(img/s\): book code [\d,]+, book loop [\d,]+, channels-last "
                     r"[\d,]+, trainer amp=off [\d,]+", out, re.M), out
    # the table's row: book code, book loop, the expert loop, the trainer(s), parts, ratios of
    # the best rounds, then the rounds' own (one round: the same ratios)
    row = re.search(r"^Net( +[\d,]+){4,5} +(\d+|-) +([\d.]+)x +([\d.]+)x +([\d.]+)x +([\d.]+)x$",
                    out, re.M)
    assert row is not None, out
    assert row.group(3, 4) == row.group(5, 6)


def test_kernels_bench_times_every_fused_layer_three_ways() -> None:
    out = _run("bench/bench_kernels.py", "--turns", "1", "--steps", "1", "--batch",
               "2")
    assert "features:" in out
    rows = re.findall(r"^(Net\w*) .*?(( +[\d.]+){3})( +[\d.]+x){2}$", out, re.M)
    assert [r[0] for r in rows] == ["Net", "Net", "NetWidth", "NetWidth", "NetBatchNorm",
                                    "NetBatchNorm", "NetBatchNorm", "NetBatchNorm", "NetDepth",
                                    "NetDepth", "NetDepth", "NetRes", "Net", "NetWidth",
                                    "NetDepth", "NetResDeep"], out


def test_every_benchmark_explains_itself() -> None:
    scripts = sorted(p.name for p in (ROOT / "bench").glob("bench_*.py"))
    assert len(scripts) >= 9
    # one interpreter for all of them (torch imported once): each --help runs as __main__
    probe = (
        "import contextlib, io, runpy, sys\n"
        "sys.path.insert(0, 'bench')\n"
        f"for script in {scripts!r}:\n"
        "    sys.argv = [script, '--help']\n"
        "    out = io.StringIO()\n"
        "    with contextlib.redirect_stdout(out):\n"
        "        try:\n"
        "            runpy.run_path('bench/' + script, run_name='__main__')\n"
        "        except SystemExit as done:\n"
        "            assert done.code in (0, None), (script, done.code)\n"
        "    assert out.getvalue().startswith('usage:'), script\n"
        "    print(script, 'ok')\n")
    out = _run("-c", probe, timeout=120)
    assert out.split() == [word for script in scripts for word in (script, "ok")]


def _bench_module(name: str) -> ModuleType:
    """A module of bench/, imported as the scripts import one another."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "bench"))


def test_serve_bench_prints_each_target_beside_what_the_stack_allows() -> None:
    bench_serve = _bench_module("bench_serve")

    def loop(rate: float, p50: float = 1.0, p99: float = 2.0) -> dict[str, float]:
        return {"throughput": rate, "p50_ms": p50, "p99_ms": p99}

    overload = {"other": 0, "hung": 0, "over_100ms": 3, "rss_start_mib": 100.0,
                "rss_max_mib": 120.0}
    rows = {"in_process": {"8": loop(30_000), "64": loop(40_000)},
            "floor": {"1/8": loop(15_000), "1/64": loop(20_000), "2/8": loop(30_000),
                      "2/64": loop(40_000)},
            "server": {"1/batching/8": loop(5_000, 1.0, 2.5),
                       "1/batching/64": loop(9_000),
                       "1/no batching/8": loop(2_000), "1/no batching/64": loop(2_500),
                       "2/batching/8": loop(8_000, 1.0, 3.5),
                       "2/batching/64": loop(21_000),
                       "2/no batching/8": loop(7_000), "2/no batching/64": loop(10_000)},
            "starlette": {"1/64": loop(8_000), "2/64": loop(12_000)},
            "overload": {"1": overload, "2": {**overload, "over_100ms": 0}}}
    args = argparse.Namespace(concurrency=[1, 8, 64], workers=[1, 2], cpus=2)
    # the framework's floor is the raw floor's app behind a Starlette route
    assert "Starlette(routes=" in bench_serve.FLOOR_APPS["starlette"]
    assert "Starlette" not in bench_serve.FLOOR_APPS["uvicorn"]
    # one worker: the floor is the ceiling; two on two cores: the floor's cost and the
    # model's (1 / 40,000 s an image, two cores) add up: 1 / (1/40,000 + 1/80,000)
    assert bench_serve.ceiling(rows, 1, 64, 2) == 20_000
    assert abs(bench_serve.ceiling(rows, 2, 64, 2) - 80_000 / 3) < 1e-6
    assert bench_serve.targets("tensor", rows, args) == [
        "  MISS tensor: 1 worker(s), batching at c=64 >= 50% of in-process batch 64 "
        "(here 22%; ceiling 50%; a do-nothing Starlette route 20%)",
        "  PASS tensor: 1 worker(s), batching at c=64 >= 3x no batching (here 3.6x; "
        "ceiling 8.0x)",
        "  PASS tensor: 1 worker(s), p99 <= 3x p50 at c=8",
        "  PASS tensor: 2 worker(s), batching at c=64 >= 50% of in-process batch 64 "
        "(here 52%; ceiling 67%; a do-nothing Starlette route 30%)",
        "  MISS tensor: 2 worker(s), batching at c=64 >= 3x no batching (here 2.1x; "
        "ceiling 2.7x)",
        "  MISS tensor: 2 worker(s), p99 <= 3x p50 at c=8",
        "  MISS tensor: 1 worker(s), overload: every request 200 or 503 within 100 ms, "
        "none hung",
        "  PASS tensor: 1 worker(s), overload: server RSS grows < 50 MiB",
        "  PASS tensor: 2 worker(s), overload: every request 200 or 503 within 100 ms, "
        "none hung",
        "  PASS tensor: 2 worker(s), overload: server RSS grows < 50 MiB"]


WRK_REPORT = """Running 3s test @ http://127.0.0.1:8000/v2/models/Net/infer
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    35.50ms    4.91ms  60.39ms   93.91%
    Req/Sec     1.23k   131.59     1.41k    80.00%
  Latency Distribution
     50%   35.50ms
     75%   37.63ms
     90%   40.43ms
     99%   48.39ms
  4000 requests in 3.00s, 619.53KB read
  Socket errors: connect 0, read 0, write 0, timeout 2
  Non-2xx or 3xx responses: 1000
Requests/sec:   1333.33
Transfer/sec:    206.51KB
"""


def test_serve_bench_counts_only_answers_as_throughput() -> None:
    serve_load = _bench_module("serve_load")
    # a 503 from a full queue is answered at once: it is a failure, not throughput
    result = serve_load.wrk_result(WRK_REPORT)
    assert abs(result["throughput"] - 1000.0) < 0.01  # 1,333.33 a second, a quarter refused
    assert result["failures"] == 1002 and result["requests"] == 4000
    assert result["p50_ms"] == 35.5 and result["p99_ms"] == 48.39
    clean = serve_load.wrk_result(WRK_REPORT.replace(
        "  Socket errors: connect 0, read 0, write 0, timeout 2\n", "").replace(
        "  Non-2xx or 3xx responses: 1000\n", ""))
    assert clean["throughput"] == 1333.33 and clean["failures"] == 0
