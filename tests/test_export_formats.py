"""Export formats as a hook: pt2 (torch.export) beside ONNX, verified, hashed, tamper-checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from export_helpers import make_run

import zoo
from zoo.cli import main
from zoo.errors import BundleError, ExportError
from zoo.exporter import export
from zoo.exportformats import available_formats
from zoo.manifest import ONNX_FILE, Manifest, open_bundle, read_manifest, sha256_file
from zoo.pt2 import PT2_FILE


def test_onnx_and_pt2_are_written_verified_and_listed(tmp_path: Path) -> None:
    make_run(tmp_path / "run", "NetBatchNorm")
    result = export(tmp_path / "run", out=tmp_path / "b", formats="onnx,pt2")
    manifest = result.manifest
    record = manifest.formats["pt2"]
    assert record.files == (PT2_FILE,) and record.passed
    # the same inputs as the ONNX checks: random batches of 1 and 7 and the samples
    assert [c.name for c in record.checks] == [c.name for c in manifest.verification.checks]
    assert all(c.max_abs_diff <= 1e-4 and c.top1_agreement == 1.0 for c in record.checks)
    assert manifest.files[PT2_FILE].sha256 == sha256_file(tmp_path / "b" / PT2_FILE)
    assert open_bundle(tmp_path / "b") == manifest
    # what was saved is the model: loaded back, it gives the bundle model's logits
    program = torch.export.load(tmp_path / "b" / PT2_FILE).module()
    model = zoo.load(tmp_path / "b").eval()
    x = torch.randn(5, *manifest.model.input_shape.as_tuple())
    with torch.no_grad():
        torch.testing.assert_close(program(x), model(x), rtol=1e-4, atol=1e-5)


def test_a_tampered_pt2_is_caught_like_the_onnx_file(tmp_path: Path) -> None:
    for name in (PT2_FILE, ONNX_FILE):
        copy = tmp_path / f"copy-{name}"
        export("Net", out=copy, formats="onnx,pt2")
        data = bytearray((copy / name).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (copy / name).write_bytes(bytes(data))
        with pytest.raises(BundleError, match=f"{name} does not match its SHA-256"):
            zoo.load(copy)


def test_unknown_and_incomplete_format_lists_are_clear_errors(tmp_path: Path) -> None:
    assert {"onnx", "pt2"} <= set(available_formats(zoo.default_registry()))
    with pytest.raises(ExportError, match=r"unknown export format 'tflite'; installed: onnx, pt2"):
        export("Net", out=tmp_path / "b", formats="onnx,tflite")
    with pytest.raises(ExportError, match=r"leaves out 'onnx'.*use --format onnx,pt2"):
        export("Net", out=tmp_path / "b", formats="pt2")
    assert not (tmp_path / "b").exists()


def test_old_manifests_without_formats_stay_the_same(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "Net", "--out", str(tmp_path / "b"), "--format", "onnx,pt2"]) == 0
    assert "  pt2: model.pt2 verified (2 checks" in capsys.readouterr().out
    assert main(["verify", str(tmp_path / "b")]) == 0  # zoo verify re-checks pt2 too
    assert "  pt2: model.pt2 ok (2 checks, max abs 0)" in capsys.readouterr().out
    plain = export("Net", out=tmp_path / "plain").manifest
    raw = json.loads((tmp_path / "plain" / "manifest.json").read_text())
    assert "formats" not in raw and plain.formats == {}
    assert read_manifest(tmp_path / "plain") == Manifest.model_validate(raw)


def test_the_onnx_format_as_declared_writes_and_verifies_like_any_other(tmp_path: Path) -> None:
    """The exporter writes ONNX itself, but the core plugin's declaration of the format is
    usable as it stands (a tool that writes formats by their plugins gets a checked graph)."""
    from zoo.exporter import check_inputs

    spec = available_formats(zoo.default_registry())["onnx"]
    config = zoo.resolve("Net")
    torch.manual_seed(0)
    model = zoo.default_registry().build(config).eval()
    spec.load_writer()(model, tmp_path, config)
    assert [p.name for p in tmp_path.iterdir()] == list(spec.files) == [ONNX_FILE]
    inputs = check_inputs(config, None)
    checks = spec.load_verifier()(model, tmp_path, config, inputs, 1e-4, 1e-3)
    assert [c.name for c in checks] == [name for name, _ in inputs]
    assert all(c.passed and c.max_abs_diff < 1e-4 for c in checks)
    with torch.no_grad():  # a verifier that compares against another model fails
        for p in model.parameters():
            p.add_(0.5)
    assert not any(c.passed for c in spec.load_verifier()(model, tmp_path, config, inputs,
                                                          1e-4, 1e-3))
