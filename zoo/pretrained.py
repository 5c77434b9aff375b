"""Pretrained bundles: the weight sets specs declare, and bundles found by path or short name.

Torch-free (but :func:`create_pretrained`, which builds the model). An
architecture's spec declares its weight sets (:class:`zoo.weights.WeightSet`);
:func:`fetch_weights` gives the bundle directory of one, after checking that its
``manifest.json`` has the pinned SHA-256 (the manifest pins every other file,
checked by every reader through :func:`zoo.manifest.open_bundle`). A package
resource is found in the installed package; a URL is downloaded once into
``$ZOO_CACHE_DIR/weights`` (default ``~/.cache/zoo/weights``).

Short names (``zoo predict Net img.jpg``, ``zoo.load("Net")``) are resolved by
:func:`resolve_bundle`: an architecture name gives its default weight set's
bundle, ``<Arch>-<tag>`` (``Net-cifar2``) a given one. Where ``$ZOO_EXPORTS`` is
set, short names are looked up in that directory instead, as bundle directory
names or architectures, as they are in the source tree's ``exports/`` for bundles
no spec declares.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo.download import download, extract_archive
from zoo.errors import BundleError, HyperparameterError, UnknownArchitectureError
from zoo.manifest import MANIFEST_FILE, TrainingInfo, bundle_sha256, open_bundle
from zoo.weights import WeightSet

if TYPE_CHECKING:
    import torch

    from zoo.registry import Registry
    from zoo.spec import ArchitectureSpec

ENV_EXPORTS = "ZOO_EXPORTS"
ENV_CACHE_DIR = "ZOO_CACHE_DIR"


class WeightsError(BundleError):
    """Weights that are not declared, cannot be found, or are not what their spec pins."""


def exports_dir() -> Path:
    """Where exported bundles are looked up by name: ``$ZOO_EXPORTS``, else the source tree's
    ``exports/`` beside the package (absent from an installed wheel)."""
    env = os.environ.get(ENV_EXPORTS)
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "exports"


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


def weights_cache_dir() -> Path:
    """Where downloaded weights go: ``$ZOO_CACHE_DIR/weights``, else ``~/.cache/zoo/weights``."""
    env = os.environ.get(ENV_CACHE_DIR)
    return (Path(env) if env else Path.home() / ".cache" / "zoo") / "weights"


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


def accuracy_split(training: TrainingInfo) -> str:
    """The images a bundle's val accuracy was measured on, in words.

    The manifest's ``val_images`` where it has them; else, for older bundles,
    ``"10% of the training images, seed 0"`` for a seeded held-out fraction and
    otherwise the run's own description of its split.
    """
    if training.val_images:
        return training.val_images
    recipe = training.recipe
    fraction = recipe.get("val_split")
    if (not recipe.get("val_dir") and isinstance(fraction, (int, float)) and 0 < fraction < 1
            and training.split.startswith("seeded stratified split")):
        return f"{fraction * 100:g}% of the training images, seed {training.seed}"
    return training.split


# -- weight sets ---------------------------------------------------------------------------


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


def _registry(registry: Registry | None) -> Registry:
    if registry is not None:
        return registry
    from zoo.registry import default_registry

    return default_registry()


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
    is_name = (isinstance(arg, str) and "/" not in text and os.sep not in text
               and text not in ("", ".", ".."))
    if weights is None and path.exists() and not (
            is_name and _names_shipped(text, root, registry)):
        return path
    if not is_name:
        if weights is not None:
            raise WeightsError(f"weights={weights!r} picks a weight set of an architecture, "
                               f"and {text!r} is a path")
        raise BundleError(f"bundle {text!r} does not exist")
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
    raise BundleError(f"no bundle {text!r}: it is neither a directory nor a shipped or "
                      f"exported bundle name (known: {known}; set ${ENV_EXPORTS} to look "
                      "elsewhere)")


# -- building ------------------------------------------------------------------------------

#: Where a shape key's value is in a ModelConfig (both spellings of the height and width).
_SHAPE_FIELDS = {"in_channels": "channels", "height": "height", "width": "width",
                 "in_height": "height", "in_width": "width"}


def create_pretrained(registry: Registry, name: str, *, weights: str | bool | None = None,
                      overrides: Mapping[str, Any] | None = None) -> torch.nn.Module:
    """Architecture ``name`` with the weights of its weight set ``weights`` (default: the first).

    The bundle is checked (pinned manifest, every file's SHA-256) and loaded with
    ``torch.load(weights_only=True)``. ``overrides`` may only repeat the bundle's own
    hyperparameters: weights fit one configuration. The module is in training mode,
    as every :func:`zoo.create_model` result is; call ``.eval()`` to predict.
    """
    from zoo.bundle import load_bundle

    spec = registry.get_spec(name)
    chosen = select_weights(spec, weights)
    overrides = dict(overrides or {})
    if overrides:
        registry.resolve(name, **overrides)  # unknown keys and bad values: the usual error
    path = fetch_weights(spec.name, chosen)
    loaded = load_bundle(path, registry=registry)
    config = loaded.manifest.model
    if config.architecture != spec.name:
        raise WeightsError(f"{spec.name} weights {chosen.tag!r} at {path} hold a "
                           f"{config.architecture}, not a {spec.name}")
    for key, value in overrides.items():
        if key == "num_classes":
            fixed: Any = config.num_classes
        elif key in _SHAPE_FIELDS:
            fixed = getattr(config.input_shape, _SHAPE_FIELDS[key])
        else:
            fixed = config.hparams.get(key)
        if value != fixed:
            raise HyperparameterError(f"the {chosen.tag!r} weights of {spec.name} fix {key}="
                                      f"{fixed!r}, got {key}={value!r}; drop the override, or "
                                      "train a model of your own")
    return loaded.model.train()


__all__ = ["ENV_EXPORTS", "WeightsError", "accuracy_split", "bundle_dirs", "create_pretrained",
           "declared_bundle", "exports_dir", "fetch_weights", "pretrained_bundles",
           "resolve_bundle", "resource_dir", "select_weights", "weights_cache_dir"]
