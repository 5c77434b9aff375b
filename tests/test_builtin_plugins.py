"""The core plugins of :mod:`zoo.builtin` called through their hooks on a hand-made run:
what each writes, and what it does when a run is interrupted or a write fails."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn

from zoo.builtin import curveplot, metricsfiles, progressdisplay
from zoo.errors import TrainingError
from zoo.host.events import TrainingRun
from zoo.spec.architecture import ModelConfig
from zoo.spec.run import CURVES_PNG, METRICS_CSV, METRICS_JSONL, DataInfo, EpochMetrics, RunSummary
from zoo.spec.training import TrainConfig


def epoch(n: int) -> EpochMetrics:
    return EpochMetrics(epoch=n, train_loss=1.0 / n, train_acc=0.5 + n / 10, val_loss=1.2 / n,
                        val_acc=0.45 + n / 10, images_per_s=1000.0, lr=0.01, seconds=2.0)


def run(tmp_path: Path, *, world_size: int = 1, epochs: int = 2) -> TrainingRun:
    data = DataInfo(dataset="synthetic", content_key="k", split="fixed", classes=("a", "b"),
                    train_size=96, val_size=32)
    return TrainingRun(architecture="Net", config=TrainConfig(batch_size=32, progress="none"),
                       run_dir=tmp_path, model_config=ModelConfig(architecture="Net"),
                       data=data, device="cpu", world_size=world_size, steps_per_epoch=3,
                       resumed=False, model=nn.Linear(1, 1),
                       history=[epoch(n) for n in range(1, epochs + 1)])


def summary() -> RunSummary:
    return RunSummary.model_construct()


@pytest.mark.parametrize("status", ["completed", "stopped", "failed"])
def test_curves_are_drawn_when_a_session_ends(tmp_path: Path, status: str,
                                              capfd: pytest.CaptureFixture[str]) -> None:
    curveplot.zoo_train_end(run=run(tmp_path), summary=summary(), status=status)
    assert (tmp_path / CURVES_PNG).read_bytes().startswith(b"\x89PNG")
    assert capfd.readouterr().err == ""


def test_no_curves_are_drawn_after_ctrl_c(tmp_path: Path) -> None:
    curveplot.zoo_train_end(run=run(tmp_path), summary=summary(), status="interrupted")
    assert not (tmp_path / CURVES_PNG).exists()


def test_the_metrics_files_hold_every_epoch(tmp_path: Path) -> None:
    metricsfiles.zoo_train_epoch_end(run=run(tmp_path, epochs=3), metrics=epoch(3))
    lines = (tmp_path / METRICS_JSONL).read_text().splitlines()
    assert [EpochMetrics.model_validate_json(line) for line in lines] == [epoch(1), epoch(2),
                                                                          epoch(3)]
    rows = (tmp_path / METRICS_CSV).read_text().splitlines()
    assert rows[0] == ",".join(EpochMetrics.model_fields) and len(rows) == 4
    assert rows[2].split(",")[:2] == ["2", "0.5"]


def test_a_resumed_run_rewrites_its_metrics_at_start_and_a_new_one_does_not(
        tmp_path: Path) -> None:
    (tmp_path / "new").mkdir()
    metricsfiles.zoo_train_start(run=run(tmp_path / "new", epochs=0))
    assert list((tmp_path / "new").iterdir()) == []
    metricsfiles.zoo_train_start(run=run(tmp_path, epochs=2))
    assert len((tmp_path / METRICS_JSONL).read_text().splitlines()) == 2


def test_a_failed_metrics_write_names_the_file_and_what_is_kept(tmp_path: Path) -> None:
    (tmp_path / METRICS_JSONL).mkdir()  # the file's place is taken by a folder
    with pytest.raises(TrainingError) as caught:
        metricsfiles.zoo_train_epoch_end(run=run(tmp_path), metrics=epoch(2))
    assert str(caught.value).startswith(f"cannot write {tmp_path / METRICS_JSONL}: ")
    assert str(caught.value).endswith(f"; the checkpoints of epoch 2 are written; --resume "
                                      f"{tmp_path} completes the records")


def test_progress_counts_the_images_of_every_process(tmp_path: Path) -> None:
    training = run(tmp_path, world_size=3)
    progressdisplay.zoo_train_note(run=training, text="hello")
    progress = next(iter(training.state.values()))
    assert progress.images_per_step == 96  # 32 per process, 3 processes
    progressdisplay.zoo_train_step(run=training, epoch=1, step=1, steps=3)
    assert list(training.state.values()) == [progress]  # one display for the whole run
