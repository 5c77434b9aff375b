"""How a run ends: Ctrl-C in the middle or at the last epoch, and a resume of a run with
nothing left to train."""

from __future__ import annotations

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


class CtrlC:
    """Presses Ctrl-C at the end of an epoch's training (as a user would, mid-run), and
    keeps the trainer's notes."""

    def __init__(self, at_epoch: int | None = None) -> None:
        self.at_epoch = at_epoch
        self.notes: list[str] = []

    @zoo.hookimpl
    def zoo_train_epoch_end(self, run: TrainingRun, metrics: EpochMetrics) -> None:
        if metrics.epoch == self.at_epoch:
            signal.raise_signal(signal.SIGINT)

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
    try:
        result = train("Net", registry=_registry(plugin), epochs=2, out=tmp_path / "run",
                       **FAST)
    except KeyboardInterrupt:  # caught here: one escaping would stop the whole suite
        pytest.fail("Ctrl-C in the last epoch interrupted the run")
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
            signal.raise_signal(signal.SIGINT)


def test_a_run_interrupted_mid_epoch_resumes_to_the_same_numbers(tmp_path: Path) -> None:
    config = {**FAST, "dataset_options": {"size": 240, "num_classes": 2}}
    whole = train("Net", epochs=2, out=tmp_path / "whole", **config)
    notes = CtrlC()
    with pytest.raises(KeyboardInterrupt):
        train("Net", registry=_with(CtrlCAtStep(epoch=2, step=1), notes), epochs=2,
              out=tmp_path / "cut", **config)
    cut = read_summary(tmp_path / "cut")
    assert cut.epochs_completed == 1
    last = tmp_path / "cut" / "checkpoints" / "last.pt"
    assert notes.notes[-1] == (f"\nzoo: interrupted in epoch 2 at step 1/7; saved {last}; "
                               f"continue with: zoo train Net --resume {tmp_path / 'cut'}")
    resumed = train("Net", registry=_registry(CtrlC()), resume=tmp_path / "cut")
    # the sessions' time adds up: the first has a whole epoch and a step
    assert cut.last is not None and cut.last.seconds < cut.train_seconds
    assert cut.train_seconds < resumed.summary.train_seconds
    assert resumed.metrics[1].seconds > 0 and resumed.metrics[1].images_per_s > 0
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


class Failing:
    """A plugin whose hook ``where`` raises (at ``epoch`` for the per-epoch hooks)."""

    def __init__(self, where: str, epoch: int = 1) -> None:
        self.where, self.epoch = where, epoch

    @zoo.hookimpl
    def zoo_train_start(self, run: TrainingRun) -> None:
        if self.where == "start":
            raise RuntimeError("cannot start")

    @zoo.hookimpl
    def zoo_train_epoch_end(self, run: TrainingRun, metrics: EpochMetrics) -> None:
        if self.where == "epoch" and metrics.epoch == self.epoch:
            raise RuntimeError(f"cannot log epoch {metrics.epoch}")

    @zoo.hookimpl
    def zoo_train_end(self, run: TrainingRun, summary: object, status: str) -> None:
        if self.where == "end":
            raise RuntimeError(f"cannot end a {status} run")


def _with(*plugins: object) -> Registry:
    reg = Registry()
    for i, plugin in enumerate(plugins):
        reg.register(plugin, name=f"p{i}")
    return reg


def test_a_failing_start_hook_marks_the_new_run_failed(tmp_path: Path) -> None:
    with pytest.raises(zoo.errors.PluginError, match="cannot start"):
        train("Net", registry=_with(Failing("start")), epochs=1, out=tmp_path / "run", **FAST)
    summary = read_summary(tmp_path / "run")
    assert summary.status == "failed" and "cannot start" in (summary.failure or "")


def test_a_failing_hook_marks_a_resumed_run_failed(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        train("Net", registry=_with(CtrlC(at_epoch=1)), epochs=3, out=tmp_path / "run", **FAST)
    with pytest.raises(zoo.errors.PluginError, match="cannot log epoch 2"):
        train("Net", registry=_with(Failing("epoch", epoch=2)), resume=tmp_path / "run")
    summary = read_summary(tmp_path / "run")
    assert (summary.status, summary.epochs_completed) == ("failed", 2)
    assert summary.failure is not None and "cannot log epoch 2" in summary.failure


@pytest.mark.parametrize("ending", ["completed", "stopped", "interrupted"])
def test_a_failing_end_hook_is_raised_unless_the_run_has_its_own_error(
        tmp_path: Path, ending: str, capsys: pytest.CaptureFixture[str]) -> None:
    from zoo.host.events import StopRequest

    class Stop:
        @zoo.hookimpl
        def zoo_train_should_stop(self, run: TrainingRun,
                                  metrics: EpochMetrics) -> StopRequest | None:
            return StopRequest(reason="enough") if ending == "stopped" else None

    plugins: list[object] = [Failing("end"), Stop()]
    if ending == "interrupted":
        plugins.append(CtrlC(at_epoch=1))
    expected: type[BaseException] = (KeyboardInterrupt if ending == "interrupted"
                                     else zoo.errors.PluginError)
    with pytest.raises(expected) as info:
        train("Net", registry=_with(*plugins), epochs=2, out=tmp_path / "run", **FAST)
    err = capsys.readouterr().err
    if ending == "interrupted":  # Ctrl-C is what the user must see; the hook's error a warning
        assert f"zoo: warning: zoo_train_end() of plugin 'p0' raised RuntimeError: cannot end " \
               f"a {ending} run" in err
    else:
        assert f"cannot end a {ending} run" in str(info.value) and "warning" not in err
    assert read_summary(tmp_path / "run").status == ending


def test_every_plugins_start_record_is_kept(tmp_path: Path) -> None:
    class Record:
        def __init__(self, key: str, value: int) -> None:
            self.key, self.value = key, value

        @zoo.hookimpl
        def zoo_train_start(self, run: TrainingRun) -> dict[str, Any]:
            return {self.key: self.value, "shared": self.value}

    result = train("Net", registry=_with(Record("a", 1), Record("b", 2), Record("c", 3)),
                   epochs=1, out=tmp_path / "run", **FAST)
    # each plugin's own key; for a key several set, the one registered last
    assert result.summary.plugins == {"a": 1, "b": 2, "c": 3, "shared": 3}


def test_at_most_five_skipped_files_are_named(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
                tmp_path / "data" / c / f"{i}.png")
    for i in range(7):
        (tmp_path / "data" / "a" / f"broken{i}.png").write_bytes(b"not a png")
    plugin = CtrlC()
    train("Net", registry=_registry(plugin), epochs=1, out=tmp_path / "run",
          dataset="imagefolder", data_dir=tmp_path / "data", val_split=0.25,
          **{k: v for k, v in FAST.items() if k != "dataset_options"})
    skipped = [n for n in plugin.notes if n.startswith("zoo: skipped ")]
    assert len(skipped) == 5 and all("broken" in n for n in skipped)


@pytest.mark.parametrize(("before_last", "note"), [
    (0, "zoo: interrupted after epoch 1; continue with:"),  # the epoch ends whole
    (1, "\nzoo: interrupted in epoch 1 at step 6/7; saved "),
])
def test_ctrl_c_near_the_end_of_an_epoch(tmp_path: Path, before_last: int, note: str) -> None:
    class NearTheEnd(CtrlC):
        @zoo.hookimpl
        def zoo_train_step(self, run: TrainingRun, epoch: int, step: int, steps: int) -> None:
            if epoch == 1 and step == steps - before_last:
                signal.raise_signal(signal.SIGINT)

    plugin = NearTheEnd()
    with pytest.raises(KeyboardInterrupt):
        train("Net", registry=_registry(plugin), epochs=2, out=tmp_path / "run",
              **{**FAST, "dataset_options": {"size": 240, "num_classes": 2}})
    assert plugin.notes[-1].startswith(note)
    assert read_summary(tmp_path / "run").epochs_completed == 1 - before_last


def test_a_run_failing_before_it_starts_leaves_the_folder_it_found(tmp_path: Path) -> None:
    class Ends(CtrlC):
        def __init__(self) -> None:
            super().__init__()
            self.ended: list[str] = []

        @zoo.hookimpl
        def zoo_train_end(self, run: TrainingRun, summary: object, status: str) -> None:
            self.ended.append(status)

    plugin = Ends()
    existing = tmp_path / "existing"
    existing.mkdir()
    (tmp_path / "empty").mkdir()  # no class folders: the data fails to load
    for out in (existing, tmp_path / "new"):
        with pytest.raises(zoo.errors.ZooError):
            train("Net", registry=_registry(plugin), epochs=1, out=out,
                  dataset="imagefolder", data_dir=tmp_path / "empty",
                  **{k: v for k, v in FAST.items() if k != "dataset_options"})
    assert existing.is_dir() and list(existing.iterdir()) == []  # kept, and left empty
    assert not (tmp_path / "new").exists()  # made by the run: removed
    assert plugin.ended == []  # the run never began: no end to report


def test_the_run_keeps_the_first_64_validation_images_as_samples(tmp_path: Path) -> None:
    import numpy as np

    config = {**FAST, "dataset_options": {"size": 700, "num_classes": 2}}
    train("Net", registry=_registry(CtrlC()), epochs=1, out=tmp_path / "run", **config)
    samples = np.load(tmp_path / "run" / "val_samples.npy")
    assert samples.shape == (64, 3, 16, 16)
