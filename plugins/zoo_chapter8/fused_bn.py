"""BatchNorm, max-pooling and activation fused, for training NetBatchNorm on CPU.

In a training step ``act(max_pool2d(batch_norm(z), 2))`` with the batch's own statistics
took ATen three passes over ``z`` forward (the statistics, the normalized copy, its pooling)
and four back (the pooling's zero-filled scatter, then BatchNorm's sums and its input
gradient), each over the convolution's whole output: two fifths of NetBatchNorm's step.
``fused_bn.c`` takes the statistics (per image, in double), then normalizes, pools and
activates in one pass without storing the normalized tensor. Backward, a first pass over the
pooled gradient gives BatchNorm's two sums (only each window's maximum has a gradient), a
second writes ``z``'s gradient; with ``xhat = (z - mean) * invstd`` and ``M`` values per
channel:

* ``dbias = sum(dy)``, ``dweight = sum(dy * xhat)``;
* ``dz = weight * invstd * (dy - dbias / M - xhat * dweight / M)``, as ATen's formula.

The running statistics are updated as ``nn.BatchNorm2d`` does (``momentum``, or the
cumulative average where it is None; the unbiased variance; ``num_batches_tracked``).
Results equal ATen's to rounding (the sums run in another order). Everything else about the
kernels (what is checked, what falls back to the plain layers, no second derivative) is as
:mod:`zoo_chapter8.fused` describes; a module that is not exactly an ``nn.BatchNorm2d`` in
training mode with its affine parameters and running statistics runs the plain layers.

NetBatchNorm's first convolution keeps its whole output for the BatchNorm, so nothing fuses
with it; :func:`stem_conv` keeps PyTorch's forward and takes the weight and bias gradients
from the pooled kernels' first-layer loop, given all four gradients of each window.
:func:`stem_bn_pool_tanh` joins it to its BatchNorm, pooling and activation: that loop
then takes each window's four gradients as the BatchNorm's backward pass computes them,
and the convolution's output gradient is never stored. The forward pass keeps each
window's winning ``z`` (a quarter of it), all that the backward pass's sums read of ``z``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zoo_chapter8 import fused, kernels
from zoo_chapter8 import fused_checks as checks
from zoo_chapter8.fused_checks import CF, CL, F32


def _statistics(lib: Any, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's per-channel mean and biased variance of ``z`` (NCHW, channels_last), in
    float64: sums about the first pixel's values, then about the mean (per-image sums added
    in image order), so that values far from zero keep their spread."""
    n, c, h, w = z.shape
    part = torch.empty((n, c), dtype=torch.float64)
    threads, count = torch.get_num_threads(), n * h * w
    shift = z[0, :, 0, 0].contiguous()
    done = lib.zoo_bn_sums(z.data_ptr(), shift.data_ptr(), part.data_ptr(), n, h * w, c, 0,
                           threads)
    mean = shift.double() + part.sum(0) / count
    centre = mean.float()
    done |= lib.zoo_bn_sums(z.data_ptr(), centre.data_ptr(), part.data_ptr(), n, h * w, c, 1,
                            threads)
    assert done == 0, "zoo_bn_sums refused the shapes _bn_fusable accepted"
    # the squares were taken about the float32 mean: correct for its rounding
    return mean, part.sum(0) / count - (mean - centre.double()) ** 2


def _kernel_forward(ctx: Any, z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                    mean: torch.Tensor, invstd: torch.Tensor, act: int
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pooled output, its winners' positions and values (a quarter of ``z``: all that the
    backward pass's sums read of it); what the backward pass needs besides, on ``ctx``."""
    lib = kernels.library()
    assert lib is not None
    n, c, h, w = z.shape
    alpha = weight.detach().double() * invstd
    beta = (bias.detach().double() - mean * alpha).float()
    alpha32 = alpha.float()
    y = torch.empty((n, c, h // 2, w // 2), dtype=F32, device=z.device, memory_format=CL)
    idx = torch.empty((n, h // 2, w // 2, c), dtype=torch.uint8, device=z.device)
    zw = torch.empty((n, h // 2, w // 2, c), dtype=F32, device=z.device)
    lib.zoo_bn_pool_act_forward(z.data_ptr(), alpha32.data_ptr(), beta.data_ptr(),
                                y.data_ptr(), idx.data_ptr(), zw.data_ptr(), n, h, w, c, act,
                                torch.get_num_threads())
    ctx.stats = (mean.float(), invstd.float())
    ctx.act, ctx.dims = act, (n, c, h, w)
    return y, idx, zw


class _BNPoolAct(torch.autograd.Function):
    """act(max_pool2d(weight * (z - mean) * invstd + bias, 2)), the statistics given."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                mean: torch.Tensor, invstd: torch.Tensor, act: int) -> torch.Tensor:
        y, idx, zw = _kernel_forward(ctx, z, weight, bias, mean, invstd, act)
        ctx.save_for_backward(z, y, idx, weight, zw)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        fused._first_derivative_only()
        n, c, h, w = ctx.dims
        z, y, idx, weight, zw = _saved(ctx.saved_tensors, ctx.dims)
        mean, invstd = ctx.stats
        lib = kernels.library()
        g = checks.incoming(grad, (n, c, h // 2, w // 2))
        ready = (checks.kernel_layouts((z, CL), (y, CL), (idx, CF), (zw, CF))
                 if g is not None else None)
        if lib is None or g is None or ready is None or not checks.unwrapped(weight):
            dz, dweight, dbias = _plain_backward(grad, z, y, idx, weight, mean, invstd, ctx.act)
        else:
            z, y, idx, zw = ready
            dz, dweight, dbias = _kernel_backward(lib, g, z, y, idx, zw, weight, mean, invstd,
                                                  ctx.act)
        need = ctx.needs_input_grad
        return (dz, dweight if need[1] else None,
                dbias if need[2] else None, None, None, None)


def _saved(saved: tuple[torch.Tensor, ...], dims: tuple[int, int, int, int]
           ) -> tuple[torch.Tensor, ...]:
    """What :func:`_kernel_forward`'s caller saved first (z, y, idx, BatchNorm's weight, the
    winners), each checked as autograd gives it back (fused_checks)."""
    n, c, h, w = dims
    return (checks.saved(saved[0], "BatchNorm input", (n, c, h, w)),
            checks.saved(saved[1], "output", (n, c, h // 2, w // 2)),
            checks.saved(saved[2], "pooling indices", (n, h // 2, w // 2, c), torch.uint8),
            checks.saved(saved[3], "BatchNorm weight", (c,)),
            checks.saved(saved[4], "winners", (n, h // 2, w // 2, c)))


def _kernel_sums(lib: Any, args: tuple[int, ...], z: torch.Tensor, weight: torch.Tensor,
                 invstd: torch.Tensor, act: int) -> tuple[torch.Tensor, ...]:
    """The backward pass's first phase: BatchNorm's weight and bias gradients, and the
    coefficients of z's gradient (``coef``, ``k1``, ``k2``: the formula above) in float32."""
    n, c, h, w = z.shape
    count = n * h * w
    part = torch.empty((n, 2, c), dtype=torch.float64)
    done = lib.zoo_bn_pool_act_backward(*args, None, None, None, part.data_ptr(), None,
                                        n, h, w, c, act, 0, torch.get_num_threads())
    assert done == 0, "zoo_bn_pool_act_backward refused the shapes _bn_fusable accepted"
    dbias, dweight = part.sum(0)
    coef = weight.detach().double() * invstd.double()
    k1 = (-coef * dbias / count).float()
    k2 = (-coef * dweight / count * invstd.double()).float()
    return dweight.float(), dbias.float(), coef.float(), k1, k2


def _kernel_backward(lib: Any, g: torch.Tensor, z: torch.Tensor, y: torch.Tensor,
                     idx: torch.Tensor, zw: torch.Tensor, weight: torch.Tensor,
                     mean: torch.Tensor, invstd: torch.Tensor, act: int
                     ) -> tuple[torch.Tensor, ...]:
    n, c, h, w = z.shape
    args = (g.data_ptr(), y.data_ptr(), idx.data_ptr(), z.data_ptr(), zw.data_ptr(),
            mean.data_ptr(), invstd.data_ptr())
    dweight, dbias, coef, k1, k2 = _kernel_sums(lib, args, z, weight, invstd, act)
    dz = torch.empty((n, c, h, w), dtype=F32, device=z.device, memory_format=CL)
    done = lib.zoo_bn_pool_act_backward(*args, coef.data_ptr(), k1.data_ptr(), k2.data_ptr(),
                                        None, dz.data_ptr(), n, h, w, c, act, 1,
                                        torch.get_num_threads())
    assert done == 0
    return dz, dweight, dbias


def _plain_backward(grad: torch.Tensor, z: torch.Tensor, y: torch.Tensor, idx: torch.Tensor,
                    weight: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor,
                    act: int) -> tuple[torch.Tensor, ...]:
    """The same gradients with PyTorch operators (out of place: they run under vmap)."""
    dy = checks.plain_pool_backward(grad, y, idx, act)
    with torch._C.DisableTorchFunctionSubclass():
        count = z.shape[0] * z.shape[2] * z.shape[3]
        xhat = (z - mean.view(1, -1, 1, 1)) * invstd.view(1, -1, 1, 1)
        dbias = dy.sum((0, 2, 3))
        dweight = (dy * xhat).sum((0, 2, 3))
        scale = (weight * invstd).view(1, -1, 1, 1)
        dz = scale * (dy - (dbias / count).view(1, -1, 1, 1)
                      - xhat * (dweight / count).view(1, -1, 1, 1))
    return dz, dweight, dbias


def _bn_module_fusable(bn: nn.Module, c: int) -> bool:
    """Exactly an ``nn.BatchNorm2d`` (no subclass, instance ``forward`` or hooks) in training
    mode, with float32 affine parameters and running statistics of ``c`` channels, a multiple
    of 8, at most 64."""
    if type(bn) is not nn.BatchNorm2d or "forward" in vars(bn) or checks.hooked(bn):
        return False
    return (bn.training and bn.affine and bn.track_running_stats and 0 < c <= 64
            and c % 8 == 0 and bn.num_features == c and bn.num_batches_tracked is not None
            and all(t is not None and checks.c_readable(t, (c,)) for t in (
                bn.weight, bn.bias, bn.running_mean, bn.running_var)))


def _bn_fusable(bn: nn.Module, z: torch.Tensor, training: bool) -> bool:
    """:func:`_bn_module_fusable` over a CPU training step's channels_last input that needs a
    gradient."""
    return (_bn_module_fusable(bn, z.shape[1] if z.dim() == 4 else 0) and z.requires_grad
            and fused._training_input(z, training))


def _update_running_stats(bn: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor,
                          count: int) -> None:
    """As ``nn.BatchNorm2d.forward`` and ATen update them in a training step."""
    assert bn.num_batches_tracked is not None
    assert bn.running_mean is not None and bn.running_var is not None
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)
        momentum = (1.0 / float(bn.num_batches_tracked) if bn.momentum is None
                    else bn.momentum)
        unbiased = (var * count / (count - 1)).float()
        bn.running_mean.mul_(1 - momentum).add_(mean.float(), alpha=momentum)
        bn.running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)


def _bn_pool_act(bn: nn.Module, z: torch.Tensor, training: bool, act: int) -> torch.Tensor:
    if not _bn_fusable(bn, z, training):
        out = bn(z)
        return fused.pool_tanh(out, training) if act == fused.TANH else \
            fused.pool_relu(out, training)
    mean, invstd = _batch_statistics(bn, z.detach())
    return _BNPoolAct.apply(z, bn.weight, bn.bias, mean, invstd,  # type: ignore[no-any-return]
                            act)


def _batch_statistics(bn: nn.Module, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's mean and 1 / std (float64) of ``z``, the running statistics updated."""
    lib = kernels.library()
    assert isinstance(bn, nn.BatchNorm2d) and lib is not None
    mean, var = _statistics(lib, z)
    _update_running_stats(bn, mean, var, z.shape[0] * z.shape[2] * z.shape[3])
    return mean, 1.0 / torch.sqrt(var + bn.eps)


class _StemConv(torch.autograd.Function):
    """conv3x3(x) of a network's data (no input gradient), its output kept whole for a
    BatchNorm: PyTorch's convolution forward (oneDNN, fast there), the weight and bias
    gradients from ``zoo_stem_dense_backward`` (oneDNN's took 2.4x as long for
    NetBatchNorm's 3-to-32 first layer on an AVX2 EPYC)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
        z = F.conv2d(x, weight, bias, padding=1)
        ctx.save_for_backward(x, weight)  # the weight: checked as the plain layer's would be
        ctx.has_bias, ctx.dims = bias is not None, (*x.shape, weight.shape[0])
        ctx.weight_format = checks.grad_format(weight)
        return z

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor | None,
                                                        torch.Tensor | None]:
        fused._first_derivative_only()
        n, cin, h, w, cout = ctx.dims
        saved = ctx.saved_tensors  # each checked as autograd gives it back (fused_checks)
        x = checks.saved(saved[0], "input", (n, cin, h, w))
        checks.saved_weight(saved[1], (cout, cin, 3, 3), read=False)
        mask = (ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2])
        lib = kernels.library()
        g = checks.incoming(grad, (n, cout, h, w))
        ready = checks.kernel_layouts((x, CL)) if g is not None else None
        if lib is None or g is None or ready is None:
            return (None, *checks.plain_stem_backward(grad, x, cout, mask))
        (x,) = ready
        dweight, dbias = _stem_kernel_grads(
            lib.zoo_stem_dense_backward, x, cout, ctx.weight_format,
            lambda xp, dw, db, chunks: (x.data_ptr(), xp, g.data_ptr(), dw, db, n, h, w, cin,
                                        cout, chunks))
        return (None, dweight if mask[0] else None, dbias if mask[1] else None)


def _stem_kernel_grads(kernel: Any, x: torch.Tensor, cout: int,
                       weight_format: torch.memory_format,
                       arguments: Callable[[int, int, int, int], tuple[Any, ...]]
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """The stem's weight gradient (in ``weight_format``) and bias gradient from one of the
    dense stem kernels, ``kernel(*arguments(xp, dw, db, chunks))`` on buffers made here."""
    n, cin, h, w = x.shape
    xp = torch.empty((n, h + 2, w + 2, cin), dtype=F32, device=x.device)
    dw = torch.empty((3, 3, cin, cout), dtype=F32, device=x.device)
    db = torch.empty(cout, dtype=F32, device=x.device)
    chunks = max(1, min(torch.get_num_threads(), n * (h // 2)))
    done = kernel(*arguments(xp.data_ptr(), dw.data_ptr(), db.data_ptr(), chunks))
    if done == -2:
        raise MemoryError(f"{kernel.__name__} could not allocate its accumulators")
    assert done == 0, f"{kernel.__name__} refused the shapes its caller accepted"
    return dw.permute(3, 2, 0, 1).contiguous(memory_format=weight_format), db


def _stem_fusable(conv: nn.Conv2d, x: torch.Tensor, training: bool) -> bool:
    """A network's first layer the kernels take: a 3×3 convolution of data (at most 8
    channels, no gradient) in a CPU training step."""
    return fused._conv_fusable(conv, x, training) and x.shape[1] <= 8 and not x.requires_grad


def stem_conv(conv: nn.Conv2d, x: torch.Tensor, training: bool) -> torch.Tensor:
    """``conv(x)`` for a network's first layer, a 3×3 convolution of data (at most 8
    channels, no gradient) whose output is not pooled at once, with the weight gradient from
    the kernels in a CPU training step."""
    if _stem_fusable(conv, x, training):
        return _StemConv.apply(x, conv.weight, conv.bias)  # type: ignore[no-any-return]
    return conv(x)  # type: ignore[no-any-return]


class _StemBNPoolAct(torch.autograd.Function):
    """act(max_pool2d(bn(z), 2)) of a stem's output z = conv3x3(x), the statistics given:
    :class:`_BNPoolAct` forward; backward, BatchNorm's sums, then the stem's weight and bias
    gradients with z's gradient computed window by window and never stored
    (``zoo_stem_bn_backward``): the same numbers as :class:`_BNPoolAct`'s gradient given to
    :class:`_StemConv`, without writing and reading back a tensor the size of z (8 MB in
    NetBatchNorm's step at batch 64)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                bn_weight: torch.Tensor, bn_bias: torch.Tensor, z: torch.Tensor,
                mean: torch.Tensor, invstd: torch.Tensor, act: int) -> torch.Tensor:
        y, idx, zw = _kernel_forward(ctx, z, bn_weight, bn_bias, mean, invstd, act)
        ctx.save_for_backward(z, y, idx, bn_weight, zw, x, weight)
        ctx.has_bias, ctx.cin = bias is not None, x.shape[1]
        ctx.weight_format = checks.grad_format(weight)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        fused._first_derivative_only()
        n, c, h, w = ctx.dims
        saved = ctx.saved_tensors
        z, y, idx, bn_weight, zw = _saved(saved, ctx.dims)
        x = checks.saved(saved[5], "input", (n, ctx.cin, h, w))
        checks.saved_weight(saved[6], (c, ctx.cin, 3, 3), read=False)
        mean, invstd = ctx.stats
        need = ctx.needs_input_grad
        mask = (need[1], ctx.has_bias and need[2])
        lib = kernels.library()
        g = checks.incoming(grad, (n, c, h // 2, w // 2))
        ready = (checks.kernel_layouts((z, CL), (y, CL), (idx, CF), (zw, CF), (x, CL))
                 if g is not None else None)
        if lib is None or g is None or ready is None or not checks.unwrapped(bn_weight):
            dz, dgamma, dbeta = _plain_backward(grad, z, y, idx, bn_weight, mean, invstd,
                                                ctx.act)
            dweight, dbias = checks.plain_stem_backward(dz, x, c, mask)
        else:
            z, y, idx, zw, x = ready
            args = (g.data_ptr(), y.data_ptr(), idx.data_ptr(), z.data_ptr(), zw.data_ptr(),
                    mean.data_ptr(), invstd.data_ptr())
            dgamma, dbeta, coef, k1, k2 = _kernel_sums(lib, args, z, bn_weight, invstd,
                                                       ctx.act)
            dweight, dbias = _stem_kernel_grads(
                lib.zoo_stem_bn_backward, x, c, ctx.weight_format,
                lambda xp, dw, db, chunks: (
                    x.data_ptr(), xp, g.data_ptr(), y.data_ptr(), idx.data_ptr(), z.data_ptr(),
                    mean.data_ptr(), coef.data_ptr(), k1.data_ptr(), k2.data_ptr(), dw, db, n,
                    h, w, ctx.cin, c, ctx.act, chunks))
        return (None, dweight if mask[0] else None, dbias if mask[1] else None,
                dgamma if need[3] else None, dbeta if need[4] else None, None, None, None, None)


def _stem_bn_pool_act(conv: nn.Conv2d, bn: nn.Module, x: torch.Tensor, training: bool,
                      act: int) -> torch.Tensor:
    wants_grad = conv.weight.requires_grad or (conv.bias is not None and conv.bias.requires_grad)
    if not (wants_grad and _stem_fusable(conv, x, training)
            and _bn_module_fusable(bn, conv.weight.shape[0])):
        return _bn_pool_act(bn, stem_conv(conv, x, training), training, act)
    with torch.no_grad():
        z = F.conv2d(x, conv.weight, conv.bias, padding=1).contiguous(memory_format=CL)
    mean, invstd = _batch_statistics(bn, z)
    return _StemBNPoolAct.apply(  # type: ignore[no-any-return]
        x, conv.weight, conv.bias, bn.weight, bn.bias, z, mean, invstd, act)


def stem_bn_pool_tanh(conv: nn.Conv2d, bn: nn.Module, x: torch.Tensor,
                      training: bool) -> torch.Tensor:
    """``tanh(max_pool2d(bn(conv(x)), 2))`` for a network's first layer (:func:`stem_conv`
    then :func:`bn_pool_tanh`), fused in a CPU training step, where the convolution's output
    gradient is never stored."""
    return _stem_bn_pool_act(conv, bn, x, training, fused.TANH)


def stem_bn_pool_relu(conv: nn.Conv2d, bn: nn.Module, x: torch.Tensor,
                      training: bool) -> torch.Tensor:
    """``relu(max_pool2d(bn(conv(x)), 2))``, as :func:`stem_bn_pool_tanh`."""
    return _stem_bn_pool_act(conv, bn, x, training, fused.RELU)


def bn_pool_tanh(bn: nn.Module, z: torch.Tensor, training: bool) -> torch.Tensor:
    """``tanh(max_pool2d(bn(z), 2))``, fused in a CPU training step."""
    return _bn_pool_act(bn, z, training, fused.TANH)


def bn_pool_relu(bn: nn.Module, z: torch.Tensor, training: bool) -> torch.Tensor:
    """``relu(max_pool2d(bn(z), 2))``, fused in a CPU training step."""
    return _bn_pool_act(bn, z, training, fused.RELU)


__all__ = ["bn_pool_relu", "bn_pool_tanh", "stem_bn_pool_relu", "stem_bn_pool_tanh", "stem_conv"]
