"""What ``zoo evaluate`` reports, read back: the text, the JSON's model and the picture.

The report objects are built here directly (no model), with fixtures where the cases the
code tells apart differ: a class folder without images, a row of exactly one image, a
cell of exactly half its row, more classes than the text matrix shows, 4 and 5 classes
(the tick labels turn at 5), 30 and 31 (cells are annotated up to 30), a bundle and a run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from zoo.analysis import evaluation
from zoo.analysis.evaluation import ClassAccuracy, Evaluation, SkippedFile, labelled_files
from zoo.errors import DataError


def _report(confusion: list[list[int]], *, bundle: str | None = "Net-cifar2",
            present: list[str] | None = None, **fields: Any) -> Evaluation:
    n = len(confusion)
    classes = tuple(f"c{i}" for i in range(n))
    matrix = np.asarray(confusion)
    per_class = tuple(
        ClassAccuracy(name=c, images=int(matrix[i].sum()), correct=int(matrix[i, i]),
                      accuracy=matrix[i, i] / matrix[i].sum() if matrix[i].sum() else None)
        for i, c in enumerate(classes) if present is None or c in present)
    total = int(matrix.sum())
    base: dict[str, Any] = dict(
        model="runs/x" if bundle is None else f"exports/{bundle}", bundle=bundle,
        architecture="Net", backend="onnxruntime", data_dir="data/test", classes=classes,
        images=total, correct=int(np.trace(matrix)), accuracy=np.trace(matrix) / total,
        per_class=per_class, confusion=tuple(tuple(r) for r in confusion), seconds=0.5)
    return Evaluation(**{**base, **fields})


def _figure(result: Evaluation, out: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Write the outputs; return the confusion figure (kept open for reading)."""
    import matplotlib.pyplot as plt

    figures: list[Any] = []
    monkeypatch.setattr(plt, "close", figures.append)
    evaluation.write_outputs(result, out)
    assert len(figures) == 1
    return figures[0]


def test_the_picture_shows_each_true_class_as_shares_with_counts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # rows: 3 of 4 right; exactly half; a single image; no image at all
    confusion = [[3, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    fig = _figure(_report(confusion), tmp_path / "out", monkeypatch)
    ax = fig.axes[0]
    image = ax.images[0]
    expected = [[0.75, 0.25, 0, 0], [0.5, 0.5, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    np.testing.assert_allclose(np.asarray(image.get_array()), expected)
    assert image.get_clim() == (0.0, 1.0)
    texts = {(t.get_position(), t.get_text()): t.get_color() for t in ax.texts}
    assert len(texts) == 16
    assert texts[((0, 0), "3")] == "white"  # more than half of its row
    assert texts[((1, 1), "1")] == "black"  # exactly half: not more
    assert texts[((2, 2), "1")] == "white"  # the whole of a one-image row
    assert texts[((3, 3), "0")] == "black"
    assert [t.get_rotation() for t in ax.get_xticklabels()] == [0.0] * 4
    assert {t.get_horizontalalignment() for t in ax.get_xticklabels()} == {"center"}
    assert ax.get_title() == "Net-cifar2 on test: accuracy 0.7143 (onnxruntime)"
    with Image.open(tmp_path / "out" / evaluation.CONFUSION_PNG) as png:
        assert png.size == (600, 510)  # (4 + 0.5 x 4) inches by 0.85 of that, at 100 dpi
    saved = Evaluation.model_validate_json(
        (tmp_path / "out" / evaluation.EVALUATION_JSON).read_text())
    assert saved == _report(confusion)


@pytest.mark.parametrize(("n", "rotated", "annotated", "size"), [
    (5, True, True, (650, 552)), (30, True, True, (1900, 1615)), (31, True, False, (1950, 1657)),
    (40, True, False, (2000, 1700)),
])
def test_the_picture_grows_with_the_classes_up_to_a_limit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, n: int, rotated: bool,
        annotated: bool, size: tuple[int, int]) -> None:
    confusion = np.eye(n, dtype=int).tolist()
    fig = _figure(_report(confusion, bundle=None), tmp_path / "out", monkeypatch)
    ax = fig.axes[0]
    assert {t.get_rotation() for t in ax.get_xticklabels()} == {45.0 if rotated else 0.0}
    assert {t.get_horizontalalignment() for t in ax.get_xticklabels()} == {"right"}
    assert len(ax.texts) == (n * n if annotated else 0)
    assert ax.get_title().startswith("runs/x on test: accuracy 1.0000")
    with Image.open(tmp_path / "out" / evaluation.CONFUSION_PNG) as png:
        assert png.size == size


def test_the_text_report_marks_an_empty_class_and_shows_the_matrix() -> None:
    text = _report([[3, 1], [0, 0]]).format()
    assert text.splitlines()[:2] == ["Net-cifar2 (Net) on data/test, onnxruntime: 4 images",
                                     "accuracy 0.7500 (3 of 4)"]
    assert "\nc0          4        3    0.7500\nc1          0        0         -\n" in text
    assert text.endswith("    c0  c1\nc0   3   1\nc1   0   0")


@pytest.mark.parametrize("n", [20, 21])
def test_the_text_matrix_leaves_out_unseen_classes_past_twenty(n: int) -> None:
    confusion = [[0] * n for _ in range(n)]
    confusion[0][0], confusion[0][n - 1], confusion[1][1] = 5, 1, 2
    text = _report(confusion, present=["c0", "c1"]).format()
    header = text.splitlines()[-3].split()
    # up to 20 classes every one is a column; past it, those with a folder or a prediction
    assert header == ([f"c{i}" for i in range(n)] if n <= 20 else ["c0", "c1", f"c{n - 1}"])
    assert [line.split()[0] for line in text.splitlines()[-2:]] == ["c0", "c1"]


def test_every_field_of_the_report_is_required_but_skipped_and_left_out() -> None:
    required = {name for name, f in Evaluation.model_fields.items() if f.is_required()}
    assert required == set(Evaluation.model_fields) - {"skipped", "left_out"}
    assert {n for n, f in ClassAccuracy.model_fields.items() if f.is_required()} == \
        {"name", "images", "correct", "accuracy"}
    assert {n for n, f in SkippedFile.model_fields.items() if f.is_required()} == \
        {"path", "error"}
    report = _report([[1]])
    assert (report.skipped, report.left_out) == ((), ())
    for frozen in (report, report.per_class[0], SkippedFile(path="a", error="b")):
        with pytest.raises(ValidationError, match="frozen"):
            frozen.model_copy().__setattr__(next(iter(type(frozen).model_fields)), "x")


@pytest.mark.parametrize(("extra", "shown"), [(10, 10), (11, 10)])
def test_folders_that_are_not_classes_are_named_up_to_ten(tmp_path: Path, extra: int,
                                                          shown: int) -> None:
    (tmp_path / "c0").mkdir()
    names = [f"x{i:02d}" for i in range(extra)]
    for name in names:
        (tmp_path / name).mkdir()
    with pytest.raises(DataError) as caught:
        labelled_files(tmp_path, ["c0", "c1"], "Net")
    message = str(caught.value)
    assert all(repr(name) in message for name in names[:shown])
    assert all(repr(name) not in message for name in names[shown:])
    assert (", ..." in message) is (extra > 10)
