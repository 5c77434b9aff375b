"""What ``zoo export`` and ``zoo verify`` print: the summary line's size, the warning of a
slower extra graph, ``--format-option`` parsing, and verify's JSON and status."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from zoo.bundles.integrity import bundle_sha256
from zoo.cli import main
from zoo.cli.export import format_options
from zoo.errors import ZooError
from zoo.exporter import write
from zoo.spec.manifest import FormatRecord, Manifest


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli-export") / "Net-fresh"
    assert main(["export", "Net", "--out", str(out)]) == 0
    return out


def test_format_options_are_format_dot_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert format_options(["onnx.opset=18", "triton.max_batch_size=8", "onnx.exporter=dynamo"]) \
        == {"onnx": {"opset": 18, "exporter": "dynamo"}, "triton": {"max_batch_size": 8}}
    for bad in ("opset=18", ".opset=18", "onnx.=18"):
        key = bad.split("=")[0]
        with pytest.raises(ZooError, match=re.escape(
                f"--format-option takes FORMAT.KEY=VALUE, got {key!r}")):
            format_options([bad])


def test_the_summary_names_the_size_and_the_identity(
        bundle: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "again"
    assert main(["export", "Net", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    manifest = Manifest.model_validate_json((out / "manifest.json").read_text())
    assert lines[-2] == (f"exported Net (torchscript exporter, opset {manifest.export.opset}, "
                         f"{manifest.total_bytes / 1024:.1f} KiB) to {out}")
    assert lines[-1] == f"bundle sha256 {bundle_sha256(out)} (pin it: --expect-sha256)"


@pytest.mark.parametrize(("latency", "warned"), [(2.0, True), (1.0, False), (0.5, False)])
def test_an_extra_graph_slower_than_float32_is_warned_of(
        bundle: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        latency: float, warned: bool) -> None:
    manifest = Manifest.model_validate_json((bundle / "manifest.json").read_text())
    verification = manifest.verification.model_copy(update={"ort_latency_ms_batch1": 1.0})
    record = FormatRecord(files=("model.int8.onnx",), passed=True, atol=0.0, rtol=0.0,
                          ort_latency_ms_batch1=latency)
    slow = manifest.model_copy(update={"verification": verification,
                                       "formats": {"int8": record}})

    def fake_export(*args: Any, **kwargs: Any) -> Any:
        return write.ExportResult(path=bundle, manifest=slow, sha256="0" * 64)

    monkeypatch.setattr(write, "export", fake_export)
    assert main(["export", "Net", "--out", str(bundle)]) == 0
    err = capsys.readouterr().err
    warning = (f"zoo: warning: the int8 graph is slower than the float32 graph at batch 1 on "
               f"this CPU ({latency:.3f} ms against 1.000 ms)")
    assert (warning in err) is warned, err


def test_verify_json_and_status(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(bundle), "--json"]) == 0
    text = capsys.readouterr().out
    report = json.loads(text)
    assert text.startswith('{\n  "')  # two-space indents
    assert "path" not in report and "formats" not in report and report["passed"] is True


def test_a_failed_verification_exits_1(bundle: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from zoo.exporter import verify

    real = verify.verify_bundle

    def failing(*args: Any, **kwargs: Any) -> Any:
        return real(*args, **kwargs).model_copy(update={"passed": False})

    monkeypatch.setattr(verify, "verify_bundle", failing)
    assert main(["verify", str(bundle)]) == 1
    capsys.readouterr()
    assert main(["verify", str(bundle), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["passed"] is False


def test_a_data_folder_is_read_only_to_measure_accuracy(bundle: Path) -> None:
    from zoo.exporter.verify import verify_bundle

    with pytest.raises(ZooError, match=r"^a data folder \(--data-dir\) is read only to measure "
                                       r"accuracy again; add --accuracy"):
        verify_bundle(bundle, data_dir=bundle)
    assert verify_bundle(bundle, data_dir=bundle, accuracy=True).passed  # onnx only: unused
