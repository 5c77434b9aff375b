"""Cold start of `zoo list` / `zoo show` against `import torch` (and timm, where installed).

Each command runs in a fresh interpreter, several times; the table gives the
median wall time and its ratio to `import torch`. Goal: a cold `zoo list` takes
at most a fifth of the `import torch` time.

    python bench/bench_cli_startup.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import time

PY = sys.executable


def median_seconds(cmd: list[str], repeat: int) -> float:
    subprocess.run(cmd, check=True, capture_output=True)  # warm the file cache once
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    cases = {
        "python -c 'import torch'": [PY, "-c", "import torch"],
        "zoo list": [PY, "-m", "zoo", "list"],
        "zoo show NetResDeep": [PY, "-m", "zoo", "show", "NetResDeep"],
        "zoo list --json": [PY, "-m", "zoo", "list", "--json"],
        "python -c 'pass' (interpreter)": [PY, "-c", "pass"],
    }
    if importlib.util.find_spec("timm") is not None:
        cases["timm.list_models()"] = [PY, "-c", "import timm; timm.list_models()"]
    results = {name: median_seconds(cmd, args.repeat) for name, cmd in cases.items()}
    torch_s = results["python -c 'import torch'"]
    print(f"{'command':34} {'median s':>9} {'x import torch':>15}")
    for name, seconds in results.items():
        print(f"{name:34} {seconds:9.3f} {seconds / torch_s:15.3f}")
    ratio = results["zoo list"] / torch_s
    verdict = "met" if ratio <= 0.2 else "NOT met"
    print(f"\ncold `zoo list` = {ratio:.2f} x `import torch` (goal <= 0.20: {verdict})")


if __name__ == "__main__":
    main()
