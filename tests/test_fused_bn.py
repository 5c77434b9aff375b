"""zoo_chapter8.fused_bn: BatchNorm, pooling and activation in one kernel, against
``act(max_pool2d(nn.BatchNorm2d(z), 2))`` as PyTorch computes it."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from zoo_chapter8 import fused_bn, kernels

import zoo

pytestmark = pytest.mark.skipif(kernels.library() is None, reason=kernels.status())

CL = torch.channels_last
OPS = [(fused_bn.bn_pool_tanh, torch.tanh), (fused_bn.bn_pool_relu, torch.relu)]
Op = Callable[[nn.Module, torch.Tensor, bool], torch.Tensor]


def _pair(c: int, seed: int = 0, momentum: float | None = 0.1
          ) -> tuple[nn.BatchNorm2d, nn.BatchNorm2d]:
    """Two equal BatchNorms with gammas of both signs, one of them zero."""
    torch.manual_seed(seed)
    bn = nn.BatchNorm2d(c, momentum=momentum)
    with torch.no_grad():
        bn.weight.uniform_(-1.5, 1.5)
        bn.weight[0] = 0.0
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    twin = nn.BatchNorm2d(c, momentum=momentum)
    twin.load_state_dict(bn.state_dict())
    return bn, twin


def _input(shape: tuple[int, ...], seed: int = 1, ties: bool = False) -> torch.Tensor:
    torch.manual_seed(seed)
    z = torch.randint(-2, 3, shape).float() if ties else torch.randn(shape) * 3 + 1.5
    return z.contiguous(memory_format=CL).requires_grad_()


def _kernel_ran(out: torch.Tensor) -> bool:
    return "BNPoolAct" in type(out.grad_fn).__name__


@pytest.mark.parametrize(("op", "act"), OPS)
@pytest.mark.parametrize(("shape", "ties"), [((8, 32, 12, 10), False), ((5, 16, 8, 8), False),
                                             ((3, 64, 4, 6), False), ((4, 8, 6, 6), True)])
def test_outputs_gradients_and_running_statistics_match_pytorch(
        op: Op, act: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, ...],
        ties: bool) -> None:
    bn, twin = _pair(shape[1])
    for step in range(3):  # the running statistics over several steps
        z = _input(shape, seed=step, ties=ties)
        ref_z = z.detach().clone().contiguous(memory_format=CL).requires_grad_()
        ours, theirs = op(bn, z, True), act(F.max_pool2d(twin(ref_z), 2))
        assert _kernel_ran(ours) and ours.is_contiguous(memory_format=CL)
        g = torch.randn_like(theirs)
        mine = torch.autograd.grad(ours, [z, bn.weight, bn.bias], g)
        ref = torch.autograd.grad(theirs, [ref_z, twin.weight, twin.bias], g)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-6)
        # with ties the first maximum of each window gets the gradient, as in ATen: another
        # winner would move weight * invstd * dy from one element to another
        for a, b in zip(mine, ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-5 * max(1.0, b.abs().max()))
        assert mine[0].is_contiguous(memory_format=CL)
    for name in ("running_mean", "running_var"):
        torch.testing.assert_close(getattr(bn, name), getattr(twin, name), rtol=1e-6, atol=1e-6)
    assert int(bn.num_batches_tracked) == int(twin.num_batches_tracked) == 3


@pytest.mark.parametrize("momentum", [None, 0.5])
def test_momentum_none_is_the_cumulative_average_as_in_pytorch(momentum: float | None) -> None:
    bn, twin = _pair(16, momentum=momentum)
    for step in range(4):
        z = _input((4, 16, 6, 6), seed=step)
        fused_bn.bn_pool_tanh(bn, z, True).sum().backward()
        twin(z.detach())
    torch.testing.assert_close(bn.running_mean, twin.running_mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(bn.running_var, twin.running_var, rtol=1e-6, atol=1e-6)


def test_statistics_of_a_large_offset_stay_accurate() -> None:
    """Values far from zero with a small spread: the variance is taken about the mean, not as
    E[z^2] - E[z]^2, which would lose it in float32 (momentum 1: the running variance is
    the batch's unbiased variance)."""
    bn, _ = _pair(8, momentum=1.0)
    torch.manual_seed(3)
    z = (1000.0 + 0.01 * torch.randn(6, 8, 8, 8)).contiguous(memory_format=CL)
    ours = fused_bn.bn_pool_tanh(bn, z.requires_grad_(), True)
    assert _kernel_ran(ours)
    exact = z.detach().double()
    torch.testing.assert_close(bn.running_var.double(), exact.var(dim=(0, 2, 3)),
                               rtol=1e-4, atol=0)
    torch.testing.assert_close(bn.running_mean.double(), exact.mean(dim=(0, 2, 3)),
                               rtol=1e-7, atol=0)
    # at float32's own resolution: 10,000 plus a few of its steps (2**-10 there)
    bn, _ = _pair(8, momentum=1.0)
    z = (10_000.0 + torch.randint(-3, 4, (6, 8, 8, 8)).float() * 2.0**-10)
    z = z.contiguous(memory_format=CL).requires_grad_()
    assert _kernel_ran(fused_bn.bn_pool_tanh(bn, z, True))
    exact = z.detach().double()
    torch.testing.assert_close(bn.running_var.double(), exact.var(dim=(0, 2, 3)),
                               rtol=1e-5, atol=0)


def test_the_same_numbers_on_one_thread_and_two_and_run_after_run() -> None:
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 2):
            torch.set_num_threads(n)
            bn, _ = _pair(32)
            z = _input((8, 32, 8, 8))
            out = fused_bn.bn_pool_relu(bn, z, True)
            grads = torch.autograd.grad(out, [z, bn.weight, bn.bias], torch.ones_like(out))
            results.append([out, *grads, bn.running_mean.clone(), bn.running_var.clone()])
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other, strict=True))


class _SubBN(nn.BatchNorm2d):
    pass


def _hooked() -> nn.Module:
    bn = nn.BatchNorm2d(16)
    bn.register_forward_hook(lambda *_: None)
    return bn


@pytest.mark.parametrize(("case", "make_bn", "make_z", "training"), [
    ("eval mode", lambda: nn.BatchNorm2d(16).eval(), lambda: _input((2, 16, 4, 4)), True),
    ("model flag off", lambda: nn.BatchNorm2d(16), lambda: _input((2, 16, 4, 4)), False),
    ("no affine", lambda: nn.BatchNorm2d(16, affine=False), lambda: _input((2, 16, 4, 4)), True),
    ("no running stats", lambda: nn.BatchNorm2d(16, track_running_stats=False),
     lambda: _input((2, 16, 4, 4)), True),
    ("subclass", lambda: _SubBN(16), lambda: _input((2, 16, 4, 4)), True),
    ("hook", _hooked, lambda: _input((2, 16, 4, 4)), True),
    ("NCHW input", lambda: nn.BatchNorm2d(16),
     lambda: torch.randn(2, 16, 4, 4).requires_grad_(), True),
    ("no gradient", lambda: nn.BatchNorm2d(16), lambda: _input((2, 16, 4, 4)).detach(), True),
    ("12 channels", lambda: nn.BatchNorm2d(12), lambda: _input((2, 12, 4, 4)), True),
    ("72 channels", lambda: nn.BatchNorm2d(72), lambda: _input((2, 72, 4, 4)), True),
    ("odd height", lambda: nn.BatchNorm2d(16), lambda: _input((2, 16, 5, 4)), True),
    ("float64", lambda: nn.BatchNorm2d(16).double(),
     lambda: _input((2, 16, 4, 4)).detach().double().requires_grad_(), True),
])
def test_anything_else_runs_the_plain_layers_and_computes_what_they_compute(
        case: str, make_bn: Callable[[], nn.Module], make_z: Callable[[], torch.Tensor],
        training: bool) -> None:
    bn, z = make_bn(), make_z()
    twin = type(bn)(bn.num_features, affine=bn.affine,
                    track_running_stats=bn.track_running_stats).to(z.dtype)
    twin.load_state_dict(bn.state_dict())
    twin.train(bn.training)
    out = fused_bn.bn_pool_tanh(bn, z, training)
    assert not _kernel_ran(out), case
    ref = torch.tanh(F.max_pool2d(twin(z.detach().clone()), 2))
    # the pooling kernel may still pool (its tanh within 5 ulp of ATen's)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    if bn.track_running_stats:  # updated once, as the plain layer updates them
        assert torch.equal(bn.running_mean, twin.running_mean)
        assert torch.equal(bn.running_var, twin.running_var)


def test_a_gradient_c_cannot_read_gets_the_plain_backward() -> None:
    """vmap's batched gradients (``is_grads_batched``) run the PyTorch formulas: the same
    gradients, to rounding, as the kernel's."""
    bn, _ = _pair(16)
    z = _input((3, 16, 6, 6))
    out = fused_bn.bn_pool_tanh(bn, z, True)
    assert _kernel_ran(out)
    torch.manual_seed(5)
    gs = torch.randn(2, *out.shape)
    (batched,) = torch.autograd.grad(out, z, gs, is_grads_batched=True, retain_graph=True)
    for k in range(2):
        (one,) = torch.autograd.grad(out, z, gs[k].contiguous(memory_format=CL),
                                     retain_graph=True)
        torch.testing.assert_close(batched[k], one, rtol=1e-4, atol=1e-5)


def test_saved_tensors_come_back_checked() -> None:
    bn, _ = _pair(16)
    z = _input((2, 16, 4, 4))
    with torch.autograd.graph.save_on_cpu():  # NCHW copies: read in the kernel's layout
        out = fused_bn.bn_pool_tanh(bn, z, True)
    (gz,) = torch.autograd.grad(out, z, torch.ones_like(out))
    bn2, _ = _pair(16)
    out2 = fused_bn.bn_pool_tanh(bn2, z, True)
    assert torch.equal(gz, torch.autograd.grad(out2, z, torch.ones_like(out2))[0])
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t.double()):
        out3 = fused_bn.bn_pool_tanh(bn2, z, True)
    with pytest.raises(RuntimeError, match=r"got its saved BatchNorm input back as torch\.float64"):
        torch.autograd.grad(out3, z, torch.ones_like(out3))
    out4 = fused_bn.bn_pool_tanh(bn2, z, True)
    with pytest.raises(RuntimeError, match="no second derivative"):
        torch.autograd.grad(out4, z, torch.ones_like(out4), create_graph=True)


def test_netbatchnorm_trains_as_with_the_plain_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    """A training step of the model with the kernels and without: the same loss, gradients
    and running statistics, to rounding."""
    torch.manual_seed(0)
    model = zoo.create_model("NetBatchNorm").to(memory_format=CL)
    plain = zoo.create_model("NetBatchNorm").to(memory_format=CL)
    plain.load_state_dict(model.state_dict())
    x = torch.randn(16, 3, 32, 32).contiguous(memory_format=CL)
    y = torch.randint(0, 2, (16,))
    calls = []
    fusable = fused_bn._bn_fusable

    def spy(bn: nn.Module, z: torch.Tensor, training: bool) -> bool:
        calls.append(fusable(bn, z, training))
        return calls[-1]

    monkeypatch.setattr(fused_bn, "_bn_fusable", spy)
    loss = F.cross_entropy(model(x), y)
    assert _graph_has(loss, "_StemBNPoolActBackward")  # the first layer's three in one
    loss.backward()
    assert calls == [True]  # the second layer's BatchNorm
    monkeypatch.setattr(kernels, "library", lambda: None)  # every layer plain
    ref = F.cross_entropy(plain(x), y)
    assert not _graph_has(ref, "_StemBNPoolActBackward")
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(model.named_parameters(), plain.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-5, msg=name)
    for (name, b), c in zip(model.named_buffers(), plain.buffers(), strict=True):
        torch.testing.assert_close(b, c, rtol=1e-5, atol=1e-6, msg=name)



def _graph_has(out: torch.Tensor, name: str) -> bool:
    todo, seen = [out.grad_fn], set()
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ == name:
            return True
        todo.extend(parent for parent, _ in node.next_functions)
    return False


def _stem(cin: int, cout: int, bias: bool = True, fmt: torch.memory_format = CL,
          shape: tuple[int, int, int] = (3, 6, 10)) -> tuple[nn.Conv2d, torch.Tensor]:
    torch.manual_seed(cin * 100 + cout)
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=bias).to(memory_format=fmt)
    n, h, w = shape
    return conv, torch.randn(n, cin, h, w).contiguous(memory_format=CL)


@pytest.mark.parametrize(("cin", "cout", "bias", "fmt"), [
    (3, 32, True, CL), (3, 16, False, CL), (1, 8, True, torch.contiguous_format),
    (5, 24, True, CL), (3, 40, True, torch.contiguous_format), (8, 8, True, CL)])
def test_stem_conv_computes_the_convolution_and_its_gradients(
        cin: int, cout: int, bias: bool, fmt: torch.memory_format) -> None:
    """PyTorch's own forward; the weight and bias gradients of the kernel equal PyTorch's to
    rounding, in the weight's own memory format."""
    conv, x = _stem(cin, cout, bias, fmt)
    z = fused_bn.stem_conv(conv, x, True)
    assert type(z.grad_fn).__name__ == "_StemConvBackward"
    assert torch.equal(z, conv(x))
    g = torch.randn_like(z) * 10
    params = [p for p in conv.parameters()]
    got = torch.autograd.grad(z, params, g)
    want = torch.autograd.grad(conv(x), params, g)
    for a, b, p in zip(got, want, params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
        assert a.shape == p.shape and a.stride() == p.stride()  # as .grad will hold it


def test_stem_conv_gives_the_same_numbers_run_after_run_and_to_rounding_on_other_threads(
        ) -> None:
    """Each thread sums a fixed share of the rows, added in order: the same numbers for the
    same thread count; another count groups the sums otherwise."""
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (2, 2, 1):
            torch.set_num_threads(n)
            conv, x = _stem(3, 32, shape=(5, 8, 8))
            z = fused_bn.stem_conv(conv, x, True)
            results.append(torch.autograd.grad(z, [conv.weight, conv.bias], torch.cos(z)))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(results[0], results[1], strict=True))
    torch.testing.assert_close(results[0], results[2], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("case", "make"), [
    ("model flag off", lambda: (*_stem(3, 16), False)),
    ("input needs a gradient", lambda: (_stem(3, 16)[0], _stem(3, 16)[1].requires_grad_(), True)),
    ("16 input channels", lambda: (*_stem(16, 16), True)),
    ("NCHW input", lambda: (_stem(3, 16)[0], _stem(3, 16)[1].contiguous(), True)),
    ("12 output channels", lambda: (*_stem(3, 12), True)),
    ("5x5", lambda: (nn.Conv2d(3, 16, 5, padding=2).to(memory_format=CL), _stem(3, 16)[1], True)),
    ("stride 2", lambda: (nn.Conv2d(3, 16, 3, 2, 1).to(memory_format=CL), _stem(3, 16)[1], True)),
    ("odd width", lambda: (*_stem(3, 16, shape=(2, 6, 7)), True)),
])
def test_stem_conv_runs_the_plain_convolution_for_anything_else(
        case: str, make: Callable[[], tuple[nn.Conv2d, torch.Tensor, bool]]) -> None:
    conv, x, training = make()
    z = fused_bn.stem_conv(conv, x, training)
    assert z.grad_fn is None or "StemConv" not in type(z.grad_fn).__name__, case
    assert torch.equal(z, conv(x))


def test_stem_conv_without_the_kernels_is_the_plain_convolution(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "library", lambda: None)
    conv, x = _stem(3, 16)
    z = fused_bn.stem_conv(conv, x, True)
    assert type(z.grad_fn).__name__ == "ConvolutionBackward0"


def _stem_and_bn(cout: int, seed: int) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    torch.manual_seed(seed)
    conv = nn.Conv2d(3, cout, 3, padding=1).to(memory_format=CL)
    bn, _ = _pair(cout, seed)
    return conv, bn


def _copies(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    twin_conv = nn.Conv2d(3, conv.out_channels, 3, padding=1).to(memory_format=CL)
    twin_conv.load_state_dict(conv.state_dict())
    twin_bn = nn.BatchNorm2d(bn.num_features, momentum=bn.momentum)
    twin_bn.load_state_dict(bn.state_dict())
    return twin_conv, twin_bn


STEM_BN = [(fused_bn.stem_bn_pool_tanh, fused_bn.bn_pool_tanh, torch.tanh),
           (fused_bn.stem_bn_pool_relu, fused_bn.bn_pool_relu, torch.relu)]


@pytest.mark.parametrize(("together", "apart", "act"), STEM_BN)
@pytest.mark.parametrize(("n", "cout", "size"), [(6, 32, 12), (5, 16, 8), (3, 8, 6), (7, 24, 10),
                                                 (1, 16, 4)])
def test_the_stem_with_its_batchnorm_gives_the_numbers_of_the_two_apart(
        together: Callable[..., torch.Tensor], apart: Op,
        act: Callable[[torch.Tensor], torch.Tensor], n: int, cout: int, size: int) -> None:
    """The first layer's convolution, BatchNorm, pooling and activation in one Function, whose
    backward pass never stores the convolution's output gradient: bit for bit what
    stem_conv then bn_pool_* give (outputs, all four gradients, running statistics, over
    three steps), and PyTorch's layers to rounding."""
    conv, bn = _stem_and_bn(cout, n)
    conv2, bn2 = _copies(conv, bn)
    conv3, bn3 = _copies(conv, bn)
    for step in range(3):
        torch.manual_seed(100 + step)
        x = (torch.randn(n, 3, size, size) * 2 + 0.5).contiguous(memory_format=CL)
        ours = together(conv, bn, x, True)
        theirs = apart(bn2, fused_bn.stem_conv(conv2, x, True), True)
        plain = act(F.max_pool2d(bn3(conv3(x)), 2))
        assert type(ours.grad_fn).__name__ == "_StemBNPoolActBackward"
        assert _graph_has(theirs, "_StemConvBackward") and _kernel_ran(theirs)
        g = torch.randn_like(ours)
        params = [[*c.parameters(), *b.parameters()]
                  for c, b in ((conv, bn), (conv2, bn2), (conv3, bn3))]
        grads = [torch.autograd.grad(out, ps, g)
                 for out, ps in zip((ours, theirs, plain), params, strict=True)]
        assert torch.equal(ours, theirs)
        assert all(torch.equal(a, b) for a, b in zip(grads[0], grads[1], strict=True))
        assert grads[0][0].is_contiguous(memory_format=CL)  # the weight's own layout
        torch.testing.assert_close(ours, plain, rtol=1e-5, atol=1e-5)
        for a, b in zip(grads[0], grads[2], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
        assert torch.equal(bn.running_mean, bn2.running_mean)
        assert torch.equal(bn.running_var, bn2.running_var)
        torch.testing.assert_close(bn.running_var, bn3.running_var, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ["evaluation", "frozen stem", "hooked batchnorm",
                                  "input needs a gradient", "no grad", "no kernels"])
def test_the_stem_with_its_batchnorm_runs_the_layers_apart_for_anything_else(
        case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    conv, bn = _stem_and_bn(16, 0)
    conv2, bn2 = _copies(conv, bn)
    x = torch.randn(4, 3, 8, 8).contiguous(memory_format=CL)
    training = case != "evaluation"
    for c, b in ((conv, bn), (conv2, bn2)):
        c.train(training)
        b.train(training)
        if case == "frozen stem":
            c.requires_grad_(False)
        if case == "hooked batchnorm":
            b.register_forward_hook(lambda *_: None)
    if case == "input needs a gradient":
        x.requires_grad_()
    if case == "no kernels":
        monkeypatch.setattr(kernels, "library", lambda: None)
    with torch.set_grad_enabled(case != "no grad"):
        ours = fused_bn.stem_bn_pool_tanh(conv, bn, x, training)
        theirs = fused_bn.bn_pool_tanh(bn2, fused_bn.stem_conv(conv2, x, training), training)
    assert ours.grad_fn is None or "StemBNPoolAct" not in type(ours.grad_fn).__name__
    assert torch.equal(ours, theirs)
    assert torch.equal(bn.running_mean, bn2.running_mean)
    if ours.requires_grad:
        g = torch.randn_like(ours)
        mine = torch.autograd.grad(ours, [p for p in bn.parameters()], g)
        ref = torch.autograd.grad(theirs, [p for p in bn2.parameters()], g)
        assert all(torch.equal(a, b) for a, b in zip(mine, ref, strict=True))


def test_the_stem_with_its_batchnorm_takes_the_plain_backward_where_c_cannot_read() -> None:
    """vmap's batched gradients and saved tensors given back in another layout: the same
    gradients as the kernels', to rounding and bit for bit."""
    conv, bn = _stem_and_bn(16, 1)
    x = torch.randn(3, 3, 6, 6).contiguous(memory_format=CL)
    out = fused_bn.stem_bn_pool_tanh(conv, bn, x, True)
    torch.manual_seed(5)
    gs = torch.randn(2, *out.shape)
    params = [conv.weight, conv.bias, bn.weight, bn.bias]
    batched = torch.autograd.grad(out, params, gs, is_grads_batched=True, retain_graph=True)
    for k in range(2):
        one = torch.autograd.grad(out, params, gs[k].contiguous(memory_format=CL),
                                  retain_graph=True)
        for a, b in zip(batched, one, strict=True):
            torch.testing.assert_close(a[k], b, rtol=1e-4, atol=1e-5)
    conv2, bn2 = _stem_and_bn(16, 1)
    with torch.autograd.graph.save_on_cpu():  # NCHW copies: read in the kernel's layout
        out2 = fused_bn.stem_bn_pool_tanh(conv2, bn2, x, True)
    again = torch.autograd.grad(out2, [conv2.weight, conv2.bias, bn2.weight, bn2.bias],
                                gs[0].contiguous(memory_format=CL))
    first = torch.autograd.grad(out, params, gs[0].contiguous(memory_format=CL))
    assert all(torch.equal(a, b) for a, b in zip(again, first, strict=True))



@pytest.mark.parametrize("act", [fused_bn.fused.TANH, fused_bn.fused.RELU])
def test_the_backward_sums_read_the_winners_the_forward_pass_kept(act: int) -> None:
    """The forward pass keeps each window's winning z (a quarter of z), all that the backward
    pass's sums read of it: exactly those values, and the same sums as read from z itself."""
    bn, _ = _pair(16)
    z = _input((5, 16, 8, 6), ties=True).detach()
    n, c, h, w = z.shape
    mean, invstd = fused_bn._batch_statistics(bn, z)
    ctx = SimpleNamespace()
    y, idx, zw = fused_bn._kernel_forward(ctx, z, bn.weight, bn.bias, mean, invstd, act)
    windows = (z.permute(0, 2, 3, 1).reshape(n, h // 2, 2, w // 2, 2, c)
               .permute(0, 1, 3, 2, 4, 5).reshape(n, h // 2, w // 2, 4, c))
    assert torch.equal(zw, windows.gather(3, idx.long().unsqueeze(3)).squeeze(3))
    lib = kernels.library()
    g = torch.randn(n, c, h // 2, w // 2).contiguous(memory_format=CL)
    mean32, invstd32 = ctx.stats
    parts = []
    for kept in (zw, None):
        part = torch.empty((n, 2, c), dtype=torch.float64)
        assert lib.zoo_bn_pool_act_backward(
            g.data_ptr(), y.data_ptr(), idx.data_ptr(), z.data_ptr(),
            kept.data_ptr() if kept is not None else None, mean32.data_ptr(),
            invstd32.data_ptr(), None, None, None, part.data_ptr(), None, n, h, w, c, act, 0,
            2) == 0
        parts.append(part)
    assert torch.equal(parts[0], parts[1]) and parts[0].abs().sum() > 0
