"""The conformance kit (:func:`zoo.testing.check_dataset`) against loaders broken in one way
each: what it must catch, and a conforming loader it must pass."""

from __future__ import annotations

import itertools
import sys
import types
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import zoo
from zoo.errors import ConformanceError
from zoo.host.registry import Registry
from zoo.testing import check_dataset

CALLS = itertools.count()
FAULT: dict[str, str] = {"kind": ""}


def load(request: Any, options: Any) -> zoo.LoadedDataset:
    call = next(CALLS)
    h, w = request.image_size
    c = request.channels
    rng = np.random.default_rng(call if FAULT["kind"] == "random images" else request.seed)
    images = rng.integers(0, 256, (8, c, h, w), dtype=np.uint8)
    labels = np.array([0, 1] * 4)
    val_n = 0 if FAULT["kind"] == "no validation" else 4
    key = f"k{call}" if FAULT["kind"] == "changing key" else f"k{request.seed}"
    return zoo.LoadedDataset(name="probe", train=zoo.Split(images, labels),
                             val=zoo.Split(images[:val_n], labels[:val_n]), classes=("a", "b"),
                             content_key=key, split_description="fixed")


@pytest.fixture
def registry() -> Iterator[Registry]:
    module = types.ModuleType("kit_probe_data")
    module.load = load  # type: ignore[attr-defined]

    @zoo.hookimpl
    def zoo_datasets() -> list[zoo.DatasetSpec]:
        return [zoo.DatasetSpec(name="probe", summary="Probe.", loader="kit_probe_data:load")]

    module.zoo_datasets = zoo_datasets  # type: ignore[attr-defined]
    sys.modules["kit_probe_data"] = module
    reg = Registry(entry_points=False)
    reg.register(module, name="kit_probe_data")
    try:
        yield reg
    finally:
        del sys.modules["kit_probe_data"]
        FAULT["kind"] = ""


def test_a_conforming_loader_passes(registry: Registry) -> None:
    report = check_dataset("probe", registry=registry)
    assert report.checks[-2:] == ("the same request gives the same data and content key",
                                  "one training step on a batch of it changes the parameters")


@pytest.mark.parametrize(("fault", "message"), [
    ("no validation", "probe does not conform: it gave 8 training and 0 validation images; "
                      "both must be non-empty"),
    ("random images", "probe does not conform: loading the same request twice gave different "
                      "data or content keys"),
    ("changing key", "probe does not conform: loading the same request twice gave different "
                     "data or content keys"),
])
def test_the_kit_catches_a_broken_loader(registry: Registry, fault: str, message: str) -> None:
    FAULT["kind"] = fault
    with pytest.raises(ConformanceError) as caught:
        check_dataset("probe", registry=registry)
    assert str(caught.value) == message
