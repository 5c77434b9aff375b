"""How a new run is laid out before its first step: steps per epoch by the smallest batch a
model can train on, the schedule over every step, folders made for ``--out``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import zoo
from zoo.errors import ZooError
from zoo.host.events import TrainingRun
from zoo.host.registry import Registry
from zoo.spec.run import read_summary
from zoo.trainer.loop import train

# 2 classes of 50 images, a fifth held out: 80 training images
FAST: dict[str, Any] = {
    "dataset_options": {"size": 100, "num_classes": 2},
    "val_split": 0.2,
    "model": {"in_height": 8, "in_width": 8},
    "progress": "none",
    "num_threads": 1,
}


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))


class Laid(Exception):
    """Raised by the plugin once it has seen the run's layout: no step need run."""


class Steps:
    """Records the steps per epoch the run was laid out with, then stops the run."""

    def __init__(self) -> None:
        self.steps = 0

    @zoo.hookimpl
    def zoo_train_start(self, run: TrainingRun) -> None:
        self.steps = run.steps_per_epoch
        raise Laid


def steps_of(architecture: str, batch_size: int, tmp_path: Path) -> int:
    plugin = Steps()
    registry = Registry()
    registry.register(plugin, name="steps")
    with pytest.raises(ZooError, match="Laid"):
        train(architecture, registry=registry, epochs=1, batch_size=batch_size,
              out=tmp_path / f"{architecture}-{batch_size}", **FAST)
    return plugin.steps


@pytest.mark.parametrize(("architecture", "batch_size", "steps"), [
    ("Net", 79, 2),            # a last batch of one image is a step
    ("NetBatchNorm", 79, 1),   # BatchNorm cannot train on one image: it is left out
    ("NetBatchNorm", 78, 2),   # two images are enough
])
def test_the_last_batch_is_a_step_when_the_model_can_train_on_it(
        tmp_path: Path, architecture: str, batch_size: int, steps: int) -> None:
    assert steps_of(architecture, batch_size, tmp_path) == steps


def test_onecycle_schedules_every_step_of_a_run_in_new_folders(tmp_path: Path) -> None:
    out = tmp_path / "runs" / "2026" / "first"  # the folders above the run are made
    train("Net", epochs=3, batch_size=40, schedule="onecycle", lr=0.05, out=out, **FAST)
    rates = [m.lr for m in read_summary(out).history]
    # 2 steps an epoch, 6 in all: up from a tenth, then down to near nothing at the end
    assert rates[0] > rates[-1] and rates[-1] < 0.05 / 100
    assert max(rates) <= 0.05 + 1e-12
