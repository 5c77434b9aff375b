"""The optimizer and learning-rate schedule a TrainConfig describes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from zoo.spec.training import TrainConfig


class LeanSGD(torch.optim.SGD):
    """``torch.optim.SGD`` with a shorter way through its step on the CPU.

    For a small network most of ``SGD.step()`` is Python around the update: the grouping of
    tensors by device and dtype, the dispatch between its three implementations, decorators
    (about 60-90 us per step for Net's eight tensors on a 2-core AVX2 host, where the
    arithmetic takes 10). This step does the update of SGD's own single-tensor
    implementation (``foreach=False``), each part of it one call over the parameters, so
    the numbers are SGD's; its state (``momentum_buffer``), ``state_dict``, schedulers and
    step hooks are SGD's. A group it does not cover (a tensor learning rate or weight decay,
    ``differentiable``, a sparse gradient, a parameter off the CPU) takes ``SGD.step``.
    """

    def _covered(self) -> bool:
        for group in self.param_groups:
            if (group["differentiable"] or isinstance(group["lr"], torch.Tensor)
                    or isinstance(group["weight_decay"], torch.Tensor)):
                return False
            for p in group["params"]:
                g = p.grad
                if g is not None and (g.is_sparse or not p.is_cpu):
                    return False
        return True

    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One SGD update of every parameter that has a gradient (``closure``: as SGD's)."""
        if not self._covered():
            return super().step(closure)  # type: ignore[no-any-return]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            for group in self.param_groups:
                self._update(group)
        return loss

    def _update(self, group: dict[str, Any]) -> None:
        """SGD's single-tensor update of the group's parameters, each list operation one
        call: on the CPU ``torch._foreach_*`` runs the same per-tensor kernels in a C++ loop
        (PyTorch's documented foreach operations), so the numbers are the loop's."""
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        grads: list[torch.Tensor] | tuple[torch.Tensor, ...] = [p.grad for p in params]
        lr, decay, momentum = group["lr"], group["weight_decay"], group["momentum"]
        if group["maximize"]:
            grads = torch._foreach_neg(grads)
        if decay != 0:
            grads = torch._foreach_add(grads, params, alpha=decay)
        if momentum != 0:
            bufs, old, old_grads = [], [], []
            for p, grad in zip(params, grads, strict=True):
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:  # the first step: the gradient itself
                    buf = state["momentum_buffer"] = grad.detach().clone()
                else:
                    old.append(buf)
                    old_grads.append(grad)
                bufs.append(buf)
            if old:
                torch._foreach_mul_(old, momentum)
                torch._foreach_add_(old, old_grads, alpha=1 - group["dampening"])
            grads = torch._foreach_add(grads, bufs, alpha=momentum) if group["nesterov"] \
                else bufs
        torch._foreach_add_(params, grads, alpha=-lr)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """As ``Optimizer.zero_grad``; setting the gradients to None in one plain loop."""
        if not set_to_none:
            super().zero_grad(set_to_none=False)
            return
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None


def make_optimizer(config: TrainConfig, params: list[nn.Parameter], device: torch.device,
                    two_groups: bool = False) -> torch.optim.Optimizer:
    """The configured optimizer; ``two_groups`` keeps biases in a group of their own even
    without weight decay, as earlier runs did (so that they resume)."""
    # one fused kernel per step on CUDA (a quarter of foreach's time for small nets); on the
    # CPU, SGD's Python costs more than its arithmetic (LeanSGD)
    lean = device.type == "cpu" and config.optimizer == "sgd"
    fused = True if device.type in ("cpu", "cuda") and not lean else None
    foreach = None if fused or lean else True
    if config.weight_decay or two_groups:
        # no decay on biases and normalization parameters
        groups: list[dict[str, Any]] = [
            {"params": [p for p in params if p.ndim > 1], "weight_decay": config.weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
    else:  # one group, one kernel launch per step
        groups = [{"params": params, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        sgd = LeanSGD if lean else torch.optim.SGD
        return sgd(groups, lr=config.lr, momentum=config.momentum,
                   nesterov=config.nesterov and config.momentum > 0,
                   foreach=False if lean else foreach, fused=fused)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr, foreach=foreach, fused=fused)
    return torch.optim.AdamW(groups, lr=config.lr, foreach=foreach, fused=fused)


def make_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer,
                   total_steps: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    if config.schedule == "onecycle":
        if total_steps < 2:
            return None  # one step: nothing to schedule
        # OneCycleLR divides by zero when warm-up x steps is exactly 1, and skips the
        # warm-up below that: give it 1.5 steps
        warmup = config.warmup_fraction
        if warmup * total_steps <= 1:
            warmup = 1.5 / total_steps
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=total_steps,
            pct_start=warmup, anneal_strategy="cos", cycle_momentum=False,
            div_factor=10.0, final_div_factor=100.0)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return None
