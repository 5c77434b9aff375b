"""Bundles by name: where exported and shipped bundles are looked up, and what a name means.

Short names (``zoo predict Net img.jpg``, ``zoo.load("Net")``) are resolved by
:func:`resolve_bundle`: an architecture name gives its default weight set's
bundle, ``<Arch>-<tag>`` (``Net-cifar2``) a given one (:mod:`zoo.bundles.hub`).
Where ``$ZOO_EXPORTS`` is set, short names are looked up in that directory
instead, as bundle directory names or architectures, as they are in the source
tree's ``exports/`` for bundles no spec declares. No torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from zoo.bundles.hub import WeightsError, fetch_weights, select_weights
from zoo.errors import BundleNotFoundError, UnknownArchitectureError
from zoo.host.registry import Registry, default_registry
from zoo.spec.manifest import MANIFEST_FILE
from zoo.util.paths import is_bare_name

ENV_EXPORTS = "ZOO_EXPORTS"


def exports_dir() -> Path:
    """Where exported bundles are looked up by name: ``$ZOO_EXPORTS``, else the source tree's
    ``exports/`` beside the package (absent from an installed wheel)."""
    env = os.environ.get(ENV_EXPORTS)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "exports"


def user_exports_dir() -> Path:
    """Where ``zoo export`` writes bundles and ``zoo predict NAME`` finds them:
    ``$ZOO_EXPORTS``, else the user's data folder (``~/.local/share/zoo/exports`` on
    Linux, ``$XDG_DATA_HOME/zoo/exports`` where that is set; platformdirs elsewhere)."""
    env = os.environ.get(ENV_EXPORTS)
    if env:
        return Path(env)
    import platformdirs

    return platformdirs.user_data_path("zoo", appauthor=False) / "exports"


def search_dirs(root: Path | None = None) -> list[Path]:
    """The folders :func:`resolve_bundle` looks in for a bundle name, in order: ``root``
    alone where given, else ``$ZOO_EXPORTS`` alone where set, else the user exports
    folder (:func:`user_exports_dir`) then the source tree's ``exports/``."""
    if root is not None:
        return [root]
    if os.environ.get(ENV_EXPORTS):
        return [exports_dir()]
    dirs = [user_exports_dir(), exports_dir()]
    return dirs if dirs[0] != dirs[1] else dirs[:1]


def bundle_dirs(root: Path) -> list[Path]:
    """The bundle directories (holding a manifest) directly inside ``root``, by name."""
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir()
                   if not p.name.startswith(".") and (p / MANIFEST_FILE).is_file()),
                  key=lambda p: p.name.lower())


def _architecture(bundle: Path) -> tuple[str, bool] | None:
    """(architecture, trained) from a manifest, read without full validation; None if unreadable."""
    try:
        raw = json.loads((bundle / MANIFEST_FILE).read_text(encoding="utf-8"))
        arch = raw["architecture"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None
    if not isinstance(arch, str):
        return None
    return arch, raw.get("training") is not None


def pretrained_bundles(root: Path | None = None) -> dict[str, Path]:
    """The bundle of each architecture in a directory: ``{architecture: bundle directory}``.

    ``root`` defaults to :func:`exports_dir`. Where several bundles hold one
    architecture, a trained one wins over an untrained one, then the first by name.
    """
    chosen: dict[str, tuple[bool, Path]] = {}
    for bundle in bundle_dirs(exports_dir() if root is None else root):
        info = _architecture(bundle)
        if info is None:
            continue
        arch, trained = info
        if arch not in chosen or (trained and not chosen[arch][0]):
            chosen[arch] = (trained, bundle)
    return {arch: path for arch, (_, path) in sorted(chosen.items(), key=lambda kv: kv[0].lower())}


def _registry(registry: Registry | None) -> Registry:
    return registry if registry is not None else default_registry()


def declared_bundle(name: str, weights: str | None = None, *,
                    registry: Registry | None = None) -> Path | None:
    """The bundle of ``name`` (an architecture, or ``<Arch>-<tag>``) among declared weights.

    ``None`` when no installed spec matches; a :class:`WeightsError` when one does but
    declares no such weights.
    """
    registry = _registry(registry)
    try:
        spec = registry.get_spec(name)
    except UnknownArchitectureError:
        spec = None
    if spec is not None:
        if not spec.weights and weights is None:
            return None
        return fetch_weights(spec.name, select_weights(spec, weights))
    for arch in registry.list_models():
        spec = registry.get_spec(arch)
        for candidate in spec.weights:
            if name == f"{spec.name}-{candidate.tag}":
                if weights is not None and weights != candidate.tag:
                    raise WeightsError(f"{name!r} names weight set {candidate.tag!r} of "
                                       f"{spec.name}, not {weights!r}")
                return fetch_weights(spec.name, candidate)
    return None


def _declared_names(registry: Registry) -> list[str]:
    names: list[str] = []
    for arch in registry.list_models():
        spec = registry.get_spec(arch)
        if spec.weights:
            names += [arch, *(f"{arch}-{w.tag}" for w in spec.weights)]
    return names


def _names_shipped(text: str, root: Path | None, registry: Registry | None) -> bool:
    """Whether the bare name ``text`` answers to declared weights or a shipped bundle."""
    explicit = root is not None or bool(os.environ.get(ENV_EXPORTS))
    if not explicit and text in _declared_names(_registry(registry)):
        return True
    base = exports_dir() if root is None else root
    return text in pretrained_bundles(base) or (base / text / MANIFEST_FILE).is_file()


def resolve_bundle(arg: str | Path, root: Path | None = None, *, weights: str | None = None,
                   registry: Registry | None = None) -> Path:
    """A bundle directory from a path, an architecture name or a bundle name.

    Tried in order: an existing path (``"exports/Net-cifar2"``); then, for a plain
    name, the declared weights (``"Net"``: its default weight set, or the one
    ``weights`` names; ``"Net-cifar2"``: weight set ``cifar2`` of ``Net``) unless
    ``root`` is given or ``$ZOO_EXPORTS`` is set and ``weights`` is not; then the
    bundles in each of :func:`search_dirs` (``root``; else ``$ZOO_EXPORTS``; else the
    user exports folder, where ``zoo export`` writes, then the source tree's
    ``exports/``), by directory name or architecture (a trained bundle preferred,
    see :func:`pretrained_bundles`).
    Anything else is a :class:`~zoo.errors.BundleError` listing what there is. A
    bare name that answers to a shipped bundle means it, even where a folder of that
    name exists here: write ``./Net`` (or pass a ``Path``) for the folder.
    """
    path = Path(arg)
    text = str(arg)
    is_name = is_bare_name(arg)
    if weights is None and path.exists() and not (
            is_name and _names_shipped(text, root, registry)):
        return path
    if not is_name:
        if weights is not None:
            raise WeightsError(f"weights={weights!r} picks a weight set of an architecture, "
                               f"and {text!r} is a path")
        raise BundleNotFoundError(f"bundle {text!r} does not exist")
    explicit = root is not None or bool(os.environ.get(ENV_EXPORTS))
    declared: list[str] = []
    if weights is not None or not explicit:
        found = declared_bundle(text, weights, registry=registry)
        if found is not None:
            return found
        declared = _declared_names(_registry(registry))
    bases = search_dirs(root)
    names: set[str] = set(declared)
    for base in bases:
        shipped = pretrained_bundles(base)
        if text in shipped:
            return shipped[text]
        named = base / text
        if (named / MANIFEST_FILE).is_file():
            return named
        names |= {*(p.name for p in bundle_dirs(base)), *shipped}
    where = " and ".join(str(b) for b in bases)
    known = ", ".join(sorted(names, key=str.lower)) if names else f"none in {where}"
    raise BundleNotFoundError(f"no bundle {text!r}: it is neither a directory nor a shipped or "
                      f"exported bundle name (known: {known}; set ${ENV_EXPORTS} to look "
                      "elsewhere)")


__all__ = ["ENV_EXPORTS", "bundle_dirs", "declared_bundle", "exports_dir", "pretrained_bundles",
           "resolve_bundle", "search_dirs", "user_exports_dir"]
