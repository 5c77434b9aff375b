"""What this CPU can compute natively: the instruction-set features that decide fast paths.

Development and user machines differ (AVX2 only; AVX-512 with BF16 and VNNI; AMX; Arm with
BF16), so a fast path is chosen at run time from these answers, never at build time, and
each one has a fallback that :func:`cpu_features`'s callers test by patching it. Read from
``/proc/cpuinfo`` on Linux (the kernel's own names); elsewhere the set is empty, which
selects the portable paths. Torch-free.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

#: Features that compute bfloat16 products in hardware (x86: AVX512-BF16, AMX; Arm: BF16).
BF16_FEATURES = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
#: Features with int8 dot products (x86: AVX512-VNNI, AVX-VNNI, AMX; Arm: the dot product).
INT8_FEATURES = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"})
#: The features :func:`describe` prints, in this order, when present.
REPORTED = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx512_fp16",
            "amx_bf16", "amx_int8", "asimd", "asimddp", "bf16", "sve")


def _parse_cpuinfo(text: str) -> frozenset[str]:
    """The flags of the first processor of a ``/proc/cpuinfo`` text (x86 ``flags``, Arm
    ``Features``)."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


@functools.cache
def cpu_features() -> frozenset[str]:
    """The CPU's feature flags as Linux names them (empty where they cannot be read)."""
    try:
        return _parse_cpuinfo(Path("/proc/cpuinfo").read_text(errors="replace"))
    except OSError:
        return frozenset()


def native_bf16() -> bool:
    """Whether bfloat16 matrix products run in hardware here (else emulated, slower)."""
    return bool(cpu_features() & BF16_FEATURES)


def native_int8() -> bool:
    """Whether int8 dot products run in hardware here (VNNI/AMX/Arm dot product)."""
    return bool(cpu_features() & INT8_FEATURES)


def describe() -> str:
    """One line naming the machine and its fast-path features, for benchmark headers."""
    present = [f for f in REPORTED if f in cpu_features()]
    return f"{platform.machine() or 'unknown'} CPU, features: {' '.join(present) or 'none known'}"


__all__ = ["BF16_FEATURES", "INT8_FEATURES", "cpu_features", "describe", "native_bf16",
           "native_int8"]
