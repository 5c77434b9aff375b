"""The module paths of zoo 0.1's flat layout, kept importable for one release.

``from zoo.datasets import DatasetSpec`` still works, with a :class:`FutureWarning`
naming the new path (``zoo.spec.dataset``), as timm keeps ``timm.models.registry``
alive. No file stands at the old path: a finder on ``sys.meta_path`` answers for
the names in :data:`MOVED` with a module that takes each attribute from the new
modules (the same objects, so ``isinstance`` and identity hold), and
``python -m zoo.weightsync`` runs the new module. The finder is installed when
``zoo`` is imported; the old paths go in zoo 0.3.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from collections.abc import Sequence
from types import CodeType, ModuleType
from typing import Any

#: The release that removes the old paths.
REMOVED_IN = "0.3"

#: Old module -> the modules its names now live in (the first is the one to import).
MOVED: dict[str, tuple[str, ...]] = {
    "zoo.allocator": ("zoo.trainer.allocator",),
    "zoo.batchsplit": ("zoo.trainer.batchsplit",),
    "zoo.bundle": ("zoo.models.load", "zoo.models.statedict"),
    "zoo.checkpoint": ("zoo.trainer.checkpoint",),
    "zoo.compare": ("zoo.analysis.compare",),
    "zoo.config": ("zoo.spec.training", "zoo.util.threads"),
    "zoo.configfile": ("zoo.spec.training",),
    "zoo.contract": ("zoo.host.contract", "zoo.exporter.onnx"),
    "zoo.curves": ("zoo.trainer.curves",),
    "zoo.datasets": ("zoo.spec.dataset", "zoo.host.contract"),
    "zoo.devices": ("zoo.trainer.devices",),
    "zoo.distributed": ("zoo.trainer.distributed",),
    "zoo.download": ("zoo.util.download",),
    "zoo.evaluation": ("zoo.analysis.evaluation",),
    "zoo.events": ("zoo.host.events",),
    "zoo.execution": ("zoo.trainer.devices",),
    "zoo.exportformats": ("zoo.spec.exportformat", "zoo.exporter.formats", "zoo.exporter.checks"),
    "zoo.figures": ("zoo.util.figures",),
    "zoo.filters": ("zoo.analysis.filters",),
    "zoo.fsutil": ("zoo.util.fsutil",),
    "zoo.hookspecs": ("zoo.host.hookspecs",),
    "zoo.imagefiles": ("zoo.util.imagefiles",),
    "zoo.imaging": ("zoo.util.imaging",),
    "zoo.inspection": ("zoo.analysis.inspection", "zoo.analysis.capture"),
    "zoo.interrupt": ("zoo.trainer.interrupt",),
    "zoo.manifest": ("zoo.spec.manifest", "zoo.bundles.integrity"),
    "zoo.modelcard": ("zoo.exporter.modelcard",),
    "zoo.modeltable": ("zoo.bundles.modeltable",),
    "zoo.onnxscan": ("zoo.deploy.onnxscan",),
    "zoo.optim": ("zoo.trainer.optim",),
    "zoo.pipeline": ("zoo.trainer.pipeline",),
    "zoo.portable": ("zoo.util.portable",),
    "zoo.pretrained": ("zoo.bundles.store", "zoo.bundles.hub", "zoo.models.pretrained",
                       "zoo.util.paths"),
    "zoo.progress": ("zoo.trainer.progress",),
    "zoo.pt2": ("zoo.exporter.pt2",),
    "zoo.registry": ("zoo.host.registry", "zoo.host.plugins", "zoo.util.suggest"),
    "zoo.resume": ("zoo.trainer.resume",),
    "zoo.run": ("zoo.spec.run",),
    "zoo.rundir": ("zoo.trainer.rundir",),
    "zoo.runlock": ("zoo.trainer.rundir",),
    "zoo.runstate": ("zoo.trainer.state",),
    "zoo.scaffold": ("zoo.cli.scaffold",),
    "zoo.trainingdata": ("zoo.trainer.data",),
    "zoo.validation": ("zoo.trainer.validation",),
    "zoo.weights": ("zoo.spec.weights",),
    "zoo.weightsync": ("zoo.bundles.weightsync",),
}


def _warn(old: str, new: str, stacklevel: int) -> None:
    warnings.warn(f"{old} is deprecated and will be removed in zoo {REMOVED_IN}; import "
                  f"{new} instead", FutureWarning, stacklevel=stacklevel)


class _MovedModule(ModuleType):
    """An old module path: each attribute comes from the first new module that has it."""

    def __init__(self, name: str, targets: Sequence[str]) -> None:
        super().__init__(name, f"Moved: see {', '.join(targets)} ({REMOVED_IN} removes it).")
        self._targets = tuple(targets)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        for target in self._targets:
            module = importlib.import_module(target)
            if hasattr(module, attr):
                return getattr(module, attr)
        raise AttributeError(f"module {self.__name__!r} (moved to {self._targets[0]}) has no "
                             f"attribute {attr!r}")

    def __dir__(self) -> list[str]:
        names: set[str] = set()
        for target in self._targets:
            names |= {n for n in dir(importlib.import_module(target)) if not n.startswith("_")}
        return sorted(names)


class _MovedLoader(importlib.abc.Loader):
    def __init__(self, old: str, targets: Sequence[str]) -> None:
        self.old, self.targets = old, tuple(targets)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return _MovedModule(self.old, self.targets)

    def exec_module(self, module: ModuleType) -> None:
        pass

    def get_code(self, fullname: str) -> CodeType | None:
        """The new module's code, for ``python -m OLD`` (runpy runs it as ``__main__``)."""
        spec = importlib.util.find_spec(self.targets[0])
        loader = spec.loader if spec is not None else None
        get_code = getattr(loader, "get_code", None)
        return get_code(self.targets[0]) if get_code is not None else None


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        targets = MOVED.get(fullname)
        if targets is None:
            return None
        _warn(fullname, targets[0], stacklevel=3)
        return importlib.machinery.ModuleSpec(fullname, _MovedLoader(fullname, targets))


_FINDER = _MovedFinder()


def package_getattr(package: str, api: dict[str, str],
                    moved: dict[str, str]) -> tuple[Any, Any]:
    """``__getattr__`` and ``__dir__`` for a package that names its API lazily.

    ``api``: name -> module of the names the package offers (imported on first use);
    ``moved``: name -> module of those a module of 0.1 at the package's path had,
    which still resolve with a :class:`FutureWarning` naming their module.
    """

    def __getattr__(name: str) -> Any:
        if name in api:
            return getattr(importlib.import_module(api[name]), name)
        if name in moved:
            _warn(f"{package}.{name}", f"{moved[name]}.{name}", stacklevel=3)
            return getattr(importlib.import_module(moved[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *api})

    return __getattr__, __dir__


def install_moved_modules() -> None:
    """Answer for the old module paths (idempotent)."""
    if _FINDER not in sys.meta_path:
        sys.meta_path.append(_FINDER)


__all__ = ["MOVED", "REMOVED_IN", "install_moved_modules", "package_getattr"]
