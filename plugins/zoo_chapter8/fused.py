"""Convolution, max-pooling and activation fused, for training the chapter-8 networks on CPU.

Every chapter-8 network pools a 3×3 convolution's output 2×2 and applies tanh or ReLU. ATen
does that in several passes over the convolution's output (pooling with int64 indices, the
activation; in the backward pass a zero fill, a scatter and the activation's gradient, then
dense convolutions of a gradient that is three quarters zeros), its float32 tanh is not
vectorized, and its convolutions are slow on these few channels: together that was most of
Net's training step. ``fused.c`` computes each convolution together with its pooling and
activation, never storing the convolution's output, and in the backward pass scatters each
window's gradient from the one output that won it: a 32-image Net step on one thread takes
about 3 ms instead of 6.4-7.1 ms. NetRes's third layer, ``max_pool2d(relu(conv(x)) + x, 2)``,
is the same kernel with the input added back (:func:`conv_relu_add_pool`). Pooling with its
activation alone is a kernel of its own; after a BatchNorm, see :mod:`zoo_chapter8.fused_bn`.

The kernels are compiled at first use (:mod:`zoo_chapter8.kernels`); where they cannot be
built (reported once on stderr), or with ``ZOO_FUSED=0``, the layers run as plain PyTorch.

It serves training steps only (a module in training mode, gradients on, a CPU float32
channels_last input with even height and width; channel counts in ``_conv_fusable`` and
``_fusable``). Every tensor handed to C is checked for what it is (type, dtype, device, its
own shape, layout), in both passes: the forward pass its input, weight and bias
(``_conv_fusable``), the backward pass the incoming gradient, the saved tensors as autograd
gives them back and the weight as it is then; what C cannot read gets the plain layers'
backward operators, a wrong dtype, device or shape their RuntimeError (the rules:
:mod:`zoo_chapter8.fused_checks`). C reads a pooling index modulo 4, so no byte a hook
stores there moves a read out of its image. The kernels allocate float32 on the input's
device. Evaluation, export and tracing run the plain PyTorch layers, so a trained model
computes exactly what its ONNX graph does; so does anything the kernels would bypass (a
``Conv2d`` subclass, hooks, torch.func transforms, forward-mode AD, autocast, dispatch modes;
see ``fused_checks.eager`` and ``_conv_fusable``). Pooling and the gradients' routing are
exactly ATen's; the sums run in another order (equal to rounding for finite inputs), and the
tanh is Eigen's rational approximation, within 5 ulp of the correctly rounded value with
FMA, 7 without, and exact (so exactly ±1 where it saturates) from 7.81 on. There is no
second derivative: a backward pass with ``create_graph=True`` raises.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from zoo_chapter8 import fused_checks as checks
from zoo_chapter8 import kernels
from zoo_chapter8.fused_checks import CF, CL, F32

TANH, RELU, NONE = checks.TANH, checks.RELU, checks.NONE


def _first_derivative_only() -> None:
    """Refuse a backward pass that builds a graph (``create_graph=True``): the kernels have no
    second derivative, and autograd would skip the missing terms without a word
    (``once_differentiable`` raises only where its own inputs are asked for)."""
    if torch.is_grad_enabled():
        raise RuntimeError("the chapter-8 fused training kernels have no second derivative "
                           "(create_graph=True); set ZOO_FUSED=0 to train with the plain "
                           "PyTorch layers")


class _PoolAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, act: int) -> torch.Tensor:
        lib = kernels.library()
        assert lib is not None
        n, c, h, w = x.shape
        y = torch.empty((n, c, h // 2, w // 2), dtype=F32, device=x.device,
                        memory_format=torch.channels_last)
        idx = torch.empty((n, h // 2, w // 2, c), dtype=torch.uint8, device=x.device)
        lib.zoo_pool2_act_forward(x.data_ptr(), y.data_ptr(), idx.data_ptr(), n, h, w, c, act,
                                  torch.get_num_threads())
        ctx.save_for_backward(y, idx)
        ctx.act, ctx.dims = act, (n, c, h, w)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        _first_derivative_only()
        n, c, h, w = ctx.dims
        y, idx = ctx.saved_tensors
        y = checks.saved(y, "output", (n, c, h // 2, w // 2))
        idx = checks.saved(idx, "pooling indices", (n, h // 2, w // 2, c), torch.uint8)
        lib = kernels.library()
        g = checks.incoming(grad, (n, c, h // 2, w // 2))
        ready = checks.kernel_layouts((y, CL), (idx, CF)) if g is not None else None
        if lib is None or g is None or ready is None:
            return checks.plain_pool_backward(grad, y, idx, ctx.act), None
        yc, idxc = ready
        gx = torch.empty((n, c, h, w), dtype=F32, device=y.device, memory_format=CL)
        lib.zoo_pool2_act_backward(g.data_ptr(), yc.data_ptr(), idxc.data_ptr(), gx.data_ptr(),
                                   n, h, w, c, ctx.act, torch.get_num_threads())
        return gx, None


# offsets within one padded image are int32 in the layer's backward kernel
_MAX_IMAGE = 2**31 - 1


def _training_input(x: torch.Tensor, training: bool) -> bool:
    """A CPU training step's float32 channels_last NCHW input, even-sized, and a kernel."""
    return (training and torch.is_grad_enabled() and x.dim() == 4 and checks.eager()
            and checks.c_readable(x, tuple(x.shape))
            and x.numel() > 0 and x.shape[2] % 2 == 0 and x.shape[3] % 2 == 0
            and x.is_contiguous(memory_format=torch.channels_last)
            and kernels.library() is not None)


def _fusable(x: torch.Tensor, training: bool) -> bool:
    return x.requires_grad and _training_input(x, training) and x.shape[1] % 8 == 0


def pool_tanh(x: torch.Tensor, training: bool) -> torch.Tensor:
    """``tanh(max_pool2d(x, 2))``, fused in a CPU training step."""
    if _fusable(x, training):
        return _PoolAct.apply(x, TANH)  # type: ignore[no-any-return]
    return torch.tanh(F.max_pool2d(x, 2))


def pool_relu(x: torch.Tensor, training: bool) -> torch.Tensor:
    """``relu(max_pool2d(x, 2))``, fused in a CPU training step."""
    if _fusable(x, training):
        return _PoolAct.apply(x, RELU)  # type: ignore[no-any-return]
    return torch.relu(F.max_pool2d(x, 2))


def conv_pool_run(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, act: int,
                  residual: bool) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor,
                                                               torch.Tensor]]:
    """The forward kernel on tensors ``_conv_fusable`` accepted: the output, and what the
    backward kernel reads (the padded input, the output or with ``residual`` the winners'
    relu(conv), the pooling indices)."""
    lib = kernels.library()
    assert lib is not None
    n, cin, h, w = x.shape
    cout = weight.shape[0]
    wt = weight.detach().permute(2, 3, 1, 0).contiguous()  # [kh][kw][cin][cout]
    b = bias.detach().contiguous() if bias is not None else None
    # the input in NHWC, one zero pixel around (the kernel pads it): its loops need no
    # bounds checks, and the backward pass reads it again
    xp = torch.empty((n, h + 2, w + 2, cin), dtype=F32, device=x.device)
    y = torch.empty((n, cout, h // 2, w // 2), dtype=F32, device=x.device,
                    memory_format=torch.channels_last)
    idx = torch.empty((n, h // 2, w // 2, cout), dtype=torch.uint8, device=x.device)
    a = torch.empty_like(y) if residual else None
    done = lib.zoo_conv_pool_forward(x.data_ptr(), xp.data_ptr(), wt.data_ptr(),
                                     b.data_ptr() if b is not None else None, y.data_ptr(),
                                     a.data_ptr() if a is not None else None,
                                     idx.data_ptr(), n, h, w, cin, cout, act,
                                     torch.get_num_threads())
    assert done == 0, "zoo_conv_pool_forward refused the shapes _conv_fusable accepted"
    return y, (xp, y if a is None else a, idx)


def conv_pool_grads(xp: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, g: torch.Tensor,
                    weight: torch.Tensor | None, dims: tuple[int, int, int, int, int], act: int,
                    residual: bool, want_bias: bool, weight_format: torch.memory_format
                    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """The backward kernels on what :func:`conv_pool_run` kept (in the kernels' layouts) and
    the output's gradient ``g``: the input's gradient (None without ``weight``, or where the
    input has fewer than 8 channels), the weight's in ``weight_format``, the bias's."""
    lib = kernels.library()
    assert lib is not None
    n, cin, h, w, cout = dims
    gx = None
    if cin % 8 == 0:
        chunks = max(1, min(torch.get_num_threads(), n))
        # [cout][kh][kw][cin] is a channels_last weight's own memory: usually no copy; zeros
        # where the input's gradient is not asked for (the kernel reads them, unused)
        if weight is not None:
            wr = weight.detach().permute(0, 2, 3, 1).contiguous()
            gx = torch.empty((n, cin, h, w), dtype=F32, device=y.device,
                             memory_format=torch.channels_last)
        else:
            wr = torch.zeros((cout, 3, 3, cin), dtype=F32, device=y.device)
        dw = torch.empty((cout, 3, 3, cin), dtype=F32, device=y.device)
        db = torch.empty(cout, dtype=F32, device=y.device)
        done = lib.zoo_conv_pool_backward(
            xp.data_ptr(), g.data_ptr(), y.data_ptr(), idx.data_ptr(), wr.data_ptr(),
            gx.data_ptr() if gx is not None else None, dw.data_ptr(), db.data_ptr(),
            n, h, w, cin, cout, act, chunks)
        dweight = dw.permute(0, 3, 1, 2)
    else:
        chunks = max(1, min(torch.get_num_threads(), n * (h // 2)))
        dw = torch.empty((3, 3, cin, cout), dtype=F32, device=y.device)
        db = torch.empty(cout, dtype=F32, device=y.device)
        done = lib.zoo_stem_backward(xp.data_ptr(), g.data_ptr(), y.data_ptr(),
                                     idx.data_ptr(), dw.data_ptr(), db.data_ptr(), n, h, w,
                                     cin, cout, act, chunks)
        dweight = dw.permute(3, 2, 0, 1)
    if done == -2:
        raise MemoryError("the backward kernel could not allocate its scratch memory")
    assert done == 0, "the backward kernel refused the shapes _conv_fusable accepted"
    if residual and gx is not None:  # the input added back: its own gradient
        skip = torch.empty_like(gx)
        lib.zoo_pool2_act_backward(g.data_ptr(), y.data_ptr(), idx.data_ptr(),
                                   skip.data_ptr(), n, h, w, cin, NONE,
                                   torch.get_num_threads())
        gx += skip
    dbias = db if want_bias else None
    return gx, dweight.contiguous(memory_format=weight_format), dbias


class _ConvPool(torch.autograd.Function):
    """act(max_pool2d(conv3x3(x), 2)) without storing the convolution's output; with
    ``residual``, max_pool2d(relu(conv3x3(x)) + x, 2) (``act`` RELU, as many channels out
    as in), which saves the winners' relu(conv) in place of the output.

    The backward pass gives the input's gradient where it has a multiple of 8
    channels (a network's later layers); the stem's (a few channels of data)
    has no input gradient.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                act: int, residual: bool = False) -> torch.Tensor:
        y, kept = conv_pool_run(x, weight, bias, act, residual)
        ctx.save_for_backward(*kept, weight)
        ctx.act, ctx.has_bias, ctx.dims = act, bias is not None, (*x.shape, weight.shape[0])
        ctx.residual = residual
        ctx.weight_format = checks.grad_format(weight)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None,
                                                        torch.Tensor | None, None, None]:
        _first_derivative_only()
        n, cin, h, w, cout = ctx.dims
        saved = ctx.saved_tensors  # each checked as autograd gives it back (fused_checks)
        xp = checks.saved(saved[0], "padded input", (n, h + 2, w + 2, cin))
        y = checks.saved(saved[1], "output", (n, cout, h // 2, w // 2))
        idx = checks.saved(saved[2], "pooling indices", (n, h // 2, w // 2, cout), torch.uint8)
        weight = checks.saved_weight(saved[3], (cout, cin, 3, 3), read=ctx.needs_input_grad[0])
        lib = kernels.library()
        g = checks.incoming(grad, (n, cout, h // 2, w // 2))
        ready = checks.kernel_layouts((xp, CF), (y, CL), (idx, CF)) if g is not None else None
        if lib is None or g is None or ready is None or (
                weight is not None and not checks.unwrapped(weight)):
            mask = (ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                    ctx.has_bias and ctx.needs_input_grad[2])
            gx, gw, gb = checks.plain_conv_backward(grad, xp, y, idx, weight, ctx.act, mask)
            if ctx.residual and gx is not None:  # the input added back: its own gradient
                gx = gx + checks.plain_pool_backward(grad, y, idx, NONE)
            return gx, gw, gb, None, None
        xp, y, idx = ready
        gx, dweight, dbias = conv_pool_grads(xp, y, idx, g, weight, ctx.dims, ctx.act, ctx.residual,
                                             ctx.has_bias and ctx.needs_input_grad[2],
                                             ctx.weight_format)
        return gx, dweight if ctx.needs_input_grad[1] else None, dbias, None, None


def conv_layer_fusable(conv: torch.nn.Conv2d, cin: int, h: int, w: int, data: bool) -> bool:
    """:func:`_conv_fusable`'s rules for the layer, on an input of ``cin`` channels of
    ``h`` × ``w`` (``data``: one that needs no gradient, which may have fewer than 8)."""
    if type(conv) is not torch.nn.Conv2d or "forward" in vars(conv) or checks.hooked(conv):
        return False
    weight, bias = conv.weight, conv.bias
    cout = weight.shape[0] if weight.dim() == 4 else 0
    return (0 < cin <= 64 and (cin % 8 == 0 or (cin <= 8 and data))
            and 0 < cout <= 64 and cout % 8 == 0
            and checks.c_readable(weight, (cout, cin, 3, 3))
            and (bias is None or checks.c_readable(bias, (cout,)))
            and conv.stride == (1, 1) and conv.padding == (1, 1) and conv.dilation == (1, 1)
            and conv.groups == 1 and conv.padding_mode == "zeros"
            and h > 0 and w > 0 and h % 2 == 0 and w % 2 == 0
            and (h + 2) * (w + 2) * cin <= _MAX_IMAGE)


def _conv_fusable(conv: torch.nn.Conv2d, x: torch.Tensor, training: bool) -> bool:
    """A 3×3, stride 1, padding 1 convolution of at most 64 channels to a multiple of 8, in a
    CPU training step; its input either data of at most 8 channels or a multiple of 8.

    Only an exact ``nn.Conv2d`` (no subclass, no instance ``forward``, no hooks), and only
    on what its tensors really are: the weight's own shape (not ``kernel_size``), a bias of
    ``cout`` float32 values. Anything else runs the plain layer, which computes what
    PyTorch computes or raises PyTorch's own error.
    """
    return (x.dim() == 4
            and conv_layer_fusable(conv, x.shape[1], x.shape[2], x.shape[3],
                                   not x.requires_grad)
            and _training_input(x, training))


def conv_pool_tanh(conv: torch.nn.Conv2d, x: torch.Tensor, training: bool) -> torch.Tensor:
    """``tanh(max_pool2d(conv(x), 2))``, fused in a CPU training step where ``conv`` is 3×3."""
    if _conv_fusable(conv, x, training):
        return _ConvPool.apply(x, conv.weight, conv.bias, TANH)  # type: ignore[no-any-return]
    return pool_tanh(conv(x), training)


def conv_pool_relu(conv: torch.nn.Conv2d, x: torch.Tensor, training: bool) -> torch.Tensor:
    """``relu(max_pool2d(conv(x), 2))``, fused in a CPU training step where ``conv`` is 3×3."""
    if _conv_fusable(conv, x, training):
        return _ConvPool.apply(x, conv.weight, conv.bias, RELU)  # type: ignore[no-any-return]
    return pool_relu(conv(x), training)


def conv_relu_add_pool(conv: torch.nn.Conv2d, x: torch.Tensor, training: bool) -> torch.Tensor:
    """``max_pool2d(relu(conv(x)) + x, 2)`` (NetRes's skip), fused in a CPU training step
    where ``conv`` is 3×3 and keeps the channel count."""
    if _conv_fusable(conv, x, training) and conv.weight.shape[0] == x.shape[1]:
        return _ConvPool.apply(x, conv.weight, conv.bias, RELU, True)  # type: ignore[no-any-return]
    return F.max_pool2d(torch.relu(conv(x)) + x, 2)
