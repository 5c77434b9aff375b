"""How a run ends: Ctrl-C in the middle or at the last epoch, and a resume of a run with
nothing left to train."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

import zoo
from zoo.host.events import TrainingRun
from zoo.host.registry import Registry
from zoo.spec.run import EpochMetrics, read_summary
from zoo.trainer.loop import train

FAST: dict[str, Any] = {
    "dataset_options": {"size": 96, "num_classes": 2},
    "model": {"in_height": 16, "in_width": 16},
    "batch_size": 32,
    "progress": "none",
    "num_threads": 1,
}


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))


class CtrlC:
    """Presses Ctrl-C at the end of an epoch's training (as a user would, mid-run), and
    keeps the trainer's notes."""

    def __init__(self, at_epoch: int | None = None) -> None:
        self.at_epoch = at_epoch
        self.notes: list[str] = []

    @zoo.hookimpl
    def zoo_train_epoch_end(self, run: TrainingRun, metrics: EpochMetrics) -> None:
        if metrics.epoch == self.at_epoch:
            os.kill(os.getpid(), signal.SIGINT)

    @zoo.hookimpl
    def zoo_train_note(self, run: TrainingRun, text: str) -> None:
        self.notes.append(text)


def _registry(plugin: object) -> Registry:
    reg = Registry()
    reg.register(plugin, name="ctrl-c")
    return reg


def test_ctrl_c_ends_the_run_after_the_epoch_in_progress(tmp_path: Path) -> None:
    handler = signal.getsignal(signal.SIGINT)
    plugin = CtrlC(at_epoch=2)  # of 3: one left, so the run stops here
    with pytest.raises(KeyboardInterrupt):
        train("Net", registry=_registry(plugin), epochs=3, out=tmp_path / "run", **FAST)
    summary = read_summary(tmp_path / "run")
    assert (summary.status, summary.epochs_completed) == ("interrupted", 2)
    assert plugin.notes[-1] == (f"zoo: interrupted after epoch 2; continue with: zoo train Net "
                                f"--resume {tmp_path / 'run'}")
    assert signal.getsignal(signal.SIGINT) is handler  # Ctrl-C is the user's again
    resumed = train("Net", registry=_registry(CtrlC()), resume=tmp_path / "run")
    assert [m.epoch for m in resumed.metrics] == [1, 2, 3]
    assert read_summary(tmp_path / "run").status == "completed"


def test_ctrl_c_in_the_last_epoch_lets_the_run_complete(tmp_path: Path) -> None:
    plugin = CtrlC(at_epoch=2)
    result = train("Net", registry=_registry(plugin), epochs=2, out=tmp_path / "run", **FAST)
    assert [m.epoch for m in result.metrics] == [1, 2]
    assert read_summary(tmp_path / "run").status == "completed"
    assert not [n for n in plugin.notes if "interrupted" in n]


def test_resuming_a_completed_run_trains_nothing_and_keeps_it_completed(tmp_path: Path) -> None:
    train("Net", registry=_registry(CtrlC()), epochs=2, out=tmp_path / "run", **FAST)
    before = (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes()
    plugin = CtrlC()
    again = train("Net", registry=_registry(plugin), resume=tmp_path / "run")
    assert [m.epoch for m in again.metrics] == [1, 2]
    assert plugin.notes == [
        f"zoo: {tmp_path / 'run'} is finished (2 of 2 epochs trained); nothing was trained. "
        f"To train longer, start a new run from its best weights: zoo train Net --init-from "
        f"{tmp_path / 'run'} --epochs N"]
    summary = read_summary(tmp_path / "run")
    assert (summary.status, summary.stop_reason, summary.epochs_completed) == (
        "completed", None, 2)
    assert (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes() == before


class CtrlCAtStep:
    """Ctrl-C after step ``step`` of epoch ``epoch``: the trainer saves the epoch so far."""

    def __init__(self, epoch: int, step: int) -> None:
        self.epoch, self.step = epoch, step

    @zoo.hookimpl
    def zoo_train_step(self, run: TrainingRun, epoch: int, step: int, steps: int) -> None:
        if (epoch, step) == (self.epoch, self.step):
            os.kill(os.getpid(), signal.SIGINT)


def test_a_run_interrupted_mid_epoch_resumes_to_the_same_numbers(tmp_path: Path) -> None:
    config = {**FAST, "dataset_options": {"size": 240, "num_classes": 2}}
    whole = train("Net", epochs=2, out=tmp_path / "whole", **config)
    with pytest.raises(KeyboardInterrupt):
        train("Net", registry=_registry(CtrlCAtStep(epoch=2, step=1)), epochs=2,
              out=tmp_path / "cut", **config)
    assert read_summary(tmp_path / "cut").epochs_completed == 1
    resumed = train("Net", registry=_registry(CtrlC()), resume=tmp_path / "cut")
    # the epoch's totals carried over the interruption: the same loss and accuracy, bitwise
    for a, b in zip(whole.metrics, resumed.metrics, strict=True):
        assert (a.train_loss, a.train_acc, a.val_loss, a.val_acc) == (
            b.train_loss, b.train_acc, b.val_loss, b.val_acc)


def test_a_batch_split_gives_back_the_threads_it_borrowed(tmp_path: Path) -> None:
    import torch

    before = torch.get_num_threads()
    try:
        train("Net", registry=_registry(CtrlC()), epochs=1, out=tmp_path / "run",
              **{**FAST, "num_threads": 2, "batch_split": 2})
        assert torch.get_num_threads() == 2  # not the one thread of each part
    finally:
        torch.set_num_threads(before)
