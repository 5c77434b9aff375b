"""The conformance kit (zoo.testing) on the built-in plugins, and on plugins that break it."""

from __future__ import annotations

import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import tiny_plugin
from test_datasets import _fake_cifar, _folder

import zoo
from zoo.errors import ConformanceError
from zoo.host.registry import Registry
from zoo.testing import check_architecture, check_dataset

BOOK = ["Net", "NetBatchNorm", "NetDepth", "NetDropout", "NetRes", "NetResDeep", "NetWidth"]
NON_DEFAULT = {"n_hidden": 12, "n_chans1": 8, "n_blocks": 2, "shared_block": True,
               "dropout": 0.25}


@pytest.mark.parametrize("name", BOOK)
def test_builtin_architectures_conform(name: str, tmp_path: Path) -> None:
    fields = zoo.get_spec(name).hparams.model_fields
    hparams = {k: v for k, v in NON_DEFAULT.items() if k in fields}
    report = check_architecture(name, hparams=hparams, tmp_dir=tmp_path)
    size = zoo.get_spec(name).min_input_size
    assert report.checks[1] == (f"takes its declared minimum input, {size}x{size}, and refuses "
                                "one pixel less")
    assert report.checks[2] == f"builds at (1, 40, 36) -> 3 classes with {hparams}"
    assert "refuses n_hidden=0, 4097, 'not a number', True" in report.checks
    assert report.checks[-1] == "reloads it with zoo.load and matches its ONNX graph"


@pytest.mark.parametrize("name", ["synthetic", "imagefolder", "cifar2", "cifar10"])
def test_builtin_datasets_conform(name: str, tmp_path: Path) -> None:
    data_dir = {"imagefolder": lambda: _folder(tmp_path / "folder"),
                "cifar2": lambda: _fake_cifar(tmp_path / "c2"),
                "cifar10": lambda: _fake_cifar(tmp_path / "c10")}.get(name, lambda: None)()
    options = {"size": 40} if name == "synthetic" else {}
    report = check_dataset(name, options=options, data_dir=data_dir, tmp_dir=tmp_path / "w")
    assert report.checks[0] == "refuses an unknown option"
    assert report.checks[2].startswith("loads 1x(12, 20) with seed 1")


def test_the_pytest_plugin_gives_a_fresh_registry(zoo_registry: Registry) -> None:
    assert "Net" in zoo_registry.list_models()
    assert zoo_registry is not zoo.default_registry()


BREAKS = {
    "ignores in_channels": tiny_plugin("Fixed", "kit_bad").replace(
        "nn.Conv2d(input_shape.channels,", "nn.Conv2d(3,"),
    "too small": tiny_plugin("Small", "kit_bad").replace(
        'source="tests",', 'source="tests", min_input_size=2,').replace(
        "nn.ReLU(), nn.AdaptiveAvgPool2d(1),",
        "nn.ReLU(), nn.MaxPool2d(4), nn.AdaptiveAvgPool2d(1),"),
    "frozen": tiny_plugin("Frozen", "kit_bad").replace(
        "    return nn.Sequential(", "    return nn.Sequential(").replace(
        "nn.Linear(hparams.n_filters, num_classes),\n    )",
        "nn.Linear(hparams.n_filters, num_classes),\n    ).requires_grad_(False)"),
}


@pytest.fixture
def bad_registry(request: pytest.FixtureRequest) -> Iterator[Registry]:
    import sys

    module = types.ModuleType("kit_bad")
    exec(BREAKS[request.param], module.__dict__)
    sys.modules["kit_bad"] = module
    reg = Registry(entry_points=False)
    reg.register(module, name="kit_bad")
    yield reg
    del sys.modules["kit_bad"]


@pytest.mark.parametrize(("bad_registry", "name", "message"), [
    ("ignores in_channels", "Fixed", r"Fixed does not conform: it does not build with .*"
                                     r"in_channels': 1.*breaks the model contract"),
    ("frozen", "Frozen", "Frozen does not conform: the model has no trainable parameters"),
    ("too small", "Small", r"^Small does not conform: it declares min_input_size=2 but does not "
                           r"take 2x2 inputs \(declare the smallest size it takes\): "
                           r"architecture 'Small' .* breaks the model contract"),
], indirect=["bad_registry"])
def test_the_kit_catches_a_broken_architecture(bad_registry: Registry, name: str,
                                               message: str) -> None:
    with pytest.raises(ConformanceError, match=message):
        check_architecture(name, registry=bad_registry, export=False)


def test_the_kit_catches_a_loader_that_ignores_the_request() -> None:
    import sys

    code = '''
import numpy as np
import zoo


@zoo.hookimpl
def zoo_datasets():
    return [zoo.DatasetSpec(name="fixed", summary="Always 8x8 RGB.", loader="kit_data:load")]


def load(request, options):
    split = zoo.Split(np.zeros((4, 3, 8, 8), np.uint8), np.array([0, 1, 0, 1]))
    return zoo.LoadedDataset(name="fixed", train=split, val=split, classes=("a", "b"),
                             content_key="k", split_description="same")
'''
    module = types.ModuleType("kit_data")
    exec(code, module.__dict__)
    sys.modules["kit_data"] = module
    try:
        reg = Registry(entry_points=False)
        reg.register(module, name="kit_data")
        with pytest.raises(ConformanceError, match=r"fixed does not conform: it does not load "
                                                   r"\(16, 16\) x 3 channel\(s\): .*\(H, W\)="
                                                   r"\(16, 16\); seen uint8 \(4, 3, 8, 8\)"):
            check_dataset("fixed", registry=reg)
    finally:
        del sys.modules["kit_data"]
