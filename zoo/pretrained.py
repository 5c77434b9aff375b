"""Shipped bundles: find them by path or by a short name (torch-free).

Bundles ship in ``exports/`` at the repository root (found relative to the
installed ``zoo`` package, which suits editable installs), or wherever
``$ZOO_EXPORTS`` points. A bundle is named ``<Arch>-<dataset>`` when exported
from a run (``Net-cifar2``) and ``<Arch>`` otherwise, so ``zoo predict Net
img.jpg`` finds ``exports/Net-cifar2``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from zoo.errors import BundleError
from zoo.manifest import MANIFEST_FILE

ENV_EXPORTS = "ZOO_EXPORTS"


def exports_dir() -> Path:
    """Where shipped bundles live: ``$ZOO_EXPORTS``, else ``exports/`` beside the package."""
    env = os.environ.get(ENV_EXPORTS)
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "exports"


def _bundle_dirs(root: Path) -> list[Path]:
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
    """The shipped bundle of each architecture: ``{architecture: bundle directory}``.

    Where several bundles hold one architecture, a trained one wins over an
    untrained one, then the first by name.
    """
    chosen: dict[str, tuple[bool, Path]] = {}
    for bundle in _bundle_dirs(exports_dir() if root is None else root):
        info = _architecture(bundle)
        if info is None:
            continue
        arch, trained = info
        if arch not in chosen or (trained and not chosen[arch][0]):
            chosen[arch] = (trained, bundle)
    return {arch: path for arch, (_, path) in sorted(chosen.items(), key=lambda kv: kv[0].lower())}


def _names_shipped(text: str, root: Path | None) -> bool:
    """Whether ``text`` is written as a name (no separator) that a shipped bundle answers to."""
    if "/" in text or os.sep in text or text in ("", ".", ".."):
        return False
    base = exports_dir() if root is None else root
    return text in pretrained_bundles(base) or (base / text / MANIFEST_FILE).is_file()


def resolve_bundle(arg: str | Path, root: Path | None = None) -> Path:
    """A bundle directory from a path, a bundle name in ``exports/`` or an architecture name.

    Tried in order: an existing path (``"exports/Net-cifar2"``); an architecture
    name, giving its shipped bundle (``"Net"``: a trained bundle is preferred, see
    :func:`pretrained_bundles`); a bundle directory name in the exports directory
    (``"Net-cifar2"``). Anything else is a :class:`~zoo.errors.BundleError` listing
    what is shipped. A bare name that names a shipped bundle means it, even where
    a folder of that name exists here: write ``./Net`` (or pass a ``Path``) for the folder.
    """
    path = Path(arg)
    if path.exists() and not (isinstance(arg, str) and _names_shipped(arg, root)):
        return path
    text = str(arg)
    base = exports_dir() if root is None else root
    if "/" not in text and os.sep not in text and text not in ("", ".", ".."):
        shipped = pretrained_bundles(base)
        if text in shipped:
            return shipped[text]
        named = base / text
        if (named / MANIFEST_FILE).is_file():
            return named
        names = sorted({p.name for p in _bundle_dirs(base)} | set(shipped), key=str.lower)
        known = ", ".join(names) if names else f"none in {base}"
        raise BundleError(f"no bundle {text!r}: it is neither a directory nor a shipped bundle "
                          f"name (shipped: {known}; set ${ENV_EXPORTS} to look elsewhere)")
    raise BundleError(f"bundle {text!r} does not exist")
