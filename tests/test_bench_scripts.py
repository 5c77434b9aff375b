"""The benchmarks under bench/ run against today's API (a small run of each kind).

They are not timed here (speed claims are what their own output shows); these runs
catch an API they call that moved or changed, and check the numbers they compute
that do not depend on the machine.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

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
                                    "NetBatchNorm", "NetBatchNorm", "NetDepth", "NetDepth",
                                    "NetDepth", "NetRes", "Net", "NetWidth", "NetDepth",
                                    "NetResDeep"], out


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
