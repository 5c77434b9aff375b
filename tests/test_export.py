"""zoo export: bundles from names and runs, verification, fail-closed writes, the CLI."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from export_helpers import CLASSES, MEAN, STD, make_run

import zoo
import zoo.util.imaging
from zoo.bundles.integrity import bundle_sha256, sha256_file
from zoo.cli import main
from zoo.errors import ExportError, HyperparameterError, UnknownArchitectureError, ZooError
from zoo.exporter.checks import check_tolerances
from zoo.exporter.modelcard import CARD_FILE
from zoo.exporter.onnx import opset_range
from zoo.exporter.write import export
from zoo.spec.manifest import (
    MANIFEST_FILE,
    ONNX_FILE,
    SCHEMA_PATH,
    WEIGHTS_FILE,
    Manifest,
    VerificationError,
)
from zoo.spec.run import VAL_SAMPLES

ARCHITECTURES = zoo.list_models()

#: Non-default values for every hyperparameter the built-ins declare.
NON_DEFAULT = {"n_hidden": 12, "n_chans1": 8, "n_blocks": 2, "dropout": 0.25,
               "shared_block": True}


def non_default_overrides(name: str) -> dict[str, Any]:
    fields = zoo.get_spec(name).hparams.model_fields
    own = {k: v for k, v in NON_DEFAULT.items() if k in fields}
    assert set(own) == set(fields), f"add non-default values for {set(fields) - set(own)}"
    return {"num_classes": 3, "in_height": 40, "in_width": 40, "in_channels": 1, **own}


def _check_bundle(path: Path, manifest: Manifest) -> None:
    files = sorted(p.name for p in path.iterdir())
    assert files == sorted([MANIFEST_FILE, *manifest.files])  # the model card is listed too
    assert {WEIGHTS_FILE, ONNX_FILE, CARD_FILE} <= set(manifest.files)
    on_disk = Manifest.model_validate_json((path / MANIFEST_FILE).read_text())
    assert on_disk == manifest
    for name in (WEIGHTS_FILE, ONNX_FILE):
        assert manifest.files[name].sha256 == sha256_file(path / name)
        assert manifest.files[name].size == (path / name).stat().st_size
    report = manifest.verification
    assert report.passed and report.onnx_checker.startswith("passed")
    assert [c.batch_size for c in report.checks][:2] == [1, 7]
    assert all(c.max_abs_diff <= 1e-4 and c.top1_agreement == 1.0 for c in report.checks)
    assert report.ort_latency_ms_batch1 is not None and report.ort_latency_ms_batch1 > 0
    graph = onnx.load(str(path / ONNX_FILE))
    dim0 = graph.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param == "batch" and not dim0.HasField("dim_value")


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_every_architecture_exports_and_verifies_at_defaults(name: str, tmp_path: Path) -> None:
    result = export(name, out=tmp_path / name)
    m = result.manifest
    _check_bundle(result.path, m)
    spec = zoo.get_spec(name)
    assert m.architecture == name and m.model == zoo.resolve(name)
    assert m.provenance == spec.provenance and m.provenance is not None
    assert m.provenance.distribution == "zoo"
    assert m.classes == tuple(f"class{i}" for i in range(spec.num_classes))
    assert m.normalization.mean == (0.0, 0.0, 0.0) and m.normalization.std == (1.0, 1.0, 1.0)
    assert m.training is None
    assert m.num_parameters == sum(p.numel() for p in zoo.create_model(name).parameters())
    assert m.export.exporter == "torchscript" and m.export.opset == 17
    assert m.versions.torch == torch.__version__ and m.versions.onnx == onnx.__version__


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_every_architecture_exports_at_non_default_hyperparameters(name: str,
                                                                   tmp_path: Path) -> None:
    overrides = non_default_overrides(name)
    result = export(name, overrides=overrides, out=tmp_path / "b")
    _check_bundle(result.path, result.manifest)
    cfg = result.manifest.model
    assert cfg.input_shape.as_tuple() == (1, 40, 40) and cfg.num_classes == 3
    assert all(cfg.hparams[k] == v for k, v in overrides.items() if k in cfg.hparams)
    # the bundle's weights are the seeded initialization, and load back identically
    loaded = zoo.load(result.path)
    x = torch.randn(5, 1, 40, 40)
    torch.manual_seed(0)
    reference = zoo.create_model(name, **overrides).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), reference(x))


def test_export_from_a_run_records_training_and_checks_real_samples(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    summary = make_run(tmp_path / "run", "NetBatchNorm")
    monkeypatch.setenv("ZOO_EXPORTS", str(tmp_path / "exports"))
    result = export(tmp_path / "run")
    assert result.path == tmp_path / "exports" / "NetBatchNorm-synthetic"
    m = result.manifest
    _check_bundle(result.path, m)
    assert m.classes == CLASSES and m.normalization.mean == MEAN and m.normalization.std == STD
    assert m.training is not None
    assert m.training.dataset == "synthetic" and m.training.content_key == "abc123"
    assert m.training.split == summary.data.split and m.training.seed == 7
    assert m.training.recipe == summary.train_config and m.training.checkpoint == "best.pt"
    assert m.training.best is not None and m.training.best.val_acc == pytest.approx(0.57)
    assert m.verification.checks[-1].name == "val samples (16)"
    # the weights are the checkpoint's, not a fresh initialization
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)
    state = torch.load(result.path / WEIGHTS_FILE, weights_only=True)
    assert state.keys() == ckpt["model"].keys()
    assert all(torch.equal(state[k], ckpt["model"][k]) for k in state)


def test_export_from_a_real_training_run(tmp_path: Path) -> None:
    pytest.importorskip("zoo.trainer.loop")
    from zoo.deploy import OnnxClassifier

    trained = zoo.train("Net", dataset="synthetic", epochs=1, out=tmp_path / "run",
                        dataset_options={"num_classes": 3, "size": 200}, batch_size=32,
                        progress="none")
    result = export(trained.run_dir, out=tmp_path / "bundle")
    m = result.manifest
    assert m.training is not None and m.training.epochs_completed == 1
    assert m.training.content_key == trained.summary.data.content_key
    assert m.classes == trained.summary.data.classes and len(m.classes) == 3
    assert m.normalization == trained.summary.normalization
    assert any(c.name.startswith("val samples") for c in m.verification.checks)
    # the deployed predictor and the PyTorch model agree on the run's own images
    samples = np.load(trained.run_dir / "val_samples.npy")
    predicted = [p.index for p in OnnxClassifier(result.path).predict(samples)]
    norm = m.normalization
    with torch.no_grad():
        logits = zoo.load(result.path)(torch.from_numpy(
            zoo.util.imaging.normalize(samples, norm.mean, norm.std)))
    assert predicted == logits.argmax(1).tolist()


def test_dynamo_exporter_also_verifies(tmp_path: Path) -> None:
    result = export("Net", out=tmp_path / "b", exporter="dynamo", opset=18)
    assert result.manifest.export.exporter == "dynamo" and result.manifest.export.opset == 18
    _check_bundle(result.path, result.manifest)


@pytest.mark.parametrize("opset", [opset_range("torchscript")[0], opset_range("torchscript")[1]])
def test_accepted_opset_bounds_export(opset: int, tmp_path: Path) -> None:
    result = export("NetResDeep", overrides={"n_blocks": 2}, out=tmp_path / "b", opset=opset)
    assert onnx.load(str(result.path / ONNX_FILE)).opset_import[0].version == opset


@pytest.mark.parametrize("opset", [3, 99])
def test_unproducible_opset_is_a_clear_error(opset: int, tmp_path: Path) -> None:
    low, high = opset_range("torchscript")
    with pytest.raises(ExportError, match=f"opset {opset} .* accepted: {low} to {high}"):
        export("Net", out=tmp_path / "b", opset=opset)
    assert not (tmp_path / "b").exists()


def test_existing_destination_is_refused_then_replaced_with_force(tmp_path: Path) -> None:
    dest = tmp_path / "b"
    first = export("Net", out=dest)
    with pytest.raises(ExportError, match="already exists; pass --force"):
        export("Net", out=dest, overrides={"n_hidden": 8})
    assert Manifest.model_validate_json((dest / MANIFEST_FILE).read_text()) == first.manifest
    second = export("Net", out=dest, overrides={"n_hidden": 8}, force=True)
    assert second.manifest.model.hparams["n_hidden"] == 8
    assert zoo.load(dest).fc1.out_features == 8
    assert [p.name for p in tmp_path.iterdir()] == ["b"]  # no temporary folder left behind
    assert second.sha256 == bundle_sha256(dest) != first.sha256
    with pytest.raises(dataclasses.FrozenInstanceError):
        second.sha256 = first.sha256  # type: ignore[misc]  # the result is a record


def test_force_never_replaces_a_directory_that_is_not_a_bundle(tmp_path: Path) -> None:
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.tex").write_text("years of work")
    with pytest.raises(ExportError, match="is not a bundle"):
        export("Net", out=tmp_path / "precious", force=True)
    assert (tmp_path / "precious" / "thesis.tex").read_text() == "years of work"
    (tmp_path / "empty").mkdir()  # an empty directory holds nothing to lose
    assert (export("Net", out=tmp_path / "empty", force=True).path / MANIFEST_FILE).is_file()


@pytest.mark.parametrize(("code", "why"), [(errno.ENOSPC, "the disk is full"),
                                           (errno.EACCES, "Permission denied")])
def test_a_write_that_fails_is_one_line_and_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, why: str) -> None:
    import zoo.exporter.onnx as exporter

    def refuse(*args: Any, **kwargs: Any) -> float:
        raise OSError(code, os.strerror(code), "model.onnx")

    monkeypatch.setattr(exporter, "export_onnx", refuse)
    with pytest.raises(ExportError) as info:
        export("Net", out=tmp_path / "b")
    assert str(info.value) == f"cannot write bundle {tmp_path / 'b'}: {why}; nothing was written"
    assert list(tmp_path.iterdir()) == []


def _export_a_different_model(monkeypatch: pytest.MonkeyPatch) -> None:
    import zoo.exporter.onnx as exporter

    original = exporter.export_onnx

    def export_other(model: torch.nn.Module, path: Path, config: Any, **kwargs: Any) -> float:
        other = zoo.default_registry().build(config)  # fresh weights: not what PyTorch computes
        return original(other, path, config, **kwargs)

    monkeypatch.setattr(exporter, "export_onnx", export_other)


def test_failed_verification_leaves_nothing_at_the_destination(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _export_a_different_model(monkeypatch)
    with pytest.raises(VerificationError, match="does not match PyTorch") as info:
        export("Net", out=tmp_path / "b")
    assert not info.value.report.passed
    assert "FAIL" in info.value.report.format()
    assert list(tmp_path.iterdir()) == []


def test_failed_verification_never_replaces_the_existing_bundle(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = export("Net", out=tmp_path / "b")
    _export_a_different_model(monkeypatch)
    with pytest.raises(VerificationError):
        export("Net", out=tmp_path / "b", force=True)
    assert Manifest.model_validate_json((tmp_path / "b" / MANIFEST_FILE).read_text()) == \
        good.manifest
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


def test_cli_failed_verification_prints_report_and_exits_non_zero(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    _export_a_different_model(monkeypatch)
    assert main(["export", "NetDepth", "--out", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert "verification FAILED" in err and "FAIL random batch 7" in err
    assert "zoo: error: the ONNX graph of NetDepth does not match PyTorch" in err
    assert "Traceback" not in err
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(("source", "kwargs", "error", "message"), [
    ("Nett", {}, UnknownArchitectureError, "unknown architecture 'Nett'; did you mean 'Net'"),
    ("Net", {"overrides": {"n_hidden": 0}}, HyperparameterError, "n_hidden"),
    ("Net", {"overrides": {"depth": 3}}, HyperparameterError, "no hyperparameter 'depth'"),
    ("missing/run", {}, ExportError, "run directory 'missing/run' does not exist"),
    ("Net", {"exporter": "tflite"}, ExportError,
     r"invalid option onnx.exporter='tflite': Input should be 'torchscript' or 'dynamo'"),
    ("Net", {"atol": -1.0}, ExportError, "tolerances must be finite and non-negative"),
    ("Net", {"rtol": float("nan")}, ExportError, "tolerances must be finite and non-negative"),
])
def test_bad_input_is_a_clear_error(source: str, kwargs: dict[str, Any], error: type[Exception],
                                    message: str, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match=message):
        export(source, out=tmp_path / "b", **kwargs)
    assert not (tmp_path / "b").exists()


def test_run_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="is not a run directory"):
        export(tmp_path / "empty", out=tmp_path / "b")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ExportError, match="'empty' is neither a run directory"):
        export("empty", out=tmp_path / "b")
    make_run(tmp_path / "nockpt", checkpoints=())
    with pytest.raises(ZooError, match=r"has no checkpoint checkpoints/best\.pt"):
        export(tmp_path / "nockpt", out=tmp_path / "b")
    make_run(tmp_path / "run")
    assert export("run", out=tmp_path / "rel").manifest.training is not None  # relative, no '/'
    with pytest.raises(ExportError, match="--set overrides apply to an architecture name"):
        export(tmp_path / "run", overrides={"n_hidden": 4}, out=tmp_path / "b")
    last = export(tmp_path / "run", out=tmp_path / "b", checkpoint="last")
    assert last.manifest.training is not None
    assert last.manifest.training.checkpoint == "last.pt"
    assert not (tmp_path / "nockpt" / "b").exists() and sorted(
        p.name for p in tmp_path.iterdir()) == ["b", "empty", "nockpt", "rel", "run"]


def test_cli_export_and_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "b"
    assert main(["export", "NetRes", "--set", "n_chans1=8", "--set", "in_height=24",
                 "--set", "in_width=24", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "verification PASSED" in text and f"to {out}" in text
    manifest = Manifest.model_validate_json((out / MANIFEST_FILE).read_text())
    assert manifest.model.hparams["n_chans1"] == 8
    assert manifest.model.input_shape.as_tuple() == (3, 24, 24)
    assert main(["export", "NetRes", "--out", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["export", "NetRes", "--out", str(out), "--opset", "42"]) == 1
    low, high = opset_range("torchscript")
    assert f"opset 42 cannot be produced by the torchscript exporter of torch {torch.__version__}" \
        f"; accepted: {low} to {high}" in capsys.readouterr().err
    assert main(["export", "NetRes", "--out", str(out), "--set", "oops"]) == 1
    assert "--set takes KEY=VALUE" in capsys.readouterr().err
    assert main(["verify", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] is True and len(report["checks"]) == 2
    assert main(["export", "Net", "--out", str(tmp_path / "j"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["format_version"] == 1


def test_published_schema_matches_the_manifest_model() -> None:
    assert json.loads(SCHEMA_PATH.read_text()) == Manifest.model_json_schema()
    schema = Manifest.model_json_schema()
    assert {"format_version", "files", "verification", "versions", "export",
            "created"} <= set(schema["required"])


def test_manifest_files_are_in_the_package_data() -> None:
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    setuptools = pyproject["tool"]["setuptools"]
    root = Path(__file__).parents[1]
    # every package of the source tree is in the wheel: one left out would be missing
    packages = {".".join(p.parent.relative_to(root).parts)
                for p in (root / "zoo").rglob("__init__.py")}
    assert packages <= set(setuptools["packages"])
    assert (root / "zoo" / "spec" / "manifest.schema.json").is_file()
    assert "*.json" in setuptools["package-data"]["zoo.spec"]


def test_untrained_exports_are_reproducible(tmp_path: Path) -> None:
    a = export("NetWidth", out=tmp_path / "a", seed=3)
    b = export("NetWidth", out=tmp_path / "b", seed=3)
    assert a.manifest.files[WEIGHTS_FILE].sha256 == b.manifest.files[WEIGHTS_FILE].sha256
    sa = torch.load(a.path / WEIGHTS_FILE, weights_only=True)
    c = export("NetWidth", out=tmp_path / "c", seed=4)
    sc = torch.load(c.path / WEIGHTS_FILE, weights_only=True)
    assert not np.allclose(sa["conv1.weight"].numpy(), sc["conv1.weight"].numpy())


def test_an_input_over_a_megapixel_is_refused_before_export(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"^input size 1025x1025 is too large to export; "
                                          r"accepted: at most 1048576 pixels \(e.g. 1024x1024\)$"):
        export("Net", overrides={"in_height": 1025, "in_width": 1025}, out=tmp_path / "big")
    assert not (tmp_path / "big").exists()


def test_a_path_is_a_run_directory_never_an_architecture_name(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ExportError, match=r"run directory 'Net' does not exist"):
        export(Path("Net"), out=tmp_path / "b")
    with pytest.raises(ExportError, match=r"run directory 'runs/Net' does not exist"):
        export("runs/Net", out=tmp_path / "b")
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("content", ["objects", "damaged"])
def test_validation_samples_that_are_not_plain_images_are_refused(tmp_path: Path,
                                                                  content: str) -> None:
    make_run(tmp_path / "run")
    samples = tmp_path / "run" / VAL_SAMPLES
    if content == "objects":  # loading it would unpickle, which may run code
        np.save(samples, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    else:
        samples.write_bytes(samples.read_bytes()[:60])
    with pytest.raises(ExportError, match=rf"{VAL_SAMPLES} is not a plain array of images: "):
        export(tmp_path / "run", out=tmp_path / "b")
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("n", [0, 1, 3])
def test_every_validation_sample_is_checked(tmp_path: Path, n: int) -> None:
    make_run(tmp_path / "run")
    samples = tmp_path / "run" / VAL_SAMPLES
    np.save(samples, np.load(samples)[:n])
    checks = [c.name for c in export(tmp_path / "run", out=tmp_path / "b").manifest
              .verification.checks]
    assert checks == ["random batch 1", "random batch 7"] + ([f"val samples ({n})"] if n else [])


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_the_graph_takes_any_batch_and_the_times_are_real(tmp_path: Path, exporter: str) -> None:
    start = time.perf_counter()
    result = export("Net", out=tmp_path / "b", exporter=exporter)
    wall = time.perf_counter() - start
    graph = onnx.load(str(tmp_path / "b" / ONNX_FILE)).graph
    for value, rest in ((graph.input[0], [3, 32, 32]), (graph.output[0], [2])):
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param and not dims[0].dim_value  # symbolic: any batch
        assert [d.dim_value for d in dims[1:]] == rest
    assert 0 < result.manifest.export.export_seconds < wall
    assert 0 < result.manifest.verification.seconds < wall
    latency = result.manifest.verification.ort_latency_ms_batch1
    assert latency is not None and 1e-3 < latency < wall * 1000 / 100  # a median of 100 runs


def test_tolerances_are_finite_and_may_be_zero() -> None:
    check_tolerances(0.0, 0.0)  # exact agreement may be asked for
    for atol, rtol in [(float("inf"), 1e-3), (1e-4, float("inf")), (-1e-9, 1e-3),
                       (1e-4, -1e-9), (float("nan"), 1e-3), (1e-4, float("nan"))]:
        with pytest.raises(ExportError, match="tolerances must be finite and non-negative"):
            check_tolerances(atol, rtol)
