"""Triton model directories at their edges: defaults, max_batch_size 0 and 1, graphs with a
fixed batch, extra folders, and the one-line failures of writing one
(``zoo.deploy.triton``; the repository as a whole: ``test_serve_triton.py``)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import onnx
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper
from tritonclient.grpc import model_config_pb2

import zoo.bundles.integrity as integrity
from zoo.builtin.formats import TritonOptions
from zoo.bundles.store import resolve_bundle
from zoo.deploy.triton import (
    DEFAULT_MAX_QUEUE_DELAY_US,
    TritonModel,
    config_pbtxt,
    triton_problems,
    write_triton,
    write_triton_bundle,
)
from zoo.errors import BundleError, ZooError


def parse(text: str) -> model_config_pb2.ModelConfig:
    config = model_config_pb2.ModelConfig()
    text_format.Parse(text, config)
    return config


@pytest.fixture
def net(tmp_path: Path) -> Path:
    return write_triton_bundle(resolve_bundle("Net"), tmp_path / "models", name="Net",
                               max_batch_size=32)


def test_defaults_are_those_of_the_triton_format() -> None:
    model = TritonModel(name="Net", classes=("airplane", "bird"), input_dims=(3, 32, 32))
    config = parse(config_pbtxt(model))
    options = TritonOptions()
    assert config.max_batch_size == options.max_batch_size == 64
    assert (config.dynamic_batching.max_queue_delay_microseconds == options.max_queue_delay_us
            == DEFAULT_MAX_QUEUE_DELAY_US)
    assert not config.dynamic_batching.HasField("default_queue_policy")  # unbounded
    assert [(g.count, g.kind) for g in config.instance_group] == [
        (options.instance_count, model_config_pb2.ModelInstanceGroup.KIND_CPU)]
    assert options.instance_count == 1
    assert dict(config.parameters) == {}  # onnxruntime picks its threads
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.name = "Other"  # type: ignore[misc]


def test_settings_reach_the_config() -> None:
    model = TritonModel(name="Net", classes=("a", "b"), input_dims=(3, 32, 32), max_batch_size=1,
                        max_queue_size=8, instance_count=3, threads=2, max_queue_delay_us=0)
    config = parse(config_pbtxt(model))
    assert config.max_batch_size == 1
    assert config.dynamic_batching.default_queue_policy.max_queue_size == 8
    assert config.dynamic_batching.max_queue_delay_microseconds == 0
    assert config.instance_group[0].count == 3
    assert config.parameters["intra_op_thread_count"].string_value == "2"


def test_write_triton_keeps_an_existing_directory_by_default(tmp_path: Path) -> None:
    model = TritonModel(name="Net", classes=("a", "b"), input_dims=(3, 32, 32))
    target = write_triton(tmp_path, model, b"graph")
    (target / "mine.txt").write_text("kept")
    with pytest.raises(ZooError, match=r"exists; pass --force to replace it$"):
        write_triton(tmp_path, model, b"other")
    assert (target / "1" / "model.onnx").read_bytes() == b"graph"
    write_triton(tmp_path, model, b"other", force=True)
    assert (target / "1" / "model.onnx").read_bytes() == b"other"
    assert not (target / "mine.txt").exists()


def test_a_repository_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "models").write_text("not a folder")
    model = TritonModel(name="Net", classes=("a", "b"), input_dims=(3, 32, 32))
    with pytest.raises(ZooError) as caught:
        write_triton(tmp_path / "models", model, b"graph")
    assert str(caught.value) == (f"cannot write Triton model {tmp_path / 'models' / 'Net'}: "
                                 f"{tmp_path / 'models'} is not a folder")


def test_a_write_that_fails_gives_the_reason(tmp_path: Path) -> None:
    model = TritonModel(name="n" * 300, classes=("a", "b"), input_dims=(3, 32, 32))
    with pytest.raises(ZooError) as caught:
        write_triton(tmp_path, model, b"graph")
    assert str(caught.value) == (f"cannot write Triton model {tmp_path / model.name}: "
                                 "File name too long")
    assert list(tmp_path.iterdir()) == []


def test_a_graph_changed_after_its_bundle_was_checked_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = tmp_path / "Net"
    shutil.copytree(resolve_bundle("Net"), bundle)
    checked = integrity.open_bundle

    def check_then_change(path: Path, **kwargs: object) -> object:
        manifest = checked(path, **kwargs)  # type: ignore[arg-type]
        with open(bundle / "model.onnx", "ab") as f:
            f.write(b"\0")
        return manifest

    monkeypatch.setattr(integrity, "open_bundle", check_then_change)
    with pytest.raises(BundleError) as caught:
        write_triton_bundle(bundle, tmp_path / "models")
    assert str(caught.value) == f"{bundle / 'model.onnx'} changed while it was read"
    assert not (tmp_path / "models").exists()


def test_folders_and_files_that_are_not_versions_are_ignored(net: Path) -> None:
    (net / "notes").mkdir()
    (net / "2").write_text("a file, not a version")
    assert triton_problems(net)[1] == []


def test_a_model_without_batching_declares_the_full_shape(net: Path) -> None:
    config = net / "config.pbtxt"
    text = (config.read_text().replace("max_batch_size: 32", "max_batch_size: 0")
            .replace("dims: [ 3, 32, 32 ]", "dims: [ -1, 3, 32, 32 ]")
            .replace("dims: [ 2 ]", "dims: [ -1, 2 ]")
            .replace("dynamic_batching {", "dynamic_batching {\n  preferred_batch_size: 4"))
    config.write_text(text)
    assert triton_problems(net)[1] == []
    config.write_text(text.replace("dims: [ -1, 3, 32, 32 ]", "dims: [ 3, 32, 32 ]"))
    assert triton_problems(net)[1] == [
        "input 'input' has dims [3, 32, 32], the graph's are [-1, 3, 32, 32] "
        "(shape ['batch', 3, 32, 32])"]


def test_a_batch_of_one_is_batching(net: Path) -> None:
    config = net / "config.pbtxt"
    config.write_text(config.read_text().replace("max_batch_size: 32", "max_batch_size: 1"))
    assert triton_problems(net)[1] == []


def test_a_preferred_batch_size_of_exactly_the_maximum_is_accepted(net: Path) -> None:
    config = net / "config.pbtxt"
    text = config.read_text()
    config.write_text(text.replace("dynamic_batching {",
                                   "dynamic_batching {\n  preferred_batch_size: [ 8, 32 ]"))
    assert triton_problems(net)[1] == []
    config.write_text(text.replace("dynamic_batching {",
                                   "dynamic_batching {\n  preferred_batch_size: [ 8, 33 ]"))
    assert triton_problems(net)[1] == ["preferred_batch_size [33] exceeds max_batch_size 32"]


def test_inputs_and_outputs_are_both_reported(net: Path) -> None:
    config = net / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "input"', 'name: "images"')
                      .replace('name: "logits"', 'name: "scores"'))
    assert triton_problems(net)[1] == ["inputs ['images'] are not the graph's ['input']",
                                       "outputs ['scores'] are not the graph's ['logits']"]


def fixed_batch_graph() -> bytes:
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 2], [0.5] * 8)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["logits"])], "fixed",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_a_graph_with_a_fixed_batch_cannot_be_batched(tmp_path: Path) -> None:
    model = TritonModel(name="Fixed", classes=("a", "b"), input_dims=(4,), max_batch_size=8)
    target = write_triton(tmp_path, model, fixed_batch_graph())
    assert triton_problems(target)[1] == [
        "input 'input' has a fixed batch size 1 in the graph, but max_batch_size > 0 needs a "
        "dynamic one",
        "output 'logits' has a fixed batch size 1 in the graph, but max_batch_size > 0 needs a "
        "dynamic one"]


@pytest.mark.parametrize("models", [0, 2])
def test_the_format_verifier_needs_exactly_one_model(tmp_path: Path, models: int) -> None:
    from zoo.exporter.triton import verify_triton_format
    from zoo.spec.architecture import ModelConfig
    from zoo.spec.exportformat import ExportTarget

    for i in range(models):
        (tmp_path / "triton" / f"m{i}").mkdir(parents=True)
        (tmp_path / "triton" / f"m{i}" / "config.pbtxt").write_text("")
    with pytest.raises(BundleError) as caught:
        verify_triton_format(None, tmp_path, ModelConfig(architecture="Net"),  # type: ignore[arg-type]
                             [], 1e-4, 1e-3, target=ExportTarget(name="x", classes=("a", "b")))
    assert str(caught.value) == (f"{tmp_path / 'triton'} holds {models} Triton models; the "
                                 "triton format writes one")
