"""Thread counts: what a ``--threads``/``num_threads`` setting may ask for on this machine."""

from __future__ import annotations

import os

from zoo.errors import ZooError

#: The most CPU threads a setting may ask for, per core of this machine.
MAX_THREADS_PER_CORE = 4


def max_threads() -> int:
    """The most threads a ``--threads``/``num_threads`` setting may ask for on this machine."""
    return (os.cpu_count() or 1) * MAX_THREADS_PER_CORE


def default_threads() -> int:
    """intra-op threads: the physical-ish core count, at most 4 (small CNNs gain nothing more)."""
    return max(1, min(4, os.cpu_count() or 1))


def check_threads(threads: int | None, what: str = "threads") -> int:
    """A thread count in 1..4 x cores (None: :func:`default_threads`), else a ZooError."""
    if threads is None:
        return default_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) \
            or not 1 <= threads <= max_threads():
        raise ZooError(f"{what} must be an integer from 1 to {max_threads()} (4 per core of "
                       f"this machine), got {threads!r}")
    return threads


__all__ = ["MAX_THREADS_PER_CORE", "check_threads", "default_threads", "max_threads"]
