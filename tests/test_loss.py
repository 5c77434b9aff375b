"""The trainer's cross-entropy: ``F.cross_entropy`` as a callable of the logits, and its value
and gradient without autograd's graph, the numbers autograd gives bit for bit."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from zoo.trainer.loss import CrossEntropy


def _autograd(ce: CrossEntropy, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = x.detach().clone().requires_grad_()
    value = F.cross_entropy(leaf, ce.target, label_smoothing=ce.label_smoothing)
    (grad,) = torch.autograd.grad(value, leaf)
    return value.detach(), grad


def _data(n: int, c: int, dtype: torch.dtype, seed: int,
          ignored: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, c, generator=g) * 4).to(dtype)
    t = torch.randint(0, c, (n,), generator=g)
    t[:ignored] = -100  # F.cross_entropy's ignore_index
    return x, t


CASES = list(itertools.product([1, 37, 64], [2, 10], [0.0, 0.05, 0.3],
                               [torch.float32, torch.float64]))


@pytest.mark.parametrize(("n", "c", "smoothing", "dtype"), CASES)
def test_value_and_grad_is_autograd_bit_for_bit(n: int, c: int, smoothing: float,
                                                dtype: torch.dtype) -> None:
    for seed in range(3):
        x, t = _data(n, c, dtype, seed)
        ce = CrossEntropy(t, smoothing)
        want_value, want_grad = _autograd(ce, x)
        value, grad = ce.value_and_grad(x)
        assert torch.equal(value, want_value) and value.dtype == dtype and value.dim() == 0
        assert torch.equal(grad, want_grad) and grad.stride() == want_grad.stride()
        assert not value.requires_grad and not grad.requires_grad


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_ignored_targets_as_autograd(smoothing: float) -> None:
    x, t = _data(20, 3, torch.float32, 5, ignored=6)
    ce = CrossEntropy(t, smoothing)
    value, grad = ce.value_and_grad(x)
    want_value, want_grad = _autograd(ce, x)
    assert torch.equal(value, want_value) and torch.equal(grad, want_grad)
    assert torch.equal(grad[:6], torch.zeros(6, 3))  # no gradient from an ignored row


def test_the_callable_is_cross_entropy_in_the_graph() -> None:
    x, t = _data(16, 2, torch.float32, 2)
    leaf = x.clone().requires_grad_()
    value = CrossEntropy(t, 0.05)(leaf)
    assert value.grad_fn is not None
    assert torch.equal(value, F.cross_entropy(x, t, label_smoothing=0.05))
    assert "label_smoothing=0.05" in repr(CrossEntropy(t, 0.05))


@pytest.mark.parametrize("case", ["float16", "3-d logits", "uint8 target", "empty",
                                  "non-contiguous"])
def test_other_logits_and_targets_get_autograds_numbers(case: str) -> None:
    """What the ATen path does not cover (all but the last case) takes autograd itself."""
    x, t = _data(12, 4, torch.float32, 3)
    if case == "float16":
        x = x.half()
    elif case == "3-d logits":
        x, t = x.reshape(3, 4, 4), torch.randint(0, 4, (3, 4))
    elif case == "uint8 target":
        t = t.to(torch.uint8)
    elif case == "empty":
        x, t = x[:0], t[:0]
    elif case == "non-contiguous":
        x = x.t().contiguous().t()
    ce = CrossEntropy(t, 0.1)
    value, grad = ce.value_and_grad(x)
    want_value, want_grad = _autograd(ce, x)
    assert torch.equal(value, want_value) or (value.isnan() and want_value.isnan())
    assert torch.equal(grad, want_grad) and grad.shape == x.shape


def test_a_leaf_in_a_graph_is_not_joined() -> None:
    """Logits that require a gradient are read, not differentiated into."""
    x, t = _data(8, 2, torch.float32, 4)
    leaf = x.clone().requires_grad_()
    value, grad = CrossEntropy(t).value_and_grad(leaf)
    assert value.grad_fn is None and grad.grad_fn is None and leaf.grad is None
