"""Load a bundle back into PyTorch, safely.

``zoo.load(BUNDLE)`` returns the model in eval mode; :func:`load_bundle` also
returns the manifest. Before anything is unpickled, every file's SHA-256 is
checked against the manifest, the manifest is validated, and the architecture
is rebuilt through the plugin registry; the weights are then read with
``torch.load(..., weights_only=True)``, which refuses any pickle that would
run code.
"""

from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from zoo.errors import BundleError, UnknownArchitectureError, ZooError, reason
from zoo.manifest import WEIGHTS_FILE, Manifest, open_bundle, read_checked
from zoo.pretrained import resolve_bundle
from zoo.registry import Registry, default_registry


@dataclass(frozen=True)
class LoadedBundle:
    """A bundle loaded into PyTorch: the model (eval mode, on CPU), its manifest, its path."""

    model: torch.nn.Module
    manifest: Manifest
    path: Path


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


def build_from_manifest(manifest: Manifest, registry: Registry, where: str) -> torch.nn.Module:
    """Rebuild the manifest's architecture through ``registry`` (untrained weights)."""
    try:
        registry.get_spec(manifest.architecture)
    except UnknownArchitectureError:
        prov = manifest.provenance
        origin = prov.describe() if prov else "an unknown plugin"
        dist = prov.distribution if prov and prov.distribution else None
        hint = f"; install {dist!r} to load it" if dist else ""
        raise BundleError(f"bundle {where!r} needs architecture {manifest.architecture!r} from "
                          f"{origin}, which is not installed{hint}") from None
    try:
        return registry.build(manifest.model)
    except ZooError as exc:
        raise BundleError(f"cannot rebuild {manifest.architecture!r} of bundle {where!r}: "
                          f"{exc}") from None


def load_bundle(bundle: str | os.PathLike[str], *, registry: Registry | None = None,
                weights: str | None = None, expect_sha256: str | None = None) -> LoadedBundle:
    """Check and load ``bundle`` (a directory, or an architecture or bundle name: see
    :func:`zoo.pretrained.resolve_bundle`; ``weights`` picks a declared weight set).

    ``expect_sha256`` pins the bundle: one whose ``manifest.json`` has another
    SHA-256 (:func:`zoo.manifest.bundle_sha256`) is refused.
    """
    path = resolve_bundle(bundle if isinstance(bundle, str) else Path(bundle), weights=weights,
                          registry=registry)
    manifest = open_bundle(path, expect_sha256=expect_sha256)
    model = build_from_manifest(manifest, registry or default_registry(), str(path))
    state = load_state_dict(path / WEIGHTS_FILE, read_checked(path, manifest, WEIGHTS_FILE))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        why = reason(exc, every_line=True)
        raise BundleError(f"{path / WEIGHTS_FILE} does not fit {manifest.architecture} with "
                          f"hyperparameters {manifest.model.hparams}: {why}") from None
    model.eval()
    return LoadedBundle(model=model, manifest=manifest, path=path)


def load(bundle: str | os.PathLike[str], *, registry: Registry | None = None,
         weights: str | None = None, expect_sha256: str | None = None) -> torch.nn.Module:
    """The bundle's PyTorch model, in eval mode (``zoo.load``); see :func:`load_bundle`."""
    return load_bundle(bundle, registry=registry, weights=weights,
                       expect_sha256=expect_sha256).model


__all__ = ["LoadedBundle", "build_from_manifest", "load", "load_bundle", "load_state_dict",
           "strip_prefix"]
