"""``zoo compare``'s chart read back from the figure, and how its sources are resolved.

The comparisons are built here (no runs): 3, 4 and 5 groups (the labels turn past 4,
the figure widens past 3), references on some groups only, two rows of one architecture
(labelled by name then), and short and long titles (wrapped to fit the figure).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from zoo.analysis.compare import CompareRow, Comparison, compare, comparison_figure
from zoo.bundles.hub import WeightsError

WIDTH = 0.38  # of each bar


def _rows(n: int, *, same_arch: bool = False) -> tuple[CompareRow, ...]:
    return tuple(CompareRow(name=f"run{i}", architecture="Net" if same_arch else f"Arch{i}",
                            kind="run", path=f"runs/run{i}", epoch=i + 1,
                            train_acc=0.90 + 0.01 * i, val_acc=0.83 + 0.02 * i,
                            reference=0.86 if i % 2 == 0 else None)
                 for i in range(n))


def _chart(n: int, sources: dict[str, str] | None = None, *, same_arch: bool = False) -> tuple:
    fig = comparison_figure(Comparison(rows=_rows(n, same_arch=same_arch),
                                       reference_sources=sources or {}))
    return fig, fig.axes[0]


def test_bars_annotations_and_reference_marks_sit_where_their_groups_are() -> None:
    _, ax = _chart(3)
    assert ax.get_subplotspec().get_geometry() == (1, 1, 0, 0)
    rows = _rows(3)
    train, val = ax.patches[:3], ax.patches[3:6]
    for x, (t, v, r) in enumerate(zip(train, val, rows, strict=True)):
        assert (t.get_x(), t.get_width(), t.get_height()) == pytest.approx(
            (x - WIDTH, WIDTH, r.train_acc))
        assert (v.get_x(), v.get_width(), v.get_height()) == pytest.approx(
            (x, WIDTH, r.val_acc))
    notes = [t for t in ax.texts if hasattr(t, "xy")]
    assert [n.get_text() for n in notes] == ["0.830", "0.850", "0.870"]
    for x, note in enumerate(notes):
        assert note.xy == pytest.approx((x + WIDTH / 2, rows[x].val_acc))
        assert note.get_position() == (0, 2) and note.get_fontsize() == 7
    (marks,) = ax.collections
    segments = [c for seg in marks.get_segments() for point in seg.tolist() for c in point]
    assert segments == pytest.approx([-0.02, 0.86, WIDTH + 0.02, 0.86,
                                      2 - 0.02, 0.86, 2 + WIDTH + 0.02, 0.86])
    assert list(marks.get_linewidths()) == [2.5]
    # the lowest value (0.83) less 0.05, down to a twentieth: 0.75
    assert ax.get_ylim() == pytest.approx((0.75, 1.0))
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == \
        ["reference validation", "train", "validation"]
    assert legend.get_texts()[0].get_fontsize() == 7 and legend._loc == 4  # lower right


@pytest.mark.parametrize(("n", "inches", "rotation", "align"), [
    (3, 5.0, 0, "center"), (4, 5.9, 0, "center"), (5, 7.0, 20, "right")])
def test_the_figure_widens_with_the_groups_and_turns_their_labels_past_four(
        n: int, inches: float, rotation: float, align: str) -> None:
    fig, ax = _chart(n)
    assert tuple(fig.get_size_inches()) == pytest.approx((inches, 4.0))
    labels = ax.get_xticklabels()
    assert [t.get_text() for t in labels] == [f"Arch{i}" for i in range(n)]
    assert {(t.get_rotation(), t.get_horizontalalignment(), t.get_fontsize())
            for t in labels} == {(rotation, align, 8)}


def test_groups_of_one_architecture_are_labelled_by_their_names() -> None:
    _, ax = _chart(3, same_arch=True)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["run0", "run1", "run2"]


_SOURCE = ("Deep Learning with PyTorch (Stevens, Antiga, Viehmann), chapter 8, figure 8.12, "
           "validation set; ") * 3


@pytest.mark.parametrize(("length", "lines", "size"), [
    (8, 1, 8), (100, 2, 8), (140, 3, 8), (200, 3, 7), (260, 3, 6)])
def test_the_title_fits_the_figure_on_as_few_lines_as_it_can(length: int, lines: int,
                                                             size: int) -> None:
    """Fewest lines first (up to 3), then a smaller font: 8, 7, 6 points."""
    source = _SOURCE[:length]
    fig, ax = _chart(2, {"Arch0": source})
    title = ax.title
    text = title.get_text()
    assert text.replace("\n", " ") == f"Train and validation accuracy (reference: {source})"
    renderer = fig.canvas.get_renderer()
    box = title.get_window_extent(renderer)
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width  # never cut off
    assert (text.count("\n") + 1, title.get_fontsize()) == (lines, size)


def test_the_rows_and_the_comparison_are_frozen_with_their_required_fields() -> None:
    from pydantic import ValidationError

    required = {n for n, f in CompareRow.model_fields.items() if f.is_required()}
    assert required == set(CompareRow.model_fields) - {"reference"}
    row = _rows(1)[0]
    assert CompareRow(**row.model_dump(exclude={"reference"})).reference is None
    comparison = Comparison(rows=(row,))
    assert comparison.reference_sources == {}
    assert Comparison(rows=(row,)).reference_sources is not comparison.reference_sources
    for frozen in (row, comparison):
        with pytest.raises(ValidationError, match="frozen"):
            frozen.__setattr__(next(iter(type(frozen).model_fields)), "x")


def test_a_run_without_a_completed_epoch_is_named(tmp_path: Path) -> None:
    import zoo
    from zoo.spec.run import read_summary

    run = tmp_path / "run"
    zoo.train("Net", epochs=1, out=run, dataset_options={"size": 40, "num_classes": 2},
              batch_size=64, progress="none")
    summary = read_summary(run)
    (run / "run.json").write_text(summary.model_copy(update={"best": None}).model_dump_json())
    with pytest.raises(zoo.ZooError, match=f"run '{run}' has no completed epoch to compare"):
        compare([str(run)])


def test_weights_apply_to_architecture_names_only() -> None:
    assert compare(["Net"], weights="cifar2").rows[0].name == "Net-cifar2"
    with pytest.raises(WeightsError, match="no weight set 'nope'"):
        compare(["Net"], weights="nope")
    # a bundle's own name has no weight sets to pick from: --weights does not apply to it
    assert compare(["Net-cifar2"], weights="nope").rows[0].name == "Net-cifar2"
