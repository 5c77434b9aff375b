"""The chapter-8 classifier head fused (``fc2(act(fc1(flatten(x, 1))))``): the plain layers'
outputs and gradients, the same on any number of threads, and the plain layers wherever the
kernel would bypass something."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from zoo_chapter8 import fused_checks, kernels
from zoo_chapter8.fused_head import RELU, TANH, linear_head

pytestmark = pytest.mark.skipif(kernels.library() is None, reason=kernels.status())

CL = torch.channels_last
#: (n, c, h, w, hidden units, classes): Net's head, a ragged batch, the smallest, many classes
SHAPES = [(64, 8, 8, 8, 32, 2), (5, 16, 4, 4, 40, 3), (1, 8, 1, 1, 8, 1), (7, 32, 2, 2, 16, 10),
          (3, 24, 2, 4, 24, 2)]


def _layers(c: int, h: int, w: int, hid: int, k: int, seed: int = 0
            ) -> tuple[torch.nn.Linear, torch.nn.Linear]:
    torch.manual_seed(seed)
    return torch.nn.Linear(c * h * w, hid), torch.nn.Linear(hid, k)


def _plain(fc1: torch.nn.Linear, fc2: torch.nn.Linear, x: torch.Tensor, act: int) -> torch.Tensor:
    hidden = fc1(torch.flatten(x, 1))
    out: torch.Tensor = fc2(torch.tanh(hidden) if act == TANH else torch.relu(hidden))
    return out


def _both(shape: tuple[int, ...], act: int, case: str = "random"
          ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """The fused head's output and gradients (x, fc1, fc2) and the plain layers', the same
    inputs and incoming gradient."""
    n, c, h, w, hid, k = shape
    fc1, fc2 = _layers(c, h, w, hid, k)
    x = torch.randn(n, c, h, w)
    if case == "zeros":  # ReLU's gradient where its input is exactly 0, tanh's at 0
        with torch.no_grad():
            fc1.bias.zero_()
        x[:, :, :, :] = 0.0
    a = x.contiguous(memory_format=CL).requires_grad_()
    b = x.contiguous(memory_format=CL).requires_grad_()
    params = [*fc1.parameters(), *fc2.parameters()]
    ours = linear_head(fc1, fc2, a, act, True)
    assert "Head" in type(ours.grad_fn).__name__
    theirs = _plain(fc1, fc2, b, act)
    g = torch.randn_like(ours)
    got = list(torch.autograd.grad(ours, [a, *params], g))
    want = list(torch.autograd.grad(theirs, [b, *params], g))
    return got, want, ours, theirs


@pytest.mark.parametrize("act", [TANH, RELU], ids=["tanh", "relu"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_head_matches_the_plain_layers(act: int, shape: tuple[int, ...]) -> None:
    got, want, ours, theirs = _both(shape, act)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=2e-6)
    for mine, plain in zip(got, want, strict=True):
        assert mine.shape == plain.shape and mine.dtype == plain.dtype
        assert mine.abs().sum() > 0
        torch.testing.assert_close(mine, plain, rtol=1e-5, atol=1e-5)
    assert got[0].is_contiguous(memory_format=CL)  # the map's gradient in the map's layout


@pytest.mark.parametrize("act", [TANH, RELU], ids=["tanh", "relu"])
def test_head_at_zero_passes_the_plain_gradient(act: int) -> None:
    """relu'(0) is 0 and tanh'(0) is 1, as ATen takes them: exact agreement on a zero map."""
    got, want, ours, theirs = _both((4, 8, 2, 2, 16, 3), act, case="zeros")
    assert torch.equal(ours, theirs)
    for mine, plain in zip(got, want, strict=True):
        torch.testing.assert_close(mine, plain, rtol=1e-6, atol=1e-7)


def test_head_is_the_same_on_one_thread_and_on_several() -> None:
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 3):
            torch.set_num_threads(count)
            got, _, ours, _ = _both((64, 8, 8, 8, 32, 2), TANH)
            results.append([ours, *got])
    finally:
        torch.set_num_threads(threads)
    for one, several in zip(*results, strict=True):
        assert torch.equal(one, several)


class _Linear(torch.nn.Linear):
    pass


#: what sends the head to the plain layers: each changes one thing of the fused case
PLAIN_CASES: dict[str, Callable[[torch.nn.Linear, torch.nn.Linear, torch.Tensor],
                                tuple[torch.nn.Module, torch.nn.Module, torch.Tensor, bool]]] = {
    "eval": lambda f1, f2, x: (f1, f2, x, False),
    "nchw_input": lambda f1, f2, x: (f1, f2, x.contiguous(), True),
    "float64": lambda f1, f2, x: (f1.double(), f2.double(), x.double(), True),
    "no_bias": lambda f1, f2, x: (torch.nn.Linear(f1.in_features, f1.out_features, bias=False),
                                  f2, x, True),
    "subclass": lambda f1, f2, x: (_Linear(f1.in_features, f1.out_features), f2, x, True),
    "transposed_weight": lambda f1, f2, x: (_swap(f1, f1.weight.data.t().contiguous().t()),
                                            f2, x, True),
}


def _swap(layer: torch.nn.Linear, data: torch.Tensor) -> torch.nn.Linear:
    layer.weight.data = data
    return layer


@pytest.mark.parametrize("case", sorted(PLAIN_CASES))
def test_plain_layers_where_the_kernel_would_bypass_something(case: str) -> None:
    fc1, fc2 = _layers(8, 4, 4, 16, 2)
    x = torch.randn(3, 8, 4, 4).contiguous(memory_format=CL).requires_grad_()
    l1, l2, xin, training = PLAIN_CASES[case](fc1, fc2, x)
    out = linear_head(l1, l2, xin, TANH, training)  # type: ignore[arg-type]
    assert "Head" not in type(out.grad_fn).__name__
    assert torch.equal(out, _plain(l1, l2, xin, TANH))  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", [(2, 12, 2, 2, 16, 2), (2, 8, 2, 2, 20, 2)],
                         ids=["channels_not_a_multiple_of_8", "hidden_not_a_multiple_of_8"])
def test_shapes_the_kernel_does_not_take_run_the_plain_layers(shape: tuple[int, ...]) -> None:
    n, c, h, w, hid, k = shape
    fc1, fc2 = _layers(c, h, w, hid, k)
    x = torch.randn(n, c, h, w).contiguous(memory_format=CL).requires_grad_()
    out = linear_head(fc1, fc2, x, RELU, True)
    assert "Head" not in type(out.grad_fn).__name__
    lib = kernels.library()
    assert lib is not None
    assert lib.zoo_head_forward(None, None, None, None, None, None, None, None,
                                n, c, c * h * w, hid, k, 0, 1) == -1


def test_hooks_and_no_grad_run_the_plain_layers() -> None:
    fc1, fc2 = _layers(8, 2, 2, 8, 2)
    x = torch.randn(2, 8, 2, 2).contiguous(memory_format=CL).requires_grad_()
    fc1.register_forward_hook(lambda *_: None)
    assert "Head" not in type(linear_head(fc1, fc2, x, TANH, True).grad_fn).__name__
    fc1, fc2 = _layers(8, 2, 2, 8, 2)
    with torch.no_grad():
        assert linear_head(fc1, fc2, x, TANH, True).grad_fn is None


def _grads(use_kernel: bool, hook: Callable[[], contextlib.AbstractContextManager[None]] | None,
           swap: bool = False, batched: bool = False) -> list[torch.Tensor] | Exception:
    fc1, fc2 = _layers(16, 2, 2, 16, 3)
    x = torch.randn(4, 16, 2, 2).contiguous(memory_format=CL).requires_grad_()
    with hook() if hook else contextlib.nullcontext():
        out = linear_head(fc1, fc2, x, TANH, True) if use_kernel else _plain(fc1, fc2, x, TANH)
    assert ("Head" in type(out.grad_fn).__name__) == use_kernel
    if swap:
        fc1.weight.data = torch.randn_like(fc1.weight)
        fc2.weight.data = torch.randn_like(fc2.weight)
    wrt = [x, *fc1.parameters(), *fc2.parameters()]
    g = torch.randn((2, *out.shape) if batched else out.shape,
                    generator=torch.Generator().manual_seed(1))
    try:
        return list(torch.autograd.grad(out, wrt, g, is_grads_batched=batched))
    except RuntimeError as exc:
        return exc


def _unpacked(cast: Callable[[torch.Tensor], torch.Tensor]
              ) -> Callable[[], contextlib.AbstractContextManager[None]]:
    return lambda: torch.autograd.graph.saved_tensors_hooks(lambda t: t, cast)


HOOKS = {"none": None,
         "save_on_cpu": lambda: torch.autograd.graph.save_on_cpu(),
         "column_major": _unpacked(lambda t: t.mT.contiguous().mT),
         "float64": _unpacked(lambda t: t.double() if t.is_floating_point() else t)}


@pytest.mark.parametrize("hook", sorted(HOOKS))
@pytest.mark.parametrize("swap", [False, True], ids=["", "weights_replaced_after_forward"])
@pytest.mark.parametrize("batched", [False, True], ids=["", "batched_gradients"])
def test_backward_gives_the_plain_gradients_or_their_error(hook: str, swap: bool,
                                                           batched: bool) -> None:
    """Saved-tensor hooks, weights replaced through ``.data`` between the passes (both use the
    values of the forward pass) and a vmap's batched gradients."""
    got = _grads(True, HOOKS[hook], swap, batched)
    want = _grads(False, HOOKS[hook], swap, batched)
    if isinstance(want, Exception) or isinstance(got, Exception):
        assert type(got) is type(want), (got, want)
        return
    for mine, plain in zip(got, want, strict=True):
        assert mine.shape == plain.shape
        torch.testing.assert_close(mine, plain, rtol=1e-5, atol=1e-5)


def test_weights_changed_in_place_after_forward_raise_as_the_plain_layers_do() -> None:
    for use_kernel in (True, False):
        fc1, fc2 = _layers(8, 2, 2, 8, 2)
        x = torch.randn(2, 8, 2, 2).contiguous(memory_format=CL).requires_grad_()
        out = linear_head(fc1, fc2, x, RELU, True) if use_kernel else _plain(fc1, fc2, x, RELU)
        with torch.no_grad():
            fc1.weight.mul_(2)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            out.sum().backward()


def test_no_second_derivative() -> None:
    fc1, fc2 = _layers(8, 2, 2, 8, 2)
    x = torch.randn(2, 8, 2, 2).contiguous(memory_format=CL).requires_grad_()
    out = linear_head(fc1, fc2, x, TANH, True)
    with pytest.raises(RuntimeError, match="no second derivative"):
        torch.autograd.grad(out.sum(), x, create_graph=True)


def test_the_kernel_path_runs_without_the_plain_backward(monkeypatch: pytest.MonkeyPatch) -> None:
    """Saved tensors in another layout are copied into the kernel's (not handed to ATen)."""
    def refuse(*_: object) -> None:
        raise AssertionError("the plain backward ran")

    monkeypatch.setattr(fused_checks, "plain_head_backward", refuse)
    for hook in ("none", "save_on_cpu", "column_major"):
        assert not isinstance(_grads(True, HOOKS[hook]), Exception)


@pytest.mark.parametrize("arch", ["Net", "NetDropout", "NetDepth", "NetResDeep"])
def test_every_chapter8_model_trains_through_the_fused_head(arch: str) -> None:
    import zoo

    model = zoo.create_model(arch).to(memory_format=CL).train()
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=CL)
    out = model(x)
    assert "Head" in type(out.grad_fn).__name__
    F.cross_entropy(out, torch.tensor([0, 1, 1, 0])).backward()
    assert model.fc1.weight.grad is not None and model.fc1.weight.grad.abs().sum() > 0
    model.eval()  # evaluation (and so export) runs the plain layers
    assert "Head" not in type(model(x).grad_fn).__name__
