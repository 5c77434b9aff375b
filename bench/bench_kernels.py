"""The chapter-8 CPU kernels layer by layer: the build in use against an untuned build and the
plain PyTorch layers.

Each layer the kernels take in the seven models (``--batch`` images, one thread, forward and
backward through autograd, as in a training step's batch part) runs with three
implementations in turn, ``--turns`` times, and each keeps its median: the plain PyTorch
layers (what trains without the kernels, ``ZOO_FUSED=0``), the kernels built with
``-DZOO_UNTUNED`` (without the AVX2 build's tuning for 16 vector registers: one pass over
all output channels, no pressure-aware scheduling; and with a layer's weight-gradient sums
in its input-gradient scatter's loop; the same numbers bit for bit,
``tests/test_fused_isa.py``), and the build in use. Where the build in use is not an AVX2
one the two builds differ only in the layers' backward pass. Prints milliseconds, the
ratios, and the CPU's features. One thread: the layers' separate sums gain on two threads
(``bench/bench_train_throughput.py``), about nothing on one.

    python bench/bench_kernels.py [--turns 15] [--batch 32]
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from zoo_chapter8 import fused, fused_bn, fused_head, kernels
from zoo_chapter8.kernel_cache import KernelBuildError

from zoo.util.cpu import describe

CL = torch.channels_last
Step = Callable[[], None]


def _conv(cin: int, cout: int, size: int, act: str, batch: int) -> tuple[Step, Step]:
    conv = torch.nn.Conv2d(cin, cout, 3, padding=1).to(memory_format=CL)
    x = torch.randn(batch, cin, size, size).contiguous(memory_format=CL)
    x.requires_grad_(cin % 8 == 0)  # a first layer's input is data
    op = fused.conv_pool_tanh if act == "tanh" else fused.conv_pool_relu
    ref = torch.tanh if act == "tanh" else torch.relu

    def kernel() -> None:
        op(conv, x, True).sum().backward()

    def plain() -> None:
        ref(F.max_pool2d(conv(x), 2)).sum().backward()
    return kernel, plain


def _residual(channels: int, size: int, batch: int) -> tuple[Step, Step]:
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1).to(memory_format=CL)
    x = torch.randn(batch, channels, size, size).contiguous(memory_format=CL).requires_grad_()

    def kernel() -> None:
        fused.conv_relu_add_pool(conv, x, True).sum().backward()

    def plain() -> None:
        F.max_pool2d(torch.relu(conv(x)) + x, 2).sum().backward()
    return kernel, plain


def _batchnorm(channels: int, size: int, batch: int) -> tuple[Step, Step]:
    bn = torch.nn.BatchNorm2d(channels)
    z = torch.randn(batch, channels, size, size).contiguous(memory_format=CL).requires_grad_()

    def kernel() -> None:
        fused_bn.bn_pool_tanh(bn, z, True).sum().backward()

    def plain() -> None:
        torch.tanh(F.max_pool2d(bn(z), 2)).sum().backward()
    return kernel, plain


def _stem(cin: int, cout: int, size: int, batch: int) -> tuple[Step, Step]:
    """A first layer whose whole output a BatchNorm takes (NetBatchNorm's): PyTorch's
    forward either way, the weight gradient from the kernel or from PyTorch."""
    conv = torch.nn.Conv2d(cin, cout, 3, padding=1).to(memory_format=CL)
    x = torch.randn(batch, cin, size, size).contiguous(memory_format=CL)

    def kernel() -> None:
        fused_bn.stem_conv(conv, x, True).sum().backward()

    def plain() -> None:
        conv(x).sum().backward()
    return kernel, plain


def _stem_bn(cin: int, cout: int, size: int, batch: int) -> tuple[Step, Step]:
    """NetBatchNorm's first layer whole: the convolution, its BatchNorm, pooling and tanh in
    one Function (``fused_bn.stem_bn_pool_tanh``), against the plain layers."""
    conv = torch.nn.Conv2d(cin, cout, 3, padding=1).to(memory_format=CL)
    bn = torch.nn.BatchNorm2d(cout)
    x = torch.randn(batch, cin, size, size).contiguous(memory_format=CL)

    def kernel() -> None:
        fused_bn.stem_bn_pool_tanh(conv, bn, x, True).sum().backward()

    def plain() -> None:
        torch.tanh(F.max_pool2d(bn(conv(x)), 2)).sum().backward()
    return kernel, plain


def _head(channels: int, size: int, act: str, batch: int) -> tuple[Step, Step]:
    """A model's linear head on its last map: flatten, 32 hidden units, the activation, and
    two classes (``fused_head``)."""
    fc1 = torch.nn.Linear(channels * size * size, 32)
    fc2 = torch.nn.Linear(32, 2)
    x = torch.randn(batch, channels, size, size).contiguous(memory_format=CL).requires_grad_()
    code = fused_head.TANH if act == "tanh" else fused_head.RELU
    ref = torch.tanh if act == "tanh" else torch.relu

    def kernel() -> None:
        fused_head.linear_head(fc1, fc2, x, code, True).sum().backward()

    def plain() -> None:
        fc2(ref(fc1(torch.flatten(x, 1)))).sum().backward()
    return kernel, plain


def _untuned_library(tmp: Path) -> ctypes.CDLL:
    """The kernels as the build in use, less its tuning (``-DZOO_UNTUNED``)."""
    try:
        return kernels.build_variant(tmp / "untuned.so", [*kernels.arch_flags(), "-DZOO_UNTUNED"])
    except KernelBuildError as exc:
        raise SystemExit(f"the kernels cannot be built here: {exc}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=15, help="turns of the three, median kept")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per turn")
    parser.add_argument("--batch", type=int, default=32, help="images per step")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    tuned = kernels.library()
    if tuned is None:
        raise SystemExit(kernels.status())
    b = args.batch
    layers = {
        "Net 3->16 @32 tanh": _conv(3, 16, 32, "tanh", b),
        "Net 16->8 @16 tanh": _conv(16, 8, 16, "tanh", b),
        "NetWidth 3->32 @32 tanh": _conv(3, 32, 32, "tanh", b),
        "NetWidth 32->16 @16 tanh": _conv(32, 16, 16, "tanh", b),
        "NetBatchNorm 3->32 @32 (whole)": _stem(3, 32, 32, b),
        "NetBatchNorm BN 32 @32 tanh": _batchnorm(32, 32, b),
        "NetBatchNorm BN 16 @16 tanh": _batchnorm(16, 16, b),
        "NetBatchNorm 3->32 @32 + BN tanh": _stem_bn(3, 32, 32, b),
        "NetDepth 3->32 @32 relu": _conv(3, 32, 32, "relu", b),
        "NetDepth 32->16 @16 relu": _conv(32, 16, 16, "relu", b),
        "NetDepth 16->16 @8 relu": _conv(16, 16, 8, "relu", b),
        "NetRes 16->16 @8 relu + input": _residual(16, 8, b),
        "Net head 8x8x8 tanh": _head(8, 8, "tanh", b),
        "NetWidth head 16x8x8 tanh": _head(16, 8, "tanh", b),
        "NetDepth head 16x4x4 relu": _head(16, 4, "relu", b),
        "NetResDeep head 32x8x8 relu": _head(32, 8, "relu", b),
    }
    print(f"{describe()}; torch {torch.__version__}, one thread, batch {b}, forward and "
          f"backward, median of {args.turns} turns of {args.steps} steps; {kernels.status()}")
    with tempfile.TemporaryDirectory() as tmp:
        untuned = _untuned_library(Path(tmp))
        libraries: dict[str, ctypes.CDLL | None] = {"plain": None, "untuned": untuned,
                                                   "tuned": tuned}
        print(f"{'layer':32s} {'plain ms':>9s} {'untuned ms':>11s} {'this build ms':>14s} "
              f"{'plain/this':>11s} {'untuned/this':>13s}")
        original = kernels.library
        try:
            for label, (kernel, plain) in layers.items():
                times: dict[str, list[float]] = {name: [] for name in libraries}
                for turn in range(args.turns):
                    order = list(libraries) if turn % 2 else list(libraries)[::-1]
                    for name in order:
                        lib = libraries[name]
                        kernels.library = lambda lib=lib: lib  # type: ignore[misc]
                        step = plain if lib is None else kernel
                        for _ in range(3):
                            step()
                        start = time.perf_counter()
                        for _ in range(args.steps):
                            step()
                        times[name].append((time.perf_counter() - start) / args.steps)
                ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
                print(f"{label:32s} {ms['plain']:9.3f} {ms['untuned']:11.3f} {ms['tuned']:14.3f} "
                      f"{ms['plain'] / ms['tuned']:10.2f}x {ms['untuned'] / ms['tuned']:12.2f}x")
        finally:
            kernels.library = original  # type: ignore[assignment]


if __name__ == "__main__":
    main()
