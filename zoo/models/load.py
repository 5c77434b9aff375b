"""Load a bundle back into PyTorch, safely (``zoo.load``).

``zoo.load(BUNDLE)`` returns the model in eval mode; :func:`load_bundle` also
returns the manifest. Before anything is unpickled, every file's SHA-256 is
checked against the manifest, the manifest is validated, and the architecture
is rebuilt through the plugin registry; the weights are then read with
``torch.load(..., weights_only=True)``, which refuses any pickle that would
run code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from zoo.bundles.integrity import CheckedBundle, check_bundle, read_checked
from zoo.bundles.store import resolve_bundle
from zoo.errors import BundleError, UnknownArchitectureError, ZooError, reason
from zoo.host.registry import Registry, default_registry
from zoo.models.statedict import load_state_dict
from zoo.spec.manifest import WEIGHTS_FILE, Manifest


@dataclass(frozen=True)
class LoadedBundle:
    """A bundle loaded into PyTorch: the model (eval mode, on CPU), its manifest, its path."""

    model: torch.nn.Module
    manifest: Manifest
    path: Path


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
    :func:`zoo.bundles.store.resolve_bundle`; ``weights`` picks a declared weight set).

    ``expect_sha256`` pins the bundle: one whose ``manifest.json`` has another
    SHA-256 (:func:`zoo.bundles.integrity.bundle_sha256`) is refused.
    """
    path = resolve_bundle(bundle if isinstance(bundle, str) else Path(bundle), weights=weights,
                          registry=registry)
    checked = check_bundle(path, expect_sha256=expect_sha256, read=(WEIGHTS_FILE,))
    return load_checked(checked, registry or default_registry())


def load_checked(checked: CheckedBundle, registry: Registry) -> LoadedBundle:
    """The model of a bundle already checked (:func:`~zoo.bundles.integrity.check_bundle`),
    from the very bytes of ``model.pt`` that were checked."""
    path, manifest = checked.path, checked.manifest
    model = build_from_manifest(manifest, registry, str(path))
    data = checked.data.get(WEIGHTS_FILE)
    if data is None:
        data = read_checked(path, manifest, WEIGHTS_FILE)
    state = load_state_dict(path / WEIGHTS_FILE, data)
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


__all__ = ["LoadedBundle", "build_from_manifest", "load", "load_bundle", "load_checked"]
