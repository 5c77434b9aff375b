"""``curves.png``: three panels from the run's metrics, the best epoch found as best.pt is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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
