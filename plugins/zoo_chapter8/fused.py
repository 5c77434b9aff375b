"""Convolution, max-pooling and activation fused, for training the chapter-8 networks on CPU.

Every chapter-8 network pools a 3×3 convolution's output 2×2 and applies tanh or
ReLU. ATen does that in several passes over the convolution's output (pooling
with int64 indices, the activation; in the backward pass a zero fill, a scatter
and the activation's gradient, then dense convolutions of a gradient that is
three quarters zeros), its float32 tanh is not vectorized, and its convolutions
are slow on these few channels: together that was most of Net's training step.
``fused.c`` computes each convolution together with its pooling and
activation, never storing the convolution's output, and in the backward pass
scatters each window's gradient from the one output that won it: a 32-image Net
step on one thread takes about 3 ms instead of 6.4-7.1 ms. Pooling with its
activation alone (after a BatchNorm, say) is a kernel of its own.

The kernel is compiled at first use with the system C compiler (``$CC``, else
``cc``) into ``$ZOO_CACHE_DIR/kernels`` (default ``~/.cache/zoo/kernels``),
named by a hash of its source and flags, and loaded with ctypes through
:mod:`zoo_chapter8.kernel_cache`, which loads only a library it built itself.
Where it cannot be built (reported once on stderr), or with ``ZOO_FUSED=0``, the
layers run as plain PyTorch.

It serves training steps only (a module in training mode, gradients on, a
CPU float32 channels_last input with even height and width; channel counts in
``_conv_fusable`` and ``_fusable``). Every tensor handed to C is checked for
what it is (type, dtype, device, its own shape, layout); the kernels allocate
float32 on the input's device. Evaluation, export and tracing run the plain
PyTorch layers, so a trained model computes exactly what its ONNX graph does;
so does anything the kernels would bypass (a ``Conv2d`` subclass, hooks,
torch.func transforms, forward-mode AD, autocast, dispatch modes; see
``_eager`` and ``_conv_fusable``). Pooling and the gradients' routing are
exactly ATen's; the sums run in another order (equal to rounding for finite
inputs), and the tanh is Eigen's rational approximation, within 5 ulp of the
correctly rounded value with FMA, 7 without, and exact (so exactly ±1 where it
saturates) from 7.81 on. There is no second derivative: a backward pass with
``create_graph=True`` raises.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import sysconfig
import threading
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd import forward_ad
from torch.utils._device import DeviceContext

from zoo_chapter8 import kernel_cache
from zoo_chapter8.kernel_cache import KernelBuildError

ENV_SWITCH = "ZOO_FUSED"
TANH, RELU = 0, 1
_SOURCE = Path(__file__).with_name("fused.c")
_PTR, _I64, _I32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32
_WHAT = "the chapter-8 CPU kernels"
F32 = torch.float32


def _first_derivative_only() -> None:
    """Refuse a backward pass that builds a graph (``create_graph=True``).

    The kernels have no second derivative. Autograd would skip the missing terms
    without a word (``once_differentiable`` raises only where its own inputs are
    asked for), so a gradient penalty would be silently wrong.
    """
    if torch.is_grad_enabled():
        raise RuntimeError("the chapter-8 fused training kernels have no second derivative "
                           "(create_graph=True); set ZOO_FUSED=0 to train with the plain "
                           "PyTorch layers")


def _compiler() -> list[str] | None:
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    words = shlex.split(cc)
    if not words or shutil.which(words[0]) is None:
        return None
    return words


def _arch_flags() -> list[str]:
    if platform.machine().lower() in ("x86_64", "amd64") and \
            torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        return ["-mavx2", "-mfma"]
    return []


def _cache_dir() -> Path:
    root = os.environ.get("ZOO_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "zoo") / "kernels"


def _build(compiler: list[str], dest: Path) -> None:
    """Compile the kernel to ``dest``: with OpenMP, else without (Apple's clang)."""
    base = [*compiler, "-O3", "-shared", "-fPIC", *_arch_flags()]
    failure = KernelBuildError("no build was tried")
    for extra in (["-fopenmp"], []):
        done = subprocess.run([*base, *extra, "-o", str(dest), str(_SOURCE)],
                              capture_output=True, text=True, check=False)
        if done.returncode == 0:
            return
        lines = done.stderr.strip().splitlines()
        failure = KernelBuildError(lines[-1] if lines else f"exit {done.returncode}")
    raise failure


def _declare(lib: ctypes.CDLL) -> None:
    """The kernels' C signatures (AttributeError where the library lacks one)."""
    lib.zoo_pool2_act_forward.argtypes = [_PTR, _PTR, _PTR, _I64, _I64, _I64, _I64, _I32, _I32]
    lib.zoo_pool2_act_backward.argtypes = [_PTR, _PTR, _PTR, _PTR, _I64, _I64, _I64, _I64,
                                           _I32, _I32]
    lib.zoo_pool2_act_forward.restype = lib.zoo_pool2_act_backward.restype = None
    lib.zoo_conv_pool_forward.argtypes = [_PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _I64, _I64, _I64,
                                          _I64, _I64, _I32, _I32]
    lib.zoo_stem_backward.argtypes = [_PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _I64, _I64, _I64,
                                      _I64, _I64, _I32, _I32]
    lib.zoo_conv_pool_backward.argtypes = [_PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _I64,
                                           _I64, _I64, _I64, _I64, _I32, _I32]
    for fn in (lib.zoo_conv_pool_forward, lib.zoo_stem_backward, lib.zoo_conv_pool_backward):
        fn.restype = ctypes.c_int32


def _load() -> tuple[ctypes.CDLL | None, str]:
    """The kernel and where it was loaded from, or None and why not (see kernel_cache)."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return None, f"switched off by {ENV_SWITCH}=0"
    compiler = _compiler()
    if compiler is None:
        return None, "no C compiler found (set $CC)"
    key = hashlib.sha256(_SOURCE.read_bytes() + " ".join(
        [*compiler, *_arch_flags(), platform.machine()]).encode()).hexdigest()[:16]
    try:
        lib, where = kernel_cache.load(_cache_dir() / f"fused-{key}.so",
                                       functools.partial(_build, compiler), what=_WHAT)
        _declare(lib)
    except (KernelBuildError, OSError, AttributeError) as exc:
        return None, f"the kernel could not be built or loaded: {exc}"
    return lib, where


_LOADING = threading.Lock()


def _loaded() -> tuple[ctypes.CDLL | None, str]:
    # the batch-split threads reach their first fused layer together: build once
    with _LOADING:
        return _load_once()


@functools.cache
def _load_once() -> tuple[ctypes.CDLL | None, str]:
    lib, where = _load()
    if lib is None and os.environ.get(ENV_SWITCH, "1") != "0":
        print(f"zoo: {_WHAT} are off ({where}); training runs the plain PyTorch layers",
              file=sys.stderr, flush=True)
    return lib, where


def library() -> ctypes.CDLL | None:
    """The compiled kernel, built on first use; None where it is switched off or cannot be built.

    A kernel that cannot be built or loaded is reported once, in one line on stderr.
    """
    return _loaded()[0]


def status() -> str:
    """Where the kernel was loaded from, or why the layers run as plain PyTorch."""
    lib, where = _loaded()
    return f"fused chapter-8 kernels: {where}" if lib is not None else \
        f"fused chapter-8 kernels off: {where}"


def _incoming(grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The gradient of ``out`` as the backward kernels read it: float32 channels_last NCHW."""
    grad = grad.resolve_neg().contiguous(memory_format=torch.channels_last)
    if not _c_readable(grad, tuple(out.shape)):
        raise RuntimeError(f"the fused chapter-8 kernels got a gradient they cannot read "
                           f"({type(grad).__name__}, {grad.dtype}, {grad.device}, shape "
                           f"{tuple(grad.shape)}; expected float32 on cpu, shape "
                           f"{tuple(out.shape)}); set ZOO_FUSED=0 to train with the plain "
                           f"PyTorch layers")
    return grad


class _PoolAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, act: int) -> torch.Tensor:
        lib = library()
        assert lib is not None
        n, c, h, w = x.shape
        y = torch.empty((n, c, h // 2, w // 2), dtype=F32, device=x.device,
                        memory_format=torch.channels_last)
        idx = torch.empty((n, h // 2, w // 2, c), dtype=torch.uint8, device=x.device)
        lib.zoo_pool2_act_forward(x.data_ptr(), y.data_ptr(), idx.data_ptr(), n, h, w, c, act,
                                  torch.get_num_threads())
        ctx.save_for_backward(y, idx)
        ctx.act, ctx.size = act, (h, w)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        _first_derivative_only()
        lib = library()
        assert lib is not None
        y, idx = ctx.saved_tensors
        n, c = y.shape[:2]
        h, w = ctx.size
        grad = _incoming(grad, y)
        gx = torch.empty((n, c, h, w), dtype=F32, device=y.device,
                         memory_format=torch.channels_last)
        lib.zoo_pool2_act_backward(grad.data_ptr(), y.data_ptr(), idx.data_ptr(), gx.data_ptr(),
                                   n, h, w, c, ctx.act, torch.get_num_threads())
        return gx, None


_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)
# offsets within one padded image are int32 in the layer's backward kernel
_MAX_IMAGE = 2**31 - 1


def _c_readable(t: torch.Tensor, shape: tuple[int, ...]) -> bool:
    """A tensor whose memory C may read as float32 of exactly ``shape``: a plain strided CPU
    tensor (no subclass, functorch wrapper or lazy negation)."""
    return (type(t) in _TENSOR_TYPES and t.layout == torch.strided and t.device.type == "cpu"
            and t.dtype == F32 and tuple(t.shape) == shape and not t.is_neg()
            and not torch._C._functorch.is_functorch_wrapped_tensor(t))


def _eager() -> bool:
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


def _modes_active() -> bool:
    """A dispatch mode, or a torch function mode other than torch.set_default_device's."""
    if torch._C._len_torch_dispatch_stack() > 0:
        return True
    if torch._C._len_torch_function_stack() == 0:
        return False
    modes = torch.overrides._get_current_function_mode_stack()  # type: ignore[no-untyped-call]
    return not all(isinstance(mode, DeviceContext) for mode in modes)


def _training_input(x: torch.Tensor, training: bool) -> bool:
    """A CPU training step's float32 channels_last NCHW input, even-sized, and a kernel."""
    return (training and torch.is_grad_enabled() and x.dim() == 4 and _eager()
            and _c_readable(x, tuple(x.shape))
            and x.numel() > 0 and x.shape[2] % 2 == 0 and x.shape[3] % 2 == 0
            and x.is_contiguous(memory_format=torch.channels_last)
            and library() is not None)


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


def _chunk_sum(chunks: torch.Tensor) -> torch.Tensor:
    """The sum over the first dimension, in order: the same whichever thread ran which chunk."""
    total = chunks[0]
    for t in range(1, chunks.shape[0]):
        total = total + chunks[t]
    return total


class _ConvPool(torch.autograd.Function):
    """act(max_pool2d(conv3x3(x), 2)) without storing the convolution's output.

    The backward pass gives the input's gradient where it has a multiple of 8
    channels (a network's later layers); the stem's (a few channels of data)
    has no input gradient.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                act: int) -> torch.Tensor:
        lib = library()
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
        done = lib.zoo_conv_pool_forward(x.data_ptr(), xp.data_ptr(), wt.data_ptr(),
                                         b.data_ptr() if b is not None else None, y.data_ptr(),
                                         idx.data_ptr(), n, h, w, cin, cout, act,
                                         torch.get_num_threads())
        assert done == 0, "zoo_conv_pool_forward refused the shapes _conv_fusable accepted"
        ctx.save_for_backward(xp, y, idx, weight)
        ctx.act, ctx.has_bias = act, bias is not None
        ctx.weight_format = (torch.contiguous_format if weight.is_contiguous()
                             else torch.channels_last)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None,
                                                        torch.Tensor | None, None]:
        _first_derivative_only()
        lib = library()
        assert lib is not None
        xp, y, idx, weight = ctx.saved_tensors
        n, h, w, cin = xp.shape[0], xp.shape[1] - 2, xp.shape[2] - 2, xp.shape[3]
        cout = y.shape[1]
        grad = _incoming(grad, y)
        gx = None
        if cin % 8 == 0:
            chunks = max(1, min(torch.get_num_threads(), n))
            # [cout][kh][kw][cin] is a channels_last weight's own memory: usually no copy
            wr = weight.detach().permute(0, 2, 3, 1).contiguous()
            if ctx.needs_input_grad[0]:
                gx = torch.empty((n, cin, h, w), dtype=F32, device=y.device,
                                 memory_format=torch.channels_last)
            dw = torch.zeros((chunks, cout, 3, 3, cin), dtype=F32, device=y.device)
            db = torch.zeros((chunks, cout), dtype=F32, device=y.device)
            done = lib.zoo_conv_pool_backward(
                xp.data_ptr(), grad.data_ptr(), y.data_ptr(), idx.data_ptr(), wr.data_ptr(),
                gx.data_ptr() if gx is not None else None, dw.data_ptr(), db.data_ptr(),
                n, h, w, cin, cout, ctx.act, chunks)
            if done == -2:
                raise MemoryError("zoo_conv_pool_backward could not allocate its scratch image")
            dweight = _chunk_sum(dw).permute(0, 3, 1, 2)
        else:
            chunks = max(1, min(torch.get_num_threads(), n * (h // 2)))
            dw = torch.zeros((chunks, 3, 3, cin, cout), dtype=F32, device=y.device)
            db = torch.zeros((chunks, cout), dtype=F32, device=y.device)
            done = lib.zoo_stem_backward(xp.data_ptr(), grad.data_ptr(), y.data_ptr(),
                                         idx.data_ptr(), dw.data_ptr(), db.data_ptr(), n, h, w,
                                         cin, cout, ctx.act, chunks)
            dweight = _chunk_sum(dw).permute(3, 2, 0, 1)
        assert done == 0, "the backward kernel refused the shapes _conv_fusable accepted"
        dweight = dweight.contiguous(memory_format=ctx.weight_format)
        return (gx, dweight if ctx.needs_input_grad[1] else None,
                _chunk_sum(db) if ctx.has_bias and ctx.needs_input_grad[2] else None, None)


def _hooked(conv: torch.nn.Module) -> bool:
    """Whether calling ``conv`` would run a hook (Module._call_impl's own test)."""
    hooks = torch.nn.modules.module
    return bool(conv._backward_hooks or conv._backward_pre_hooks or conv._forward_hooks
                or conv._forward_pre_hooks or hooks._global_backward_pre_hooks
                or hooks._global_backward_hooks or hooks._global_forward_hooks
                or hooks._global_forward_pre_hooks)


def _conv_fusable(conv: torch.nn.Conv2d, x: torch.Tensor, training: bool) -> bool:
    """A 3×3, stride 1, padding 1 convolution of at most 64 channels to a multiple of 8, in a
    CPU training step; its input either data of at most 8 channels or a multiple of 8.

    Only an exact ``nn.Conv2d`` (no subclass, no instance ``forward``, no hooks), and only
    on what its tensors really are: the weight's own shape (not ``kernel_size``), a bias of
    ``cout`` float32 values. Anything else runs the plain layer, which computes what
    PyTorch computes or raises PyTorch's own error.
    """
    if type(conv) is not torch.nn.Conv2d or "forward" in vars(conv) or _hooked(conv):
        return False
    weight, bias = conv.weight, conv.bias
    cin = x.shape[1] if x.dim() == 4 else 0
    cout = weight.shape[0] if weight.dim() == 4 else 0
    return (0 < cin <= 64 and (cin % 8 == 0 or (cin <= 8 and not x.requires_grad))
            and 0 < cout <= 64 and cout % 8 == 0
            and _c_readable(weight, (cout, cin, 3, 3))
            and (bias is None or _c_readable(bias, (cout,)))
            and conv.stride == (1, 1) and conv.padding == (1, 1) and conv.dilation == (1, 1)
            and conv.groups == 1 and conv.padding_mode == "zeros"
            and (x.shape[2] + 2) * (x.shape[3] + 2) * cin <= _MAX_IMAGE
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
