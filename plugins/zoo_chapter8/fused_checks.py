"""What the fused chapter-8 kernels may hand to C, and the plain backward passes for the rest.

The forward pass hands C only inputs that :func:`c_readable` accepts (see
``fused._conv_fusable``). The backward pass gets its tensors back from autograd,
and checks each again before C reads it:

* the incoming gradient (:func:`incoming`): where C cannot read it (a vmap's
  batched gradient from ``autograd.grad(..., is_grads_batched=True)`` or
  ``jacobian(vectorize=True)``, a tensor subclass), or where the backward pass
  runs under the JIT tracer, torch.compile, a torch.func transform or a mode,
  the gradients are computed by the plain layers' backward operators
  (:func:`plain_pool_backward`, :func:`plain_conv_backward`, :func:`plain_head_backward`);
* the tensors saved in the forward pass, which a saved-tensor hook
  (``torch.autograd.graph.save_on_cpu``, ``saved_tensors_hooks``) may give back
  as other tensors, and the convolution's weight, which is the parameter itself
  (``conv.weight.data = ...`` between forward and backward replaces it, for the
  plain layers too), against the forward pass's shapes: another device, dtype
  or shape raises RuntimeError, as the plain layers' backward operators raise
  (:func:`saved`; the weight is checked as the plain convolution reads it, by
  :func:`saved_weight`); another layout (``save_on_cpu`` gives tensors back
  NCHW-contiguous) is copied into the layout the kernel reads
  (:func:`kernel_layouts`); a tensor C cannot read (a subclass, a lazy
  negation) gets the plain backward operators.
"""

from __future__ import annotations

import torch
from torch.autograd import forward_ad
from torch.utils._device import DeviceContext

TANH, RELU, NONE = 0, 1, 2  # the kernels' activations (NONE: backward only, a skip's gradient)
F32 = torch.float32
CL, CF = torch.channels_last, torch.contiguous_format
_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)
#: weight dtypes whose every value is a float32: the plain convolution reads them as float32
_WIDENED = (torch.float16, torch.bfloat16)
_OFF = "set ZOO_FUSED=0 to train with the plain PyTorch layers"


def _wrapped(t: torch.Tensor) -> bool:
    """A functorch wrapper (torch.func), or a batched tensor of the vmap that batched
    gradients run under (``is_grads_batched=True``, ``jacobian(vectorize=True)``)."""
    return (torch._C._functorch.is_functorch_wrapped_tensor(t)
            or torch._C._functorch.is_legacy_batchedtensor(t))


def plain_tensor(t: torch.Tensor) -> bool:
    """A strided CPU tensor whose memory C may read: no subclass, wrapper (vmap's batched
    tensors) or lazy negation."""
    return (type(t) in _TENSOR_TYPES and t.layout == torch.strided and t.is_cpu
            and not t.is_neg() and not _wrapped(t))


def c_readable(t: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype = F32) -> bool:
    """A tensor whose memory C may read as ``dtype`` of exactly ``shape``."""
    return plain_tensor(t) and t.dtype == dtype and t.shape == shape


def eager() -> bool:
    """False where the kernels would bypass something: the JIT tracer (the ONNX exporter's),
    torch.compile, torch.export, a torch.func transform (grad, vmap...), forward-mode AD,
    CPU autocast, a torch function mode (other than torch.set_default_device's) or a
    dispatch mode. Those get the plain PyTorch layers."""
    return not (torch._C._get_tracing_state() is not None or torch.compiler.is_compiling()
                or torch.onnx.is_in_onnx_export()
                or torch._C._functorch.peek_interpreter_stack() is not None
                or forward_ad._current_level >= 0
                or torch.is_autocast_enabled("cpu")
                or _modes_active())


def _eager_backward() -> bool:
    """:func:`eager` for a backward pass (which forward-mode AD, autocast and ONNX export leave
    alone): False under the JIT tracer, torch.compile (compiled autograd), a torch.func
    transform or a mode."""
    return not (torch._C._get_tracing_state() is not None or torch.compiler.is_compiling()
                or torch._C._functorch.peek_interpreter_stack() is not None
                or _modes_active())


def _modes_active() -> bool:
    """A dispatch mode, or a torch function mode other than torch.set_default_device's."""
    if torch._C._len_torch_dispatch_stack() > 0:
        return True
    if torch._C._len_torch_function_stack() == 0:
        return False
    modes = torch.overrides._get_current_function_mode_stack()  # type: ignore[no-untyped-call]
    return not all(isinstance(mode, DeviceContext) for mode in modes)


def incoming(grad: torch.Tensor, shape: tuple[int, ...],
             layout: torch.memory_format = CL) -> torch.Tensor | None:
    """The gradient of an output as the backward kernels read it, float32 in ``layout``
    (channels_last NCHW, or a row-major matrix with ``contiguous_format``); None where C
    cannot read it (a vmap's batched gradient, a subclass) or the backward pass runs where
    the kernels would bypass something (:func:`_eager_backward`)."""
    if type(grad) not in _TENSOR_TYPES or _wrapped(grad) or not _eager_backward():
        return None
    if grad.is_neg():
        grad = grad.resolve_neg()
    readable = (grad.layout == torch.strided and grad.is_cpu
                and grad.dtype == F32 and grad.shape == shape)
    return grad.contiguous(memory_format=layout) if readable else None


def _describe(t: object) -> str:
    if not isinstance(t, torch.Tensor):
        return type(t).__name__
    return f"{t.dtype} on {t.device}, shape {tuple(t.shape)}, {t.layout}"


def _refused(t: object, what: str, shape: tuple[int, ...], dtype: torch.dtype) -> RuntimeError:
    return RuntimeError(
        f"the fused chapter-8 backward pass got its saved {what} back as {_describe(t)}; it "
        f"saved {dtype} on cpu, shape {shape} (a saved-tensor hook must give back what it was "
        f"given, and a parameter's .data keep its shape and dtype until the backward pass); "
        f"{_OFF}")


def saved(t: torch.Tensor, what: str, shape: tuple[int, ...],
          dtype: torch.dtype = F32) -> torch.Tensor:
    """``t``, a tensor the forward pass saved, as autograd unpacked it: RuntimeError where it
    came back on another device, or with another dtype, shape or tensor layout, as the plain
    layers' backward operators raise (C never reads it)."""
    if not (isinstance(t, torch.Tensor) and t.layout == torch.strided
            and t.is_cpu and t.dtype == dtype and t.shape == shape):
        raise _refused(t, what, shape, dtype)
    return t


def saved_weight(weight: torch.Tensor, shape: tuple[int, ...],
                 read: bool) -> torch.Tensor | None:
    """The convolution's weight as the backward pass finds it (the parameter itself, or what a
    saved-tensor hook gives back), where the input's gradient needs it (``read``), else None.
    As the plain convolution's backward pass: another shape raises RuntimeError; where it is
    read, float16 or bfloat16 is read as float32, another dtype or device raises
    (:func:`saved`)."""
    if not read:
        if isinstance(weight, torch.Tensor) and weight.shape == shape:
            return None
        raise _refused(weight, "convolution weight", shape, F32)
    if (isinstance(weight, torch.Tensor) and weight.dtype in _WIDENED
            and weight.layout == torch.strided and weight.is_cpu
            and weight.shape == shape):
        return weight.float()
    return saved(weight, "convolution weight", shape)


def unwrapped(t: torch.Tensor) -> bool:
    """A checked saved tensor (:func:`saved`: strided, on the CPU) whose memory C may read: no
    subclass, wrapper or lazy negation."""
    return type(t) in _TENSOR_TYPES and not t.is_neg() and not _wrapped(t)


def kernel_layouts(*tensors: tuple[torch.Tensor, torch.memory_format]
                   ) -> list[torch.Tensor] | None:
    """Checked saved tensors (:func:`saved`), each in the layout the kernel reads: copied where
    it came back in another one (``save_on_cpu`` gives back NCHW-contiguous tensors); None
    where C cannot read one of them at all (:func:`unwrapped`)."""
    for t, _ in tensors:
        if not unwrapped(t):
            return None
    return [t.contiguous(memory_format=layout) for t, layout in tensors]


def act_backward(grad: torch.Tensor, y: torch.Tensor, act: int) -> torch.Tensor:
    """The activation's gradient from its output, as the plain layers' backward computes it."""
    if act == TANH:
        out: torch.Tensor = torch.ops.aten.tanh_backward(grad, y)
    elif act == NONE:
        out = grad
    else:
        out = torch.ops.aten.threshold_backward(grad, y, 0)
    return out


def unpool(z: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """The 2×2 max-pooling's backward pass: each window's gradient ``z`` (NCHW) to the input
    that won it (``idx``: its position 0-3 in the window, row-major, NHWC), zeros elsewhere,
    as max_pool2d_with_indices_backward scatters it. Out of place, no view a vmap's batched
    tensor lacks a rule for: it runs under vmap."""
    n, c, h2, w2 = z.shape
    k = idx.permute(0, 3, 1, 2)
    zero = torch.zeros((), dtype=z.dtype, device=z.device)
    grid = torch.stack([torch.where(k == j, z, zero) for j in range(4)], dim=-1)
    return grid.reshape(n, c, h2, w2, 2, 2).permute(0, 1, 2, 4, 3, 5).reshape(
        n, c, 2 * h2, 2 * w2)


def plain_pool_backward(grad: torch.Tensor, y: torch.Tensor, idx: torch.Tensor,
                        act: int) -> torch.Tensor:
    """act(max_pool2d(x, 2))'s input gradient from its output and pooling indices.

    As autograd's C++ formulas, a tensor subclass's ``__torch_function__`` is not called."""
    with torch._C.DisableTorchFunctionSubclass():
        return unpool(act_backward(grad, y, act), idx)


def plain_conv_backward(grad: torch.Tensor, xp: torch.Tensor, y: torch.Tensor,
                        idx: torch.Tensor, weight: torch.Tensor | None, act: int,
                        mask: tuple[bool, bool, bool]
                        ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """act(max_pool2d(conv3x3(x), 2))'s gradients (input, weight, bias: those ``mask`` asks
    for) by the plain convolution's backward operator, from the padded NHWC input ``xp``;
    ``weight`` None where the input's gradient is not asked for (it is not read)."""
    cin = xp.shape[3]
    cout = y.shape[1]
    with torch._C.DisableTorchFunctionSubclass():
        if weight is None:  # only its shape is read
            weight = torch.empty((cout, cin, 3, 3), dtype=xp.dtype, device=xp.device,
                                 memory_format=CL)
        conv_grad = unpool(act_backward(grad, y, act), idx)
        x = xp[:, 1:-1, 1:-1, :].permute(0, 3, 1, 2)
        gx, gw, gb = torch.ops.aten.convolution_backward(
            conv_grad, x, weight, [cout], [1, 1], [1, 1], [1, 1], False, [0, 0], 1, list(mask))
    return (gx if mask[0] else None, gw if mask[1] else None, gb if mask[2] else None)


def plain_stem_backward(grad: torch.Tensor, x: torch.Tensor, cout: int,
                        mask: tuple[bool, bool]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """A 3×3 convolution's weight and bias gradients (those ``mask`` asks for) from its whole
    output gradient and its input ``x`` (which has no gradient), by the plain convolution's
    backward operator."""
    with torch._C.DisableTorchFunctionSubclass():
        shape_only = torch.empty((cout, x.shape[1], 3, 3), dtype=x.dtype, device=x.device,
                                 memory_format=CL)
        _, gw, gb = torch.ops.aten.convolution_backward(
            grad, x, shape_only, [cout], [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
            [False, *mask])
    return (gw if mask[0] else None, gb if mask[1] else None)


def plain_head_backward(grad: torch.Tensor, x: torch.Tensor, w1: torch.Tensor,
                        a: torch.Tensor, w2: torch.Tensor, act: int,
                        mask: tuple[bool, ...]) -> tuple[torch.Tensor | None, ...]:
    """fc2(act(fc1(flatten(x, 1))))'s gradients (x, fc1's weight and bias, fc2's weight and
    bias: those ``mask`` asks for) from the hidden activations ``a``, by ATen's operators."""
    with torch._C.DisableTorchFunctionSubclass():
        flat = x.reshape(x.shape[0], -1)
        dz = act_backward(grad.mm(w2), a, act)
        gx = dz.mm(w1).view(x.shape) if mask[0] else None
        return (gx, dz.t().mm(flat) if mask[1] else None, dz.sum(0) if mask[2] else None,
                grad.t().mm(a) if mask[3] else None, grad.sum(0) if mask[4] else None)


def hooked(module: torch.nn.Module) -> bool:
    """Whether calling ``module`` would run a hook (Module._call_impl's own test)."""
    hooks = torch.nn.modules.module
    return bool(module._backward_hooks or module._backward_pre_hooks or module._forward_hooks
                or module._forward_pre_hooks or hooks._global_backward_pre_hooks
                or hooks._global_backward_hooks or hooks._global_forward_hooks
                or hooks._global_forward_pre_hooks)


def grad_format(weight: torch.Tensor) -> torch.memory_format:
    """The layout a convolution weight's gradient is returned in: the weight's own (row-major
    or channels_last), so that autograd's accumulation keeps it without a copy."""
    return torch.contiguous_format if weight.is_contiguous() else torch.channels_last

