"""Machine-independent records: what a bundle says about its data without this machine's paths.

A run records where its data was (``run.json``: ``data.source``, and the config's
``data_dir``, ``val_dir``, ``cache_dir``...), as absolute paths of the machine
that trained it. A bundle is shared, so the exporter keeps only what means the
same everywhere: the dataset's name, its content hash, the split, and of a data
directory only its last component (``/data/cifar2/train`` → ``train``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

#: The config keys that hold data locations: recorded by their last component only.
DATA_PATH_KEYS = ("data_dir", "val_dir", "cache_dir")

_WINDOWS_ABSOLUTE = re.compile(r"^[A-Za-z]:[\\/]|^\\\\")


def is_machine_path(text: str) -> bool:
    """Whether ``text`` is a path that only means something on one machine.

    Absolute (POSIX or Windows), home-relative (``~``), or climbing out of the
    working folder (``../data``).
    """
    if _WINDOWS_ABSOLUTE.match(text):
        return True
    path = PurePosixPath(text)
    return path.is_absolute() or text.startswith("~") or ".." in path.parts


def last_component(text: str) -> str:
    """The last component of a POSIX or Windows path (``C:\\data\\train`` → ``train``)."""
    windows = bool(_WINDOWS_ABSOLUTE.match(text)) or ("\\" in text and "/" not in text)
    path = PureWindowsPath(text) if windows else PurePosixPath(text)
    return path.name or str(text)


def portable_source(source: str | None) -> str | None:
    """A data location as a bundle records it: its last component (``None`` stays ``None``).

    URLs (a download location) are kept as they are.
    """
    if source is None or "://" in source:
        return source
    return last_component(source)


def portable_recipe(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """A run's configuration with every machine path reduced to its last component.

    The data locations (:data:`DATA_PATH_KEYS`) always are; any other string that
    :func:`is_machine_path` (e.g. an absolute ``out``) too, at any depth.
    """

    def convert(key: str | None, value: Any) -> Any:
        if isinstance(value, str):
            if key in DATA_PATH_KEYS or is_machine_path(value):
                return portable_source(value)
            return value
        if isinstance(value, Mapping):
            return {k: convert(str(k), v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [convert(None, v) for v in value]
        return value

    return {str(k): convert(str(k), v) for k, v in recipe.items()}


__all__ = ["DATA_PATH_KEYS", "is_machine_path", "last_component", "portable_recipe",
           "portable_source"]
