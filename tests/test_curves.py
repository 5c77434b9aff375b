"""``curves.png``: three panels from the run's metrics, the best epoch found as best.pt is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from zoo.spec.run import CURVES_PNG, EpochMetrics
from zoo.trainer.curves import PANELS, best_epoch, draw_curves, write_curves


def _metrics(val_accs: list[float]) -> list[EpochMetrics]:
    return [EpochMetrics(epoch=i + 1, train_loss=1.0 / (i + 1), train_acc=0.5 + 0.04 * i,
                         val_loss=1.1 / (i + 1), val_acc=v, images_per_s=1000.0,
                         lr=0.1 * 0.5 ** i, seconds=1.0)
            for i, v in enumerate(val_accs)]


def test_best_epoch_is_the_first_of_the_highest() -> None:
    assert best_epoch(_metrics([0.6, 0.8, 0.7, 0.8])).epoch == 2


def test_write_curves(tmp_path: Path) -> None:
    run = tmp_path / "Net-synthetic-run"
    assert not write_curves(run, [], "Net on synthetic")
    assert not (run / CURVES_PNG).exists()
    assert write_curves(run, _metrics([0.6, 0.8, 0.7]), "Net on synthetic")
    pixels = np.asarray(Image.open(run / CURVES_PNG).convert("RGB"), dtype=np.float32)
    assert pixels.std() > 0 and pixels.shape[1] > pixels.shape[0] * 3  # three panels side by side
    assert draw_curves(_metrics([0.5]), tmp_path / "one.png", "one epoch") == PANELS == 3
    assert sorted(p.name for p in run.iterdir()) == [CURVES_PNG]  # nothing half-written beside it


def _epochs(lrs: list[float]) -> list[EpochMetrics]:
    # best validation accuracy at epoch 2, tied at 4: neither the last nor the only one
    acc = [0.6, 0.8, 0.7, 0.8]
    return [EpochMetrics(epoch=i + 1, train_loss=1.0 - 0.1 * i, train_acc=0.5 + 0.1 * i,
                         val_loss=0.9 - 0.05 * i, val_acc=acc[i], images_per_s=100.0,
                         lr=lr, seconds=1.0) for i, lr in enumerate(lrs)]


def _figure(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, metrics: list[EpochMetrics]) -> Any:
    import zoo.trainer.curves as curves

    figures: list[Any] = []
    real = curves.save_png

    def keep(fig: Any, path: Path) -> None:
        figures.append(fig)
        real(fig, path)

    monkeypatch.setattr(curves, "save_png", keep)
    assert draw_curves(metrics, tmp_path / "c.png", "Net on synthetic") == 3
    return figures[0]


def test_the_curves_show_each_epoch_and_mark_the_best_one(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    metrics = _epochs([0.1, 0.05, 0.02, 0.01])
    fig = _figure(monkeypatch, tmp_path, metrics)
    assert tuple(fig.get_size_inches()) == pytest.approx((13.0, 3.8))
    assert fig._suptitle.get_text() == "Net on synthetic" and fig._suptitle.get_fontsize() == 10
    loss, acc, lr = fig.axes
    epochs = [1, 2, 3, 4]
    series = {(ax.get_ylabel(), line.get_label()): (list(line.get_xdata()),
                                                    list(line.get_ydata()), line.get_markersize())
              for ax in fig.axes for line in ax.get_lines() if line.get_linestyle() != ":"}
    assert series[("loss", "train")] == (epochs, [m.train_loss for m in metrics], 3)
    assert series[("loss", "validation")] == (epochs, [m.val_loss for m in metrics], 3)
    assert series[("accuracy", "train")] == (epochs, [m.train_acc for m in metrics], 3)
    assert series[("accuracy", "validation")] == (epochs, [0.6, 0.8, 0.7, 0.8], 3)
    assert series[("accuracy", "best: 0.800 (epoch 2)")] == ([2], [0.8], 12)
    lr_line = lr.get_lines()[0]
    assert (list(lr_line.get_ydata()), lr_line.get_markersize()) == ([0.1, 0.05, 0.02, 0.01], 3)
    for ax in fig.axes:  # the best epoch marked on every panel; whole epochs on the axis
        (mark,) = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
        assert list(mark.get_xdata()) == [2, 2] and mark.get_linewidth() == 1
        assert ax.get_xlabel() == "epoch"
        assert ax.xaxis.get_major_locator()._integer
    assert [t.get_fontsize() for t in loss.get_legend().get_texts()] == [8, 8]
    assert acc.get_legend()._loc == 4 and acc.get_legend().get_texts()[0].get_fontsize() == 8
    assert lr.get_yscale() == "linear"  # 0.1 / 0.01 = 10: a linear axis reads better


@pytest.mark.parametrize(("lrs", "scale"), [
    ([0.1, 0.05, 0.01, 0.002], "linear"),  # exactly 50 times: still linear
    ([0.1, 0.05, 0.01, 0.001], "log"),  # 100 times
    ([0.1, 0.05, 0.01, 0.0], "linear"),  # a zero has no logarithm
    ([2.0, 1.5, 1.2, 1.1], "linear"),
])
def test_the_learning_rate_axis_turns_logarithmic_past_fifty_times(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, lrs: list[float], scale: str) -> None:
    fig = _figure(monkeypatch, tmp_path, _epochs(lrs))
    assert fig.axes[2].get_yscale() == scale
