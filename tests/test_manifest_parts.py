"""Parts of the manifest module (:mod:`zoo.spec.manifest`) checked directly: a format's
report lines, the normalization check at its edges, the graph identity stamp, and the
manifest's JSON text."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from zoo.bundles.integrity import open_bundle
from zoo.bundles.store import resolve_bundle
from zoo.errors import BundleError
from zoo.spec.architecture import ModelConfig
from zoo.spec.manifest import (
    CheckResult,
    FormatRecord,
    check_normalization,
    graph_metadata,
)
from zoo.spec.run import Normalization


def check(name: str, diff: float, accuracy: float | None = None,
          reference: float | None = None) -> CheckResult:
    return CheckResult(name=name, batch_size=7, max_abs_diff=diff, max_rel_diff=diff,
                       top1_agreement=1.0, passed=True, accuracy=accuracy,
                       reference_accuracy=reference)


def test_a_format_reports_its_worst_output_difference_its_accuracy_and_its_speed() -> None:
    record = FormatRecord(files=("model.int8.onnx",), passed=True, atol=0.1, rtol=0.1,
                          checks=(check("random batch 7", 0.02), check("random batch 1", 0.05),
                                  check("held-out split", 0.9, 0.875, 0.88),
                                  check("only one", 0.9, 0.5)),
                          ort_latency_ms_batch1=0.5)
    assert record.format("int8", reference_latency_ms=1.0).splitlines() == [
        "  int8: model.int8.onnx verified (4 checks, max abs 0.05)",
        "    top-1 0.875 (float32 0.880) on the held-out split",
        "    onnxruntime CPU latency, batch 1: 0.500 ms (float32 1.000 ms: 2.00x as fast)"]
    assert record.format("int8").splitlines()[-1] == (
        "    onnxruntime CPU latency, batch 1: 0.500 ms")
    bare = FormatRecord(files=("x",), passed=False, atol=0.0, rtol=0.0)
    assert bare.format("x") == "  x: x FAILED (0 checks, max abs 0)"


@pytest.mark.parametrize(("mean", "std", "message"), [
    ((0.5, 0.5), (0.2, 0.2, 0.2), "has a normalization of 2 means and 3 stds for 3 input"),
    ((0.5, 0.5, 0.5), (0.2, 0.2), "has a normalization of 3 means and 2 stds for 3 input"),
    ((0.5, math.nan, 0.5), (0.2, 0.2, 0.2), "has a non-finite normalization mean"),
    ((0.5, 0.5, 0.5), (0.2, 0.0, 0.2), "has normalization std"),
    ((0.5, 0.5, 0.5), (0.2, math.inf, 0.2), "has normalization std"),
])
def test_a_normalization_must_fit_the_input(mean: tuple[float, ...], std: tuple[float, ...],
                                            message: str) -> None:
    with pytest.raises(BundleError, match=f"^the bundle {message}"):
        check_normalization(Normalization(mean=mean, std=std), 3, "the bundle")
    check_normalization(Normalization(mean=(0.5,) * 3, std=(1e-9,) * 3), 3, "the bundle")


def test_the_graph_stamp_writes_hyperparameters_in_sorted_order() -> None:
    config = ModelConfig(architecture="NetWidth", hparams={"n_chans1": 32, "act": "tanh"})
    stamp = graph_metadata(config)
    assert stamp["zoo.hparams"] == '{"act":"tanh","n_chans1":32}'
    assert stamp["zoo.input_shape"] == "3x32x32" and stamp["zoo.num_classes"] == "2"


def test_a_manifest_without_formats_writes_no_formats_key() -> None:
    manifest = open_bundle(resolve_bundle("Net"))
    text = manifest.to_json()
    assert text.endswith("}\n") and '\n  "files": {' in text  # two-space indent
    assert "formats" not in json.loads(text)
    with_formats = manifest.model_copy(update={"formats": {"x": FormatRecord(
        files=("x",), passed=True, atol=0.0, rtol=0.0)}})
    assert "formats" in json.loads(with_formats.to_json())


def test_the_documented_default_tolerances() -> None:
    from zoo.spec.manifest import DEFAULT_ATOL, DEFAULT_RTOL

    text = (Path(__file__).parents[1] / "docs" / "export-and-deploy.md").read_text()
    assert "(defaults atol 1e-4, rtol 1e-3;" in text
    assert (DEFAULT_ATOL, DEFAULT_RTOL) == (1e-4, 1e-3)


def test_the_published_schema_file_is_written_sorted_and_indented(tmp_path: Path) -> None:
    from zoo.spec.manifest import SCHEMA_PATH, write_schema

    write_schema(tmp_path / "schema.json")
    assert (tmp_path / "schema.json").read_text() == SCHEMA_PATH.read_text()


def test_every_record_of_a_manifest_is_frozen_and_closed() -> None:
    """A checked manifest cannot be changed in memory after its check, at any depth."""
    import pydantic

    from zoo.spec import manifest as module

    models = [v for v in vars(module).values() if isinstance(v, type)
              and issubclass(v, pydantic.BaseModel) and v.__module__ == module.__name__]
    assert len(models) >= 8
    for model in models:
        assert model.model_config.get("frozen") is True, model.__name__
        assert model.model_config.get("extra") == "forbid", model.__name__
    loaded = open_bundle(resolve_bundle("Net"))
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        loaded.verification.passed = False  # type: ignore[misc]
