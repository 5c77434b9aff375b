"""State dicts: read safely (``weights_only=True``, under
:func:`zoo.util.pickleguard.strict_unpickling`) and without training-time key prefixes."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch

from zoo.errors import BundleError, reason
from zoo.util.pickleguard import strict_unpickling


def strip_prefix(state: dict[str, Any]) -> dict[str, Any]:
    """A state_dict without the ``module.`` (DDP) or ``_orig_mod.`` (compile) prefix."""
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_state_dict(path: Path, data: bytes | None = None) -> dict[str, Any]:
    """Read a state_dict with ``weights_only=True``; anything else is a :class:`BundleError`.

    ``data``: the file's bytes, already read (and checked) by the caller.
    """
    try:
        source: Any = io.BytesIO(data) if data is not None else path
        with strict_unpickling():
            state = torch.load(source, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError,
            TypeError) as exc:
        raise BundleError(f"refusing {path}: it is not a plain tensor state_dict that loads with "
                          f"weights_only=True ({reason(exc)})") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a trainer checkpoint
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise BundleError(f"{path} does not hold a state_dict (a dict of named tensors)")
    return strip_prefix(state)


__all__ = ["load_state_dict", "strip_prefix"]
