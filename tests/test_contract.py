"""Issue 14: the model and dataset contracts, checked where plugin code runs."""

from __future__ import annotations

import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_plugin

import zoo
from zoo.errors import BundleError, ContractError, DataError, PluginError
from zoo.host.contract import check_model, load_dataset
from zoo.host.registry import Registry
from zoo.spec.dataset import DatasetRequest

# Correct in PyTorch, one logit too many in the exported graph.
TRACING_LIES = '''
class Liar(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, num_classes + 1)

    def forward(self, x):
        out = self.fc(x.flatten(1))
        return out if torch.jit.is_tracing() else out[:, :-1]


def build_liar(hparams, *, input_shape, num_classes):
    return Liar(num_classes)


def build_bad(hparams, *, input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape.channels * input_shape.height
                                                 * input_shape.width, num_classes + 1))
'''

DATA = '''

class DataOptions(zoo.DatasetOptions):
    fault: str = "none"


@zoo.hookimpl
def zoo_datasets():
    return [zoo.DatasetSpec(name="faulty", summary="Faulty data.", loader="{module}:load",
                            options=DataOptions, uses=("val_split",))]


def load(request, options):
    import numpy as np
    h, w = request.image_size or (8, 8)
    images = np.zeros((6, request.channels, h, w), dtype=np.uint8)
    labels = np.array([0, 1, 0, 1, 0, 1], dtype=np.int64)
    classes = ("a", "b")
    f = options.fault
    if f == "raises":
        raise OSError("disk on fire")
    if f == "float32":
        images = images.astype(np.float32)
    if f == "nhwc":
        images = images.transpose(0, 2, 3, 1).copy()
    if f == "size":
        images = images[:, :, :-1]
    if f == "labels":
        labels = labels * 2
    if f == "int32":
        labels = labels.astype(np.int32)
    if f == "one class":
        classes = ("a", "a")
    if f == "none-type":
        return None
    split = zoo.Split(images, labels)
    train, val = split, split
    if f in ("no train", "no val", "one each"):
        train, val = zoo.Split(images[:4], labels[:4]), zoo.Split(images[4:], labels[4:])
        if f == "one each":
            train, val = zoo.Split(images[:1], labels[:1]), zoo.Split(images[1:2], labels[1:2])
        if f == "no train":
            train = zoo.Split(images[:0], labels[:0])
        if f == "no val":
            val = zoo.Split(images[:0], labels[:0])
    return zoo.LoadedDataset(name="faulty", train=train, val=val, classes=classes,
                             content_key="k", split_description="same")
'''


def _module(name: str, code: str) -> Iterator[types.ModuleType]:
    import sys

    module = types.ModuleType(name)
    exec(code, module.__dict__)
    sys.modules[name] = module
    yield module
    del sys.modules[name]


@pytest.fixture
def registry() -> Iterator[Registry]:
    imports = "import zoo\nimport torch\nfrom torch import nn\n"
    code = (tiny_plugin("Tiny", "contract_nets").replace("import zoo\n", imports)
            .replace("    )]\n", '''    ), zoo.ArchitectureSpec(
        name="Liar", summary="Lies when traced.", builder="contract_nets:build_liar",
        hparams=TinyHParams, source="tests", input_shape=zoo.InputShape(height=8, width=8)),
    zoo.ArchitectureSpec(name="Bad", summary="One logit too many.",
        builder="contract_nets:build_bad", hparams=TinyHParams, source="tests")]
''') + TRACING_LIES + DATA.replace("{module}", "contract_nets"))
    for module in _module("contract_nets", code):
        reg = Registry()
        reg.register(module, name="contract", distribution="contract-nets", version="0.1")
        yield reg


def test_probe_restores_every_training_flag_and_draws_no_random_numbers(
        registry: Registry) -> None:
    model = registry.create_model("Tiny")
    model.train()
    model[0].eval()
    state = torch.random.get_rng_state()
    check_model(model, registry.get_spec("Tiny"), registry.resolve("Tiny"))
    assert torch.equal(state, torch.random.get_rng_state())
    assert model.training and not model[0].training and model[1].training


def test_a_bad_model_is_refused_by_training_export_and_load(registry: Registry,
                                                            tmp_path: Path) -> None:
    message = ("architecture 'Bad' from contract-nets 0.1 (plugin 'contract') breaks the model "
               "contract: expected a torch.nn.Module mapping (N, C, H, W) (2, 3, 32, 32) to "
               "(N, num_classes) (2, 2); seen float32 (2, 3)")
    with pytest.raises(ContractError) as info:
        zoo.train("Bad", registry=registry, epochs=1, out=tmp_path / "run", progress="none",
                  dataset_options={"size": 40, "num_classes": 2}, num_threads=1)
    assert str(info.value) == message
    with pytest.raises(ContractError, match="breaks the model contract"):
        zoo.export("Bad", registry=registry, out=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    # a bundle of a good model no longer loads once its plugin breaks the contract
    zoo.export("Tiny", registry=registry, out=tmp_path / "tiny")
    broken = registry.get_spec("Bad").model_copy(update={"name": "Tiny"})
    reg2 = Registry(entry_points=False)
    module = types.ModuleType("contract_nets2")
    module.zoo_architectures = zoo.hookimpl(lambda: [broken])  # type: ignore[attr-defined]
    reg2.register(module, name="contract2", package="contract_nets")
    with pytest.raises(BundleError, match=r"cannot rebuild 'Tiny'.*breaks the model contract"):
        zoo.load(tmp_path / "tiny", registry=reg2)


def test_the_exported_graph_must_give_one_logit_per_class(registry: Registry,
                                                          tmp_path: Path) -> None:
    with pytest.raises(ContractError) as info:
        zoo.export("Liar", registry=registry, out=tmp_path / "liar")
    assert str(info.value) == (
        "the ONNX graph of Liar maps (2, 3, 8, 8) to 1 output(s) of shape (2, 3); expected one "
        "of (2, 2), a logit per class of the manifest (class0, class1)")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("fault", "seen"), [
    ("raises", "the loader 'contract_nets:load' of dataset 'faulty' from contract-nets 0.1 "
               "(plugin 'contract') raised OSError: disk on fire"),
    ("float32", "train images must be uint8 (N, C, H, W) with C=3 and (H, W)=(8, 8); seen "
                "float32 (6, 3, 8, 8)"),
    ("nhwc", "seen uint8 (6, 8, 8, 3) (channels last: NHWC, not NCHW)"),
    ("size", "(H, W)=(8, 8); seen uint8 (6, 3, 7, 8)"),
    ("labels", "train labels must lie in 0..1 (one per class name); seen 0..2"),
    ("int32", "train labels must be int64 (6,), one per image; seen int32 (6,)"),
    ("one class", "classes must be a tuple of at least two distinct names; seen ('a', 'a')"),
    ("none-type", "its loader returned NoneType, not a zoo.LoadedDataset"),
])
def test_loader_mistakes_are_one_plugin_error(registry: Registry, fault: str, seen: str) -> None:
    spec = registry.get_dataset("faulty")
    with pytest.raises(PluginError) as info:
        load_dataset(spec, DatasetRequest(image_size=(8, 8)), fault=fault)
    text = str(info.value)
    assert seen in text and "'faulty' from contract-nets 0.1 (plugin 'contract')" in text


def test_a_good_loader_passes_and_unused_options_are_warned(
        registry: Registry, capsys: pytest.CaptureFixture[str]) -> None:
    spec = registry.get_dataset("faulty")
    data = load_dataset(spec, DatasetRequest(image_size=(8, 8), channels=1, val_split=0.3))
    assert data.train.images.shape == (6, 1, 8, 8)
    assert capsys.readouterr().err == ""
    load_dataset(spec, DatasetRequest(data_dir=Path("somewhere"), strict=True))
    assert capsys.readouterr().err == ("zoo: warning: dataset 'faulty' does not use --data-dir, "
                                       "--strict; ignored\n")
    load_dataset(spec, DatasetRequest(data_dir=Path("somewhere"), quiet=True))
    assert capsys.readouterr().err == ""


def test_builtin_synthetic_warns_about_data_dir(capsys: pytest.CaptureFixture[str],
                                                tmp_path: Path) -> None:
    spec = zoo.default_registry().get_dataset("synthetic")
    data = load_dataset(spec, DatasetRequest(data_dir=tmp_path, image_size=(8, 8),
                                             cache_dir=tmp_path),
                     size=20)
    assert data.train.images.dtype == np.uint8
    assert "dataset 'synthetic' does not use --data-dir; ignored" in capsys.readouterr().err


def test_a_loader_must_give_the_class_count_its_spec_declares(registry: Registry) -> None:
    spec = registry.get_dataset("faulty").model_copy(update={"num_classes": 3})
    with pytest.raises(ContractError, match=r"its spec declares 3 classes; the loader gave 2 "
                                            r"\(a, b\)"):
        load_dataset(spec, DatasetRequest())


@pytest.mark.parametrize(("fault", "message"), [
    ("no train", "dataset 'faulty' gave 0 training and 2 validation images; both must be "
                 "non-empty"),
    ("no val", "dataset 'faulty' gave 4 training and 0 validation images; both must be "
               "non-empty"),
    ("one each", None),  # one image is enough for either split
])
def test_a_run_needs_training_and_validation_images(registry: Registry, tmp_path: Path,
                                                    fault: str, message: str | None) -> None:
    run = lambda: zoo.train("Tiny", registry=registry, dataset="faulty",  # noqa: E731
                            dataset_options={"fault": fault}, epochs=1, out=tmp_path / "run",
                            progress="none", num_threads=1)
    if message is None:
        result = run()
        assert (result.summary.data.train_size, result.summary.data.val_size) == (1, 1)
    else:
        with pytest.raises(DataError) as info:
            run()
        assert str(info.value) == message
