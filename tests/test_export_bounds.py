"""zoo.export's own bounds: an existing destination, the seed, the input size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from zoo.errors import ExportError
from zoo.exporter import write
from zoo.exporter.source import MAX_EXPORT_PIXELS
from zoo.exporter.write import export


def test_an_existing_bundle_is_replaced_only_with_force(tmp_path: Path) -> None:
    export("Net", out=tmp_path / "b")
    before = (tmp_path / "b" / "manifest.json").read_bytes()
    with pytest.raises(ExportError, match="exists"):
        export("Net", out=tmp_path / "b", seed=1)
    assert (tmp_path / "b" / "manifest.json").read_bytes() == before


@pytest.mark.parametrize("seed", [True, -1, 2**63, 1.0, "1"])
def test_seeds_are_integers_below_2_63(seed: Any, tmp_path: Path) -> None:
    with pytest.raises(ExportError) as error:
        export("Net", out=tmp_path / "b", seed=seed)
    assert str(error.value) == f"seed must be an integer from 0 to 2**63 - 1, got {seed!r}"


def test_the_largest_seed_is_accepted(tmp_path: Path) -> None:
    result = export("Net", out=tmp_path / "b", seed=2**63 - 1)
    assert result.manifest.architecture == "Net"


class _Reached(Exception):
    pass


@pytest.mark.parametrize(("height", "width", "refused"), [
    (1024, 1024, False),  # exactly the limit
    (1, MAX_EXPORT_PIXELS + 1, True),
    (1025, 1024, True),
])
def test_the_input_size_limit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, height: int,
                              width: int, refused: bool) -> None:
    def reached(*args: Any, **kwargs: Any) -> Any:
        raise _Reached  # past the size check: the export itself is not wanted here

    monkeypatch.setattr(write, "checked_classes_and_normalization", reached)
    monkeypatch.setattr(write, "load_source", _shape_only(height, width))
    if refused:
        with pytest.raises(ExportError, match=f"input size {height}x{width} is too large to "
                                              f"export; accepted: at most {MAX_EXPORT_PIXELS} "):
            export("Net", out=tmp_path / "b")
    else:
        with pytest.raises(_Reached):
            export("Net", out=tmp_path / "b")


def _shape_only(height: int, width: int) -> Any:
    """load_source giving a source whose config has this input shape (no model is built)."""
    real = write.load_source

    def load(*args: Any, **kwargs: Any) -> Any:
        src = real(*args, **kwargs)
        shape = src.config.input_shape.model_copy(update={"height": height, "width": width})
        config = src.config.model_copy(update={"input_shape": shape})
        src.config = config
        return src

    return load


def test_each_exporter_has_its_opsets() -> None:
    from torch.onnx import _constants

    from zoo.exporter.onnx import check_opset, opset_range

    low, high = int(_constants.ONNX_MIN_OPSET), int(_constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)
    assert opset_range("torchscript") == (low, high)
    assert opset_range("dynamo") == (18, int(_constants.ONNX_MAX_OPSET))
    assert check_opset(None, "torchscript") == 17 and check_opset(None, "dynamo") == 18
    assert check_opset(low, "torchscript") == low and check_opset(high, "torchscript") == high
    with pytest.raises(ExportError, match=r"^opset 17 cannot be produced by the dynamo "
                                          r"exporter of torch .*; accepted: 18 to "):
        check_opset(17, "dynamo")
    with pytest.raises(ExportError, match=f"accepted: {low} to {high}$"):
        check_opset(low - 1, "torchscript")
    with pytest.raises(ExportError, match=r"^unknown exporter 'tvm'; accepted: torchscript, "
                                          r"dynamo$"):
        check_opset(17, "tvm")  # type: ignore[arg-type]


def test_a_folder_named_like_an_architecture_does_not_hide_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("Net").mkdir()  # neither a run nor a bundle: the name still means the architecture
    assert export("Net", out=tmp_path / "fresh").manifest.architecture == "Net"
    Path("stuff").mkdir()
    with pytest.raises(ExportError, match=r"^'stuff' is neither a run directory \(it has no "
                                          r"run\.json\) nor a bundle \(it has no manifest"):
        export("stuff", out=tmp_path / "b")


def test_a_declared_bundle_name_is_exported_as_that_bundle(tmp_path: Path) -> None:
    result = export("Net-cifar2", out=tmp_path / "again")
    assert result.manifest.architecture == "Net"
    assert result.manifest.classes == ("airplane", "bird")
