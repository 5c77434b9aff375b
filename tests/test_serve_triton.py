"""Triton model repositories: config.pbtxt parsed with Triton's own ModelConfig schema (from
tritonclient) agrees with the graph; the export-format hooks write and verify triton.tar."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from zoo.bundles.integrity import open_bundle
from zoo.bundles.store import resolve_bundle
from zoo.cli import main
from zoo.errors import BundleError, ZooError
from zoo.serve.triton import (
    TRITON_ARCHIVE,
    TritonModel,
    config_pbtxt,
    triton_problems,
    verify_triton,
    verify_triton_format,
    write_triton_bundle,
    write_triton_format,
)


@pytest.fixture
def net(tmp_path: Path) -> Path:
    return write_triton_bundle(resolve_bundle("Net"), tmp_path / "models", name="Net",
                               max_batch_size=32, max_queue_delay_us=500, max_queue_size=128,
                               threads=1)


def test_the_repository_parses_as_triton_model_config_and_matches_the_graph(net: Path) -> None:
    manifest = open_bundle(resolve_bundle("Net"))
    assert sorted(p.relative_to(net).as_posix() for p in net.rglob("*") if p.is_file()) == [
        "1/model.onnx", "config.pbtxt", "labels.txt"]
    config = model_config_pb2.ModelConfig()
    text_format.Parse((net / "config.pbtxt").read_text(), config)
    assert (config.name, config.platform, config.max_batch_size) == ("Net", "onnxruntime_onnx", 32)
    (inp,), (out,) = config.input, config.output
    assert (inp.name, list(inp.dims)) == ("input", [3, 32, 32])
    assert inp.data_type == model_config_pb2.TYPE_FP32 == out.data_type
    assert (out.name, list(out.dims), out.label_filename) == ("logits", [2], "labels.txt")
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert config.dynamic_batching.default_queue_policy.max_queue_size == 128
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert config.parameters["intra_op_thread_count"].string_value == "1"
    assert (net / "labels.txt").read_text().splitlines() == list(manifest.classes)
    assert (net / "1" / "model.onnx").read_bytes() == (resolve_bundle("Net") / "model.onnx") \
        .read_bytes()
    verify_triton(net, classes=manifest.classes)


@pytest.mark.parametrize(("edit", "problem"), [
    (lambda t: t.replace("dims: [ 3, 32, 32 ]", "dims: [ 3, 28, 28 ]"),
     "input 'input' has dims [3, 28, 28], the graph's are [3, 32, 32]"),
    (lambda t: t.replace('name: "logits"', 'name: "scores"'),
     "outputs ['scores'] are not the graph's ['logits']"),
    (lambda t: t.replace("TYPE_FP32", "TYPE_FP16", 1), "input 'input' is TYPE_FP16"),
    (lambda t: t.replace('platform: "onnxruntime_onnx"', 'platform: "tensorrt_plan"'),
     "platform 'tensorrt_plan'"),
    (lambda t: t.replace('name: "Net"', 'name: "Other"'), "is not the directory's name"),
    (lambda t: t.replace("dynamic_batching {", "dynamic_batching {\n  preferred_batch_size: 64"),
     "preferred_batch_size [64] exceeds max_batch_size 32"),
    (lambda t: t.replace("max_batch_size", "max_batch"), "does not parse as a Triton ModelConfig"),
])
def test_the_verifier_finds_what_disagrees_with_the_graph(net: Path, edit: object,
                                                          problem: str) -> None:
    config = net / "config.pbtxt"
    config.write_text(edit(config.read_text()))  # type: ignore[operator]
    _, problems = triton_problems(net)
    assert any(problem in p for p in problems), problems
    with pytest.raises(BundleError, match="is not consistent"):
        verify_triton(net)


def test_labels_and_versions_are_checked(net: Path) -> None:
    (net / "labels.txt").write_text("airplane\n")
    assert any("has 1 labels for [2] outputs" in p for p in triton_problems(net)[1])
    (net / "labels.txt").write_text("bird\nairplane\n")
    assert any("the bundle's classes are" in p
               for p in triton_problems(net, classes=("airplane", "bird"))[1])
    shutil.rmtree(net / "1")
    assert any("holds model.onnx" in p for p in triton_problems(net)[1])


def test_an_existing_model_directory_is_kept_unless_forced(net: Path) -> None:
    with pytest.raises(ZooError, match="exists; pass --force"):
        write_triton_bundle(resolve_bundle("Net"), net.parent, name="Net")
    write_triton_bundle(resolve_bundle("Net"), net.parent, name="Net", force=True)
    assert "max_batch_size: 64" in (net / "config.pbtxt").read_text()
    with pytest.raises(ZooError, match="max_batch_size is 0"):
        config_pbtxt(TritonModel(name="x", classes=("a", "b"), input_dims=(1, 8, 8),
                                 max_batch_size=0))


def test_zoo_serve_writes_a_triton_repository(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    repo = tmp_path / "models"
    assert main(["serve", "Net", "deep=NetResDeep", "--triton-repository", str(repo),
                 "--max-batch-size", "16", "--max-queue-delay-ms", "1.5"]) == 0
    out = capsys.readouterr().out
    assert f"tritonserver --model-repository={repo}" in out
    for name in ("Net", "deep"):
        config = verify_triton(repo / name)
        assert config.max_batch_size == 16
        assert config.dynamic_batching.max_queue_delay_microseconds == 1500
    assert main(["serve", "Net", "--triton-repository", str(repo)]) == 1
    assert "exists; pass --force" in capsys.readouterr().err


def test_export_format_hooks_write_and_verify_triton_tar(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(resolve_bundle("Net"), bundle)
    manifest = open_bundle(bundle)
    (bundle / "manifest.json").rename(tmp_path / "manifest.json")  # as during zoo export
    with pytest.raises(ZooError, match="needs the class names"):
        write_triton_format(None, bundle, manifest.model)
    write_triton_format(None, bundle, manifest.model, classes=manifest.classes)
    first = (bundle / TRITON_ARCHIVE).read_bytes()
    write_triton_format(None, bundle, manifest.model, classes=manifest.classes)
    assert (bundle / TRITON_ARCHIVE).read_bytes() == first  # reproducible
    with tarfile.open(bundle / TRITON_ARCHIVE) as tar:
        assert sorted(m.name for m in tar.getmembers() if m.isfile()) == [
            "Net/1/model.onnx", "Net/config.pbtxt", "Net/labels.txt"]
    rng = np.random.default_rng(0)
    inputs = [(f"random batch {n}", rng.standard_normal((n, 3, 32, 32)).astype(np.float32))
              for n in (1, 7)]
    checks = verify_triton_format(None, bundle, manifest.model, inputs, 1e-4, 1e-3,
                                  classes=manifest.classes)
    assert [c.batch_size for c in checks] == [1, 7] and all(c.passed for c in checks)
    assert all(c.max_abs_diff == 0 for c in checks)
    (tmp_path / "manifest.json").rename(bundle / "manifest.json")  # zoo verify: read from it
    assert verify_triton_format(None, bundle, manifest.model, inputs, 1e-4, 1e-3)[0].passed
    # what the export hook passes: the bundle's name and classes (ExportTarget)
    target = SimpleNamespace(name="Net-cifar2", classes=manifest.classes)
    write_triton_format(None, bundle, manifest.model, target=target)
    with tarfile.open(bundle / TRITON_ARCHIVE) as tar:
        assert "Net-cifar2/config.pbtxt" in tar.getnames()
    assert verify_triton_format(None, bundle, manifest.model, inputs, 1e-4, 1e-3,
                                target=target)[1].passed
