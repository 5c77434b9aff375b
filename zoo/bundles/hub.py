"""Pretrained weight sets: finding a declared set's bundle, downloading it once, pinned.

An architecture's spec declares its weight sets (:class:`zoo.spec.weights.WeightSet`);
:func:`fetch_weights` gives the bundle directory of one, after checking that its
``manifest.json`` has the pinned SHA-256 (the manifest pins every other file,
checked by every reader through :func:`zoo.bundles.integrity.open_bundle`). A
package resource is found in the installed package; a URL is downloaded once into
``$ZOO_CACHE_DIR/weights`` (default ``~/.cache/zoo/weights``). No torch.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from zoo.bundles.integrity import bundle_sha256, open_bundle
from zoo.errors import BundleError
from zoo.spec.manifest import MANIFEST_FILE
from zoo.spec.weights import WeightSet
from zoo.util.download import download, extract_archive
from zoo.util.paths import cache_dir

if TYPE_CHECKING:
    from zoo.spec.architecture import ArchitectureSpec


class WeightsError(BundleError):
    """Weights that are not declared, cannot be found, or are not what their spec pins."""


def weights_cache_dir() -> Path:
    """Where downloaded weights go: ``$ZOO_CACHE_DIR/weights``, else ``~/.cache/zoo/weights``."""
    return cache_dir("weights")


def select_weights(spec: ArchitectureSpec, weights: str | bool | None = None) -> WeightSet:
    """The weight set ``weights`` names (its tag), or the default one for ``None``/``True``."""
    if not spec.weights:
        raise WeightsError(f"{spec.name} declares no pretrained weights (zoo show {spec.name}); "
                           "train it, or load a bundle directory")
    if weights is None or weights is True:
        return spec.weights[0]
    for candidate in spec.weights:
        if candidate.tag == weights:
            return candidate
    declared = ", ".join(w.tag for w in spec.weights)
    raise WeightsError(f"{spec.name} has no weight set {weights!r}; declared: {declared}")


def resource_dir(location: str, what: str) -> Path:
    """The directory a package resource ``"package.name:relative/dir"`` names."""
    import importlib.util

    package, _, relative = location.partition(":")
    try:
        found = importlib.util.find_spec(package)
    except (ImportError, ValueError) as exc:
        raise WeightsError(f"{what}: cannot import package {package!r}: {exc}") from None
    places = list(found.submodule_search_locations or []) if found else []
    for place in places:
        candidate = Path(place, *relative.split("/"))
        if candidate.is_dir():
            return candidate
    where = ", ".join(places) or "nowhere (it is not an installed package)"
    raise WeightsError(f"{what}: {location!r} does not exist (package {package!r} is at {where})")


def _check_identity(path: Path, weight_set: WeightSet, what: str) -> None:
    if not (path / MANIFEST_FILE).is_file():
        raise WeightsError(f"{what}: {path} holds no {MANIFEST_FILE}, so it is not a bundle")
    actual = bundle_sha256(path)
    if actual != weight_set.sha256:
        raise WeightsError(f"{what}: the bundle at {path} has SHA-256 {actual}, not the "
                           f"{weight_set.sha256} its spec declares (re-exported without "
                           "updating the declaration, or modified)")


def _bundle_root(unpacked: Path, what: str) -> Path:
    if (unpacked / MANIFEST_FILE).is_file():
        return unpacked
    entries = [p for p in unpacked.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    if len(entries) == 1 and (entries[0] / MANIFEST_FILE).is_file():
        return entries[0]
    raise WeightsError(f"{what}: the archive holds no bundle ({MANIFEST_FILE} at its top or in "
                       "its only folder)")


def _download_bundle(weight_set: WeightSet, dest: Path, what: str, progress: bool) -> Path:
    assert weight_set.archive_sha256 is not None  # the WeightSet validator requires it for URLs
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        suffix = ".zip" if weight_set.location.lower().endswith(".zip") else ".tar.gz"
        archive = download(weight_set.location, staging / f"bundle{suffix}",
                           sha256=weight_set.archive_sha256, what=what, progress=progress)
        unpacked = staging / "unpacked"
        unpacked.mkdir()
        extract_archive(archive, unpacked)
        root = _bundle_root(unpacked, what)
        _check_identity(root, weight_set, what)
        open_bundle(root)  # every file against the manifest, before it enters the cache
        if dest.exists():  # a stale or modified copy: swapped out, then removed with staging
            os.replace(dest, staging / "old")
        try:
            os.replace(root, dest)
        except OSError:
            # another process put it there meanwhile: fine if it is the right bundle
            _check_identity(dest, weight_set, what)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def fetch_weights(architecture: str, weight_set: WeightSet, *, progress: bool = True) -> Path:
    """The bundle directory of ``weight_set``, its manifest checked against the pinned SHA-256.

    A URL's archive is downloaded once into :func:`weights_cache_dir`, checked against
    ``archive_sha256`` before it is unpacked, and the unpacked bundle against ``sha256``
    and its manifest before it is moved into the cache; nothing is left there on failure.
    """
    what = f"{architecture} weights {weight_set.tag!r}"
    if not weight_set.is_url:
        path = resource_dir(weight_set.location, what)
        _check_identity(path, weight_set, what)
        return path
    dest = weights_cache_dir() / f"{architecture}-{weight_set.tag}-{weight_set.sha256[:16]}"
    if (dest / MANIFEST_FILE).is_file() and bundle_sha256(dest) == weight_set.sha256:
        return dest
    return _download_bundle(weight_set, dest, what, progress)


__all__ = ["WeightsError", "fetch_weights", "resource_dir", "select_weights", "weights_cache_dir"]
