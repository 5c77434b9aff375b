"""The export-format declarations (:mod:`zoo.spec.exportformat`) at their edges: each
bound's value accepted and one past it refused, required fields, frozen models."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import ValidationError

from zoo.spec.exportformat import ExportFormat, ExportTarget, FormatOptions

GOOD: dict[str, Any] = {"name": "tflite", "summary": "A TFLite flatbuffer.",
                        "files": ["model.tflite"], "writer": "my_formats.tflite:write",
                        "verifier": "my_formats.tflite:verify"}


def fmt(**changes: Any) -> ExportFormat:
    return ExportFormat(**{**GOOD, **changes})


@pytest.mark.parametrize(("field", "accepted", "refused"), [
    ("name", "n" * 32, "n" * 33),
    ("name", "a", "A"),
    ("summary", "x", ""),
    ("summary", "s" * 200, "s" * 201),
    ("summary", "one line", "two\nlines"),
    ("files", ["a/" * 126 + "bin"], ["a/" * 126 + "bins"]),  # 255 and 256 characters
    ("files", ["{name}/1/model.onnx"], ["../model.onnx"]),
    ("files", ["labels.txt"], [".hidden"]),
    ("files", ["x.bin"], []),
    ("writer", "pkg.mod:fn", "pkg.mod.fn"),
    ("verifier", "pkg:check", "pkg:"),
])
def test_export_format_bounds(field: str, accepted: Any, refused: Any) -> None:
    assert getattr(fmt(**{field: accepted}), field) == (
        tuple(accepted) if field == "files" else accepted)
    with pytest.raises(ValidationError, match=field):
        fmt(**{field: refused})


@pytest.mark.parametrize("field", ["name", "summary", "files", "writer", "verifier"])
def test_export_format_required_fields(field: str) -> None:
    values = {k: v for k, v in GOOD.items() if k != field}
    with pytest.raises(ValidationError, match=rf"{field}\n  Field required"):
        ExportFormat(**values)


def test_export_format_defaults_freezing_and_unknown_fields() -> None:
    spec = fmt()
    assert spec.options is FormatOptions and spec.provenance is None
    with pytest.raises(ValidationError, match="frozen"):
        spec.name = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        fmt(extra=1)


def test_export_target_is_required_frozen_and_closed() -> None:
    target = ExportTarget(name="Net-cifar2", classes=("airplane", "bird"))
    assert target.classes == ("airplane", "bird")
    with pytest.raises(ValidationError, match="frozen"):
        target.name = "x"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        ExportTarget(name="x", classes=(), extra=1)  # type: ignore[call-arg]
    for missing in ("name", "classes"):
        with pytest.raises(ValidationError, match=rf"{missing}\n  Field required"):
            ExportTarget(**{k: v for k, v in {"name": "x", "classes": ()}.items()
                            if k != missing})


def test_format_options_are_frozen_and_closed() -> None:
    class Options(FormatOptions):
        opset: int = 17

    assert Options(opset=18).opset == 18
    with pytest.raises(ValidationError, match="frozen"):
        Options().opset = 19  # type: ignore[misc]
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        Options(opsett=18)  # type: ignore[call-arg]


@pytest.mark.parametrize("bundle", ["../up", ".hidden", "sp ace", "", "tab\t"])
def test_files_for_refuses_a_bundle_name_that_cannot_be_a_folder(bundle: str) -> None:
    spec = fmt(files=["{name}/1/model.onnx", "{name}/config.pbtxt"])
    assert spec.files_for("Net-cifar2") == ("Net-cifar2/1/model.onnx", "Net-cifar2/config.pbtxt")
    name = re.escape(repr(bundle))
    with pytest.raises(ValueError, match=rf"^the bundle name {name} cannot name a folder of "
                       r"export format 'tflite'; accepted: letters, digits, '_', '-', '\.'$"):
        spec.files_for(bundle)


@pytest.mark.parametrize("model", [ExportFormat, ExportTarget])
def test_every_field_is_described_for_the_reference(model: type[ExportFormat]) -> None:
    undescribed = [name for name, info in model.model_fields.items() if not info.description]
    assert undescribed == []
