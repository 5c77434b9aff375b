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
import importlib
import os
import reprlib
import sys
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

import pluggy
from pydantic import BaseModel, ConfigDict, ValidationError

from zoo import hookspecs
from zoo.contract import call_plugin, check_model
from zoo.datasets import DatasetSpec
from zoo.errors import (
    DuplicateNameError,
    PluginError,
    UnknownArchitectureError,
    UnknownDatasetError,
    ZooError,
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
    """One plugin as ``zoo plugins`` shows it.

    ``status`` is ``loaded``; ``partial`` when some of what it declares was dropped
    (a hook that raised, an invalid spec, a name another plugin also registers: see
    ``problems``); ``error`` when it failed as a whole (its import, hooks pluggy
    refuses, an entry-point name already taken: see ``error``); or ``blocked``.
    ``warnings`` say what slows the zoo down (a heavy import while listing).
    """

    model_config = ConfigDict(frozen=True)

    name: str
    distribution: str | None = None
    version: str | None = None
    status: Literal["loaded", "partial", "error", "blocked"] = "loaded"
    error: str | None = None
    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    architectures: tuple[str, ...] = ()
    datasets: tuple[str, ...] = ()

    @property
    def provenance(self) -> Provenance:
        return Provenance(plugin=self.name, distribution=self.distribution, version=self.version)

    @property
    def failed(self) -> bool:
        """Whether it failed as a whole or in part."""
        return self.status in ("error", "partial")


#: Modules too slow to import while listing; a plugin that imports one is named in a warning.
HEAVY_MODULES = ("torch", "torchvision", "onnx", "onnxruntime", "matplotlib")


def heavy_modules() -> set[str]:
    """The modules of :data:`HEAVY_MODULES` imported so far."""
    return {name for name in HEAVY_MODULES if name in sys.modules}


def _one_line(exc: BaseException, *, with_type: bool = True) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else "(no message)"
    return f"{type(exc).__name__}: {text}" if with_type else text


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(spec)"
    return f"{loc}: {err['msg']} (got {reprlib.repr(err.get('input'))})"


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

    Failures stay local: a plugin that fails to import contributes nothing, a
    hook that raises drops what that hook provides, an invalid spec drops only
    itself, and a name two plugins register is unavailable
    (:class:`DuplicateNameError`) while every other name works. :meth:`plugins`
    reports each of them; :meth:`unreported` gives each once, for a warning.
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
        self._packages: dict[str, str] = {}
        self._exceptions: dict[str, BaseException] = {}
        self._heavy: dict[str, list[str]] = {}
        self._reported: set[str] = set()
        self._blocked = set(_split_env(env.get(ENV_BLOCK))) | set(blocked)
        # where each plugin name a user gave came from, to warn of names nothing installs
        self._named: dict[str, list[str]] = {
            ENV_PLUGINS: _split_env(env.get(ENV_PLUGINS)),
            ENV_BLOCK: _split_env(env.get(ENV_BLOCK)), "-p no:NAME": list(blocked)}
        self._installed: set[str] | None = None
        self._architectures: dict[str, ArchitectureSpec] | None = None
        self._datasets: dict[str, DatasetSpec] | None = None
        self._unavailable: dict[tuple[str, str], str] = {}
        self._register_core_plugins()
        if autoload is None:
            autoload = not env.get(ENV_DISABLE_AUTOLOAD)
        if entry_points:
            self._load_entry_points(autoload, set(_split_env(env.get(ENV_PLUGINS))))

    # -- loading -------------------------------------------------------------------------

    def _register_core_plugins(self) -> None:
        """The trainer's writers and the export formats: core plugins, like pytest's own
        reporters (listed by ``zoo plugins`` only when blocked)."""
        from zoo.builtin import CORE_PLUGINS

        for name, module in CORE_PLUGINS.items():
            if name not in self._blocked:
                self._pm.register(importlib.import_module(module), name=name)

    @property
    def hook(self) -> Any:
        """The pluggy hook relay: ``registry.hook.zoo_export_formats()``."""
        return self._pm.hook

    def call_hook(self, name: str, *, firstresult: bool = False, **kwargs: Any) -> Any:
        """Call hook ``name`` as pluggy would (last registered first); what an implementation
        raises, but a :class:`~zoo.errors.ZooError`, becomes a :class:`PluginError` naming it.

        Returns the non-``None`` results, or with ``firstresult`` the first one (or ``None``).
        """
        results = []
        for impl in reversed(getattr(self._pm.hook, name).get_hookimpls()):
            try:
                result = impl.function(**{arg: kwargs[arg] for arg in impl.argnames})
            except ZooError:
                raise
            except Exception as exc:
                info = self._infos.get(impl.plugin_name)
                who = info.provenance.describe() if info else f"core plugin {impl.plugin_name!r}"
                raise PluginError(f"{name}() of {who} raised {_one_line(exc)}") from exc
            if result is not None:
                if firstresult:
                    return result
                results.append(result)
        return None if firstresult else results

    def _load_entry_points(self, autoload: bool, explicit: set[str]) -> None:
        seen: set[tuple[str, str | None]] = set()
        eps = list(metadata.entry_points(group=hookspecs.ENTRY_POINT_GROUP))
        self._installed = {ep.name for ep in eps}
        builtin = {ep.name for ep in eps if ep.dist is not None
                   and ep.dist.name == CORE_DISTRIBUTION}
        # the zoo's own plugins first, so that no other distribution can take their names
        eps.sort(key=lambda ep: ep.dist is None or ep.dist.name != CORE_DISTRIBUTION)
        for ep in eps:
            dist = ep.dist.name if ep.dist is not None else None
            version = ep.dist.version if ep.dist is not None else None
            if (ep.name, dist) in seen:  # the same distribution found twice on sys.path
                continue
            seen.add((ep.name, dist))
            if not autoload and dist != CORE_DISTRIBUTION and ep.name not in explicit:
                continue
            if dist != CORE_DISTRIBUTION and (ep.name in builtin or ep.name in self._infos):
                taken = (f"the zoo's built-in plugin {ep.name!r}" if ep.name in builtin
                         else self._infos[ep.name].provenance.describe())
                self._record_error(f"{ep.name} [{dist}]", dist, version,
                                   f"refused: the entry-point name {ep.name!r} is already taken "
                                   f"by {taken}; rename the entry point", name=ep.name)
                continue
            if ep.name in self._blocked:
                self._infos[ep.name] = PluginInfo(name=ep.name, distribution=dist,
                                                  version=version, status="blocked")
                continue
            before = heavy_modules()
            try:
                plugin = ep.load()
            except Exception as exc:
                self._record_error(ep.name, dist, version,
                                   f"failed to import {ep.value!r}: {_one_line(exc)}", exc)
                continue
            self.register(plugin, name=ep.name, distribution=dist, version=version)
            self._note_heavy(ep.name, before, f"importing {ep.value!r}")

    def register(
        self,
        plugin: object,
        name: str | None = None,
        *,
        distribution: str | None = None,
        version: str | None = None,
        package: str | None = None,
    ) -> str:
        """Register a plugin object (a module or an instance with ``@hookimpl`` methods).

        Its builders and loaders must live in ``package``, by default its own top-level
        package (that of the module, or of the instance's class).
        """
        plugin_name = name or getattr(plugin, "__name__", None) or repr(plugin)
        if plugin_name in self._blocked:
            self._infos[plugin_name] = PluginInfo(name=plugin_name, distribution=distribution,
                                                  version=version, status="blocked")
            return plugin_name
        if plugin_name in self._infos and self._infos[plugin_name].status != "blocked":
            other = self._infos[plugin_name].provenance
            this = Provenance(plugin=plugin_name, distribution=distribution, version=version)
            raise DuplicateNameError(f"plugin name {plugin_name!r} is used by both "
                                     f"{other.describe()} and {this.describe()}")
        try:
            self._pm.register(plugin, name=plugin_name)
        except Exception as exc:  # pluggy validates hook signatures here
            self._record_error(plugin_name, distribution, version, _one_line(exc), exc)
            return plugin_name
        module = plugin.__name__ if isinstance(plugin, ModuleType) else type(plugin).__module__
        self._packages[plugin_name] = package or module.partition(".")[0]
        self._infos[plugin_name] = PluginInfo(name=plugin_name, distribution=distribution,
                                              version=version)
        self._architectures = self._datasets = None
        return plugin_name

    def _record_error(self, key: str, dist: str | None, version: str | None, error: str,
                      exc: BaseException | None = None, *, name: str | None = None) -> None:
        self._infos[key] = PluginInfo(name=name or key, distribution=dist, version=version,
                                      status="error", error=error)
        if exc is not None:
            self._exceptions[key] = exc

    def _note_heavy(self, plugin: str, before: set[str], doing: str) -> None:
        new = sorted(heavy_modules() - before)
        if new:
            self._heavy.setdefault(plugin, []).append(
                f"{doing} imported {', '.join(new)}, which slows down 'zoo list' and 'zoo show'; "
                "import heavy modules inside the builder or loader instead")

    def _validate_one(self, plugin: str, hook_name: str, spec_type: type[Any],
                      item: object) -> Any:
        """One declared spec, validated and checked against the plugin's rules."""
        spec = item if isinstance(item, spec_type) else spec_type.model_validate(item)
        reference = spec.builder if spec_type is ArchitectureSpec else spec.loader
        package = self._packages.get(plugin)
        if package is not None and reference.partition(":")[0].partition(".")[0] != package:
            what = "builder" if spec_type is ArchitectureSpec else "loader"
            raise ValueError(f"{what} {reference!r} is outside the plugin's own package "
                             f"{package!r}; a plugin's builders and loaders must live in it")
        if spec_type is ArchitectureSpec:
            clash = set(spec.hparams.model_fields) & set(SHAPE_KEYS)
            if clash:
                raise ValueError(f"hyperparameter names {sorted(clash)} are reserved for the "
                                 f"shape keys ({', '.join(SHAPE_KEYS)})")
        return spec

    def _call_each(self, hook_name: str, spec_type: type[Any]) -> dict[str, list[Any]]:
        """Call ``hook_name`` on every plugin separately; validate each returned spec alone."""
        results: dict[str, list[Any]] = {}
        hook = getattr(self._pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            info = self._infos[impl.plugin_name]
            if info.status == "error":
                continue
            before = heavy_modules()
            try:
                returned = impl.function()
                if returned is None:
                    returned = []
                if isinstance(returned, (str, bytes)) or not isinstance(returned, Sequence):
                    raise TypeError(f"{hook_name}() must return a list, "
                                    f"got {type(returned).__name__}")
            except ValidationError as exc:  # a spec the plugin failed to construct
                self._exceptions[info.name] = exc
                self._add_problems(info.name, [
                    f"{hook_name}() raised while building an invalid {exc.title}: "
                    f"{_first_error(exc)}; nothing from this hook was registered"])
                continue
            except Exception as exc:
                self._exceptions[info.name] = exc
                self._add_problems(info.name, [f"{hook_name}() raised {_one_line(exc)}; nothing "
                                               "from this hook was registered"])
                continue
            finally:
                self._note_heavy(info.name, before, f"calling {hook_name}()")
            specs, problems = [], []
            for index, item in enumerate(returned):
                label = getattr(item, "name", None) or (
                    item.get("name") if isinstance(item, Mapping) else None) or f"item {index}"
                try:
                    specs.append(self._validate_one(info.name, hook_name, spec_type, item))
                except ValidationError as exc:
                    problems.append(f"{hook_name}() returned an invalid spec {label!r} "
                                    f"(dropped): {_first_error(exc)}")
                except Exception as exc:
                    problems.append(f"{hook_name}() returned an invalid spec {label!r} "
                                    f"(dropped): {_one_line(exc, with_type=False)}")
            if problems:
                self._add_problems(info.name, problems)
            results[info.name] = [s.model_copy(update={"provenance": info.provenance})
                                  for s in specs]
        return results

    def _add_problems(self, plugin: str, problems: list[str]) -> None:
        info = self._infos[plugin]
        status = "partial" if info.status == "loaded" else info.status
        self._infos[plugin] = info.model_copy(
            update={"status": status, "problems": (*info.problems, *problems)})

    def _collect(self) -> None:
        if self._architectures is not None and self._datasets is not None:
            return
        self._unavailable = {}
        for key, info in list(self._infos.items()):  # a rescan starts from a clean slate
            if info.status == "partial":
                self._infos[key] = info.model_copy(update={"status": "loaded", "problems": ()})
        archs = self._call_each("zoo_architectures", ArchitectureSpec)
        datasets = self._call_each("zoo_datasets", DatasetSpec)
        self._architectures = self._merge("architecture", archs)
        self._datasets = self._merge("dataset", datasets)
        for plugin, specs in archs.items():
            self._infos[plugin] = self._infos[plugin].model_copy(update={"architectures": tuple(
                s.name for s in specs if s.name in self._architectures)})
        for plugin, dspecs in datasets.items():
            self._infos[plugin] = self._infos[plugin].model_copy(update={"datasets": tuple(
                s.name for s in dspecs if s.name in self._datasets)})
        for plugin, notes in self._heavy.items():
            if plugin in self._infos:
                self._infos[plugin] = self._infos[plugin].model_copy(
                    update={"warnings": tuple(dict.fromkeys(notes))})

    def _merge(self, kind: str, per_plugin: dict[str, list[Any]]) -> dict[str, Any]:
        """Specs by name; a name registered more than once is nobody's (and a problem)."""
        by_name: dict[str, list[Any]] = {}
        for specs in per_plugin.values():
            for spec in specs:
                by_name.setdefault(spec.name, []).append(spec)
        merged: dict[str, Any] = {}
        for name, specs in by_name.items():
            if len(specs) == 1:
                merged[name] = specs[0]
                continue
            owners = [s.provenance for s in specs]
            message = (f"{kind} {name!r} is registered by both "
                       + " and ".join(p.describe() for p in owners)
                       + "; it is unavailable until one is uninstalled or blocked ("
                       + " or ".join(f"-p no:{p.plugin}" for p in owners) + ")")
            self._unavailable[(kind, name)] = message
            for plugin in dict.fromkeys(p.plugin for p in owners):
                self._add_problems(plugin, [message])
        return merged

    def _checked(self) -> tuple[dict[str, ArchitectureSpec], dict[str, DatasetSpec]]:
        self._collect()
        assert self._architectures is not None and self._datasets is not None
        return self._architectures, self._datasets

    # -- queries -------------------------------------------------------------------------

    def plugins(self) -> list[PluginInfo]:
        """Every plugin seen, loaded or not, sorted by name."""
        self._collect()
        return sorted(self._infos.values(), key=lambda p: p.name)

    @property
    def conflicts(self) -> list[str]:
        """One message per name that two or more plugins register (those names are unavailable)."""
        self._collect()
        return list(self._unavailable.values())

    def plugin_exception(self, plugin: str) -> BaseException | None:
        """The exception a failed plugin raised (its import or hook call), if any."""
        return self._exceptions.get(plugin)

    def unreported(self) -> list[tuple[PluginInfo, str]]:
        """Each plugin failure, problem and warning not returned before: warned once."""
        out = []
        for key, info in sorted(self.plugins_by_key().items()):
            for message in [*([info.error] if info.error else []), *info.problems,
                            *info.warnings]:
                # a name two plugins register is one problem of both: warned once
                seen = message if message in self._unavailable.values() else f"{key}: {message}"
                if seen not in self._reported:
                    self._reported.add(seen)
                    out.append((info, message))
        return out

    def unknown_plugin_names(self) -> list[str]:
        """One sentence for each name in ``ZOO_PLUGINS``, ``ZOO_BLOCK_PLUGINS`` or ``blocked``
        that no installed plugin has (a typo blocks or enables nothing); empty without
        entry points."""
        if self._installed is None:
            return []
        from zoo.builtin import CORE_PLUGINS

        known = self._installed | set(self._infos) | set(CORE_PLUGINS)
        installed = ", ".join(sorted(self._installed | set(CORE_PLUGINS))) or "none"
        return [f"{where.replace('NAME', name)}: no installed plugin is named {name!r}, so "
                f"it changes nothing (installed: {installed})"
                for where, names in self._named.items() for name in names if name not in known]

    def plugins_by_key(self) -> dict[str, PluginInfo]:
        """Every plugin seen, by its key (its name, or ``"name [distribution]"`` if refused)."""
        self._collect()
        return dict(self._infos)

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
            if ("architecture", name) in self._unavailable:
                raise DuplicateNameError(self._unavailable[("architecture", name)]) from None
            known = ", ".join(sorted(archs, key=str.lower)) or "none installed"
            hint = suggest(name, archs)
            raise UnknownArchitectureError(
                f"unknown architecture {name!r}{hint or '; known: ' + known}"
            ) from None

    def resolve(self, name: str, **overrides: Any) -> ModelConfig:
        """Validate overrides for ``name`` into a :class:`~zoo.spec.ModelConfig`."""
        return resolve_config(self.get_spec(name), overrides)

    def build(self, config: ModelConfig) -> torch.nn.Module:
        """Build the torch module a resolved config describes, and check it keeps the contract.

        The builder's exceptions, a call its signature does not fit and a module that
        does not map ``(N, C, H, W)`` to ``(N, num_classes)`` (checked once on a probe
        input, :func:`zoo.contract.check_model`) are :class:`~zoo.errors.PluginError`s
        naming the architecture, its plugin and distribution.
        """
        spec = self.get_spec(config.architecture)
        # Re-validated: a config read from a run or bundle may predate a plugin update.
        shape = config.input_shape
        config = resolve_config(spec, {**config.hparams, "in_channels": shape.channels,
                                       "in_height": shape.height, "in_width": shape.width,
                                       "num_classes": config.num_classes})
        hparams = spec.hparams.model_validate(config.hparams)
        module = call_plugin(f"the builder {spec.builder!r} of architecture {spec.name!r}",
                             spec.provenance, spec.load_builder(), hparams,
                             input_shape=config.input_shape, num_classes=config.num_classes)
        check_model(module, spec, config)
        return module  # type: ignore[no-any-return]

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
            if ("dataset", name) in self._unavailable:
                raise DuplicateNameError(self._unavailable[("dataset", name)]) from None
            known = ", ".join(sorted(datasets)) or "none installed"
            raise UnknownDatasetError(
                f"unknown dataset {name!r}{suggest(name, datasets)} (known: {known})"
            ) from None

    def failed_plugins(self) -> list[PluginInfo]:
        """The plugins that failed as a whole (``error``) or in part (``partial``)."""
        return [p for p in self.plugins() if p.failed]


@functools.lru_cache(maxsize=1)
def default_registry() -> Registry:
    """The registry of the installed plugins, built on first use."""
    return Registry()


def reset_default_registry() -> None:
    """Forget the default registry, so that the next use rescans entry points."""
    default_registry.cache_clear()

