"""The chapter-8 kernel's instruction sets: chosen from what ATen found the CPU to have,
lowered by ``ATEN_CPU_CAPABILITY``, and the same numbers from every build."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_fused import _floats, _fused_tanh, _ulp
from zoo_chapter8 import fused, fused_bn, kernels

pytestmark = pytest.mark.skipif(kernels.library() is None, reason=kernels.status())

AVX2 = ["-mavx2", "-mfma"]
AVX512 = [*AVX2, "-mavx512f", "-mavx512vl"]


@pytest.mark.parametrize(("machine", "capability", "flags"), [
    ("x86_64", "AVX512", AVX512), ("x86_64", "AVX2", AVX2), ("AMD64", "AVX2", AVX2),
    ("x86_64", "DEFAULT", []), ("aarch64", "SVE256", []), ("arm64", "DEFAULT", [])])
def test_flags_follow_atens_view_of_the_cpu(monkeypatch: pytest.MonkeyPatch, machine: str,
                                            capability: str, flags: list[str]) -> None:
    monkeypatch.setattr(kernels.platform, "machine", lambda: machine)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert kernels.arch_flags() == flags


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86-64 instruction sets")
def test_aten_cpu_capability_lowers_the_build() -> None:
    """The variable that makes ATen use only AVX2 (or no vector extension) does the same
    for the kernel: how a machine without AVX-512 is imitated on one with it."""
    code = "from zoo_chapter8 import kernels; print(' '.join(kernels.arch_flags()))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}, check=True)
    assert done.stdout.split() == AVX2


# (cin, cout, size): Net's, NetWidth's and NetDepth's layers, and the widest the kernel takes
LAYERS = [(3, 16, 16), (16, 8, 8), (3, 32, 16), (32, 16, 8), (16, 16, 4), (32, 64, 4),
          (64, 64, 4)]


def _numbers() -> list[torch.Tensor]:
    """Every fused kernel's outputs and gradients on fixed inputs."""
    out: list[torch.Tensor] = []
    for layer, (cin, cout, size) in enumerate(LAYERS):
        torch.manual_seed(layer)
        conv = torch.nn.Conv2d(cin, cout, 3, padding=1)
        x = torch.randn(5, cin, size, size).contiguous(memory_format=torch.channels_last)
        x.requires_grad_(cin % 8 == 0)  # a stem's input (data) has no gradient
        for op in (fused.conv_pool_tanh, fused.conv_pool_relu):
            y = op(conv, x, True)
            assert "ConvPool" in type(y.grad_fn).__name__
            inputs = [conv.weight, conv.bias] + ([x] if x.requires_grad else [])
            out += [y.detach(), *torch.autograd.grad(y, inputs, torch.randn_like(y))]
        if cin < 8:  # the stem whose whole output a BatchNorm takes: its weight gradient
            z = fused_bn.stem_conv(conv, x, True)
            assert "StemConv" in type(z.grad_fn).__name__
            out += list(torch.autograd.grad(z, [conv.weight, conv.bias], torch.randn_like(z)))
            bn = torch.nn.BatchNorm2d(cout)  # and with its BatchNorm, pooling and activation
            for stem_bn in (fused_bn.stem_bn_pool_tanh, fused_bn.stem_bn_pool_relu):
                y = stem_bn(conv, bn, x, True)
                assert "StemBNPoolAct" in type(y.grad_fn).__name__
                out += [y.detach(), *torch.autograd.grad(
                    y, [conv.weight, conv.bias, bn.weight, bn.bias], torch.randn_like(y))]
        if cin == cout:  # NetRes's residual form
            y = fused.conv_relu_add_pool(conv, x, True)
            assert "ConvPool" in type(y.grad_fn).__name__
            out += [y.detach(), *torch.autograd.grad(y, [conv.weight, conv.bias, x],
                                                     torch.randn_like(y))]
        h = torch.randn(5, cout, size, size).contiguous(memory_format=torch.channels_last)
        h.requires_grad_()
        for pool in (fused.pool_tanh, fused.pool_relu):
            y = pool(h, True)
            assert "PoolAct" in type(y.grad_fn).__name__
            out += [y.detach(), *torch.autograd.grad(y, [h], torch.randn_like(y))]
        y = fused.pool_tanh(h * 6, True)  # some lanes past tanh's saturation, most not
        out += [y.detach(), *torch.autograd.grad(y, [h], torch.randn_like(y))]
        bn = torch.nn.BatchNorm2d(cout)
        for bn_pool in (fused_bn.bn_pool_tanh, fused_bn.bn_pool_relu):
            y = bn_pool(bn, h, True)
            assert "BNPoolAct" in type(y.grad_fn).__name__
            out += [y.detach(), *torch.autograd.grad(y, [h, bn.weight, bn.bias],
                                                     torch.randn_like(y))]
        out += [bn.running_mean, bn.running_var]
    return out


def _numbers_of_a_build(path: Path, flags: list[str],
                        monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """:func:`_numbers` from the kernels built with ``flags`` into ``path``."""
    lib = kernels.build_variant(path, flags)
    monkeypatch.setattr(kernels, "library", lambda: lib)
    return _numbers()


@pytest.mark.slow
def test_the_avx2_build_computes_the_same_numbers(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The build for a CPU without AVX-512 (forced here) gives every output and gradient
    bit for bit as the build for this CPU: the wider register file changes no operation;
    nor does the AVX2 build's tuning."""
    mine = _numbers()
    here = kernels.arch_flags()
    in_use = Path(kernels.status().split(": ", 1)[1])  # kernels.status() names the library
    lowered = [f for f in here if not f.startswith("-mavx512")]
    assert len(mine) == 80 + 2 * 2 + 2 * 2 * 5 + 7 * (2 * 4 + 2 + 2) + 2 * 4
    built = in_use  # on a CPU without AVX-512 the build in use is the lowered one
    if here != lowered:
        built = tmp_path / "lowered.so"
        theirs = _numbers_of_a_build(built, lowered, monkeypatch)
        assert in_use.read_bytes() != built.read_bytes()  # really another build
        assert len(theirs) == len(mine)
        for a, b in zip(mine, theirs, strict=True):
            assert torch.equal(a, b)
    # AVX2's own tuning (two output vectors per pass, GCC's pressure-aware scheduling) and
    # the layers' weight-gradient sums in a loop of their own left out: the same numbers
    # again, from another library
    untuned = tmp_path / "untuned.so"
    plain = _numbers_of_a_build(untuned, [*lowered, "-DZOO_UNTUNED"], monkeypatch)
    if "-mavx2" in lowered:  # the tuning is AVX2's: other builds are the same without it
        assert untuned.read_bytes() != built.read_bytes()
    for a, b in zip(mine, plain, strict=True):
        assert torch.equal(a, b)


@pytest.mark.slow
@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86-64 instruction sets")
def test_builds_without_fma_or_vector_extensions(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Built without FMA contraction (a CPU without FMA), tanh stays within 7 ulp and exact
    past 7.81; and the portable code paths (SSE2 pairs for the 8-float vectors, the generic
    byte conversions of the pooling positions and the lane test before tanh's saturated tail,
    which AVX2 builds do with their own instructions) give that build's numbers bit for bit:
    what a CPU without AVX2 computes."""
    v = _floats(4e-4, 7.9, step=101)
    v = torch.cat([v, -v])
    with_fma, _ = _fused_tanh(v)
    avx2_build, generic_build = tmp_path / "avx2.so", tmp_path / "generic.so"
    # -O1 (after the build's -O3: the last level counts): the same source paths, chosen by
    # the preprocessor, and the same float arithmetic (GCC reorders none at any level
    # without -ffast-math); -O3's generic build takes GCC 20 s on a 2-core EPYC, -O1 5 s
    quick = "-O1"
    avx2 = _numbers_of_a_build(avx2_build, ["-mavx2", "-ffp-contract=off", quick], monkeypatch)
    got, _ = _fused_tanh(v)  # the library just built, still patched in
    assert int(_ulp(got, v).max()) <= 7
    if "-mfma" in kernels.arch_flags():
        assert not torch.equal(got, with_fma)  # really another build
    big = _floats(7.8119659, 9.2, step=7)
    got, _ = _fused_tanh(torch.cat([big, -big]))
    assert int(_ulp(got, torch.cat([big, -big])).max()) == 0
    generic = _numbers_of_a_build(generic_build, ["-ffp-contract=off", quick], monkeypatch)
    assert avx2_build.read_bytes() != generic_build.read_bytes()
    saturated = [t for t in avx2 if t.dtype == torch.float32 and bool((t.abs() == 1).any())]
    assert saturated  # the fixed inputs reach tanh's exact tail
    assert len(avx2) == len(generic)
    for a, b in zip(avx2, generic, strict=True):
        assert torch.equal(a, b)
