"""A chapter-8 network's whole training step on the fused kernels, without autograd's graph.

Net's training step runs six fused kernels (three forward, three backward) and, around them,
three autograd Functions' bookkeeping: the checks of every layer on every call, the saved
tensors checked again as autograd gives them back, the engine's nodes and the gradients'
accumulation. For a network that is only a chain of fused layers (Net, NetWidth, NetDepth,
NetRes: convolution-pooling-activation layers, then the linear head) this module runs the
same kernels back to back instead, checks the whole model once per step, and writes each
parameter's gradient itself: the same numbers as ``loss.backward()`` through the layers'
autograd Functions, bit for bit (``tests/test_fused_step.py``); with the trainer's
``LeanSGD``, Net's training step is 1.12-1.15x as fast on two cores (interleaved in one
process; docs/training.md, "A whole training step on the kernels").

It is the model's ``zoo_train_step`` (the trainer's contract: :mod:`zoo.trainer.modelstep`),
and it answers None, changing nothing, wherever autograd must run: a model in evaluation
mode or under anything the kernels would bypass (``fused_checks.eager``), anomaly detection,
a hook on the model, its layers or their parameters (global module hooks included), an
input that needs a gradient, or a layer the kernels do not take (the layers' own rules:
``fused.conv_layer_fusable``, ``fused_head.head_layers_fusable``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import nn

from zoo_chapter8 import fused, fused_head, kernels
from zoo_chapter8 import fused_checks as checks
from zoo_chapter8.fused_checks import CL


class ConvLayer(NamedTuple):
    """``act(max_pool2d(conv(x), 2))``; with ``residual``, ``max_pool2d(relu(conv(x)) + x, 2)``
    (``act`` RELU)."""

    conv: nn.Conv2d
    act: int
    residual: bool = False


class Head(NamedTuple):
    """``fc2(act(fc1(flatten(x, 1))))``."""

    fc1: nn.Linear
    fc2: nn.Linear
    act: int


def _param_hooked(p: torch.Tensor) -> bool:
    """Not a leaf (a tensor put in the parameter's place), or a hook that autograd would run
    on the parameter or its gradient's accumulation."""
    return bool(not p.is_leaf or getattr(p, "_backward_hooks", None)
                or getattr(p, "_post_accumulate_grad_hooks", None))


class Params(NamedTuple):
    """The chain's parameters, read once a step (each read a ``Module.__getattr__``): every
    convolution's (weight, bias), then the head's."""

    convs: list[tuple[torch.Tensor, torch.Tensor | None]]
    head: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]


def _ready(model: nn.Module, layers: Sequence[ConvLayer], head: Head,
           x: torch.Tensor) -> Params | None:
    """The chain's parameters where ``model``'s training forward pass is exactly ``layers``
    then ``head`` on the kernels and nothing in it needs autograd's graph; else None."""
    if not (model.training and torch.is_grad_enabled() and not torch.is_anomaly_enabled()
            and checks.eager() and kernels.library() is not None and x.dim() == 4
            and not x.requires_grad and checks.c_readable(x, tuple(x.shape))
            and x.shape[0] > 0 and x.is_contiguous(memory_format=CL)):
        return None
    if checks.hooked(model):  # the layers' own hooks: their rules below
        return None
    # a parameter's hooks run in autograd's accumulation of its gradient; a parameter the
    # layers share gets both gradients, added as autograd adds them (:func:`_give`)
    convs = [(layer.conv.weight, layer.conv.bias) for layer in layers]
    fc1, fc2 = head.fc1, head.fc2
    tail = (fc1.weight, fc1.bias, fc2.weight, fc2.bias)
    for p in (*(t for pair in convs for t in pair), *tail):
        if p is not None and _param_hooked(p):
            return None
    _, c, h, w = x.shape
    data = True
    for layer in layers:
        if layer.act not in (checks.TANH, checks.RELU) or (
                layer.residual and (layer.act != checks.RELU
                                    or layer.conv.weight.shape[0] != c)):
            return None
        if not fused.conv_layer_fusable(layer.conv, c, h, w, data):
            return None
        c, h, w, data = layer.conv.weight.shape[0], h // 2, w // 2, False
    if not (head.act in (checks.TANH, checks.RELU)
            and fused_head.head_layers_fusable(fc1, fc2, c, h, w)):
        return None
    return Params(convs, tail)


def _give(p: torch.Tensor, grad: torch.Tensor) -> None:
    """Add ``grad`` to ``p.grad`` as autograd's gradient accumulation does."""
    if not p.requires_grad:
        return
    if p.grad is None:
        if grad.stride() != p.stride():  # autograd gives a gradient its parameter's layout
            grad = torch.empty_like(p).copy_(grad)
        p.grad = grad
    else:
        p.grad += grad


def train_step(model: nn.Module, layers: Sequence[ConvLayer], head: Head, x: torch.Tensor,
               loss: Callable[[torch.Tensor], torch.Tensor]
               ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``loss(model(x))`` and its gradients for a model whose training forward pass is
    ``layers`` then ``head``; None (nothing done) where autograd must run instead."""
    params = _ready(model, layers, head, x)
    if params is None:
        return None
    # grad mode stays on (for the loss): the kernels' tensors are new, the weights read
    # through detach() or their memory, so nothing here joins a graph
    kept = []
    out = x
    for (_, act, residual), (weight, bias) in zip(layers, params.convs, strict=True):
        y, saved = fused.conv_pool_run(out, weight, bias, act, residual)
        kept.append((saved, tuple(out.shape)))
        out = y
    w1, b1, w2, b2 = params.head
    assert b1 is not None and b2 is not None  # head_layers_fusable: both biases there
    logits, hidden = fused_head.head_run(out, w1, b1, w2, b2, head.act)
    value_and_grad = getattr(loss, "value_and_grad", None)  # the contract's (modelstep)
    if value_and_grad is not None:
        value, dlogits = value_and_grad(logits)
    else:  # the loss's own backward, whatever the loss is
        leaf = logits.detach().requires_grad_()
        value = loss(leaf)
        (dlogits,) = torch.autograd.grad(value, leaf)
    g, dw1, db1, dw2, db2 = fused_head.head_grads(out, w1, hidden, w2, dlogits.contiguous(),
                                                  head.act, True)
    del out, hidden  # each layer's tensors go as soon as its gradients are done, as in
    _give(w1, dw1)  # autograd: the next layer's allocations reuse warm memory
    _give(b1, db1)
    _give(w2, dw2)
    _give(b2, db2)
    for i in range(len(layers) - 1, -1, -1):
        _, act, residual = layers[i]
        (xp, y, idx), (n, cin, h, w) = kept.pop()
        weight, bias = params.convs[i]
        assert g is not None
        g, dweight, dbias = fused.conv_pool_grads(
            xp, y, idx, g, weight if i > 0 else None, (n, cin, h, w, weight.shape[0]), act,
            residual, bias is not None, checks.grad_format(weight))
        del xp, y, idx
        _give(weight, dweight)
        if dbias is not None and bias is not None:
            _give(bias, dbias)
    return value.detach(), logits.detach()
