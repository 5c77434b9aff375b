"""Architectures with pretrained weights: ``zoo.create_model(name, pretrained=True)``.

The factory over the registry, as timm's ``_factory`` is over its ``_registry``: the
registry knows the declared weight sets, :mod:`zoo.bundles.hub` finds (or
downloads) the pinned bundle, and :mod:`zoo.models.load` loads it safely.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from zoo.bundles.hub import WeightsError, fetch_weights, select_weights
from zoo.errors import HyperparameterError
from zoo.host.registry import Registry
from zoo.models.load import load_bundle

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
    spec = registry.get_spec(name)
    chosen = select_weights(spec, weights)
    overrides = dict(overrides or {})
    if overrides:
        registry.resolve(name, **overrides)  # unknown keys and bad values: the usual error
    path = fetch_weights(spec.name, chosen)
    loaded = load_bundle(path, registry=registry, expect_sha256=chosen.sha256)  # no swap between
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


__all__ = ["create_pretrained"]
