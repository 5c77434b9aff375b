"""Triton model repositories: config.pbtxt parsed with Triton's own ModelConfig schema (from
tritonclient) agrees with the graph, from zoo serve --triton-repository and the triton format."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from zoo.bundles.integrity import open_bundle
from zoo.bundles.store import resolve_bundle
from zoo.cli import main
from zoo.deploy.triton import (
    TritonModel,
    config_pbtxt,
    triton_problems,
    verify_triton,
    write_triton_bundle,
)
from zoo.errors import BundleError, ZooError
from zoo.exporter.write import export as export_bundle


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


def test_zoo_export_writes_a_triton_repository_into_the_bundle(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The triton format, through the same hook as pt2: the shipped weights written again as
    a bundle whose triton/ folder Triton serves, checked with Triton's own schema."""
    assert main(["export", "Net", "--weights", "cifar2", "--format", "triton",
                 "--format-option", "triton.max_batch_size=32", "--out",
                 str(tmp_path / "Net-triton")]) == 0
    assert "  triton: triton/Net-triton/config.pbtxt" in capsys.readouterr().out
    bundle = tmp_path / "Net-triton"
    manifest = open_bundle(bundle)  # the repository's files are hashed like the others
    record = manifest.formats["triton"]
    assert record.files == ("triton/Net-triton/config.pbtxt", "triton/Net-triton/1/model.onnx",
                            "triton/Net-triton/labels.txt")
    assert record.passed and all(c.max_abs_diff < 1e-4 for c in record.checks)
    model_dir = bundle / "triton" / "Net-triton"
    config = model_config_pb2.ModelConfig()
    text_format.Parse((model_dir / "config.pbtxt").read_text(), config)
    assert (config.name, config.max_batch_size) == ("Net-triton", 32)
    assert (model_dir / "1" / "model.onnx").read_bytes() == (bundle / "model.onnx").read_bytes()
    assert (model_dir / "labels.txt").read_text().splitlines() == list(manifest.classes)
    assert main(["verify", str(bundle)]) == 0
    assert "  triton: triton/Net-triton/config.pbtxt" in capsys.readouterr().out
    # a repository that no longer matches its graph fails zoo verify once re-hashed
    with pytest.raises(BundleError, match=r"config\.pbtxt does not match its SHA-256"):
        (model_dir / "config.pbtxt").write_text(
            (model_dir / "config.pbtxt").read_text().replace("32", "16", 1))
        open_bundle(bundle)
    with pytest.raises(ZooError, match=r"invalid option triton.max_batch_size=0"):
        export_bundle("Net", weights="cifar2", formats="triton", out=tmp_path / "bad",
                      options={"triton": {"max_batch_size": 0}})
    with pytest.raises(ZooError, match="the bundle name 'a b' cannot name a folder of export "
                                       "format 'triton'"):
        export_bundle("Net", weights="cifar2", formats="triton", out=tmp_path / "a b")
    assert not (tmp_path / "bad").exists() and not (tmp_path / "a b").exists()
