"""The chapter-8 classifier head fused for CPU training: ``fc2(act(fc1(flatten(x, 1))))``.

Every chapter-8 network ends in two linear layers on its last feature map. As ATen operators
that is a dozen calls per training step (the flatten's copy of a channels_last map, two
matrix products with their bias, the activation, and in the backward pass five products,
two sums, the activation's gradient and the copy back), each a dispatch and several an
OpenMP region, on matrices of a few thousand elements: about 0.4 ms of Net's 2.9 ms step
at batch 64 on two AVX2 cores, of which the arithmetic is a sixth. ``fused_head.c``
computes the head in one call each way, reading the channels_last map as it lies (it
permutes the hidden layer's weight columns into the map's NHWC order itself) and writing
the map's gradient in the same layout: Net's training step 1.05x as fast.

The same rules as the convolution kernels (:mod:`zoo_chapter8.fused`): a CPU training
step only, exact ``nn.Linear`` layers without hooks, float32 tensors C may read, checked
again in the backward pass (:mod:`zoo_chapter8.fused_checks`); everything else, evaluation
and export included, runs the plain layers. The sums run in another order than MKL's (equal
to rounding), each output's in one thread, so the numbers do not depend on the thread count.
"""

from __future__ import annotations

from typing import Any

import torch

from zoo_chapter8 import fused, kernels
from zoo_chapter8 import fused_checks as checks
from zoo_chapter8.fused_checks import CF, CL, F32

TANH, RELU = checks.TANH, checks.RELU


def head_run(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
             b2: torch.Tensor, act: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward kernel on tensors ``_head_fusable`` accepted: the logits and the hidden
    activations (which the backward kernel reads)."""
    lib = kernels.library()
    assert lib is not None
    n, c, h, w = x.shape
    hid, k = w1.shape[0], w2.shape[0]
    a = torch.empty((n, hid), dtype=F32, device=x.device)
    out = torch.empty((n, k), dtype=F32, device=x.device)
    scratch = torch.empty(hid * c * h * w, dtype=F32, device=x.device)
    done = lib.zoo_head_forward(x.data_ptr(), w1.data_ptr(), scratch.data_ptr(),
                                b1.data_ptr(), w2.data_ptr(), b2.data_ptr(), a.data_ptr(),
                                out.data_ptr(), n, c, c * h * w, hid, k, act,
                                torch.get_num_threads())
    assert done == 0, "zoo_head_forward refused the shapes _head_fusable accepted"
    return out, a


def head_grads(x: torch.Tensor, w1: torch.Tensor, a: torch.Tensor, w2: torch.Tensor,
               g: torch.Tensor, act: int, want_input: bool
               ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor,
                          torch.Tensor]:
    """The backward kernel on the map, the weights and hidden activations (in the kernel's
    layouts) and the logits' gradient ``g``: the map's gradient (if ``want_input``), then
    fc1's weight and bias gradients, fc2's."""
    lib = kernels.library()
    assert lib is not None
    n, c, h, w = x.shape
    hid, k = w1.shape[0], w2.shape[0]
    f = c * h * w
    scratch = torch.empty(2 * hid * f + n * hid, dtype=F32, device=x.device)
    gx = torch.empty((n, c, h, w), dtype=F32, device=x.device, memory_format=CL) \
        if want_input else None
    dw1 = torch.empty((hid, f), dtype=F32, device=x.device)
    db1 = torch.empty(hid, dtype=F32, device=x.device)
    dw2 = torch.empty((k, hid), dtype=F32, device=x.device)
    db2 = torch.empty(k, dtype=F32, device=x.device)
    done = lib.zoo_head_backward(x.data_ptr(), w1.data_ptr(), w2.data_ptr(), a.data_ptr(),
                                 g.data_ptr(), scratch.data_ptr(),
                                 gx.data_ptr() if gx is not None else None, dw1.data_ptr(),
                                 db1.data_ptr(), dw2.data_ptr(), db2.data_ptr(), n, c, f,
                                 hid, k, act, torch.get_num_threads())
    assert done == 0, "zoo_head_backward refused the shapes _head_fusable accepted"
    return gx, dw1, db1, dw2, db2


class _Head(torch.autograd.Function):
    """fc2(act(fc1(flatten(x, 1)))) on a channels_last map x; saves the map, both weights and
    the hidden activations (act's gradient comes from its output)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor,
                w2: torch.Tensor, b2: torch.Tensor, act: int) -> torch.Tensor:
        out, a = head_run(x, w1, b1, w2, b2, act)
        # the weights as the plain layers' backward finds them: their values now, not whatever
        # a later `.data =` puts in the parameter (an in-place change still raises)
        ctx.save_for_backward(x, w1.detach(), a, w2.detach())
        ctx.act, ctx.dims = act, (*x.shape, w1.shape[0], w2.shape[0])
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        fused._first_derivative_only()
        n, c, h, w, hid, k = ctx.dims
        saved = ctx.saved_tensors
        x = checks.saved(saved[0], "feature map", (n, c, h, w))
        w1 = checks.saved(saved[1], "hidden layer's weight", (hid, c * h * w))
        a = checks.saved(saved[2], "hidden activations", (n, hid))
        w2 = checks.saved(saved[3], "output layer's weight", (k, hid))
        mask = (*ctx.needs_input_grad[:5],)
        lib = kernels.library()
        g = checks.incoming(grad, (n, k), CF)
        ready = checks.kernel_layouts((x, CL), (w1, CF), (a, CF), (w2, CF)) \
            if g is not None else None
        if lib is None or g is None or ready is None:
            return (*checks.plain_head_backward(grad, x, w1, a, w2, ctx.act, mask), None)
        x, w1, a, w2 = ready
        gx, dw1, db1, dw2, db2 = head_grads(x, w1, a, w2, g, ctx.act, mask[0])
        return (gx, dw1 if mask[1] else None, db1 if mask[2] else None,
                dw2 if mask[3] else None, db2 if mask[4] else None, None)


def _plain_linear(layer: torch.nn.Module) -> bool:
    return (type(layer) is torch.nn.Linear and "forward" not in vars(layer)
            and not checks.hooked(layer))


def _contiguous(t: torch.Tensor | None, shape: tuple[int, ...]) -> bool:
    """A parameter C may read as a dense row-major float32 array of ``shape``."""
    return t is not None and checks.c_readable(t, shape) and t.is_contiguous()


def head_layers_fusable(fc1: torch.nn.Linear, fc2: torch.nn.Linear, c: int, h: int,
                        w: int) -> bool:
    """:func:`_head_fusable`'s rules for the layers, on a map of ``c`` channels of ``h`` × ``w``."""
    if not (_plain_linear(fc1) and _plain_linear(fc2)):
        return False
    w1, b1, w2, b2 = fc1.weight, fc1.bias, fc2.weight, fc2.bias  # each a Module.__getattr__
    f = c * h * w
    hid = w1.shape[0] if w1.dim() == 2 else 0
    k = w2.shape[0] if w2.dim() == 2 else 0
    return (f > 0 and c % 8 == 0 and hid > 0 and hid % 8 == 0 and k > 0
            and _contiguous(w1, (hid, f)) and _contiguous(b1, (hid,))
            and _contiguous(w2, (k, hid)) and _contiguous(b2, (k,)))


def _head_fusable(fc1: torch.nn.Linear, fc2: torch.nn.Linear, x: torch.Tensor,
                  training: bool) -> bool:
    """Two exact ``nn.Linear`` layers with biases (no subclass, instance ``forward`` or hooks)
    on a CPU training step's float32 channels_last map, as many features as fc1 takes, a
    multiple of 8 of them and of fc1's outputs."""
    if x.dim() != 4:
        return False
    n, c, h, w = x.shape
    return (training and torch.is_grad_enabled() and checks.eager() and n > 0
            and head_layers_fusable(fc1, fc2, c, h, w)
            and checks.c_readable(x, (n, c, h, w)) and x.is_contiguous(memory_format=CL)
            and kernels.library() is not None)


def linear_head(fc1: torch.nn.Linear, fc2: torch.nn.Linear, x: torch.Tensor, act: int,
                training: bool) -> torch.Tensor:
    """``fc2(act(fc1(flatten(x, 1))))`` (act TANH or RELU), fused in a CPU training step."""
    if _head_fusable(fc1, fc2, x, training):
        return _Head.apply(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias,  # type: ignore[no-any-return]
                           act)
    hidden = fc1(torch.flatten(x, 1))
    return fc2(torch.tanh(hidden) if act == TANH else torch.relu(hidden))  # type: ignore[no-any-return]
