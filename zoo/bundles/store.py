"""Bundles by name: the one rule that says what a name means, for every command and the API.

``zoo predict``, ``zoo evaluate``, ``zoo inspect``, ``zoo compare``, ``zoo verify``,
``zoo export --weights``, ``zoo.load``, ``zoo.OnnxClassifier`` and
``zoo.create_model(pretrained=True)`` all read a bundle argument the same way
(:func:`resolve_bundle`):

1. A path (a :class:`~pathlib.Path`, or text with a path separator such as
   ``./Net`` or ``exports/Net-cifar2``) is that directory.
2. A declared name always means its declared weights: an architecture that declares
   weight sets (``Net``: its default set, or the one ``weights=TAG`` names) and
   ``<Arch>-<tag>`` (``Net-cifar2``). No folder anywhere changes what it means.
3. Any other name is one of the user's bundles: the bundle of that name in the user
   exports folder (:func:`user_exports_dir`: ``$ZOO_EXPORTS``, else the user's data
   folder, where ``zoo export`` writes) or in the working directory; for an
   architecture that declares no weights, its one bundle in the exports folder.
   A name that fits several is ambiguous: an error listing them, each by the name
   or path that means it alone.

No torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from zoo.bundles.hub import WeightsError, fetch_weights, select_weights
from zoo.errors import (
    AmbiguousBundleError,
    BundleNotFoundError,
    DuplicateNameError,
    UnknownArchitectureError,
)
from zoo.host.registry import Registry, default_registry
from zoo.spec.architecture import ArchitectureSpec
from zoo.spec.manifest import MANIFEST_FILE
from zoo.spec.weights import WeightSet
from zoo.util.paths import is_bare_name

ENV_EXPORTS = "ZOO_EXPORTS"


def source_exports_dir() -> Path:
    """The source tree's ``exports/`` beside the package (absent from an installed wheel):
    where the maintainer tools find the bundles the chapter-8 plugin ships."""
    return Path(__file__).resolve().parents[2] / "exports"


def user_exports_dir() -> Path:
    """Where ``zoo export`` writes bundles and the user's bundle names are looked up:
    ``$ZOO_EXPORTS``, else the user's data folder (``~/.local/share/zoo/exports`` on
    Linux, ``$XDG_DATA_HOME/zoo/exports`` where that is set; platformdirs elsewhere)."""
    env = os.environ.get(ENV_EXPORTS)
    if env:
        return Path(env)
    import platformdirs

    return platformdirs.user_data_path("zoo", appauthor=False) / "exports"


def bundle_dirs(root: Path) -> list[Path]:
    """The bundle directories (holding a manifest) directly inside ``root``, by name."""
    try:
        entries = list(root.iterdir()) if root.is_dir() else []
    except OSError:  # an unreadable folder holds no bundle anyone can use
        return []
    return sorted((p for p in entries
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

    ``root`` defaults to :func:`source_exports_dir`. Where several bundles hold one
    architecture, a trained one wins over an untrained one, then the first by name.
    """
    chosen: dict[str, tuple[bool, Path]] = {}
    for bundle in bundle_dirs(source_exports_dir() if root is None else root):
        info = _architecture(bundle)
        if info is None:
            continue
        arch, trained = info
        if arch not in chosen or (trained and not chosen[arch][0]):
            chosen[arch] = (trained, bundle)
    return {arch: path for arch, (_, path) in sorted(chosen.items(), key=lambda kv: kv[0].lower())}


def declared_names(registry: Registry | None = None
                   ) -> dict[str, tuple[ArchitectureSpec, WeightSet]]:
    """Every declared name with what it means: ``Arch`` (its default weight set) and
    ``Arch-tag`` for each of its sets."""
    registry = registry if registry is not None else default_registry()
    names: dict[str, tuple[ArchitectureSpec, WeightSet]] = {}
    for arch in registry.list_models():
        spec = registry.get_spec(arch)
        if spec.weights:
            names[arch] = (spec, spec.weights[0])
            names.update({f"{arch}-{w.tag}": (spec, w) for w in spec.weights})
    return names


def declared_bundle(name: str, weights: str | None = None, *,
                    registry: Registry | None = None) -> Path | None:
    """The bundle a declared name means (rule 2), or ``None`` if ``name`` is not declared.

    A :class:`WeightsError` when ``name`` is an architecture that declares no such set,
    or ``<Arch>-<tag>`` with another ``weights``.
    """
    registry = registry if registry is not None else default_registry()
    try:
        spec = registry.get_spec(name)
    except (UnknownArchitectureError, DuplicateNameError):
        spec = None
    if spec is not None and (spec.weights or weights is not None):
        return fetch_weights(spec.name, select_weights(spec, weights))
    if spec is None:
        found = declared_names(registry).get(name)
        if found is not None:
            spec, weight_set = found
            if weights is not None and weights != weight_set.tag:
                raise WeightsError(f"{name!r} names weight set {weight_set.tag!r} of "
                                   f"{spec.name}, not {weights!r}")
            return fetch_weights(spec.name, weight_set)
    return None


def user_bundles(name: str) -> list[Path]:
    """Rule 3: the user's bundles ``name`` may mean: ``EXPORTS/name`` and ``./name``, else,
    for an architecture name, the bundles of it in the exports folder."""
    exports = user_exports_dir()
    found = [p for p in (exports / name, Path(name)) if (p / MANIFEST_FILE).is_file()]
    if len(found) == 2 and found[0].resolve() == found[1].resolve():
        found = found[:1]
    if not found:
        found = [b for b in bundle_dirs(exports) if (_architecture(b) or ("",))[0] == name]
    return found


def _describe(path: Path) -> str:
    exports = user_exports_dir()
    return repr(path.name) if path.parent == exports else repr(f"./{path}")


def resolve_bundle(arg: str | os.PathLike[str], *, weights: str | None = None,
                   registry: Registry | None = None) -> Path:
    """The bundle directory ``arg`` means, by the rule of this module's docstring.

    A name that means nothing is a :class:`~zoo.errors.BundleNotFoundError` listing
    the names there are; one that means several bundles an
    :class:`~zoo.errors.AmbiguousBundleError` listing them.
    """
    if not is_bare_name(arg):
        text = os.fspath(arg)
        if weights is not None:
            raise WeightsError(f"weights={weights!r} picks a declared weight set of an "
                               f"architecture, and {text!r} is a path")
        if not Path(text).exists():
            raise BundleNotFoundError(f"bundle {text!r} does not exist")
        return Path(text)
    name = os.fspath(arg)
    registry = registry if registry is not None else default_registry()
    declared = declared_bundle(name, weights, registry=registry)
    if declared is not None:
        return declared
    if weights is not None:
        raise WeightsError(f"weights={weights!r} picks a declared weight set, and {name!r} "
                           "declares none; give the name or path of one of your bundles "
                           "without weights=")
    found = user_bundles(name)
    if len(found) == 1:
        return found[0]
    if found:
        raise AmbiguousBundleError(
            f"{name!r} could mean {len(found)} bundles: "
            + ", ".join(_describe(p) for p in found)
            + "; name the one you mean")
    exports = user_exports_dir()
    mine = [p.name for p in bundle_dirs(exports)]
    known = sorted(declared_names(registry), key=str.lower)
    raise BundleNotFoundError(
        f"no bundle {name!r}: it is neither a declared name ("
        + (", ".join(known) or "none installed") + f") nor a bundle in {exports} ("
        + (", ".join(mine) or "none yet: zoo export writes there")
        + f"; ${ENV_EXPORTS} moves it); give the path of a bundle elsewhere")


def bundle_names(registry: Registry | None = None) -> list[str]:
    """Every name :func:`resolve_bundle` takes without a path: declared names, then the
    user's bundles (for shell completion)."""
    mine = [p.name for p in bundle_dirs(user_exports_dir())]
    declared = list(declared_names(registry))
    return [*declared, *(n for n in mine if n not in declared)]


__all__ = ["ENV_EXPORTS", "bundle_dirs", "bundle_names", "declared_bundle", "declared_names",
           "pretrained_bundles", "resolve_bundle", "source_exports_dir", "user_bundles",
           "user_exports_dir"]
