"""The C allocator's settings for training on CPU: keep freed memory instead of unmapping it.

glibc's malloc serves large blocks with fresh pages from ``mmap`` and hands
freed memory back to the OS when the top of its heap grows past a threshold.
A small network's training step allocates and frees a few megabytes of
activations, so with those defaults a step can fault in thousands of fresh,
zeroed pages: 1,400 to 2,200 a step for NetBatchNorm at batch 64 with PyTorch's
layers on this project's machine (``tests/test_allocator.py`` measures it), from
none to 3,800 with its CPU kernels, as the top of the heap falls; Net's smaller
step stays under glibc's adaptive thresholds there. Raising the two thresholds keeps the
pages in the process, as jemalloc or tcmalloc would; the process's peak memory
is unchanged, but it no longer shrinks after a step.

The setting is process-wide and stays for the life of the process;
``TrainConfig(tune_allocator=False)`` leaves the allocator alone, and
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` or malloc tunables in
``GLIBC_TUNABLES`` set in the environment are respected.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

# mallopt() parameters, from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

#: Blocks up to this size come from the heap (glibc's largest accepted value on 64-bit).
MMAP_THRESHOLD = 32 * 1024**2
#: The heap is trimmed only when this much is free at its top.
TRIM_THRESHOLD = 1024**3


def is_glibc() -> bool:
    """Whether this process runs on GNU libc (Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (ValueError, OSError):
        return False


@functools.cache
def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds, once; whether the allocator took them.

    False on other C libraries and platforms, and where the environment already
    tunes malloc.
    """
    if not is_glibc() or sys.maxsize <= 2**32:
        return False
    env = os.environ
    if ("MALLOC_MMAP_THRESHOLD_" in env or "MALLOC_TRIM_THRESHOLD_" in env
            or "glibc.malloc." in env.get("GLIBC_TUNABLES", "")):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1:
        return False
    took_trim: bool = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return took_trim
