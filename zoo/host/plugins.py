"""Loading plugins: pluggy's manager, entry points, blocking, and each plugin's standing.

A :class:`PluginHost` owns one pluggy ``PluginManager`` with the zoo's hook
specifications (:mod:`zoo.host.hookspecs`). It registers the core plugins
(:data:`CORE_PLUGINS`, named by module so that the host imports none of them
until it runs), then the ``zoo.plugins`` entry points, and keeps a
:class:`PluginInfo` for every plugin it saw. Hooks are called through pluggy
(:meth:`PluginHost.call_hook`), wrappers included; what an implementation raises
becomes a :class:`~zoo.errors.PluginError` naming its plugin. A hook name no
specification declares is refused with the plugin (pluggy's ``check_pending``),
as is a wrapper on a listing hook. The listing hooks are called once per plugin
(:meth:`PluginHost.call_each`), so that each result carries its plugin.

Failures stay local: a plugin that fails to import, or that pluggy refuses,
contributes nothing and is reported by ``zoo plugins``; every other plugin works.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from types import ModuleType
from typing import Any, Literal

import pluggy
from pydantic import BaseModel, ConfigDict

from zoo.errors import DuplicateNameError, PluginError, ZooError
from zoo.host import calls, hookspecs
from zoo.host.calls import (
    HookTimeout,
    call_with_deadline,
    hook_failure,
    one_line,
    raising_impl,
)
from zoo.spec.provenance import Provenance
from zoo.util.suggest import suggest
from zoo.util.version import __version__

ENV_DISABLE_AUTOLOAD = "ZOO_DISABLE_PLUGIN_AUTOLOAD"
ENV_PLUGINS = "ZOO_PLUGINS"
ENV_BLOCK = "ZOO_BLOCK_PLUGINS"
#: The distribution whose own plugins load even with autoloading disabled.
CORE_DISTRIBUTION = "zoo"

#: Short name -> module of every core plugin, in registration order (as pytest's
#: ``default_plugins``): the trainer's writers, early stopping and the export formats.
CORE_PLUGINS: dict[str, str] = {
    "metricsfiles": "zoo.builtin.metricsfiles",
    "curveplot": "zoo.builtin.curveplot",
    "progressdisplay": "zoo.builtin.progressdisplay",
    "earlystop": "zoo.builtin.earlystop",
    "tensorboard": "zoo.builtin.tensorboard",
    "formats": "zoo.builtin.formats",
}
#: Core plugins that cannot be blocked (pytest's ``essential_plugins``): every bundle is
#: written and verified through the ``onnx`` format of ``formats``.
ESSENTIAL_PLUGINS: dict[str, str] = {
    "formats": "every export writes and verifies its ONNX graph through the onnx format it "
               "declares",
}
#: Hooks called once per plugin without arguments, whose results carry the plugin.
LISTING_HOOKS = ("zoo_architectures", "zoo_datasets", "zoo_export_formats",
                 "zoo_reference_accuracies")
#: Modules too slow to import while listing; a plugin that imports one is named in a warning.
HEAVY_MODULES = ("torch", "torchvision", "onnx", "onnxruntime", "matplotlib", "numpy")


class PluginInfo(BaseModel):
    """One plugin as ``zoo plugins`` shows it.

    ``status`` is ``loaded``; ``partial`` when some of what it declares was dropped
    (a hook that raised, an invalid spec, a name another plugin also registers: see
    ``problems``); ``error`` when it failed as a whole (its import, hooks pluggy
    refuses or no specification declares, an entry-point name already taken: see
    ``error``); or ``blocked``. ``warnings`` say what slows the zoo down (a heavy
    import while listing).
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
    formats: tuple[str, ...] = ()
    hooks: tuple[str, ...] = ()
    core: bool = False

    @property
    def provenance(self) -> Provenance:
        return Provenance(plugin=self.name, distribution=self.distribution, version=self.version)

    def describe(self) -> str:
        """``"tiny-nets 1.0 (plugin 'tiny')"``, or ``"core plugin 'formats'"``."""
        return f"core plugin {self.name!r}" if self.core else self.provenance.describe()

    @property
    def failed(self) -> bool:
        """Whether it failed as a whole or in part."""
        return self.status in ("error", "partial")


def heavy_modules() -> set[str]:
    """The modules of :data:`HEAVY_MODULES` imported so far."""
    return {name for name in HEAVY_MODULES if name in sys.modules}


def _split_env(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


class PluginHost:
    """The plugins of one registry: loaded, blocked or refused, each with its provenance.

    ``autoload=None`` reads ``ZOO_DISABLE_PLUGIN_AUTOLOAD``; ``blocked`` adds to
    ``ZOO_BLOCK_PLUGINS``. Pass ``entry_points=False`` to load nothing but the core
    plugins and those given to :meth:`register`. ``listing_timeout``: the seconds a
    listing hook may take (:meth:`call_each`).
    """

    def __init__(
        self,
        *,
        entry_points: bool = True,
        autoload: bool | None = None,
        blocked: Iterable[str] = (),
        environ: Mapping[str, str] | None = None,
        listing_timeout: float | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        #: Seconds a listing hook may take before its plugin is reported as failed
        #: (default: :data:`zoo.host.calls.LISTING_TIMEOUT_S`).
        self.listing_timeout = (calls.LISTING_TIMEOUT_S if listing_timeout is None
                                else listing_timeout)
        self._hung: set[str] = set()  # plugins whose listing hook never returned
        blocked = list(blocked)
        self._blocked = set(_split_env(env.get(ENV_BLOCK))) | set(blocked)
        for name in sorted(self._blocked & set(ESSENTIAL_PLUGINS)):
            raise ZooError(f"plugin {name!r} cannot be blocked: {ESSENTIAL_PLUGINS[name]} (drop "
                           f"-p no:{name}, or {name} from ${ENV_BLOCK})")
        self._pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self._pm.add_hookspecs(hookspecs)
        self._infos: dict[str, PluginInfo] = {}
        self._packages: dict[str, str] = {}
        self._exceptions: dict[str, BaseException] = {}
        self._heavy: dict[str, list[str]] = {}
        self._reported: set[str] = set()
        # where each plugin name a user gave came from, to warn of names nothing installs
        self._named: dict[str, list[str]] = {
            ENV_PLUGINS: _split_env(env.get(ENV_PLUGINS)),
            ENV_BLOCK: _split_env(env.get(ENV_BLOCK)), "-p no:NAME": blocked}
        self._installed: set[str] | None = None
        for name, module in CORE_PLUGINS.items():
            status = "blocked" if name in self._blocked else "loaded"
            self._infos[name] = PluginInfo(name=name, distribution=CORE_DISTRIBUTION,
                                           version=__version__, status=status, core=True)
            if status == "loaded":
                plugin = importlib.import_module(module)
                self._pm.register(plugin, name=name)
                self._packages[name] = CORE_DISTRIBUTION
                self._infos[name] = self._infos[name].model_copy(
                    update={"hooks": self._hook_names(plugin)})
        if autoload is None:
            autoload = not env.get(ENV_DISABLE_AUTOLOAD)
        if entry_points:
            self._load_entry_points(autoload, set(_split_env(env.get(ENV_PLUGINS))))

    # -- calling hooks -------------------------------------------------------------------

    @property
    def hook(self) -> Any:
        """pluggy's hook relay: ``host.hook.zoo_train_note(run=..., text=...)``."""
        return self._pm.hook

    def call_hook(self, name: str, **kwargs: Any) -> Any:
        """Call hook ``name`` through pluggy, with its ordering, wrappers and ``firstresult``.

        What an implementation raises, but a :class:`~zoo.errors.ZooError`, becomes a
        :class:`PluginError` naming the plugin (the original is its ``__cause__``).
        """
        caller = getattr(self._pm.hook, name)
        try:
            return caller(**kwargs)
        except ZooError:
            raise
        except Exception as exc:
            impl = raising_impl(caller.get_hookimpls(), exc.__traceback__)
            if impl is None:  # pluggy's own error: a call that does not fit the spec
                raise
            raise PluginError(f"{name}() of {self.describe(impl.plugin_name)} raised "
                              f"{one_line(exc)}") from exc

    def describe(self, plugin: str) -> str:
        """``"tiny-nets 1.0 (plugin 'tiny')"``, or ``"core plugin 'formats'"``."""
        info = self._infos.get(plugin)
        return info.describe() if info else f"plugin {plugin!r}"

    def call_each(self, hook_name: str) -> dict[str, list[Any]]:
        """Call listing hook ``hook_name`` on every plugin separately: ``{plugin: items}``.

        A plugin whose hook raises or returns something other than a list contributes
        nothing to it, and the problem is recorded against the plugin. One whose hook does
        not return within :attr:`listing_timeout` seconds is left running in its thread
        and contributes nothing more (its other listing hooks are not called).
        """
        results: dict[str, list[Any]] = {}
        for impl in getattr(self._pm.hook, hook_name).get_hookimpls():
            plugin = impl.plugin_name
            if plugin in self._hung:
                continue
            before = heavy_modules()
            try:
                returned = call_with_deadline(impl.function, self.listing_timeout,
                                              f"{hook_name}()")
                if returned is None:
                    returned = []
                if isinstance(returned, (str, bytes)) or not isinstance(returned, Sequence):
                    raise TypeError(f"{hook_name}() must return a list, "
                                    f"got {type(returned).__name__}")
            except Exception as exc:
                if isinstance(exc, HookTimeout):
                    self._hung.add(plugin)
                self._exceptions[plugin] = exc
                self.add_problems(plugin, [hook_failure(hook_name, exc)])
                continue
            finally:
                self._note_heavy(plugin, before, f"calling {hook_name}()")
            results[plugin] = list(returned)
        return results

    # -- registering ---------------------------------------------------------------------

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
                         else self._infos[ep.name].describe())
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
                                   f"failed to import {ep.value!r}: {one_line(exc)}", exc)
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

        Its builders, loaders and format writers must live in ``package``, by default
        its own top-level package (that of the module, or of the instance's class). A
        plugin pluggy refuses, one implementing a hook no specification declares, or
        one with a wrapper on a listing hook is recorded as failed and not registered.
        """
        plugin_name = name or getattr(plugin, "__name__", None) or repr(plugin)
        known = self._infos.get(plugin_name)
        if known is not None and (known.core or known.status != "blocked"):
            this = Provenance(plugin=plugin_name, distribution=distribution, version=version)
            raise DuplicateNameError(f"plugin name {plugin_name!r} is used by both "
                                     f"{known.describe()} and {this.describe()}")
        if plugin_name in self._blocked:
            self._infos[plugin_name] = PluginInfo(name=plugin_name, distribution=distribution,
                                                  version=version, status="blocked")
            return plugin_name
        try:
            self._pm.register(plugin, name=plugin_name)
        except Exception as exc:  # pluggy validates hook signatures here
            self._record_error(plugin_name, distribution, version, one_line(exc), exc)
            return plugin_name
        refusal = self._refusal(plugin)
        if refusal is not None:
            self._pm.unregister(plugin)
            self._record_error(plugin_name, distribution, version, refusal)
            return plugin_name
        module = plugin.__name__ if isinstance(plugin, ModuleType) else type(plugin).__module__
        self._packages[plugin_name] = package or module.partition(".")[0]
        self._infos[plugin_name] = PluginInfo(name=plugin_name, distribution=distribution,
                                              version=version, hooks=self._hook_names(plugin))
        self._changed()
        return plugin_name

    def _hook_names(self, plugin: object) -> tuple[str, ...]:
        """The hooks ``plugin`` implements, in the order the specifications declare them."""
        order = [n for n in vars(hookspecs) if n.startswith(f"{hookspecs.PROJECT_NAME}_")]
        names = {caller.name for caller in self._pm.get_hookcallers(plugin) or ()}
        return tuple(n for n in order if n in names)

    def _refusal(self, plugin: object) -> str | None:
        """Why a just-registered plugin must go: a hook no spec declares, a listing wrapper."""
        try:
            self._pm.check_pending()
        except pluggy.PluginValidationError:
            known = [n for n in dir(hookspecs) if n.startswith(f"{hookspecs.PROJECT_NAME}_")]
            unknown = sorted(caller.name for caller in self._pm.get_hookcallers(plugin) or ()
                             if not caller.has_spec())
            if unknown:
                return (f"refused: {unknown[0]!r} is not a zoo hook"
                        f"{suggest(unknown[0], known) or '; known: ' + ', '.join(known)} "
                        "(mark it @hookimpl(optionalhook=True) if it is meant for a newer zoo)")
        for caller in self._pm.get_hookcallers(plugin) or ():
            if caller.name in LISTING_HOOKS and any(
                    i.plugin is plugin and (i.wrapper or i.hookwrapper)
                    for i in caller.get_hookimpls()):
                return (f"refused: {caller.name}() is a listing hook, called once per plugin; it "
                        "cannot be a wrapper")
        return None

    def _changed(self) -> None:
        """Called when the set of plugins changes (the registry rescans)."""

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

    def add_problems(self, plugin: str, problems: list[str]) -> None:
        """Record what was dropped of a plugin's declarations (it becomes ``partial``)."""
        info = self._infos[plugin]
        status = "partial" if info.status == "loaded" else info.status
        self._infos[plugin] = info.model_copy(
            update={"status": status, "problems": (*info.problems, *problems)})

    # -- what was seen -------------------------------------------------------------------

    def plugin_exception(self, plugin: str) -> BaseException | None:
        """The exception a failed plugin raised (its import or hook call), if any."""
        return self._exceptions.get(plugin)

    def unknown_plugin_names(self) -> list[str]:
        """One sentence for each name in ``ZOO_PLUGINS``, ``ZOO_BLOCK_PLUGINS`` or ``blocked``
        that no installed plugin has (a typo blocks or enables nothing); empty without
        entry points."""
        if self._installed is None:
            return []
        known = self._installed | set(self._infos) | set(CORE_PLUGINS)
        installed = ", ".join(sorted(self._installed | set(CORE_PLUGINS))) or "none"
        return [f"{where.replace('NAME', name)}: no installed plugin is named {name!r}, so "
                f"it changes nothing (installed: {installed})"
                for where, names in self._named.items() for name in names if name not in known]


__all__ = ["CORE_PLUGINS", "ENV_BLOCK", "ENV_DISABLE_AUTOLOAD", "ENV_PLUGINS", "ESSENTIAL_PLUGINS",
           "HEAVY_MODULES", "LISTING_HOOKS", "PluginHost", "PluginInfo", "heavy_modules",
           "one_line"]
