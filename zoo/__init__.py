"""zoo: a plugin-based PyTorch model zoo.

Architectures, datasets and export formats come from plugins (the contract is
:mod:`zoo.host.hookspecs`). This module is the public API: the names below, and
the heavy ones (``train``, ``export``, ``load``, ``verify``, ``evaluate``,
``OnnxClassifier``, ``TrainConfig``) loaded on first use, so that importing ``zoo``
imports neither torch nor numpy. The package's layers, from the bottom up:
``util``, ``spec``, ``host``, ``bundles``, ``deploy``, then ``models`` and ``serve``,
``trainer``, ``exporter``, ``analysis``; then ``builtin``, ``cli`` and ``testing`` (see
``docs/architecture.md``).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from zoo.errors import ZooError
from zoo.host.events import StopRequest, TrainingRun
from zoo.host.hookspecs import hookimpl
from zoo.host.plugins import PluginInfo
from zoo.host.registry import Registry, default_registry
from zoo.spec.architecture import ArchitectureSpec, HParams, InputShape, ModelConfig, Recipe
from zoo.spec.dataset import DatasetOptions, DatasetRequest, DatasetSpec, LoadedDataset, Split
from zoo.spec.exportformat import ExportFormat, ExportTarget, FormatOptions
from zoo.spec.provenance import Provenance
from zoo.spec.reference import ReferenceAccuracy
from zoo.spec.run import EpochMetrics, RunSummary
from zoo.spec.weights import WeightSet
from zoo.util.deprecation import install_moved_modules
from zoo.util.version import __version__

if TYPE_CHECKING:
    import torch

    from zoo.analysis.evaluation import evaluate
    from zoo.deploy.predictor import OnnxClassifier
    from zoo.exporter.verify import verify_bundle as verify
    from zoo.exporter.write import export
    from zoo.models.load import load
    from zoo.spec.training import TrainConfig
    from zoo.trainer.loop import train

#: Names loaded on first use: name -> (module, attribute).
_LAZY = {
    "train": ("zoo.trainer.loop", "train"),
    "TrainConfig": ("zoo.spec.training", "TrainConfig"),
    "export": ("zoo.exporter.write", "export"),
    "load": ("zoo.models.load", "load"),
    "verify": ("zoo.exporter.verify", "verify_bundle"),
    "OnnxClassifier": ("zoo.deploy.predictor", "OnnxClassifier"),
    "evaluate": ("zoo.analysis.evaluation", "evaluate"),
}

install_moved_modules()


def list_models(patterns: str | Iterable[str] = "*", *,
                tags: str | Iterable[str] = ()) -> list[str]:
    """Names of the installed architectures matching any shell-style pattern and all ``tags``.

    >>> zoo.list_models("NetRes*")
    ['NetRes', 'NetResDeep']
    """
    return default_registry().list_models(patterns, tags=tags)


def get_spec(name: str) -> ArchitectureSpec:
    """The spec of architecture ``name``, with the plugin that provides it."""
    return default_registry().get_spec(name)


def create_model(name: str, *, pretrained: bool = False, weights: str | None = None,
                 **overrides: Any) -> torch.nn.Module:
    """Build architecture ``name``.

    ``overrides`` are its hyperparameters and the shape keys ``in_channels``,
    ``in_height``, ``in_width`` and ``num_classes``; each is validated by the spec's
    pydantic model (:class:`zoo.errors.HyperparameterError` on bad input).
    ``pretrained=True`` loads the weights of the spec's default weight set,
    ``weights="cifar2"`` those of the set so tagged, both checked against the
    SHA-256 the spec pins (downloaded once if the set is a URL). The module is in
    training mode either way; call ``.eval()`` to predict.
    """
    registry = default_registry()
    if pretrained or weights is not None:
        from zoo.models.pretrained import create_pretrained

        return create_pretrained(registry, name, weights=weights, overrides=overrides)
    return registry.create_model(name, **overrides)


def resolve(name: str, **overrides: Any) -> ModelConfig:
    """Validate ``overrides`` for ``name`` into the :class:`ModelConfig` runs and bundles record."""
    return default_registry().resolve(name, **overrides)


def hparams_schema(name: str) -> dict[str, Any]:
    """The JSON Schema of everything :func:`create_model` accepts for ``name``."""
    return default_registry().hparams_schema(name)


def __getattr__(name: str) -> Any:
    # Heavy entry points import torch or onnx; load them on first use only.
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "ArchitectureSpec",
    "DatasetOptions",
    "DatasetRequest",
    "DatasetSpec",
    "EpochMetrics",
    "ExportFormat",
    "ExportTarget",
    "FormatOptions",
    "HParams",
    "InputShape",
    "LoadedDataset",
    "ModelConfig",
    "OnnxClassifier",
    "PluginInfo",
    "Provenance",
    "Recipe",
    "ReferenceAccuracy",
    "Registry",
    "RunSummary",
    "Split",
    "StopRequest",
    "TrainConfig",
    "TrainingRun",
    "WeightSet",
    "ZooError",
    "__version__",
    "create_model",
    "default_registry",
    "evaluate",
    "export",
    "get_spec",
    "hookimpl",
    "hparams_schema",
    "list_models",
    "load",
    "resolve",
    "train",
    "verify",
]
