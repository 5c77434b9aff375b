"""A model's own training step: its forward pass, loss and gradients in one call.

A model may offer a ``zoo_train_step`` method (the architecture contract,
``zoo.host.hookspecs.zoo_architectures``)::

    def zoo_train_step(self, x, loss):  # -> (loss value, logits) or None

It computes ``value = loss(self(x))``, adds the gradient of ``value`` to every parameter's
``.grad`` exactly as ``value.backward()`` would (setting it where it is None, in the
parameter's layout; none for a parameter that does not require one), and returns ``value``
and the logits, both detached. Where it cannot (anything it does not handle itself), it
returns None having changed nothing, and the trainer runs autograd as usual. ``loss`` maps
logits to the scalar loss (the trainer's: cross-entropy with the run's label smoothing,
:class:`zoo.trainer.loss.CrossEntropy`); the method must not assume its form. Where ``loss``
offers ``value_and_grad(logits) -> (value, gradient by the logits)``, that gives the numbers
autograd would, outside any graph; elsewhere the method differentiates ``loss`` through
autograd.

It exists for models whose layers are kernels of their own: run back to back, without
autograd's per-layer bookkeeping, such a step costs less than the same kernels as autograd
Functions (the chapter-8 models: :mod:`zoo_chapter8.fused_step`). The trainer offers it
only a plain step: the model not wrapped (DistributedDataParallel), no mixed precision or
gradient scaling, the batch in one part; the optimizer, gradient clipping and every
hook after the backward pass run as they do after autograd.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, cast

import torch
from torch import nn

#: The method by which a model offers its own training step.
METHOD = "zoo_train_step"

LossFn = Callable[[torch.Tensor], torch.Tensor]


class ModelStep(Protocol):
    """A bound ``zoo_train_step``."""

    def __call__(self, x: torch.Tensor,
                 loss: LossFn) -> tuple[torch.Tensor, torch.Tensor] | None: ...


def model_step(model: nn.Module) -> ModelStep | None:
    """``model``'s own training step, if it offers one.

    Raises ``ValueError`` naming the value when ``zoo_train_step`` is there but not callable.
    """
    step = getattr(model, METHOD, None)
    if step is None:
        return None
    if not callable(step):
        raise ValueError(f"{type(model).__name__}.{METHOD} is {step!r}; a model's "
                        f"{METHOD} must be a method (x, loss) -> (loss, logits) or None")
    return cast(ModelStep, step)
