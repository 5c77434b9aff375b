"""The registry: every architecture, dataset, export format and reference the plugins declare.

A :class:`Registry` is a :class:`~zoo.host.plugins.PluginHost` that collects the
listing hooks' results once per plugin, validates each spec alone (an invalid one
drops only itself), fills in its provenance, and merges them by name: a name two
plugins declare is nobody's until one is blocked or uninstalled
(:class:`~zoo.errors.DuplicateNameError`), while every other name works. It
knows declarations and builds models from them; it never loads weights (that is
:mod:`zoo.models`). Nothing is global but the lazily built
:func:`default_registry`, which tests and embedders can replace.
"""

from __future__ import annotations

import fnmatch
import functools
import reprlib
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from zoo.errors import (
    DuplicateNameError,
    ExportError,
    UnknownArchitectureError,
    UnknownDatasetError,
    ZooError,
)
from zoo.host.contract import call_plugin, check_model, load_dataset
from zoo.host.plugins import (
    CORE_DISTRIBUTION,
    ESSENTIAL_PLUGINS,
    PluginHost,
    PluginInfo,
    heavy_modules,
)
from zoo.spec.architecture import SHAPE_KEYS, ArchitectureSpec, ModelConfig, resolve_config
from zoo.spec.dataset import DatasetRequest, DatasetSpec, LoadedDataset
from zoo.spec.exportformat import ExportFormat
from zoo.spec.reference import ReferenceAccuracy
from zoo.util.suggest import suggest

if TYPE_CHECKING:
    import torch

#: What each listing hook declares: (kind, spec type, the fields naming the plugin's code).
_KINDS: dict[str, tuple[str, type[Any], tuple[str, ...]]] = {
    "zoo_architectures": ("architecture", ArchitectureSpec, ("builder",)),
    "zoo_datasets": ("dataset", DatasetSpec, ("loader",)),
    "zoo_export_formats": ("export format", ExportFormat, ("writer", "verifier")),
    "zoo_reference_accuracies": ("reference", ReferenceAccuracy, ()),
}


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(spec)"
    return f"{loc}: {err['msg']} (got {reprlib.repr(err.get('input'))})"


def _strings(value: object, what: str, example: str) -> list[str]:
    """A string or an iterable of strings as a list; a ZooError naming anything else."""
    if isinstance(value, str):
        return [value]
    items = list(value) if isinstance(value, Iterable) and not isinstance(value, bytes) else None
    if items is None or not all(isinstance(item, str) for item in items):
        raise ZooError(f"{what} are a string or a list of strings, e.g. {example}, "
                       f"got {value!r}")
    return items


class Registry(PluginHost):
    """Architectures, datasets and export formats from every plugin, each with its provenance.

    ``autoload=None`` reads ``ZOO_DISABLE_PLUGIN_AUTOLOAD``; ``blocked`` adds to
    ``ZOO_BLOCK_PLUGINS``. Pass ``entry_points=False`` to load nothing but the core
    plugins and those given to :meth:`register`.

    Failures stay local: a plugin that fails to import contributes nothing, a
    hook that raises drops what that hook provides, an invalid spec drops only
    itself, and a name two plugins register is unavailable
    (:class:`DuplicateNameError`) while every other name works. :meth:`plugins`
    reports each of them; :meth:`unreported` gives each once, for a warning.
    """

    def __init__(self, **options: Any) -> None:
        self._specs: dict[str, dict[str, Any]] | None = None
        self._unavailable: dict[tuple[str, str], str] = {}
        super().__init__(**options)

    def _changed(self) -> None:
        self._specs = None

    # -- collecting ----------------------------------------------------------------------

    def _validate_one(self, plugin: str, hook_name: str, item: object,
                      own: set[str]) -> Any:
        """One declared spec, validated and checked against the plugin's rules."""
        _, spec_type, code_fields = _KINDS[hook_name]
        spec = item if isinstance(item, spec_type) else spec_type.model_validate(item)
        package = self._packages.get(plugin)
        for name in code_fields:
            reference = getattr(spec, name)
            if package is not None and reference.partition(":")[0].partition(".")[0] != package:
                raise ValueError(f"{name} {reference!r} is outside the plugin's own package "
                                 f"{package!r}; a plugin's code must live in it")
        if spec_type is ArchitectureSpec:
            clash = set(spec.hparams.model_fields) & set(SHAPE_KEYS)
            if clash:
                raise ValueError(f"hyperparameter names {sorted(clash)} are reserved for the "
                                 f"shape keys ({', '.join(SHAPE_KEYS)})")
        if spec_type is ReferenceAccuracy and spec.architecture not in own:
            raise ValueError(f"a plugin publishes references for its own architectures only, "
                             f"and {spec.architecture!r} is not one of them")
        return spec

    def _collect_hook(self, hook_name: str,
                      own: Mapping[str, set[str]]) -> dict[str, list[Any]]:
        """Each plugin's valid specs of one listing hook, with its provenance set."""
        out: dict[str, list[Any]] = {}
        for plugin, items in self.call_each(hook_name).items():
            provenance = self._infos[plugin].provenance
            specs, problems = [], []
            for index, item in enumerate(items):
                label = (getattr(item, "name", None) or getattr(item, "architecture", None)
                         or (item.get("name") if isinstance(item, Mapping) else None)
                         or f"item {index}")
                try:
                    specs.append(self._validate_one(plugin, hook_name, item,
                                                    own.get(plugin, set())))
                except ValidationError as exc:
                    problems.append(f"{hook_name}() returned an invalid spec {label!r} "
                                    f"(dropped): {_first_error(exc)}")
                except Exception as exc:
                    problems.append(f"{hook_name}() returned an invalid spec {label!r} "
                                    f"(dropped): {exc}")
            if problems:
                self.add_problems(plugin, problems)
            out[plugin] = [s.model_copy(update={"provenance": provenance}) for s in specs]
        return out

    def _collect(self) -> dict[str, dict[str, Any]]:
        if self._specs is not None:
            return self._specs
        self._unavailable = {}
        for key, info in list(self._infos.items()):  # a rescan starts from a clean slate
            if info.status == "partial":
                self._infos[key] = info.model_copy(update={"status": "loaded", "problems": ()})
        archs = self._collect_hook("zoo_architectures", {})
        own = {plugin: {s.name for s in specs} for plugin, specs in archs.items()}
        per_hook = {"zoo_architectures": archs}
        for hook_name in ("zoo_datasets", "zoo_export_formats", "zoo_reference_accuracies"):
            per_hook[hook_name] = self._collect_hook(hook_name, own)
        specs: dict[str, dict[str, Any]] = {}
        for hook_name, per_plugin in per_hook.items():
            kind = _KINDS[hook_name][0]
            if hook_name == "zoo_reference_accuracies":
                specs[kind] = {s.architecture: s for found in per_plugin.values() for s in found}
                continue
            specs[kind] = self._merge(kind, per_plugin)
            field = {"architecture": "architectures", "dataset": "datasets",
                     "export format": "formats"}[kind]
            for plugin, found in per_plugin.items():
                if plugin in self._infos:
                    self._infos[plugin] = self._infos[plugin].model_copy(update={field: tuple(
                        s.name for s in found if s.name in specs[kind])})
        for plugin, notes in self._heavy.items():
            if plugin in self._infos:
                self._infos[plugin] = self._infos[plugin].model_copy(
                    update={"warnings": tuple(dict.fromkeys(notes))})
        self._specs = specs
        return specs

    def _merge(self, kind: str, per_plugin: dict[str, list[Any]]) -> dict[str, Any]:
        """Specs by name. A name two plugins register is a conflict: the zoo's own plugin
        keeps a name it declares (the other's spec is dropped, so that no plugin can take a
        built-in architecture and its shipped weights away); between other plugins the name
        is nobody's until one is uninstalled or blocked."""
        by_name: dict[str, list[Any]] = {}
        for specs in per_plugin.values():
            for spec in specs:
                by_name.setdefault(spec.name, []).append(spec)
        merged: dict[str, Any] = {}
        for name, specs in by_name.items():
            if len(specs) == 1:
                merged[name] = specs[0]
                continue
            specs.sort(key=lambda s: (s.provenance.distribution or "", s.provenance.plugin))
            owners = [s.provenance for s in specs]
            own = [s for s in specs if s.provenance.distribution == CORE_DISTRIBUTION]
            if len(own) == 1:
                merged[name] = own[0]
                kept = own[0].provenance
                others = [p for p in owners if p is not kept]
                message = (f"{kind} {name!r} is the zoo's own ({self.describe(kept.plugin)}), "
                           "and " + " and ".join(p.describe() for p in others)
                           + " registers it too: the zoo's is kept; rename it in that plugin"
                           + ("" if kept.plugin in ESSENTIAL_PLUGINS else
                              f", or block the zoo's with -p no:{kept.plugin} to use it"))
                self._unavailable[(kind, name)] = message
                for plugin in dict.fromkeys(p.plugin for p in others):
                    self.add_problems(plugin, [message])
                continue
            message = (f"{kind} {name!r} is registered by both "
                       + " and ".join(p.describe() for p in owners)
                       + "; it is unavailable until one is uninstalled or blocked ("
                       + " or ".join(f"-p no:{p.plugin}" for p in owners) + ")")
            self._unavailable[(kind, name)] = message
            for plugin in dict.fromkeys(p.plugin for p in owners):
                self.add_problems(plugin, [message])
        return merged

    # -- plugins -------------------------------------------------------------------------

    def plugins(self) -> list[PluginInfo]:
        """Every plugin seen, loaded or not, sorted by name."""
        self._collect()
        return sorted(self._infos.values(), key=lambda p: p.name)

    def plugins_by_key(self) -> dict[str, PluginInfo]:
        """Every plugin seen, by its key (its name, or ``"name [distribution]"`` if refused)."""
        self._collect()
        return dict(self._infos)

    def failed_plugins(self) -> list[PluginInfo]:
        """The plugins that failed as a whole (``error``) or in part (``partial``)."""
        return [p for p in self.plugins() if p.failed]

    @property
    def conflicts(self) -> list[str]:
        """One message per name that two or more plugins register (those names are unavailable)."""
        self._collect()
        return list(self._unavailable.values())

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

    # -- architectures -------------------------------------------------------------------

    def _get(self, kind: str, name: str, error: type[ZooError]) -> Any:
        if not isinstance(name, str):
            raise error(f"{kind} names are strings, got {name!r}"
                        f"{'; see zoo.list_models()' if kind == 'architecture' else ''}")
        found = self._collect()[kind]
        if name in found:
            return found[name]
        if (kind, name) in self._unavailable:
            raise DuplicateNameError(self._unavailable[(kind, name)])
        known = ", ".join(sorted(found, key=str.lower)) or "none installed"
        hint = suggest(name, found)
        if kind == "architecture":  # the hint, else every name
            raise error(f"unknown {kind} {name!r}{hint or '; known: ' + known}")
        if kind == "dataset":
            raise error(f"unknown {kind} {name!r}{hint} (known: {known})")
        raise error(f"unknown {kind} {name!r}{hint}; installed: {known}")

    def list_models(
        self, patterns: str | Iterable[str] = "*", *, tags: str | Iterable[str] = ()
    ) -> list[str]:
        """Names matching any shell-style pattern (case-insensitive) and carrying every tag."""
        pats = _strings(patterns, "model name patterns", "'NetRes*'") or ["*"]
        wanted = {t.lower() for t in _strings(tags, "tags", "'dropout'")}
        names = [
            name for name, spec in self._collect()["architecture"].items()
            if any(fnmatch.fnmatchcase(name.lower(), p.lower()) for p in pats)
            and wanted <= {t.lower() for t in spec.tags}
        ]
        return sorted(names, key=str.lower)

    def get_spec(self, name: str) -> ArchitectureSpec:
        """The spec of architecture ``name``, with its provenance."""
        spec: ArchitectureSpec = self._get("architecture", name, UnknownArchitectureError)
        return spec

    def resolve(self, name: str, **overrides: Any) -> ModelConfig:
        """Validate overrides for ``name`` into a :class:`~zoo.spec.ModelConfig`."""
        return resolve_config(self.get_spec(name), overrides)

    def build(self, config: ModelConfig) -> torch.nn.Module:
        """Build the torch module a resolved config describes, and check it keeps the contract.

        The builder's exceptions, a call its signature does not fit and a module that
        does not map ``(N, C, H, W)`` to ``(N, num_classes)`` (checked once on a probe
        input, :func:`zoo.host.contract.check_model`) are
        :class:`~zoo.errors.PluginError` s naming the architecture, its plugin and
        distribution.
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

    def create_model(self, name: str, **overrides: Any) -> torch.nn.Module:
        """Build architecture ``name`` with untrained weights; ``overrides`` are validated by
        its spec's model. The registry knows declarations and never loads weights:
        :func:`zoo.create_model` takes ``pretrained=`` and ``weights=``."""
        if "pretrained" in overrides or "weights" in overrides:
            raise ZooError("Registry.create_model builds untrained models; load weights with "
                           f"zoo.create_model({name!r}, pretrained=True) (or weights=TAG)")
        return self.build(self.resolve(name, **overrides))

    def hparams_schema(self, name: str) -> dict[str, Any]:
        """JSON Schema of everything :meth:`create_model` accepts for ``name``."""
        return self.get_spec(name).hparams_schema()

    # -- datasets, export formats, references ----------------------------------------------

    def list_datasets(self) -> list[str]:
        return sorted(self._collect()["dataset"])

    def get_dataset(self, name: str) -> DatasetSpec:
        spec: DatasetSpec = self._get("dataset", name, UnknownDatasetError)
        return spec

    def load_dataset(self, name: str, request: DatasetRequest | None = None,
                     **options: Any) -> LoadedDataset:
        """Load dataset ``name`` for ``request`` with its ``options``, checked against the
        loader contract (:func:`zoo.host.contract.load_dataset`)."""
        return load_dataset(self.get_dataset(name), request or DatasetRequest(), **options)

    def formats(self) -> dict[str, ExportFormat]:
        """Every available export format by name."""
        return dict(self._collect()["export format"])

    def get_format(self, name: str) -> ExportFormat:
        """The export format ``name`` (an :class:`~zoo.errors.ExportError` if unknown)."""
        spec: ExportFormat = self._get("export format", name, ExportError)
        return spec

    def references(self, architectures: Iterable[str] | None = None
                   ) -> dict[str, ReferenceAccuracy]:
        """The reference accuracy each architecture's plugin publishes, by architecture."""
        found: dict[str, ReferenceAccuracy] = self._collect()["reference"]
        available = self._collect()["architecture"]
        wanted = available if architectures is None else set(architectures)
        return {arch: ref for arch, ref in found.items() if arch in wanted and arch in available}


@functools.lru_cache(maxsize=1)
def default_registry() -> Registry:
    """The registry of the installed plugins, built on first use."""
    return Registry()


def reset_default_registry() -> None:
    """Forget the default registry, so that the next use rescans entry points."""
    default_registry.cache_clear()


__all__ = ["PluginInfo", "Registry", "default_registry", "heavy_modules",
           "reset_default_registry"]
