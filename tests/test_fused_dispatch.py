"""The fused kernels are used only on what C can read, and stay out of PyTorch's machinery.

Each case of issue 20: the layer either runs the kernel and computes what the plain
layers compute, or runs the plain layers (which compute, or raise, exactly what
PyTorch does).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import forward_ad
from torch.utils._python_dispatch import TorchDispatchMode
from zoo_chapter8 import fused, kernels

pytestmark = pytest.mark.skipif(kernels.library() is None, reason=kernels.status())

CL = torch.channels_last


def _cl(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=CL)


def _plain(conv: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(F.max_pool2d(conv(x), 2))


def _kernel_ran(out: torch.Tensor) -> bool:
    """Whether ``out`` came from a fused kernel (the convolution's, or the pooling's alone
    where ``out`` is a pooling's)."""
    return "ConvPool" in type(out.grad_fn).__name__ or "PoolAct" in type(out.grad_fn).__name__


def _conv_fused(out: torch.Tensor) -> bool:
    """Whether ``out`` came from the fused convolution (not from the plain convolution, whose
    output may still be pooled by the pooling kernel)."""
    return "ConvPool" in type(out.grad_fn).__name__


@pytest.fixture
def conv() -> torch.nn.Conv2d:
    torch.manual_seed(0)
    return torch.nn.Conv2d(16, 8, 3, padding=1).to(memory_format=CL)


@pytest.fixture
def x() -> torch.Tensor:
    torch.manual_seed(1)
    return _cl(torch.randn(2, 16, 8, 8)).requires_grad_()


def test_the_fixture_case_runs_the_kernel(conv: torch.nn.Conv2d, x: torch.Tensor) -> None:
    out = fused.conv_pool_tanh(conv, x, True)
    assert _kernel_ran(out)
    torch.testing.assert_close(out, _plain(conv, x), rtol=0, atol=2e-6)


def test_weight_swapped_for_another_shape_runs_the_plain_layer(
        conv: torch.nn.Conv2d, x: torch.Tensor) -> None:
    """kernel_size still says 3×3; the 1×1 weight is what the convolution really uses."""
    conv.weight = torch.nn.Parameter(torch.randn(8, 16, 1, 1))
    assert conv.kernel_size == (3, 3)
    out = fused.conv_pool_tanh(conv, x, True)
    assert not _conv_fused(out) and out.shape == (2, 8, 5, 5)
    torch.testing.assert_close(out, _plain(conv, x), rtol=0, atol=5e-7)  # tanh: a few ulp


@pytest.mark.parametrize(("bias", "message"), [
    (torch.randn(4), "expected bias to be 1-dimensional with 8 elements"),
    (torch.randn(8, dtype=torch.float64), "bias type"),
    (torch.randn(2, 8), "expected bias to be 1-dimensional"),
])
def test_a_bias_the_kernel_cannot_read_gets_pytorchs_error(
        conv: torch.nn.Conv2d, x: torch.Tensor, bias: torch.Tensor, message: str) -> None:
    conv.bias = torch.nn.Parameter(bias)
    with pytest.raises(RuntimeError, match=message):
        fused.conv_pool_tanh(conv, x, True)


def test_strided_weight_bias_and_input_are_read_by_their_strides(
        conv: torch.nn.Conv2d, x: torch.Tensor) -> None:
    """A transposed weight and a bias that is every other element of a larger tensor."""
    w = torch.randn(16, 8, 3, 3).transpose(0, 1)
    b = torch.randn(16)[::2]
    assert not w.is_contiguous() and b.stride() == (2,)
    conv.weight, conv.bias = torch.nn.Parameter(w), torch.nn.Parameter(b)
    assert not conv.weight.is_contiguous() and conv.bias.stride() == (2,)
    out = fused.conv_pool_tanh(conv, x, True)
    assert _kernel_ran(out)
    torch.testing.assert_close(out, _plain(conv, x), rtol=0, atol=2e-6)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, conv.weight, conv.bias], g)
    want = torch.autograd.grad(_plain(conv, x), [x, conv.weight, conv.bias], g)
    for a, b_ in zip(got, want, strict=True):
        torch.testing.assert_close(a, b_, rtol=1e-5, atol=1e-5)


def test_a_lazily_negated_input_runs_the_plain_layers(conv: torch.nn.Conv2d) -> None:
    base = _cl(torch.randn(2, 16, 8, 8))
    neg = torch._neg_view(base).requires_grad_()
    assert neg.is_neg()
    out = fused.conv_pool_tanh(conv, neg, True)
    assert not _conv_fused(out)
    torch.testing.assert_close(out, _plain(conv, -base))
    assert not _kernel_ran(fused.pool_tanh(torch._neg_view(base).requires_grad_(), True))


@pytest.fixture
def default_dtype_float64() -> Iterator[None]:
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def test_default_dtype_float64_leaves_a_float32_model_exact(
        conv: torch.nn.Conv2d, x: torch.Tensor, default_dtype_float64: None) -> None:
    want = _plain(conv, x)
    g = torch.randn(want.shape, dtype=torch.float32)
    want_grads = torch.autograd.grad(want, [x, conv.weight, conv.bias], g)
    out = fused.conv_pool_tanh(conv, x, True)
    assert _kernel_ran(out) and out.dtype == torch.float32
    torch.testing.assert_close(out, want, rtol=0, atol=2e-6)
    for a, b in zip(torch.autograd.grad(out, [x, conv.weight, conv.bias], g), want_grads,
                    strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    pooled = fused.pool_tanh(x, True)
    assert _kernel_ran(pooled) and pooled.dtype == torch.float32
    (gx,) = torch.autograd.grad(pooled.sum(), x)
    assert gx.dtype == torch.float32


def test_default_device_meta_allocates_on_the_inputs_device(conv: torch.nn.Conv2d,
                                                            x: torch.Tensor) -> None:
    want = _plain(conv, x)
    g = torch.randn_like(want)
    want_grads = torch.autograd.grad(want, [x, conv.weight], g)
    torch.set_default_device("meta")
    try:
        out = fused.conv_pool_tanh(conv, x, True)
        grads = torch.autograd.grad(out, [x, conv.weight], g)
        pooled = fused.pool_relu(x, True)
        (gp,) = torch.autograd.grad(pooled, x, torch.ones_like(pooled, device="cpu"))
    finally:
        torch.set_default_device(None)
    assert _kernel_ran(out) and out.device.type == "cpu" and _kernel_ran(pooled)
    torch.testing.assert_close(out, want, rtol=0, atol=2e-6)
    for a, b in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert torch.equal(gp, torch.autograd.grad(F.relu(F.max_pool2d(x, 2)).sum(), x)[0])


def test_a_subclass_with_its_own_forward_is_called(x: torch.Tensor) -> None:
    class Shifted(torch.nn.Conv2d):
        def forward(self, input: torch.Tensor) -> torch.Tensor:
            return super().forward(input) + 1.0

    torch.manual_seed(0)
    conv = Shifted(16, 8, 3, padding=1).to(memory_format=CL)
    out = fused.conv_pool_tanh(conv, x, True)
    assert not _conv_fused(out)
    torch.testing.assert_close(out, _plain(conv, x), rtol=0, atol=5e-7)
    plain = torch.nn.Conv2d(16, 8, 3, padding=1)
    plain.load_state_dict(conv.state_dict())
    assert not torch.allclose(out, _plain(plain, x))  # the shift is really there


def test_an_instance_forward_is_called(conv: torch.nn.Conv2d, x: torch.Tensor) -> None:
    calls: list[int] = []
    original = conv.forward

    def counted(input: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return original(input)

    conv.forward = counted  # type: ignore[method-assign]
    out = fused.conv_pool_tanh(conv, x, True)
    assert not _conv_fused(out) and calls == [1]


HookSetup = Callable[[torch.nn.Conv2d, list[str]], torch.utils.hooks.RemovableHandle]
HOOKS: dict[str, HookSetup] = {
    "forward": lambda m, seen: m.register_forward_hook(lambda *_: seen.append("forward")),
    "forward_pre": lambda m, seen: m.register_forward_pre_hook(
        lambda *_: seen.append("forward_pre")),
    "full_backward": lambda m, seen: m.register_full_backward_hook(
        lambda *_: seen.append("full_backward")),
    "full_backward_pre": lambda m, seen: m.register_full_backward_pre_hook(
        lambda *_: seen.append("full_backward_pre")),
    "global_forward": lambda _m, seen: torch.nn.modules.module.register_module_forward_hook(
        lambda *_: seen.append("global_forward")),
    "global_full_backward": lambda _m, seen:
        torch.nn.modules.module.register_module_full_backward_hook(
            lambda *_: seen.append("global_full_backward")),
}


@pytest.mark.parametrize("kind", sorted(HOOKS))
def test_hooks_fire(conv: torch.nn.Conv2d, x: torch.Tensor, kind: str) -> None:
    seen: list[str] = []
    handle = HOOKS[kind](conv, seen)
    try:
        out = fused.conv_pool_tanh(conv, x, True)
        torch.autograd.grad(out.sum(), [x, conv.weight])
    finally:
        handle.remove()
    assert not _conv_fused(out)
    assert kind in seen


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_forward_mode_ad_gets_the_plain_layers(conv: torch.nn.Conv2d, x: torch.Tensor) -> None:
    tangent = torch.randn_like(x)
    results = []
    for layer in (lambda t: fused.conv_pool_tanh(conv, t, True), lambda t: _plain(conv, t)):
        with forward_ad.dual_level():
            out = layer(forward_ad.make_dual(x, tangent))
            primal, jvp = forward_ad.unpack_dual(out)
            assert jvp is not None
            results.append((primal.detach().clone(), jvp.clone()))
    torch.testing.assert_close(results[0], results[1])
    with forward_ad.dual_level():
        pooled = fused.pool_tanh(forward_ad.make_dual(x, tangent), True)
        assert forward_ad.unpack_dual(pooled).tangent is not None


def test_vmap_gets_the_plain_layers(conv: torch.nn.Conv2d) -> None:
    xs = _cl(torch.randn(6, 16, 8, 8)).view(3, 2, 16, 8, 8)
    got = torch.func.vmap(lambda xi: fused.conv_pool_tanh(conv, xi, True))(xs)
    want = torch.stack([_plain(conv, xi) for xi in xs])
    torch.testing.assert_close(got, want)
    pooled = torch.func.vmap(lambda xi: fused.pool_relu(xi, True))(xs.requires_grad_())
    assert torch.equal(pooled, torch.relu(F.max_pool2d(xs.flatten(0, 1), 2)).view_as(pooled))


def test_cpu_autocast_gives_what_the_plain_layers_give(conv: torch.nn.Conv2d,
                                                      x: torch.Tensor) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fused.conv_pool_tanh(conv, x, True)
        want = _plain(conv, x)
        pooled = fused.pool_tanh(x, True)
    assert out.dtype == want.dtype == torch.bfloat16 and not _kernel_ran(out)
    assert torch.equal(out, want)
    assert torch.equal(pooled, torch.tanh(F.max_pool2d(x, 2)))


class _SeenOps(TorchDispatchMode):
    """Records the name of every ATen operator that runs (as a profiler's mode would)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        self.seen.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def test_a_dispatch_mode_sees_the_plain_layers(conv: torch.nn.Conv2d, x: torch.Tensor) -> None:
    with _SeenOps() as mode:
        out = fused.conv_pool_tanh(conv, x, True)
    assert not _kernel_ran(out)
    assert {"convolution", "max_pool2d_with_indices", "tanh"} <= set(mode.seen)


def test_kernels_refuse_shapes_they_do_not_take() -> None:
    """The C entry points check what they are given (the last line of defence)."""
    lib = kernels.library()
    assert lib is not None
    null = None
    # 12 output channels (not a multiple of 8), odd height, 65 input channels, no input channel,
    # an image whose padded size overflows the backward pass's int32 offsets, an empty one
    for h, w, cin, cout in [(8, 8, 16, 12), (7, 8, 16, 8), (8, 8, 65, 8), (8, 8, 0, 8),
                            (16384, 16384, 8, 8), (0, 8, 16, 8)]:
        assert lib.zoo_conv_pool_forward(null, null, null, null, null, null, null, 1, h, w, cin,
                                         cout, fused.TANH, 1) == -1
        assert lib.zoo_conv_pool_backward(null, null, null, null, null, null, null, null, 1, h,
                                          w, cin, cout, fused.TANH, 1) == -1
    assert lib.zoo_stem_backward(null, null, null, null, null, null, 1, 8, 8, 16, 8,
                                 fused.TANH, 1) == -1  # the stem takes at most 8 channels
    # the residual form (an output for the winners' relu) adds the input: as many channels
    relus = torch.empty(8)
    assert lib.zoo_conv_pool_forward(null, null, null, null, null, relus.data_ptr(), null, 1, 8,
                                     8, 16, 8, fused.RELU, 1) == -1
