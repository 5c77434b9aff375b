"""Roofline: how many training images a second the CPU could do at its matrix-product peak.

For each chapter-8 architecture, the floating-point operations of one training step per
image (forward and backward, counted by ``torch.utils.flop_counter`` on a batch of 64;
convolutions and linear layers, which are nearly all of them), and this machine's
measured matrix-product peak in float32 and bfloat16 (a large ``torch.mm`` on all the
threads torch uses). ``img/s at peak`` is the upper bound a trainer could approach if
every operation ran at that peak; put a measured img/s beside it to read the fraction
of the peak achieved (``--measured ARCH=IMG_PER_S``, as many as wanted).

The second bound is the per-step floor: the time of a whole training step (zoo's model in
training mode, channels-last, cross-entropy, fused SGD, the chapter-8 kernels where they
apply) on one image, which is nearly all autograd's, the optimizer's and the Python's
fixed cost, set beside the same step on 64 images. ``64 / floor`` is the most images a
second any kernel speed could give at batch 64; ``floor share`` is the part of a 64-image
step the fixed cost takes.

    python bench/bench_roofline.py [--measured NetResDeep=1246 ...]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import zoo
from zoo.trainer.allocator import retain_freed_memory
from zoo.util.cpu import describe, native_bf16


def training_flops(arch: str, batch: int = 64) -> float:
    """Forward plus backward FLOPs of one training step, per image."""
    model = zoo.create_model(arch)
    x = torch.randn(batch, 3, 32, 32)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    return float(counter.get_total_flops()) / batch


def gemm_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a large square matrix product in ``dtype`` (best of three timings)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 * repeats / best


def step_seconds(arch: str, batch: int, steps: int) -> float:
    """The time of one whole training step on ``batch`` images (the median of five rounds of
    ``steps`` steps, after as many to warm up, at most ten)."""
    torch.manual_seed(0)
    model = zoo.create_model(arch).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, fused=True)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    for _ in range(min(steps, 10)):
        step()
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        rounds.append((time.perf_counter() - start) / steps)
    return sorted(rounds)[len(rounds) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measured", action="append", default=[], metavar="ARCH=IMG_PER_S",
                        help="a measured training throughput to set against the peak")
    parser.add_argument("--gemm-size", type=int, default=2048, help="matrix size of the peak")
    parser.add_argument("--floor-steps", type=int, default=60,
                        help="one-image steps a round (64-image rounds: a third of them)")
    args = parser.parse_args()
    measured = {k: float(v) for k, v in (m.split("=", 1) for m in args.measured)}
    fp32 = gemm_peak(torch.float32, args.gemm_size)
    # without bfloat16 in hardware torch's bf16 product is a slow fallback (an AVX2 EPYC: a
    # 2048-size product takes about half a minute): a smaller one measures it as well
    native = native_bf16()
    bf16 = gemm_peak(torch.bfloat16, args.gemm_size if native else min(args.gemm_size, 256),
                     repeats=10 if native else 2)
    print(f"{describe()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"matrix-product peak: float32 {fp32 / 1e9:,.0f} GFLOP/s, bfloat16 {bf16 / 1e9:,.0f} "
          f"GFLOP/s{'' if native else ' (no bfloat16 in hardware: emulated)'}")
    print(f"{'architecture':<14}{'MFLOP/img':>11}{'fp32 peak img/s':>17}"
          f"{'bf16 peak img/s':>17}{'measured':>10}{'GFLOP/s':>9}{'of fp32':>9}{'of bf16':>9}")
    for arch in zoo.list_models(tags=["chapter8"]):
        flops = training_flops(arch)
        row = f"{arch:<14}{flops / 1e6:>11.1f}{fp32 / flops:>17,.0f}{bf16 / flops:>17,.0f}"
        if arch in measured:
            achieved = measured[arch] * flops
            row += (f"{measured[arch]:>10,.0f}{achieved / 1e9:>9.0f}{achieved / fp32:>8.0%}"
                    f"{f'{achieved / bf16:.0%}' if native else '-':>9}")
        print(row)
    retain_freed_memory()  # as the trainer does
    print(f"\n{'architecture':<14}{'floor ms':>10}{'64-image step ms':>18}{'64 / floor':>12}"
          f"{'floor share':>13}")
    for arch in zoo.list_models(tags=["chapter8"]):
        floor = step_seconds(arch, 1, args.floor_steps)
        full = step_seconds(arch, 64, max(1, args.floor_steps // 3))
        print(f"{arch:<14}{floor * 1e3:>10.2f}{full * 1e3:>18.2f}{64 / floor:>12,.0f}"
              f"{floor / full:>12.0%}")


if __name__ == "__main__":
    main()
