"""The chapter-8 kernel library: ``fused.c``, ``fused_bn.c`` and ``fused_head.c``, built at first
use and loaded.

The kernels are compiled with the system C compiler (``$CC``, else ``cc``), with OpenMP
where it has it, for the instruction sets ATen finds on the CPU, into
``$ZOO_CACHE_DIR/kernels`` (default ``~/.cache/zoo/kernels``), named by a hash of their
sources and flags, and loaded with ctypes through :mod:`zoo_chapter8.kernel_cache`, which
loads only a library it built itself. Where they cannot be built (reported once on
stderr), or with ``ZOO_FUSED=0``, :func:`library` is None and the layers of
:mod:`zoo_chapter8.fused` and :mod:`zoo_chapter8.fused_bn` run as plain PyTorch.
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
from collections.abc import Sequence
from pathlib import Path

import torch

from zoo.util.paths import cache_dir
from zoo_chapter8 import kernel_cache
from zoo_chapter8.kernel_cache import KernelBuildError

ENV_SWITCH = "ZOO_FUSED"
_SOURCES = tuple(Path(__file__).with_name(name)
                 for name in ("fused.c", "fused_bn.c", "fused_head.c"))
_HEADERS = tuple(Path(__file__).with_name(name)
                 for name in ("fused_simd.h", "fused_conv.h", "fused_stem.h"))
_PTR, _I64, _I32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32
_WHAT = "the chapter-8 CPU kernels"


def _compiler() -> list[str] | None:
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    words = shlex.split(cc)
    if not words or shutil.which(words[0]) is None:
        return None
    return words


def arch_flags() -> list[str]:
    """Instruction sets for the build, from ATen's view of the CPU (``ATEN_CPU_CAPABILITY``
    lowers it): AVX2 with FMA; with AVX-512 also its 32 registers, where a 32-channel
    convolution's accumulators fit (the 3-to-32 first layers a fifth faster), same numbers."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return []
    avx2 = ["-mavx2", "-mfma"]
    return {"AVX2": avx2, "AVX512": [*avx2, "-mavx512f", "-mavx512vl"]}.get(
        torch.backends.cpu.get_cpu_capability(), [])


def _cache_dir() -> Path:
    return cache_dir("kernels")


def _build(compiler: list[str], dest: Path, flags: Sequence[str] | None = None) -> None:
    """Compile the kernel to ``dest`` (``flags``: the instruction sets, default this CPU's):
    with OpenMP, else without (Apple's clang)."""
    base = [*compiler, "-O3", "-shared", "-fPIC", *(arch_flags() if flags is None else flags)]
    failure = KernelBuildError("no build was tried")
    for extra in (["-fopenmp"], []):
        done = subprocess.run([*base, *extra, "-o", str(dest), *map(str, _SOURCES)],
                              capture_output=True, text=True, check=False)
        if done.returncode == 0:
            return
        lines = done.stderr.strip().splitlines()
        failure = KernelBuildError(lines[-1] if lines else f"exit {done.returncode}")
    raise failure


def _declare(lib: ctypes.CDLL) -> None:
    """The kernels' C signatures (AttributeError where the library lacks one)."""
    lib.zoo_pool2_act_forward.argtypes = [_PTR, _PTR, _PTR, _I64, _I64, _I64, _I64, _I32, _I32]
    lib.zoo_pool2_act_backward.argtypes = [*[_PTR] * 4, *[_I64] * 4, _I32, _I32]
    lib.zoo_pool2_act_forward.restype = lib.zoo_pool2_act_backward.restype = None
    lib.zoo_conv_pool_forward.argtypes = [*[_PTR] * 7, *[_I64] * 5, _I32, _I32]
    lib.zoo_stem_backward.argtypes = [_PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _I64, _I64, _I64,
                                      _I64, _I64, _I32, _I32]
    lib.zoo_conv_pool_backward.argtypes = [_PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _I64,
                                           _I64, _I64, _I64, _I64, _I32, _I32]
    lib.zoo_stem_dense_backward.argtypes = [*[_PTR] * 5, *[_I64] * 5, _I32]
    lib.zoo_stem_bn_backward.argtypes = [*[_PTR] * 12, *[_I64] * 5, _I32, _I32]
    lib.zoo_bn_sums.argtypes = [_PTR, _PTR, _PTR, _I64, _I64, _I64, _I32, _I32]
    lib.zoo_bn_pool_act_forward.argtypes = [*[_PTR] * 6, *[_I64] * 4, _I32, _I32]
    lib.zoo_bn_pool_act_backward.argtypes = [*[_PTR] * 12, *[_I64] * 4, _I32, _I32, _I32]
    lib.zoo_bn_pool_act_forward.restype = None
    lib.zoo_head_forward.argtypes = [*[_PTR] * 8, *[_I64] * 5, _I32, _I32]
    lib.zoo_head_backward.argtypes = [*[_PTR] * 11, *[_I64] * 5, _I32, _I32]
    for fn in (lib.zoo_conv_pool_forward, lib.zoo_stem_backward, lib.zoo_conv_pool_backward,
               lib.zoo_stem_dense_backward, lib.zoo_stem_bn_backward, lib.zoo_bn_sums,
               lib.zoo_bn_pool_act_backward, lib.zoo_head_forward, lib.zoo_head_backward):
        fn.restype = ctypes.c_int32


def _load() -> tuple[ctypes.CDLL | None, str]:
    """The kernel and where it was loaded from, or None and why not (see kernel_cache)."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return None, f"switched off by {ENV_SWITCH}=0"
    compiler = _compiler()
    if compiler is None:
        return None, "no C compiler found (set $CC)"
    key = hashlib.sha256(b"".join(p.read_bytes() for p in (*_SOURCES, *_HEADERS)) + " ".join(
        [*compiler, *arch_flags(), platform.machine()]).encode()).hexdigest()[:16]
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
    """The compiled kernel, built on first use; None where it is switched off or cannot be
    built or loaded (reported once, in one line on stderr)."""
    return _loaded()[0]


def status() -> str:
    """Where the kernel was loaded from, or why the layers run as plain PyTorch."""
    lib, where = _loaded()
    return f"fused chapter-8 kernels: {where}" if lib is not None else \
        f"fused chapter-8 kernels off: {where}"


def build_variant(dest: Path, flags: Sequence[str]) -> ctypes.CDLL:
    """The same kernels built to ``dest`` with ``flags`` in place of this CPU's instruction
    sets (say ``["-mavx2", "-mfma", "-DZOO_UNTUNED"]``) and loaded, outside the cache: for
    comparing builds (``tests/test_fused_isa.py``, ``bench/bench_kernels.py``).
    Raises :class:`KernelBuildError` where there is no compiler or the build fails."""
    compiler = _compiler()
    if compiler is None:
        raise KernelBuildError("no C compiler found (set $CC)")
    partial = dest.with_name(f".{dest.name}.partial")  # no half-written library at dest
    _build(compiler, partial, flags)
    os.replace(partial, dest)
    lib = ctypes.CDLL(str(dest))
    _declare(lib)
    return lib


__all__ = ["ENV_SWITCH", "arch_flags", "build_variant", "library", "status"]
