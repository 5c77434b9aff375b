"""The chapter-8 fused kernels: the outputs and gradients of the PyTorch layers they replace."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from zoo_chapter8 import fused, fused_checks, kernels

pytestmark = pytest.mark.skipif(kernels.library() is None, reason=kernels.status())

CL = torch.channels_last
ACTS = [(fused.TANH, torch.tanh, fused.pool_tanh, fused.conv_pool_tanh),
        (fused.RELU, torch.relu, fused.pool_relu, fused.conv_pool_relu)]


def _cl(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=CL)


def _grads(y: torch.Tensor, inputs: list[torch.Tensor], g: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(y, inputs, g))


@pytest.mark.parametrize(("act", "ref", "pool", "_stem"), ACTS)
@pytest.mark.parametrize("case", ["random", "ties", "nan"])
def test_pool_act_matches_aten(act: int, ref: object, pool: object, _stem: object,
                               case: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 16, 8, 10)
    if case == "ties":  # many equal maxima: the gradient goes to the first, as in ATen
        x = torch.randint(-2, 3, x.shape).float()
    if case == "nan":
        x[0, 3, 1, 1] = x[1, 2, 4, 4] = x[1, 2, 4, 5] = float("nan")
    a, b = _cl(x).requires_grad_(), _cl(x).requires_grad_()
    ours = pool(a, True)  # type: ignore[operator]
    theirs = ref(F.max_pool2d(b, 2))  # type: ignore[operator]
    assert ours.grad_fn is not None and "PoolAct" in type(ours.grad_fn).__name__
    g = torch.randn_like(ours)
    (ga,), (gb,) = _grads(ours, [a], g), _grads(theirs, [b], g)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=5e-7, equal_nan=True)
    torch.testing.assert_close(ga, gb, rtol=0, atol=2e-6, equal_nan=True)
    assert torch.equal(ga != 0, gb != 0)  # the same element of each window gets the gradient
    assert ours.is_contiguous(memory_format=CL) and ga.is_contiguous(memory_format=CL)


def _floats(first: float, last: float, step: int = 1) -> torch.Tensor:
    """Every ``step``-th float32 from ``first`` to ``last`` (positive), by bit pattern."""
    lo, hi = (torch.tensor([first, last]).view(torch.int32).long()).tolist()
    return torch.arange(lo, hi + 1, step).to(torch.int32).view(torch.float32)


def _fused_tanh(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The pooling kernel's tanh of each value (alone in its window), and its gradient
    for an incoming gradient of 1."""
    v = v[: v.numel() // 8 * 8]
    # each value at the top left of its 2x2 window, the other three far below it
    x = torch.full((1, 2, 2 * (v.numel() // 8), 8), -1e30)
    x[0, 0, 0::2, :] = v.view(-1, 8)
    x = x.permute(0, 3, 1, 2).requires_grad_()
    y = fused.pool_tanh(x, True)
    assert "PoolAct" in type(y.grad_fn).__name__
    (gx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    return (y.detach().permute(0, 2, 3, 1).reshape(-1),
            gx.permute(0, 2, 3, 1)[0, 0, 0::2, :].reshape(-1))


def _ulp(got: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    exact = torch.tanh(v[: got.numel()].double()).float()  # correctly rounded
    return (got.view(torch.int32).long() - exact.view(torch.int32).long()).abs()


def _tanh_bound() -> int:
    """Measured over every float32 (bench: see the README): 5 ulp with FMA, 7 without."""
    return 5 if "-mfma" in kernels.arch_flags() else 7


def test_tanh_within_its_bound_of_the_correctly_rounded_value() -> None:
    v = _floats(4e-4, 7.9, step=101)
    v = torch.cat([v, -v, torch.logspace(-9, -3.4, 4_000), torch.tensor([0.0, -0.0])])
    got, _ = _fused_tanh(v)
    ulp = _ulp(got, v)
    assert int(ulp.max()) <= _tanh_bound()
    assert float(ulp.float().mean()) < 1.25  # 1.01 with FMA, over this sample


def test_tanh_is_exact_where_it_saturates_and_passes_atens_gradient() -> None:
    """Past 7.8119659 every float's tanh is the correctly rounded one: exactly ±1 from
    9.0109138 on, where a saturated unit passes no gradient, as with ATen's tanh."""
    big = torch.cat([_floats(7.8119659, 9.2), torch.tensor([12.0, 1e3, 3e38, float("inf")])])
    v = torch.cat([big, -big])
    got, grad = _fused_tanh(v)
    v = v[: got.numel()]
    assert int(_ulp(got, v).max()) == 0
    saturated = v.abs() >= 9.0109138
    assert torch.equal(got[saturated], torch.sign(v[saturated]))
    assert not (got[~saturated].abs() == 1).any()
    assert torch.equal(grad[saturated], torch.zeros(int(saturated.sum())))
    aten_grad = torch.ops.aten.tanh_backward(torch.ones_like(got), got)  # 1 - y*y
    torch.testing.assert_close(grad, aten_grad, rtol=1e-6, atol=0)  # FMA rounds 1 - y*y once
    assert torch.equal(grad == 0, aten_grad == 0)


@pytest.mark.parametrize(("act", "ref", "_pool", "stem"), ACTS)
@pytest.mark.parametrize(("cin", "cout", "bias"), [(3, 16, True), (3, 32, True), (1, 8, True),
                                                   (3, 24, False), (5, 8, True)])
def test_stem_matches_conv_pool_act(act: int, ref: object, _pool: object, stem: object,
                                    cin: int, cout: int, bias: bool) -> None:
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(cin, cout, 3, padding=1, bias=bias).to(memory_format=CL)
    x = _cl(torch.randn(4, cin, 10, 12))
    params = [p for p in conv.parameters()]
    ours = stem(conv, x, True)  # type: ignore[operator]
    assert "ConvPool" in type(ours.grad_fn).__name__
    theirs = ref(F.max_pool2d(conv(x), 2))  # type: ignore[operator]
    g = torch.randn_like(ours)
    got, want = _grads(ours, params, g), _grads(theirs, params, g)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    for a, b, p in zip(got, want, params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        assert a.shape == p.shape


@pytest.mark.parametrize("cin", [1, 3, 5, 8])
@pytest.mark.parametrize("size", [(2, 2), (4, 6), (6, 10)])
def test_stem_gradients_where_the_bottom_row_wins(cin: int, size: tuple[int, int]) -> None:
    """Every window won by its bottom row, the right-hand pixel: the stem's backward pass
    reads each winner's 3x3 patch as whole vectors, and the last image's last patches end at
    the padded input's last float (``nox -s sanitize`` runs this under AddressSanitizer)."""
    torch.manual_seed(3)
    h, w = size
    conv = torch.nn.Conv2d(cin, 16, 3, padding=1).to(memory_format=CL)
    with torch.no_grad():  # the output grows down and to the right: the last row wins
        conv.weight.zero_()
        conv.weight[:, :, 1, 1] = 1.0
    ramp = 1e-3 * torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w)  # tanh unsaturated
    x = _cl(ramp + 1e-5 * torch.randn(3, cin, h, w))
    params = [p for p in conv.parameters()]
    ours = fused.conv_pool_tanh(conv, x, True)
    assert "ConvPool" in type(ours.grad_fn).__name__
    theirs = torch.tanh(F.max_pool2d(conv(x), 2))
    _, idx = F.max_pool2d(conv(x), 2, return_indices=True)
    assert torch.equal(idx % w % 2 + idx // w % 2 * 2, torch.full_like(idx, 3))
    g = torch.randn_like(ours)
    for a, b in zip(_grads(ours, params, g), _grads(theirs, params, g), strict=True):
        assert a.abs().max() > 1e-3
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("cin", "cout"), [(1, 8), (3, 16), (3, 32), (5, 24), (8, 8)])
@pytest.mark.parametrize("chunks", [1, 2, 3])
def test_stem_gradient_from_the_winners_is_the_dense_sum(cin: int, cout: int,
                                                          chunks: int) -> None:
    """The stem's backward pass multiplies each window's gradient by its winner's patch only;
    the dense kernel (NetBatchNorm's, every output's gradient times its patch) given the
    same gradient unpooled, zeros at the losers, sums the same products in the same order:
    the same numbers, bit for bit."""
    lib = kernels.library()
    assert lib is not None
    torch.manual_seed(5)
    n, h, w = 3, 6, 10
    x = torch.randn(n, h, w, cin)
    xp = torch.empty(n, h + 2, w + 2, cin)
    weight, bias = torch.randn(3, 3, cin, cout), torch.randn(cout)
    y = torch.empty(n, h // 2, w // 2, cout)
    idx = torch.empty(n, h // 2, w // 2, cout, dtype=torch.uint8)
    assert lib.zoo_conv_pool_forward(x.data_ptr(), xp.data_ptr(), weight.data_ptr(),
                                     bias.data_ptr(), y.data_ptr(), None, idx.data_ptr(),
                                     n, h, w, cin, cout, fused.RELU, 1) == 0
    g = torch.randn(y.shape)
    # written, not added to: garbage there must not matter
    sparse_w, sparse_b = torch.full((3, 3, cin, cout), 7.0), torch.full((cout,), 7.0)
    assert lib.zoo_stem_backward(xp.data_ptr(), g.data_ptr(), y.data_ptr(), idx.data_ptr(),
                                 sparse_w.data_ptr(), sparse_b.data_ptr(), n, h, w, cin, cout,
                                 fused.NONE, chunks) == 0
    # each window's gradient at its winner, zeros elsewhere (the plain backward's unpooling), NHWC
    dz = fused_checks.unpool(g.permute(0, 3, 1, 2), idx).permute(0, 2, 3, 1).contiguous()
    dense_w, dense_b = torch.full((3, 3, cin, cout), -3.0), torch.full((cout,), -3.0)
    assert lib.zoo_stem_dense_backward(x.data_ptr(), torch.empty_like(xp).data_ptr(),
                                       dz.data_ptr(), dense_w.data_ptr(), dense_b.data_ptr(),
                                       n, h, w, cin, cout, chunks) == 0
    assert sparse_w.abs().sum() > 0
    assert torch.equal(sparse_w, dense_w) and torch.equal(sparse_b, dense_b)


@pytest.mark.parametrize(("act", "ref", "_pool", "layer"), ACTS)
@pytest.mark.parametrize(("cin", "cout", "bias"), [(16, 8, True), (32, 16, True), (16, 16, False),
                                                   (8, 24, True), (24, 8, True)])
@pytest.mark.parametrize("case", ["random", "ties"])
def test_layer_matches_conv_pool_act(act: int, ref: object, _pool: object, layer: object,
                                     cin: int, cout: int, bias: bool, case: str) -> None:
    """A later layer: the input's gradient too, scattered from each window's maximum."""
    torch.manual_seed(4)
    conv = torch.nn.Conv2d(cin, cout, 3, padding=1, bias=bias).to(memory_format=CL)
    x = torch.randn(3, cin, 8, 10)
    if case == "ties":  # small integers: exact sums, many tied maxima in each window
        x = torch.randint(-1, 2, x.shape).float()
        with torch.no_grad():
            for param in conv.parameters():
                param.copy_(torch.randint(-1, 2, param.shape))
    a, b = _cl(x).requires_grad_(), _cl(x).requires_grad_()
    params = [p for p in conv.parameters()]
    ours = layer(conv, a, True)  # type: ignore[operator]
    assert "ConvPool" in type(ours.grad_fn).__name__
    theirs = ref(F.max_pool2d(conv(b), 2))  # type: ignore[operator]
    g = torch.randn_like(ours)
    got, want = _grads(ours, [a, *params], g), _grads(theirs, [b, *params], g)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-6)
    for mine, aten in zip(got, want, strict=True):
        torch.testing.assert_close(mine, aten, rtol=1e-5, atol=1e-5)
        assert mine.shape == aten.shape
    assert got[0].is_contiguous(memory_format=CL)


@pytest.mark.parametrize(("channels", "size", "bias"), [(16, (8, 8), True), (8, (4, 6), False),
                                                      (32, (6, 10), True), (64, (2, 2), True)])
@pytest.mark.parametrize("case", ["random", "ties", "nan"])
def test_residual_layer_matches_aten(channels: int, size: tuple[int, int], bias: bool,
                                     case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """NetRes's third layer, max_pool2d(relu(conv(x)) + x, 2): relu before the skip is
    added, the pool after; the input's gradient through both paths."""
    torch.manual_seed(7)
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=bias).to(memory_format=CL)
    x = torch.randn(3, channels, *size)
    if case == "ties":  # small integers: exact sums, ties between the skip and relu's zeros
        x = torch.randint(-1, 2, x.shape).float()
        with torch.no_grad():
            for param in conv.parameters():
                param.copy_(torch.randint(-1, 2, param.shape))
    if case == "nan":  # a NaN wins its window, as in ATen's pooling
        x[0, 0, 0, 0] = float("nan")
    a, b = _cl(x).requires_grad_(), _cl(x).requires_grad_()
    params = [p for p in conv.parameters()]
    ours = fused.conv_relu_add_pool(conv, a, True)
    assert "ConvPool" in type(ours.grad_fn).__name__
    theirs = F.max_pool2d(torch.relu(conv(b)) + b, 2)
    g = torch.randn_like(ours)
    got, want = _grads(ours, [a, *params], g), _grads(theirs, [b, *params], g)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=4e-6, equal_nan=True)
    # with a NaN input, ATen's dense weight gradient multiplies it by the zero gradients of
    # the windows' losers too (NaN), where the kernel scatters from the winners only
    compared = 1 if case == "nan" else len(got)
    for mine, aten in zip(got[:compared], want[:compared], strict=True):
        torch.testing.assert_close(mine, aten, rtol=1e-5, atol=2e-5)
    assert got[0].is_contiguous(memory_format=CL)
    # the kernel's forward pass, then the plain layers' backward operators (no library by
    # then, as where C cannot read a gradient): the same gradients
    again = fused.conv_relu_add_pool(conv, a, True)
    monkeypatch.setattr(kernels, "library", lambda: None)
    plain = _grads(again, [a, *params], g)
    for mine, other in zip(got[:compared], plain[:compared], strict=True):
        torch.testing.assert_close(mine, other, rtol=1e-5, atol=2e-5)


def test_residual_layer_runs_the_plain_layers_where_channels_change() -> None:
    conv = torch.nn.Conv2d(16, 8, 3, padding=1).to(memory_format=CL)
    x = _cl(torch.randn(2, 16, 8, 8)).requires_grad_()
    with pytest.raises(RuntimeError, match="size of tensor"):  # PyTorch's own error
        fused.conv_relu_add_pool(conv, x, True)
    same = torch.nn.Conv2d(16, 16, 3, padding=1).to(memory_format=CL)
    out = fused.conv_relu_add_pool(same, x, False)  # evaluation: exactly the plain layers
    assert torch.equal(out, F.max_pool2d(torch.relu(same(x)) + x, 2))
    assert "ConvPool" not in type(out.grad_fn).__name__


@pytest.mark.parametrize(("cin", "cout", "size", "weight_cl", "frozen"),
                         [(64, 64, (4, 6), True, False), (16, 8, (2, 2), False, False),
                          (32, 16, (6, 2), False, True), (3, 64, (4, 4), False, True)])
def test_conv_pool_limits_layouts_and_frozen_weights(cin: int, cout: int, size: tuple[int, int],
                                                     weight_cl: bool, frozen: bool) -> None:
    """The largest channel counts, one-window rows, a contiguous weight, a frozen weight."""
    torch.manual_seed(6)
    conv = torch.nn.Conv2d(cin, cout, 3, padding=1)
    if weight_cl:
        conv = conv.to(memory_format=CL)
    conv.weight.requires_grad_(not frozen)
    x = torch.randn(3, cin, *size)
    a, b = _cl(x).requires_grad_(cin % 8 == 0), _cl(x).requires_grad_(cin % 8 == 0)
    ours = fused.conv_pool_relu(conv, a, True)
    assert "ConvPool" in type(ours.grad_fn).__name__
    theirs = torch.relu(F.max_pool2d(conv(b), 2))
    wanted = [t for t in (conv.weight, conv.bias) if t.requires_grad]
    g = torch.randn_like(ours)
    inputs = [*([a] if a.requires_grad else []), *wanted]
    got = _grads(ours, inputs, g)
    want = _grads(theirs, [*([b] if b.requires_grad else []), *wanted], g)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=5e-6)
    for mine, aten, wrt in zip(got, want, inputs, strict=True):
        torch.testing.assert_close(mine, aten, rtol=1e-5, atol=2e-5)
        assert mine.stride() == wrt.stride()  # each gradient in its tensor's own layout


def test_conv_pool_refuses_what_the_plain_layers_refuse() -> None:
    """A channel mismatch raises PyTorch's own error; so does a gradient of a gradient."""
    conv = torch.nn.Conv2d(16, 8, 3, padding=1).to(memory_format=CL)
    for channels in (8, 24):
        with pytest.raises(RuntimeError, match="channels"):
            fused.conv_pool_tanh(conv, _cl(torch.randn(2, channels, 8, 8)).requires_grad_(), True)
    x = _cl(torch.randn(2, 16, 8, 8)).requires_grad_()
    out = fused.conv_pool_tanh(conv, x, True)
    (gx,) = torch.autograd.grad((out * out).sum(), x, create_graph=False)
    assert gx.shape == x.shape
    with pytest.raises(RuntimeError, match="no second derivative"):
        torch.autograd.grad((out * out).sum(), x, create_graph=True)


def test_torch_func_transforms_get_the_plain_layers() -> None:
    conv = torch.nn.Conv2d(16, 8, 3, padding=1).to(memory_format=CL)
    x = _cl(torch.randn(2, 16, 8, 8))

    def loss(weight: torch.Tensor) -> torch.Tensor:
        out = torch.func.functional_call(conv, {"weight": weight, "bias": conv.bias}, (x,))
        return torch.tanh(F.max_pool2d(out, 2)).square().sum()

    def fused_loss(weight: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(
            _FusedLayer(conv), {"conv.weight": weight, "conv.bias": conv.bias}, (x,)).sum()

    got = torch.func.grad(fused_loss)(conv.weight.detach())
    want = torch.func.grad(loss)(conv.weight.detach())
    torch.testing.assert_close(got, want)


class _FusedLayer(torch.nn.Module):
    def __init__(self, conv: torch.nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused.conv_pool_tanh(self.conv, x, True).square()


def test_layer_gradients_on_several_threads() -> None:
    """Images are split between threads: the input's gradient is bitwise the same on any
    number; the weight's sums per thread differ only by rounding."""
    torch.manual_seed(5)
    conv = torch.nn.Conv2d(16, 8, 3, padding=1).to(memory_format=CL)
    x = _cl(torch.randn(5, 16, 6, 6)).requires_grad_()
    frozen = _cl(torch.randn(5, 16, 6, 6))  # an input without a gradient: only the weight's
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            out = fused.conv_pool_relu(conv, x, True)
            g = torch.linspace(-1, 1, out.numel()).view_as(out)
            grads = _grads(out, [x, conv.weight, conv.bias], g)
            frozen_out = fused.conv_pool_relu(conv, frozen, True)
            assert "ConvPool" in type(frozen_out.grad_fn).__name__
            results.append((*grads, *_grads(frozen_out, [conv.weight], g)))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert torch.equal(other[0], results[0][0])
        torch.testing.assert_close(other, results[0], rtol=1e-5, atol=1e-6)


def test_stem_on_flat_images_routes_gradients_like_aten() -> None:
    """Flat regions give equal convolution outputs in a window: ties, broken the same way."""
    conv = torch.nn.Conv2d(3, 16, 3, padding=1).to(memory_format=CL)
    x = torch.ones(2, 3, 8, 8)
    x[:, :, 4:, :] = 2.0
    x = _cl(x)
    ours = fused.conv_pool_tanh(conv, x, True)
    theirs = torch.tanh(F.max_pool2d(conv(x), 2))
    g = torch.ones_like(ours)
    got, want = _grads(ours, [conv.weight], g), _grads(theirs, [conv.weight], g)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)


def test_plain_layers_outside_a_cpu_training_step() -> None:
    """Evaluation, no-grad, NCHW, odd sizes, a hooked convolution: exactly the PyTorch layers."""
    torch.manual_seed(2)
    conv = torch.nn.Conv2d(3, 16, 3, padding=1).to(memory_format=CL)
    x = _cl(torch.randn(2, 3, 8, 8))
    want = torch.tanh(F.max_pool2d(conv(x), 2))
    assert torch.equal(fused.conv_pool_tanh(conv, x, False), want)  # eval mode
    with torch.no_grad():
        assert torch.equal(fused.conv_pool_tanh(conv, x, True), want)
    nchw = x.contiguous()
    assert "ConvPool" not in type(fused.conv_pool_tanh(conv, nchw, True).grad_fn).__name__
    odd = _cl(torch.randn(2, 3, 7, 8))
    assert "ConvPool" not in type(fused.conv_pool_tanh(conv, odd, True).grad_fn).__name__
    seen: list[torch.Size] = []
    handle = conv.register_forward_hook(lambda _m, _i, out: seen.append(out.shape))
    try:
        fused.conv_pool_tanh(conv, x, True)
    finally:
        handle.remove()
    assert seen == [torch.Size([2, 16, 8, 8])]
    h = _cl(torch.randn(2, 12, 8, 8)).requires_grad_()  # channels not a multiple of 8
    assert "PoolAct" not in type(fused.pool_tanh(h, True).grad_fn).__name__


@pytest.mark.parametrize("arch", ["Net", "NetWidth", "NetDropout", "NetBatchNorm", "NetDepth",
                                  "NetRes", "NetResDeep"])
def test_model_trains_the_same_without_the_kernel(arch: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import zoo

    torch.manual_seed(3)
    model = zoo.create_model(arch).to(memory_format=CL).train()
    if arch == "NetDropout":  # the same dropout masks both times
        model.conv1_dropout.p = model.conv2_dropout.p = 0.0
    x, y = _cl(torch.randn(8, 3, 32, 32)), torch.randint(0, 2, (8,))
    params = list(model.parameters())
    fast = torch.autograd.grad(F.cross_entropy(model(x), y), params)
    monkeypatch.setattr(kernels, "library", lambda: None)
    plain = torch.autograd.grad(F.cross_entropy(model(x), y), params)
    for a, b in zip(fast, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
