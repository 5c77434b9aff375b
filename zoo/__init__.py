"""zoo: a plugin-based PyTorch model zoo.

Architectures and datasets come from plugins (see :mod:`zoo.hookspecs`).
Importing this package does not import torch; the functions that need it
import it when called.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from zoo.datasets import DatasetOptions, DatasetRequest, DatasetSpec, LoadedDataset, Split
from zoo.errors import ZooError
from zoo.hookspecs import hookimpl
from zoo.registry import PluginInfo, Registry, default_registry
from zoo.spec import ArchitectureSpec, HParams, InputShape, ModelConfig, Provenance, Recipe
from zoo.weights import WeightSet

if TYPE_CHECKING:
    import torch

__version__ = "0.1.0"


def list_models(patterns: str | Iterable[str] = "*", *, tags: Iterable[str] = ()) -> list[str]:
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
    return default_registry().create_model(name, pretrained=pretrained, weights=weights,
                                           **overrides)


def resolve(name: str, **overrides: Any) -> ModelConfig:
    """Validate ``overrides`` for ``name`` into the :class:`ModelConfig` runs and bundles record."""
    return default_registry().resolve(name, **overrides)


def hparams_schema(name: str) -> dict[str, Any]:
    """The JSON Schema of everything :func:`create_model` accepts for ``name``."""
    return default_registry().hparams_schema(name)


def __getattr__(name: str) -> Any:
    # Heavy entry points import torch or onnx; load them on first use only.
    lazy = {
        "train": ("zoo.trainer", "train"),
        "TrainConfig": ("zoo.config", "TrainConfig"),
        "export": ("zoo.exporter", "export"),
        "load": ("zoo.bundle", "load"),
        "verify": ("zoo.exporter", "verify_bundle"),
        "OnnxClassifier": ("zoo.deploy", "OnnxClassifier"),
        "evaluate": ("zoo.evaluation", "evaluate"),
    }
    if name in lazy:
        import importlib

        module, attr = lazy[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")


__all__ = [
    "ArchitectureSpec",
    "DatasetOptions",
    "DatasetRequest",
    "DatasetSpec",
    "HParams",
    "InputShape",
    "LoadedDataset",
    "ModelConfig",
    "PluginInfo",
    "Provenance",
    "Recipe",
    "Registry",
    "Split",
    "WeightSet",
    "ZooError",
    "__version__",
    "create_model",
    "default_registry",
    "get_spec",
    "hookimpl",
    "hparams_schema",
    "list_models",
    "resolve",
]
