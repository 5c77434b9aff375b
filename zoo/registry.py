"""The plugin host: loads plugins through pluggy and entry points, validates what they declare.

A :class:`Registry` owns one pluggy ``PluginManager``. It adds the hook
specifications, loads the ``zoo.plugins`` entry points (or only the plugins it
is given), calls each plugin's hooks separately so that every spec carries its
provenance, and keeps the validated specs. Nothing is global but the lazily
built :func:`default_registry`, which tests and embedders can replace.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import os
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from typing import TYPE_CHECKING, Any, Literal

import pluggy
from pydantic import BaseModel, ConfigDict, ValidationError

from zoo import hookspecs
from zoo.datasets import DatasetSpec
from zoo.errors import (
    DuplicateNameError,
    UnknownArchitectureError,
    UnknownDatasetError,
)
from zoo.spec import SHAPE_KEYS, ArchitectureSpec, ModelConfig, Provenance, resolve_config

if TYPE_CHECKING:
    import torch

ENV_DISABLE_AUTOLOAD = "ZOO_DISABLE_PLUGIN_AUTOLOAD"
ENV_PLUGINS = "ZOO_PLUGINS"
ENV_BLOCK = "ZOO_BLOCK_PLUGINS"
#: The distribution whose own plugins load even with autoloading disabled.
CORE_DISTRIBUTION = "zoo"


class PluginInfo(BaseModel):
    """One plugin as ``zoo plugins`` shows it."""

    model_config = ConfigDict(frozen=True)

    name: str
    distribution: str | None = None
    version: str | None = None
    status: Literal["loaded", "error", "blocked"] = "loaded"
    error: str | None = None
    architectures: tuple[str, ...] = ()
    datasets: tuple[str, ...] = ()

    @property
    def provenance(self) -> Provenance:
        return Provenance(plugin=self.name, distribution=self.distribution, version=self.version)


def _split_env(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def suggest(name: str, candidates: Iterable[str]) -> str:
    """``", did you mean X?"`` for the closest candidates, or ``""``."""
    pool = list(candidates)
    folded = {c.lower(): c for c in pool}
    close = [folded[name.lower()]] if name.lower() in folded else []
    close += [c for c in difflib.get_close_matches(name, pool, n=3, cutoff=0.6) if c not in close]
    if not close:
        lowered = difflib.get_close_matches(name.lower(), list(folded), n=3, cutoff=0.6)
        close = [folded[c] for c in lowered]
    if not close:
        return ""
    return "; did you mean " + " or ".join(repr(c) for c in close[:3]) + "?"


class Registry:
    """Architectures and datasets from every plugin, each with its provenance.

    ``autoload=None`` reads ``ZOO_DISABLE_PLUGIN_AUTOLOAD``; ``blocked`` adds to
    ``ZOO_BLOCK_PLUGINS``. Pass ``entry_points=False`` to load nothing but the
    plugins given to :meth:`register`.
    """

    def __init__(
        self,
        *,
        entry_points: bool = True,
        autoload: bool | None = None,
        blocked: Iterable[str] = (),
        environ: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        self._pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self._pm.add_hookspecs(hookspecs)
        self._infos: dict[str, PluginInfo] = {}
        self._blocked = set(_split_env(env.get(ENV_BLOCK))) | set(blocked)
        self._architectures: dict[str, ArchitectureSpec] | None = None
        self._datasets: dict[str, DatasetSpec] | None = None
        self._conflicts: list[str] = []
        if autoload is None:
            autoload = not env.get(ENV_DISABLE_AUTOLOAD)
        if entry_points:
            self._load_entry_points(autoload, set(_split_env(env.get(ENV_PLUGINS))))

    # -- loading -------------------------------------------------------------------------

    def _load_entry_points(self, autoload: bool, explicit: set[str]) -> None:
        seen: set[tuple[str, str | None]] = set()
        for ep in metadata.entry_points(group=hookspecs.ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else None
            version = ep.dist.version if ep.dist is not None else None
            if (ep.name, dist) in seen:  # the same distribution found twice on sys.path
                continue
            seen.add((ep.name, dist))
            if not autoload and dist != CORE_DISTRIBUTION and ep.name not in explicit:
                continue
            if ep.name in self._blocked:
                self._infos[ep.name] = PluginInfo(name=ep.name, distribution=dist,
                                                  version=version, status="blocked")
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                self._record_error(ep.name, dist, version,
                                   f"failed to import {ep.value!r}: {type(exc).__name__}: {exc}")
                continue
            self.register(plugin, name=ep.name, distribution=dist, version=version)

    def register(
        self,
        plugin: object,
        name: str | None = None,
        *,
        distribution: str | None = None,
        version: str | None = None,
    ) -> str:
        """Register a plugin object (a module or an instance with ``@hookimpl`` methods)."""
        plugin_name = name or getattr(plugin, "__name__", None) or repr(plugin)
        if plugin_name in self._blocked:
            self._infos[plugin_name] = PluginInfo(name=plugin_name, distribution=distribution,
                                                  version=version, status="blocked")
            return plugin_name
        if plugin_name in self._infos and self._infos[plugin_name].status == "loaded":
            other = self._infos[plugin_name].provenance
            this = Provenance(plugin=plugin_name, distribution=distribution, version=version)
            raise DuplicateNameError(f"plugin name {plugin_name!r} is used by both "
                                     f"{other.describe()} and {this.describe()}")
        try:
            self._pm.register(plugin, name=plugin_name)
        except Exception as exc:  # pluggy validates hook signatures here
            self._record_error(plugin_name, distribution, version, f"{type(exc).__name__}: {exc}")
            return plugin_name
        self._infos[plugin_name] = PluginInfo(name=plugin_name, distribution=distribution,
                                              version=version)
        self._architectures = self._datasets = None
        return plugin_name

    def _record_error(self, name: str, dist: str | None, version: str | None, error: str) -> None:
        self._infos[name] = PluginInfo(name=name, distribution=dist, version=version,
                                       status="error", error=error)

    def _call_each(self, hook_name: str, spec_type: type[Any]) -> dict[str, list[Any]]:
        """Call ``hook_name`` on every plugin separately; validate the results per plugin."""
        results: dict[str, list[Any]] = {}
        hook = getattr(self._pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            info = self._infos[impl.plugin_name]
            if info.status != "loaded":
                continue
            try:
                returned = impl.function()
                if returned is None:
                    returned = []
                if isinstance(returned, (str, bytes)) or not isinstance(returned, Sequence):
                    raise TypeError(f"{hook_name}() must return a list, "
                                    f"got {type(returned).__name__}")
                specs = [spec_type.model_validate(item) if not isinstance(item, spec_type)
                         else item for item in returned]
                if spec_type is ArchitectureSpec:
                    for spec in specs:
                        clash = set(spec.hparams.model_fields) & set(SHAPE_KEYS)
                        if clash:
                            raise ValueError(f"{spec.name}: hyperparameter names {sorted(clash)} "
                                             f"are reserved")
            except ValidationError as exc:
                err = exc.errors()[0]
                loc = ".".join(str(p) for p in err["loc"])
                self._record_error(info.name, info.distribution, info.version,
                                   f"{hook_name}() returned an invalid spec: {loc}: {err['msg']}")
                continue
            except Exception as exc:
                self._record_error(info.name, info.distribution, info.version,
                                   f"{hook_name}() raised {type(exc).__name__}: {exc}")
                continue
            results[info.name] = [s.model_copy(update={"provenance": info.provenance})
                                  for s in specs]
        return results

    def _collect(self) -> None:
        if self._architectures is not None and self._datasets is not None:
            return
        self._conflicts = []
        archs = self._call_each("zoo_architectures", ArchitectureSpec)
        datasets = self._call_each("zoo_datasets", DatasetSpec)
        # A plugin that failed in either hook contributes nothing.
        archs = {p: s for p, s in archs.items() if self._infos[p].status == "loaded"}
        datasets = {p: s for p, s in datasets.items() if self._infos[p].status == "loaded"}
        self._architectures = self._merge("architecture", archs)
        self._datasets = self._merge("dataset", datasets)
        for plugin, specs in archs.items():
            self._infos[plugin] = self._infos[plugin].model_copy(
                update={"architectures": tuple(s.name for s in specs)})
        for plugin, dspecs in datasets.items():
            self._infos[plugin] = self._infos[plugin].model_copy(
                update={"datasets": tuple(s.name for s in dspecs)})

    def _merge(self, kind: str, per_plugin: dict[str, list[Any]]) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for specs in per_plugin.values():
            for spec in specs:
                if spec.name in merged:
                    first = merged[spec.name].provenance
                    self._conflicts.append(
                        f"{kind} {spec.name!r} is registered by both {first.describe()} and "
                        f"{spec.provenance.describe()}; uninstall one, or block one with "
                        f"-p no:{first.plugin} or -p no:{spec.provenance.plugin}"
                    )
                    continue
                merged[spec.name] = spec
        return merged

    def _checked(self) -> tuple[dict[str, ArchitectureSpec], dict[str, DatasetSpec]]:
        self._collect()
        if self._conflicts:
            raise DuplicateNameError(self._conflicts[0])
        assert self._architectures is not None and self._datasets is not None
        return self._architectures, self._datasets

    # -- queries -------------------------------------------------------------------------

    def plugins(self) -> list[PluginInfo]:
        """Every plugin seen, loaded or not, sorted by name."""
        self._collect()
        return sorted(self._infos.values(), key=lambda p: p.name)

    @property
    def conflicts(self) -> list[str]:
        self._collect()
        return list(self._conflicts)

    def list_models(
        self, patterns: str | Iterable[str] = "*", *, tags: Iterable[str] = ()
    ) -> list[str]:
        """Names matching any shell-style pattern (case-insensitive) and carrying every tag."""
        archs, _ = self._checked()
        pats = [patterns] if isinstance(patterns, str) else list(patterns) or ["*"]
        wanted = {t.lower() for t in tags}
        names = [
            name for name, spec in archs.items()
            if any(fnmatch.fnmatchcase(name.lower(), p.lower()) for p in pats)
            and wanted <= {t.lower() for t in spec.tags}
        ]
        return sorted(names, key=str.lower)

    def get_spec(self, name: str) -> ArchitectureSpec:
        """The spec of architecture ``name``, with its provenance."""
        archs, _ = self._checked()
        try:
            return archs[name]
        except KeyError:
            known = ", ".join(sorted(archs, key=str.lower)) or "none installed"
            hint = suggest(name, archs)
            raise UnknownArchitectureError(
                f"unknown architecture {name!r}{hint or '; known: ' + known}"
            ) from None

    def resolve(self, name: str, **overrides: Any) -> ModelConfig:
        """Validate overrides for ``name`` into a :class:`~zoo.spec.ModelConfig`."""
        return resolve_config(self.get_spec(name), overrides)

    def build(self, config: ModelConfig) -> torch.nn.Module:
        """Build the torch module a resolved config describes."""
        spec = self.get_spec(config.architecture)
        # Re-validated: a config read from a run or bundle may predate a plugin update.
        shape = config.input_shape
        config = resolve_config(spec, {**config.hparams, "in_channels": shape.channels,
                                       "height": shape.height, "width": shape.width,
                                       "num_classes": config.num_classes})
        hparams = spec.hparams.model_validate(config.hparams)
        module: torch.nn.Module = spec.load_builder()(
            hparams, input_shape=config.input_shape, num_classes=config.num_classes
        )
        return module

    def create_model(self, name: str, *, pretrained: bool = False, weights: str | None = None,
                     **overrides: Any) -> torch.nn.Module:
        """Build architecture ``name``; ``overrides`` are validated by its spec's model.

        ``pretrained=True`` loads its default weight set, ``weights=TAG`` a given one
        (see :func:`zoo.pretrained.create_pretrained`).
        """
        if pretrained or weights is not None:
            from zoo.pretrained import create_pretrained

            return create_pretrained(self, name, weights=weights, overrides=overrides)
        return self.build(self.resolve(name, **overrides))

    def hparams_schema(self, name: str) -> dict[str, Any]:
        """JSON Schema of everything :meth:`create_model` accepts for ``name``."""
        return self.get_spec(name).hparams_schema()

    def list_datasets(self) -> list[str]:
        _, datasets = self._checked()
        return sorted(datasets)

    def get_dataset(self, name: str) -> DatasetSpec:
        _, datasets = self._checked()
        try:
            return datasets[name]
        except KeyError:
            known = ", ".join(sorted(datasets)) or "none installed"
            raise UnknownDatasetError(
                f"unknown dataset {name!r}{suggest(name, datasets)} (known: {known})"
            ) from None

    def failed_plugins(self) -> list[PluginInfo]:
        return [p for p in self.plugins() if p.status == "error"]


@functools.lru_cache(maxsize=1)
def default_registry() -> Registry:
    """The registry of the installed plugins, built on first use."""
    return Registry()


def reset_default_registry() -> None:
    """Forget the default registry, so that the next use rescans entry points."""
    default_registry.cache_clear()

