"""Pretrained weight sets: finding a declared set's bundle, downloading it once, pinned.

An architecture's spec declares its weight sets (:class:`zoo.spec.weights.WeightSet`);
:func:`fetch_weights` gives the bundle directory of one, after checking that its
``manifest.json`` has the pinned SHA-256 (the manifest pins every other file,
checked by every reader through :func:`zoo.bundles.integrity.open_bundle`). A
package resource is found in the installed package; a URL is downloaded once into
``$ZOO_CACHE_DIR/weights`` (default ``~/.cache/zoo/weights``). No torch.

A download is bounded (:func:`zoo.util.download.download`: an overall deadline, a
byte cap from the set's ``archive_size``), the archive checked against its pinned
SHA-256, then listed within limits (:mod:`zoo.util.archive`: member count, unpacked
size, expansion ratio). Its ``manifest.json`` is read from the archive and checked
against the pinned bundle SHA-256 before anything is unpacked, and only the files that
manifest lists are unpacked, each of its listed size: nothing else the archive holds
reaches the disk. Everything happens in a staging folder beside the destination
(``.<name>.zoo-<pid>-*.tmp``), removed whatever happens; those of processes that died
are removed by the next fetch.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from zoo.bundles.integrity import MAX_MANIFEST_BYTES, bundle_sha256, open_bundle, parse_manifest
from zoo.errors import BundleError
from zoo.spec.exportformat import FILE_PATTERN
from zoo.spec.manifest import MANIFEST_FILE
from zoo.spec.weights import WeightSet
from zoo.util.archive import Archive, ArchiveLimits, open_archive
from zoo.util.download import download, download_limit
from zoo.util.fsutil import clean_stale_temporaries
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


def _identity(path: Path) -> str | None:
    """The bundle SHA-256 of ``path``, or None where it has no readable manifest."""
    try:
        return bundle_sha256(path) if (path / MANIFEST_FILE).is_file() else None
    except (BundleError, OSError):
        return None


def _check_identity(path: Path, weight_set: WeightSet, what: str) -> None:
    actual = _identity(path)
    if actual is None:
        raise WeightsError(f"{what}: {path} holds no {MANIFEST_FILE}, so it is not a bundle")
    if actual != weight_set.sha256:
        raise WeightsError(f"{what}: the bundle at {path} has SHA-256 {actual}, not the "
                           f"{weight_set.sha256} its spec declares (re-exported without "
                           "updating the declaration, or modified)")


def _bundle_prefix(archive: Archive, what: str) -> str:
    """Where the bundle is in the archive: ``""`` (at its top) or ``"folder/"`` (its only
    folder, ignoring hidden ones and ``__MACOSX``)."""
    if MANIFEST_FILE in archive.files:
        return ""
    tops = {name.split("/", 1)[0] for name in archive.files if "/" in name}
    tops = {t for t in tops if not t.startswith((".", "__MACOSX"))}
    if len(tops) == 1 and f"{next(iter(tops))}/{MANIFEST_FILE}" in archive.files:
        return f"{next(iter(tops))}/"
    raise WeightsError(f"{what}: the archive holds no bundle ({MANIFEST_FILE} at its top or in "
                       "its only folder)")


def _unpack_bundle(archive: Archive, weight_set: WeightSet, what: str, dest: Path) -> None:
    """Unpack into ``dest`` the pinned manifest and the files it lists, nothing else."""
    prefix = _bundle_prefix(archive, what)
    data = archive.read(prefix + MANIFEST_FILE, MAX_MANIFEST_BYTES)
    actual = hashlib.sha256(data).hexdigest()
    if actual != weight_set.sha256:
        raise WeightsError(f"{what}: the bundle in {weight_set.location} has SHA-256 {actual}, "
                           f"not the {weight_set.sha256} its spec declares (re-exported without "
                           "updating the declaration, or modified)")
    manifest = parse_manifest(data, f"{weight_set.location}:{prefix}{MANIFEST_FILE}")
    wanted = {prefix + MANIFEST_FILE: MANIFEST_FILE}
    for name, entry in manifest.files.items():
        member = prefix + name
        if not re.fullmatch(FILE_PATTERN, name):
            raise WeightsError(f"{what}: the manifest lists {name!r}, which is not a plain "
                               "relative path inside the bundle")
        if member not in archive.files:
            raise WeightsError(f"{what}: the archive lacks {name}, which its manifest lists")
        if archive.files[member] != entry.size:
            raise WeightsError(f"{what}: the archive's {name} does not match its SHA-256 in the "
                               f"manifest (size {archive.files[member]}, expected {entry.size})")
        wanted[member] = name
    archive.extract(wanted, dest)


def _download_bundle(weight_set: WeightSet, dest: Path, what: str, progress: bool,
                     deadline_s: float | None, limits: ArchiveLimits | None) -> Path:
    assert weight_set.archive_sha256 is not None  # the WeightSet validator requires it for URLs
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temporaries(dest)  # staging folders of fetches that died
        # named as zoo.util.fsutil names temporaries, so that clean_stale_temporaries finds it
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.zoo-{os.getpid()}-",
                                        suffix=".tmp", dir=dest.parent))
    except OSError as exc:
        raise WeightsError(f"{what}: cannot write to the weights cache {dest.parent}: "
                           f"{exc.strerror or exc}") from None
    try:
        suffix = ".zip" if weight_set.location.lower().endswith(".zip") else ".tar.gz"
        declared = weight_set.archive_size
        hint = ("its declared archive_size plus a margin" if declared is not None else
                "declare the weight set's archive_size to set another cap")
        archive = download(weight_set.location, staging / f"bundle{suffix}",
                           sha256=weight_set.archive_sha256, what=what, progress=progress,
                           deadline_s=deadline_s, max_bytes=download_limit(declared),
                           size_hint=hint)
        unpacked = staging / "bundle"
        unpacked.mkdir()
        with open_archive(archive, limits) as opened:
            _unpack_bundle(opened, weight_set, what, unpacked)
        archive.unlink()
        open_bundle(unpacked)  # every file against the manifest, before it enters the cache
        try:
            if dest.exists() or dest.is_symlink():  # a stale or modified copy: swapped out
                os.replace(dest, staging / "old")
            os.replace(unpacked, dest)
        except OSError:
            # another process put it there meanwhile: fine if it is the right bundle
            _check_identity(dest, weight_set, what)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def fetch_weights(architecture: str, weight_set: WeightSet, *, progress: bool = True,
                  deadline_s: float | None = None,
                  limits: ArchiveLimits | None = None) -> Path:
    """The bundle directory of ``weight_set``, its manifest checked against the pinned SHA-256.

    A URL's archive is downloaded once into :func:`weights_cache_dir` (within
    ``deadline_s`` seconds, default :data:`zoo.util.download.DEADLINE_S`), checked
    against ``archive_sha256`` before it is unpacked (within ``limits``, default
    :class:`zoo.util.archive.ArchiveLimits`), and the unpacked bundle against ``sha256``
    and its manifest before it is moved into the cache; nothing is left there on failure.
    """
    what = f"{architecture} weights {weight_set.tag!r}"
    if not weight_set.is_url:
        path = resource_dir(weight_set.location, what)
        _check_identity(path, weight_set, what)
        return path
    dest = weights_cache_dir() / f"{architecture}-{weight_set.tag}-{weight_set.sha256[:16]}"
    if _identity(dest) == weight_set.sha256:
        return dest
    return _download_bundle(weight_set, dest, what, progress, deadline_s, limits)


__all__ = ["WeightsError", "fetch_weights", "resource_dir", "select_weights", "weights_cache_dir"]
