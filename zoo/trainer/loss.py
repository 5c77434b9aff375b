"""The trainer's loss: cross-entropy on one batch, and its gradient without autograd's graph.

A model's own training step (:mod:`zoo.trainer.modelstep`) is handed the loss as a callable
from logits to the scalar loss. This one also offers :meth:`CrossEntropy.value_and_grad`:
the value and its gradient by the logits, the numbers ``torch.autograd.grad`` gives, bit
for bit (``tests/test_loss.py``), computed by the same ATen kernels autograd's nodes call, in
the order autograd calls them. For a small network the graph costs more than the
arithmetic: on Net's 64 x 2 logits, ``F.cross_entropy`` and ``autograd.grad`` take 86 us
in a warm loop on a 2-core AVX2 host, this 34 (docs/training.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_MEAN = 1  # at::Reduction::Mean
_IGNORE = -100  # F.cross_entropy's ignore_index
# the ops autograd's nodes call, resolved once (an overload packet resolves on every call)
_nll_forward = torch.ops.aten.nll_loss_forward.default
_nll_backward = torch.ops.aten.nll_loss_backward.default


class CrossEntropy:
    """``F.cross_entropy(logits, target, label_smoothing=label_smoothing)`` as a callable of
    the logits, mean over the batch."""

    __slots__ = ("label_smoothing", "target")

    def __init__(self, target: torch.Tensor, label_smoothing: float = 0.0) -> None:
        self.target = target
        self.label_smoothing = float(label_smoothing)

    def __repr__(self) -> str:
        return (f"CrossEntropy(target={tuple(self.target.shape)}, "
                f"label_smoothing={self.label_smoothing})")

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """The loss (in autograd's graph where ``logits`` is)."""
        return F.cross_entropy(logits, self.target, label_smoothing=self.label_smoothing)

    def value_and_grad(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss and its gradient by ``logits``, both outside any graph: the same numbers
        as ``value = self(leaf); torch.autograd.grad(value, leaf)`` for a leaf holding
        ``logits``.

        Logits of a shape, dtype or device this does not cover (anything but a float32 or
        float64 CPU batch of rows with int64 class indices) take autograd itself.
        """
        target = self.target
        if not (logits.dim() == 2 and logits.dtype in (torch.float32, torch.float64)
                and logits.device.type == "cpu" and target.dtype == torch.int64
                and target.dim() == 1 and target.device == logits.device
                and target.shape[0] == logits.shape[0] > 0):
            leaf = logits.detach().requires_grad_()
            with torch.enable_grad():
                value = self(leaf)
            (grad,) = torch.autograd.grad(value, leaf)
            return value.detach(), grad
        with torch.no_grad():
            return self._value_and_grad(logits.detach(), target)

    def _value_and_grad(self, x: torch.Tensor,
                        target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # forward: at::cross_entropy_loss's class-index branches (LossNLL.cpp)
        ls = self.label_smoothing
        lsm = torch._log_softmax(x, 1, False)
        nll, total_weight = _nll_forward(lsm, target, None, _MEAN, _IGNORE)
        one = torch.ones_like(nll)  # autograd.grad's default grad_outputs
        if ls > 0.0:
            n_classes = x.shape[1]
            ignored = target == _IGNORE
            smooth = -lsm.sum(1)
            smooth.masked_fill_(ignored, 0.0)
            kept = (~ignored).sum()
            smooth_mean = smooth.sum() / kept
            value = (1 - ls) * nll + smooth_mean * (ls / n_classes)
            # backward, node by node: Add, Mul (scalar), NllLoss / Mul (scalar), Div, Sum,
            # MaskedFill, Neg, Sum(dim 1); autograd adds the two gradients of the log-softmax
            g_nll = one * (1 - ls)
            g_smooth = (one * (ls / n_classes)) / kept
            g_rows = g_smooth.expand(x.shape[0]).masked_fill(ignored, 0).neg()
            g_lsm = _nll_backward(g_nll, lsm, target, None, _MEAN, _IGNORE, total_weight)
            g_lsm = g_lsm + g_rows.unsqueeze(1).expand(x.shape)
        else:
            value = nll
            g_lsm = _nll_backward(one, lsm, target, None, _MEAN, _IGNORE, total_weight)
        grad = torch._log_softmax_backward_data(g_lsm, lsm, 1, x.dtype)
        return value, grad
