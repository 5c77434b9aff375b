"""The training hooks: what plugins are told, early stopping, TensorBoard event files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import zoo
from zoo.builtin.earlystop import stale_epochs, stop_request
from zoo.host.events import StopRequest, TrainingRun
from zoo.host.registry import Registry
from zoo.spec.run import EpochMetrics, RunSummary, read_summary
from zoo.trainer.loop import train

FAST: dict[str, Any] = {
    "dataset_options": {"size": 240, "num_classes": 2},
    "model": {"in_height": 16, "in_width": 16},
    "batch_size": 32,
    "progress": "none",
    "num_threads": 1,
}


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))


class Recorder:
    """A plugin that records every call and may stop the run after some epoch."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.stop_after = stop_after

    @zoo.hookimpl
    def zoo_train_start(self, run: TrainingRun) -> dict[str, Any]:
        self.calls.append(("start", run.resumed, len(run.history), run.steps_per_epoch))
        return {"recorder": {"resumed": run.resumed}}

    @zoo.hookimpl
    def zoo_train_step(self, run: TrainingRun, epoch: int, step: int, steps: int) -> None:
        self.calls.append(("step", epoch, step, steps))

    @zoo.hookimpl
    def zoo_train_checkpoint(self, run: TrainingRun, path: Path, epoch: int, best: bool) -> None:
        assert path.is_file()
        self.calls.append(("checkpoint", epoch))

    @zoo.hookimpl
    def zoo_train_epoch_end(self, run: TrainingRun, metrics: EpochMetrics) -> None:
        assert run.history[-1] == metrics
        assert read_summary(run.run_dir).epochs_completed == metrics.epoch
        self.calls.append(("epoch", metrics.epoch, metrics.val_acc))

    @zoo.hookimpl
    def zoo_train_should_stop(self, run: TrainingRun,
                              metrics: EpochMetrics) -> StopRequest | None:
        self.calls.append(("ask", metrics.epoch))
        if self.stop_after is not None and metrics.epoch >= self.stop_after:
            return StopRequest(reason=f"enough after epoch {metrics.epoch}")
        return None

    @zoo.hookimpl
    def zoo_train_end(self, run: TrainingRun, summary: RunSummary, status: str) -> None:
        self.calls.append(("end", status, summary.epochs_completed))


def _registry(plugin: object) -> Registry:
    reg = Registry()
    reg.register(plugin, name="recorder")
    return reg


def test_plugins_are_told_every_step_epoch_and_checkpoint(tmp_path: Path) -> None:
    rec = Recorder()
    result = train("Net", registry=_registry(rec), epochs=2, out=tmp_path / "run", **FAST)
    steps = result.summary.data.train_size // 32 + (result.summary.data.train_size % 32 > 0)
    kinds = [c[0] for c in rec.calls]
    # asked whether to stop after each epoch but the last
    assert kinds == ["start", *["step"] * steps, "checkpoint", "epoch", "ask",
                     *["step"] * steps, "checkpoint", "epoch", "end"]
    assert [c for c in rec.calls if c[0] == "epoch"] == [
        ("epoch", m.epoch, m.val_acc) for m in result.metrics]
    assert rec.calls[-1] == ("end", "completed", 2)
    summary = read_summary(tmp_path / "run")
    assert summary.status == "completed" and summary.stop_reason is None
    assert summary.plugins == {"recorder": {"resumed": False}}


def test_a_stop_request_ends_the_run_and_a_resume_trains_no_more(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = Recorder(stop_after=2)
    reg = _registry(rec)
    result = train("Net", registry=reg, epochs=5, out=tmp_path / "run", **FAST)
    assert [m.epoch for m in result.metrics] == [1, 2]
    summary = read_summary(tmp_path / "run")
    assert (summary.status, summary.stop_reason, summary.epochs_completed) == (
        "stopped", "enough after epoch 2", 2)
    assert rec.calls[-1] == ("end", "stopped", 2)
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2
    again = train("Net", registry=reg, resume=tmp_path / "run", progress="log")
    assert [m.epoch for m in again.metrics] == [1, 2]
    err = capsys.readouterr().err
    assert "is finished (enough after epoch 2); nothing was trained" in err
    assert "zoo: training" not in err
    assert f"--init-from {tmp_path / 'run'}" in err


def test_early_stopping_counts_epochs_without_improvement() -> None:
    def m(epoch: int, val_acc: float, val_loss: float) -> EpochMetrics:
        return EpochMetrics(epoch=epoch, train_loss=1.0, train_acc=0.5, val_loss=val_loss,
                            val_acc=val_acc, images_per_s=1.0, lr=0.1, seconds=1.0)

    history = [m(1, 0.5, 0.9), m(2, 0.7, 0.8), m(3, 0.7, 0.85), m(4, 0.6, 0.7)]
    assert stale_epochs(history, "val_acc") == 2  # a tie is no improvement
    assert stale_epochs(history, "val_loss") == 0
    assert stop_request(history[:3], "val_acc", 2) is None
    request = stop_request(history, "val_acc", 2)
    assert request is not None and "since epoch 2 (0.7000)" in request.reason
    assert stop_request(history, "val_loss", 1) is None
    # losses: a tie is no improvement either; the reason names the best epoch, not the
    # epoch as many from the start as there are stale ones (five epochs tell them apart)
    losses = [m(1, 0.5, 0.9), m(2, 0.6, 0.5), m(3, 0.6, 0.4), m(4, 0.6, 0.4), m(5, 0.6, 0.6)]
    assert stale_epochs(losses, "val_loss") == 2
    request = stop_request(losses, "val_loss", 2)
    assert request is not None and "since epoch 3 (0.4000)" in request.reason
    assert stop_request(losses, "val_loss", 3) is None


def test_early_stopping_resumes_to_the_same_epoch(tmp_path: Path) -> None:
    # lr so small that nothing improves: val_acc stalls from epoch 1, patience 2 stops at 3
    cfg = {**FAST, "lr": 1e-9, "schedule": "none", "early_stop_metric": "val_acc",
           "early_stop_patience": 2}
    whole = train("Net", epochs=6, out=tmp_path / "whole", **cfg)
    assert [m.epoch for m in whole.metrics] == [1, 2, 3]
    assert whole.summary.stop_reason is not None and "val_acc" in whole.summary.stop_reason
    first = train("Net", epochs=6, out=tmp_path / "run", **{**cfg, "early_stop_patience": 2},
                  registry=_registry(Recorder(stop_after=1)))  # a session cut after epoch 1
    assert [m.epoch for m in first.metrics] == [1]
    # the recorder's stop is not the run's rule: resume as if it had been interrupted
    summary = read_summary(tmp_path / "run")
    (tmp_path / "run" / "run.json").write_text(summary.model_copy(
        update={"status": "interrupted", "stop_reason": None}).model_dump_json())
    resumed = train("Net", epochs=6, resume=tmp_path / "run")
    assert [m.val_acc for m in resumed.metrics] == [m.val_acc for m in whole.metrics]
    assert resumed.summary.stop_reason == whole.summary.stop_reason


def test_tensorboard_event_files_read_back(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = train("Net", epochs=2, out=tmp_path / "run", loggers=["tensorboard"], **FAST)
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss/train", "loss/val", "accuracy/train", "accuracy/val", "lr",
            "images_per_s"} <= tags
    for tag, field in (("accuracy/val", "val_acc"), ("loss/train", "train_loss"),
                       ("lr", "lr")):
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [1, 2]
        assert [e.value for e in events] == pytest.approx(
            [getattr(m, field) for m in result.metrics], rel=1e-6)
    # the hyperparameters: an hparams session (its own event file, in the same folder)
    hparams = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    hparams.Reload()
    plugin = hparams.PluginTagToContent("hparams")
    assert plugin, "no hparams summary was written"
    graph = acc.Graph()
    assert any("Conv2d" in node.op or "conv" in node.op.lower() for node in graph.node)
    # the graph and the other loggers change nothing: the same numbers as a plain run
    plain = train("Net", epochs=2, out=tmp_path / "plain", **FAST)
    assert [m.val_loss for m in plain.metrics] == [m.val_loss for m in result.metrics]
    assert [m.train_loss for m in plain.metrics] == [m.train_loss for m in result.metrics]


def test_tensorboard_hparams_are_the_runs_values(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    result = train("Net", epochs=2, out=tmp_path / "run", loggers=["tensorboard"], lr=0.03,
                   flip=False, **{**FAST, "model": {**FAST["model"], "n_hidden": 12}})
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    values = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert values["architecture"].string_value == "Net"
    assert values["dataset"].string_value == "synthetic"
    assert values["lr"].number_value == pytest.approx(0.03)
    assert values["epochs"].number_value == 2 and values["batch_size"].number_value == 32
    assert values["flip"].bool_value is False
    assert values["model.n_hidden"].number_value == 12
    assert "model" not in values and "loggers" not in values  # not scalars: left out
    best = result.summary.best
    assert best is not None
    assert [e.value for e in acc.Scalars("hparam/best_val_acc")] == pytest.approx([best.val_acc])


def test_tensorboard_on_resume_drops_the_events_of_epochs_trained_again(tmp_path: Path) -> None:
    import shutil

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = {**FAST, "loggers": ["tensorboard"]}
    whole = train("Net", epochs=3, out=tmp_path / "whole", **cfg)
    run, snapshot = tmp_path / "run", tmp_path / "snapshot"
    train("Net", epochs=3, out=run, registry=_registry(Recorder(stop_after=2)), **cfg)
    summary = read_summary(run)
    (run / "run.json").write_text(summary.model_copy(
        update={"status": "interrupted", "stop_reason": None}).model_dump_json())
    shutil.copytree(run, snapshot)
    train("Net", epochs=3, resume=run)  # writes epoch 3's events
    # a crash after epoch 3's events were written but before its checkpoint: the state of
    # the run after epoch 2 with the event files of the session that went on
    shutil.rmtree(snapshot / "tensorboard")
    shutil.copytree(run / "tensorboard", snapshot / "tensorboard")
    train("Net", epochs=3, resume=snapshot)
    acc = EventAccumulator(str(snapshot / "tensorboard"))
    acc.Reload()
    for tag, field in (("accuracy/val", "val_acc"), ("loss/train", "train_loss")):
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [1, 2, 3]  # epoch 3 once, epochs 1 and 2 kept
        assert [e.value for e in events] == pytest.approx(
            [getattr(m, field) for m in whole.metrics], rel=1e-6)


def test_init_from_starts_a_new_run_from_the_best_weights(tmp_path: Path) -> None:
    import torch

    from zoo.trainer.checkpoint import load_checkpoint

    first = train("Net", epochs=1, out=tmp_path / "first", **FAST)
    with pytest.raises(zoo.ZooError, match=rf"start a new run from its best weights: "
                                           rf"--init-from {tmp_path / 'first'} --epochs N"):
        train("Net", resume=tmp_path / "first", epochs=3)
    second = train("Net", epochs=1, out=tmp_path / "second", init_from=tmp_path / "first",
                   schedule="none", lr=1e-9, **{k: v for k, v in FAST.items()})
    summary = read_summary(tmp_path / "second")
    assert summary.init_from == str(tmp_path / "first") and summary.epochs_completed == 1
    best = load_checkpoint(tmp_path / "first" / "checkpoints" / "best.pt")["model"]
    now = load_checkpoint(tmp_path / "second" / "checkpoints" / "last.pt")["model"]
    # lr 1e-9: the weights stay those it started from (within float noise)
    assert all(torch.allclose(best[k].float(), now[k].float(), atol=1e-6) for k in best)
    assert second.metrics[0].val_acc == pytest.approx(first.summary.best.val_acc, abs=0.02)
    with pytest.raises(zoo.ZooError, match="init from a run of the same model"):
        train("Net", epochs=1, out=tmp_path / "third", init_from=tmp_path / "first",
              **{**FAST, "model": {"in_height": 20, "in_width": 20}})


def test_core_plugins_keep_listing_free_of_torch() -> None:
    import subprocess
    import sys

    code = ("import sys, zoo.host.registry\nzoo.host.registry.Registry().list_models()\n"
            "print(sorted(m for m in ('torch', 'matplotlib', 'tensorboard') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert proc.stdout.strip() == "[]"


def test_the_progress_eta_leaves_out_the_first_steps_warm_up(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from zoo.trainer import progress as progress_module
    from zoo.trainer.progress import Progress

    clock = [100.0]
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: clock[0])
    bar = Progress("bar", True)
    bar.stream = io.StringIO()
    clock[0] += 12.0  # the first step compiles kernels: 12 s
    bar.step(1, 3, 1, 101)
    assert bar.stream.getvalue().endswith("1/101 warming up")
    for step in range(2, 14):  # then 0.1 s per step (redrawn at most every 0.2 s)
        clock[0] += 0.1
        bar.step(1, 3, step, 101)
    assert bar.stream.getvalue().endswith("13/101  100.0ms/step eta   8.8s")


class Broken:
    @zoo.hookimpl
    def zoo_train_epoch_end(self, run: TrainingRun, metrics: EpochMetrics) -> None:
        raise ValueError(f"cannot log epoch {metrics.epoch}")


def test_a_failing_training_hook_is_a_plugin_error_naming_it(tmp_path: Path) -> None:
    reg = Registry()
    reg.register(Broken(), name="broken")
    with pytest.raises(zoo.errors.PluginError,
                       match=r"zoo_train_epoch_end\(\) of plugin 'broken' raised ValueError: "
                             r"cannot log epoch 1"):
        train("Net", registry=reg, epochs=2, out=tmp_path / "run", **FAST)
    summary = read_summary(tmp_path / "run")  # the epoch's checkpoint and record are intact
    assert summary.epochs_completed == 1 and summary.status == "failed"
    assert summary.failure == ("zoo_train_epoch_end() of plugin 'broken' raised ValueError: "
                               "cannot log epoch 1")
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    resumed = train("Net", resume=tmp_path / "run")  # fixed: the failed run goes on
    assert resumed.summary.epochs_completed == 2 and resumed.summary.status == "completed"
    assert read_summary(tmp_path / "run").failure is None
