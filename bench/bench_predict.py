"""onnxruntime against torch eager (contiguous and channels_last), batch 1 and 256, all built-ins.

    python bench/bench_predict.py [--archs Net NetRes] [--threads N] [--json OUT]

Each architecture is exported (untrained, default hyperparameters: speed does
not depend on the weights) to a temporary bundle, then timed on the same random
normalized inputs: the median over repeated runs after a warm-up. onnxruntime
runs the session the deployment uses (:func:`zoo.deploy.ort_session`: all graph
optimizations, ``--threads`` intra-op threads); torch runs with the same number
of threads under ``torch.inference_mode()``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import zoo
from zoo.deploy.runtime import ort_session
from zoo.exporter.write import export
from zoo.spec.manifest import INPUT_NAME, ONNX_FILE
from zoo.util.threads import default_threads

RUNS = {1: 300, 256: 12}


def median_seconds(fn: Callable[[], object], runs: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_arch(name: str, root: Path, threads: int,
               batches: tuple[int, ...]) -> list[dict[str, Any]]:
    bundle = export(name, out=root / name).path
    session = ort_session(bundle / ONNX_FILE, threads=threads)
    model = zoo.load(bundle)
    model_cl = zoo.load(bundle).to(memory_format=torch.channels_last)
    shape = zoo.resolve(name).input_shape.as_tuple()
    rows = []
    rng = np.random.default_rng(0)
    for batch in batches:
        x = rng.standard_normal((batch, *shape)).astype(np.float32)
        xt = torch.from_numpy(x)
        xt_cl = xt.contiguous(memory_format=torch.channels_last)
        runs = RUNS.get(batch, 20)
        warmup = max(3, runs // 10)

        def run_ort(x: np.ndarray = x) -> object:
            return session.run(None, {INPUT_NAME: x})

        def run_torch(xt: torch.Tensor = xt) -> object:
            with torch.inference_mode():
                return model(xt)

        def run_torch_cl(xt: torch.Tensor = xt_cl) -> object:
            with torch.inference_mode():
                return model_cl(xt)

        t_ort = median_seconds(run_ort, runs, warmup)
        t_torch = median_seconds(run_torch, runs, warmup)
        t_cl = median_seconds(run_torch_cl, runs, warmup)
        rows.append({
            "architecture": name, "batch": batch,
            "ort_ms": t_ort * 1e3, "torch_ms": t_torch * 1e3, "torch_cl_ms": t_cl * 1e3,
            "ort_img_s": batch / t_ort, "torch_img_s": batch / t_torch,
            "torch_cl_img_s": batch / t_cl,
            "speedup_vs_torch": t_torch / t_ort, "speedup_vs_torch_cl": t_cl / t_ort,
        })
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    header = ("| architecture | batch | ORT ms | torch ms | torch CL ms | ORT img/s | torch img/s "
              "| torch CL img/s | ORT vs torch | ORT vs CL |")
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['architecture']} | {r['batch']} | {r['ort_ms']:.3f} | {r['torch_ms']:.3f} | "
            f"{r['torch_cl_ms']:.3f} | {r['ort_img_s']:,.0f} | {r['torch_img_s']:,.0f} | "
            f"{r['torch_cl_img_s']:,.0f} | {r['speedup_vs_torch']:.1f}x | "
            f"{r['speedup_vs_torch_cl']:.1f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="*", default=None, help="default: every architecture")
    parser.add_argument("--threads", type=int, default=default_threads(),
                        help="threads for both runtimes (default: cores, at most 4)")
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 256])
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = args.archs or zoo.list_models(tags=["chapter8"])
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            rows.extend(bench_arch(name, Path(tmp), args.threads, tuple(args.batches)))
            print(f"  {name} done", file=sys.stderr)
    print(f"torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}, "
          f"{args.threads} threads; median latency per batch")
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
