"""Where the zoo keeps what it caches: one place computes it (as timm's ``get_cache_dir``)."""

from __future__ import annotations

import os
from pathlib import Path

ENV_CACHE_DIR = "ZOO_CACHE_DIR"


def cache_dir(child: str = "") -> Path:
    """``$ZOO_CACHE_DIR/child``, else ``~/.cache/zoo/child``: downloaded weights, decoded
    datasets, compiled kernels. Plugins use it for caches of their own."""
    env = os.environ.get(ENV_CACHE_DIR)
    root = Path(env) if env else Path.home() / ".cache" / "zoo"
    return root / child if child else root


def is_bare_name(arg: object) -> bool:
    """Whether ``arg`` is a name (``"Net"``, ``"Net-cifar2"``) rather than a path: a string
    with no path separator that is not ``.`` or ``..``. A :class:`~pathlib.Path` is always
    a path."""
    return (isinstance(arg, str) and "/" not in arg and os.sep not in arg
            and arg not in ("", ".", ".."))


__all__ = ["ENV_CACHE_DIR", "cache_dir", "is_bare_name"]
