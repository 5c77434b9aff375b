"""Runs that detect damage and crashes: checkpoint digests, best/last/run.json agreement,
one writer per run directory, honest resumes, bounded seeds (CPU, offline)."""

from __future__ import annotations

import errno
import os
import re
import socket
from pathlib import Path
from typing import Any

import pytest
import torch

import zoo
from zoo.cli import main
from zoo.errors import TrainingError, ZooError
from zoo.exporter.write import export
from zoo.spec.run import read_summary
from zoo.spec.training import MAX_SEED, load_config_file
from zoo.trainer.checkpoint import (
    CheckpointError,
    best_epoch,
    checkpoint_position,
    load_checkpoint,
    repair_best,
    save_checkpoint,
)
from zoo.trainer.loop import train
from zoo.trainer.rundir import RunLock, RunLockedError

FAST: dict[str, Any] = {
    "dataset_options": {"size": 160, "num_classes": 2},
    "model": {"in_height": 16, "in_width": 16},
    "batch_size": 32,
    "progress": "none",
    "num_threads": 1,
    "schedule": "none",
}


class _Killed(BaseException):
    """Stands for a SIGKILL at a chosen point: nothing after it runs."""


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))


def _weights(path: Path) -> dict[str, torch.Tensor]:
    weights: dict[str, torch.Tensor] = torch.load(path, weights_only=True)["model"]
    return weights


def _flip_a_weight_byte(path: Path) -> None:
    """Flip one bit inside conv1.weight's stored bytes (torch's zip reader does not notice)."""
    raw = bytearray(path.read_bytes())
    tensor = torch.load(path, weights_only=True)["model"]["conv1.weight"]
    data = bytes(tensor.untyped_storage())
    at = raw.find(data[:64])
    assert at > 0
    raw[at + 10] ^= 0x01
    path.write_bytes(bytes(raw))


def test_checkpoints_carry_a_digest_and_a_damaged_one_is_never_loaded(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train("Net", epochs=1, out=run, **FAST)
    last, best = run / "checkpoints" / "last.pt", run / "checkpoints" / "best.pt"
    state = load_checkpoint(last)
    assert len(state["digest"]) == 64
    assert state["format"] == 2  # the format that promises a digest: readers key on it
    _flip_a_weight_byte(last)
    assert torch.load(last, weights_only=True)["model"]["conv1.weight"].shape  # still loads
    with pytest.raises(CheckpointError, match=r"last.pt is damaged"):
        train("Net", epochs=2, resume=run)
    _flip_a_weight_byte(best)
    with pytest.raises(CheckpointError, match=r"best.pt is damaged"):
        export(run, out=tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


def test_a_checkpoint_that_runs_code_when_unpickled_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "last.pt"
    torch.save({"format": 1, "model": {"w": Exploit()}, "epoch": 1}, path)
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*last\.pt: "
                                              r"UnpicklingError: .*unsupported GLOBAL"):
        load_checkpoint(path)
    assert not marker.exists()


def test_a_checkpoint_of_an_older_zoo_without_digest_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "old.pt"
    torch.save({"format": 1, "model": {"w": torch.ones(2)}, "epoch": 1}, path)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))
    save_checkpoint(path, {"format": 2, "model": {"w": torch.ones(2)}})
    state = torch.load(path, weights_only=True)
    del state["digest"]  # a format-2 checkpoint must have one
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(path)


def test_a_crash_between_last_and_best_is_detected_then_repaired_on_resume(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = {**FAST, "epochs": 3}
    whole = train("Net", out=tmp_path / "whole", **cfg)
    improved_later = [m.epoch for m in whole.metrics[1:]
                      if m.val_acc > max(x.val_acc for x in whole.metrics[:m.epoch - 1])]
    assert improved_later, "the test needs an epoch after the first that improves"
    calls = []
    real_copy = zoo.trainer.loop.copy_checkpoint

    def copy_then_die(src: Path, dest: Path) -> None:
        calls.append(dest)
        if len(calls) == 2:
            raise _Killed  # last.pt of this epoch is written, best.pt and run.json are not
        real_copy(src, dest)

    monkeypatch.setattr(zoo.trainer.loop, "copy_checkpoint", copy_then_die)
    run = tmp_path / "run"
    with pytest.raises(_Killed):
        train("Net", out=run, **cfg)
    monkeypatch.setattr(zoo.trainer.loop, "copy_checkpoint", real_copy)
    killed_in = improved_later[0]
    assert read_summary(run).epochs_completed == killed_in - 1
    with pytest.raises(CheckpointError, match=rf"last.pt holds epoch {killed_in} but .*"
                                              rf"records last completed epoch {killed_in - 1}"):
        export(run, checkpoint="last", out=tmp_path / "b1")
    resumed = train("Net", resume=run)
    summary = read_summary(run)
    assert summary.best is not None and summary.best.epoch == whole.summary.best.epoch
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["epoch"] == summary.best.epoch
    for name in ("best.pt", "last.pt"):
        a, b = _weights(tmp_path / "whole" / "checkpoints" / name), \
            _weights(run / "checkpoints" / name)
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert [m.val_acc for m in resumed.metrics] == [m.val_acc for m in whole.metrics]
    bundle = export(run, out=tmp_path / "bundle").manifest
    assert bundle.training is not None and bundle.training.best is not None
    assert bundle.training.best.epoch == best["epoch"]


def test_resume_repairs_run_json_of_a_run_killed_after_its_last_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    real = zoo.trainer.loop._Trainer._write_records
    count = []

    def die_on_second(self: Any, epochs_done: int) -> None:
        count.append(epochs_done)
        if epochs_done == 2:
            raise _Killed
        real(self, epochs_done)

    monkeypatch.setattr(zoo.trainer.loop._Trainer, "_write_records", die_on_second)
    with pytest.raises(_Killed):
        train("Net", epochs=2, out=run, **FAST)
    monkeypatch.setattr(zoo.trainer.loop._Trainer, "_write_records", real)
    assert read_summary(run).epochs_completed == 1
    train("Net", epochs=2, resume=run)  # nothing left to train: only the records
    assert read_summary(run).epochs_completed == 2
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_a_second_writer_fails_at_once_naming_the_holder(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    run = tmp_path / "run"
    train("Net", epochs=1, out=run, **FAST)
    holder = f"zoo train \\(pid {os.getpid()} on host {socket.gethostname()}, started "
    with RunLock(run, command="zoo train"):
        with pytest.raises(RunLockedError, match=holder):
            train("Net", epochs=2, resume=run)
        with pytest.raises(RunLockedError, match=holder):
            export(run, out=tmp_path / "bundle")
        assert main(["export", str(run), "--out", str(tmp_path / "bundle")]) == 1
        assert "is in use by zoo train" in capsys.readouterr().err
    assert not (tmp_path / "bundle").exists()
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    with RunLock(fresh, command="zoo train"), pytest.raises(RunLockedError, match=holder):
        train("Net", epochs=1, out=fresh, **FAST)
    with RunLock(run, command="zoo export", shared=True):  # readers share the lock
        export(run, out=tmp_path / "bundle")


def test_a_run_killed_in_its_first_epoch_resumes_from_the_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = train("Net", epochs=2, out=tmp_path / "whole", **FAST)

    def die(path: Path, state: dict[str, Any]) -> str:
        raise _Killed

    monkeypatch.setattr(zoo.trainer.loop, "save_checkpoint", die)
    with pytest.raises(_Killed):
        train("Net", epochs=2, out=tmp_path / "run", **FAST)
    monkeypatch.undo()
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()
    resumed = train("Net", epochs=2, resume=tmp_path / "run")
    assert [m.val_acc for m in resumed.metrics] == [m.val_acc for m in whole.metrics]
    a = _weights(tmp_path / "whole" / "checkpoints" / "last.pt")
    b = _weights(tmp_path / "run" / "checkpoints" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_killed_before_it_began_can_be_started_again(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def die(self: Any, first: Any) -> None:
        (self.run_dir / "config.json").write_text("{}")
        raise _Killed

    monkeypatch.setattr(zoo.trainer.loop._Trainer, "_create_run_dir", die)
    # as after a SIGKILL: no cleanup runs
    monkeypatch.setattr(zoo.trainer.loop._Trainer, "_drop_unstarted", lambda self: None)
    with pytest.raises(_Killed):
        train("Net", epochs=1, out=tmp_path / "run", **FAST)
    monkeypatch.undo()
    assert {p.name for p in (tmp_path / "run").iterdir()} == {"run.lock", "config.json"}
    with pytest.raises(TrainingError, match="stopped before its first epoch began"):
        train("Net", epochs=1, resume=tmp_path / "run")
    assert train("Net", epochs=1, out=tmp_path / "run", **FAST).summary.epochs_completed == 1


@pytest.mark.parametrize(("change", "setting"), [
    ({"lr": 0.5}, "lr"), ({"seed": 3}, "seed"), ({"val_split": 0.3}, "val_split"),
    ({"model": {"in_height": 16, "in_width": 16, "n_hidden": 8}}, "model"),
    ({"dataset_options": {"size": 200, "num_classes": 2}}, "dataset_options"),
    ({"optimizer": "adam"}, "optimizer"), ({"label_smoothing": 0.2}, "label_smoothing"),
])
def test_resume_refuses_a_setting_it_could_not_apply(tmp_path: Path, change: dict[str, Any],
                                                     setting: str) -> None:
    run = tmp_path / "run"
    train("Net", epochs=1, out=run, **FAST)
    before = (run / "config.json").read_text()
    with pytest.raises(TrainingError, match=rf"cannot resume .* with {setting}=.*started with "
                                            rf"{setting}="):
        train("Net", epochs=2, resume=run, **change)
    assert (run / "config.json").read_text() == before
    assert read_summary(run).epochs_completed == 1


def test_resume_applies_and_records_what_it_may_change(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train("Net", epochs=1, out=run, **FAST)
    with pytest.raises(TrainingError, match=r"--out .* cannot be combined with --resume"):
        train("Net", epochs=2, resume=run, out=tmp_path / "elsewhere")
    # its own folder as --out is accepted, and every other setting still checked after it
    with pytest.raises(TrainingError, match=r"cannot resume .* with seed=4: .*started with "
                                            r"seed=0"):
        train("Net", epochs=2, resume=run, out=run, seed=4)
    result = train("Net", epochs=2, resume=run, out=run, lr=FAST.get("lr", 0.1),
                   eval_batch_size=17)
    assert result.summary.epochs_completed == 2
    assert result.summary.train_config["eval_batch_size"] == 17
    assert not (tmp_path / "elsewhere").exists()


def test_seeds_and_threads_are_bounded_and_the_largest_seed_trains(tmp_path: Path) -> None:
    with pytest.raises(ZooError, match=r"invalid value .* for 'seed'"):
        train("Net", epochs=1, out=tmp_path / "big", seed=MAX_SEED + 1, **FAST)
    with pytest.raises(ZooError, match=r"invalid value -1 for 'seed'"):
        train("Net", epochs=1, out=tmp_path / "neg", seed=-1, **FAST)
    with pytest.raises(ZooError, match=r"invalid value 1000000 for 'num_threads'"):
        train("Net", epochs=1, out=tmp_path / "threads", **{**FAST, "num_threads": 10**6})
    small = {**FAST, "dataset_options": {"size": 40, "num_classes": 2}}
    assert train("Net", epochs=1, out=tmp_path / "max", seed=MAX_SEED,
                 **small).summary.seed == MAX_SEED


def test_a_config_file_that_is_not_utf8_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "recipe.toml"
    path.write_bytes(b"lr = 0.1\n# caf\xe9\n")
    with pytest.raises(ZooError, match=r"recipe.toml' is not UTF-8 text"):
        load_config_file(path)


def test_disk_full_while_checkpointing_is_one_line_and_keeps_the_last_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    train("Net", epochs=1, out=run, **FAST)
    before = (run / "checkpoints" / "last.pt").read_bytes()
    real_open = open

    def full_disk(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = real_open(file, mode, *args, **kwargs)
        if "w" in mode and ".last.pt." in str(file):
            def write(data: Any) -> int:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            handle.write = write
        return handle

    monkeypatch.setattr("builtins.open", full_disk)
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 1
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the disk is full" in err and "last.pt is intact" in err
    assert (run / "checkpoints" / "last.pt").read_bytes() == before
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    assert train("Net", epochs=2, resume=run).summary.epochs_completed == 2


def _ckpt(path: Path, epoch: int, step: int = 0, best: int | None = None) -> dict[str, Any]:
    """A checkpoint at (epoch, step) whose metrics make ``best`` the best epoch."""
    metrics = [{"epoch": e, "val_acc": 0.9 if e == best else 0.5 + e / 100}
               for e in range(1, epoch + 1)]
    state = {"format": 2, "model": {"conv1.weight": torch.full((4,), float(epoch))}, "epoch": epoch,
             "step": step, "metrics": metrics}
    save_checkpoint(path, state)
    return load_checkpoint(path)


@pytest.mark.parametrize(("best_pt", "before"), [
    (None, "it is missing"),
    (2, "it holds epoch 2"),
    ("damaged", "checkpoint .*best.pt is damaged"),
])
def test_repair_best_copies_last_when_it_holds_the_best_epoch(
        tmp_path: Path, best_pt: int | str | None, before: str) -> None:
    last = _ckpt(tmp_path / "last.pt", 3, best=3)
    if best_pt == "damaged":
        _ckpt(tmp_path / "best.pt", 3, best=3)
        _flip_a_weight_byte(tmp_path / "best.pt")
    elif isinstance(best_pt, int):
        _ckpt(tmp_path / "best.pt", best_pt, best=best_pt)
    note = repair_best(tmp_path, last)
    assert re.fullmatch(rf"repaired .*best\.pt from last\.pt \(best epoch 3; before: {before}.*\)",
                        note), note
    assert (tmp_path / "best.pt").read_bytes() == (tmp_path / "last.pt").read_bytes()
    assert repair_best(tmp_path, last) == ""  # repaired once, nothing left to do


@pytest.mark.parametrize(("last_at", "best_pt", "why"), [
    ((3, 0), 1, "it holds epoch 1; the best epoch 2 is no longer in last.pt"),
    ((2, 5), None, "it is missing; the best epoch 2 is no longer in last.pt"),
])
def test_repair_best_warns_when_last_no_longer_holds_the_best_epoch(
        tmp_path: Path, last_at: tuple[int, int], best_pt: int | None, why: str) -> None:
    last = _ckpt(tmp_path / "last.pt", *last_at, best=2)
    if best_pt is not None:
        _ckpt(tmp_path / "best.pt", best_pt, best=best_pt)
    before = (tmp_path / "best.pt").read_bytes() if best_pt is not None else None
    note = repair_best(tmp_path, last)
    assert note == (f"warning: {tmp_path / 'best.pt'} cannot be repaired ({why}); export "
                    "--checkpoint last, or train on to a new best")
    after = (tmp_path / "best.pt").read_bytes() if (tmp_path / "best.pt").exists() else None
    assert after == before  # never replaced by weights of another epoch


def test_repair_best_leaves_a_right_best_alone(tmp_path: Path) -> None:
    last = _ckpt(tmp_path / "last.pt", 3, best=2)
    _ckpt(tmp_path / "best.pt", 2, best=2)
    before = (tmp_path / "best.pt").read_bytes()
    assert repair_best(tmp_path, last) == ""
    assert (tmp_path / "best.pt").read_bytes() == before
    assert repair_best(tmp_path, {"model": {}, "epoch": 0}) == ""  # no epoch finished yet


def test_best_epoch_and_position() -> None:
    metrics = [{"epoch": 1, "val_acc": 0.7}, {"epoch": 2, "val_acc": 0.8},
               {"epoch": 3, "val_acc": 0.8}, {"epoch": 4, "val_acc": 0.6}]
    assert best_epoch(metrics) == 2  # the first of equals: best.pt is not rewritten on a tie
    assert best_epoch([]) is None
    assert checkpoint_position({"model": {}}) == (0, 0)
    assert checkpoint_position({"epoch": 3, "step": 7}) == (3, 7)


@pytest.mark.parametrize(("name", "epoch", "step", "held", "what"), [
    ("best.pt", 1, 0, "epoch 1", "best epoch 2"),
    ("last.pt", 2, 5, "epoch 2 and 5 steps of the next", "last completed epoch 2"),
])
def test_a_checkpoint_that_disagrees_with_run_json_is_refused(
        tmp_path: Path, name: str, epoch: int, step: int, held: str, what: str) -> None:
    from export_helpers import make_run

    run = tmp_path / "run"
    make_run(run, "Net")  # run.json: best and last epoch 2
    path = run / "checkpoints" / name
    state = torch.load(path, weights_only=True)
    torch.save({**state, "epoch": epoch, "step": step}, path)
    with pytest.raises(CheckpointError) as info:
        export(run, checkpoint=name.removesuffix(".pt"), out=tmp_path / "b")
    assert str(info.value) == (
        f"{path} holds {held} but {str(run)!r}'s run.json records {what}: the run was "
        f"interrupted; resume it (zoo train --resume {run}) to bring them together")


def test_rng_states_round_trip_and_a_cuda_state_is_ignored_on_the_cpu(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import random

    from zoo.trainer.checkpoint import rng_state, set_rng_state

    cpu = torch.device("cpu")
    state = rng_state(cpu)
    assert set(state) == {"torch", "python"}
    first = (torch.rand(3), random.random())
    set_rng_state(state, cpu)
    again = (torch.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and first[1] == again[1]
    # a run saved on a GPU resumes on the CPU: its CUDA state is not applied (nor needed)
    applied: list[object] = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda *a: applied.append(a))
    set_rng_state({**state, "cuda": torch.zeros(16, dtype=torch.uint8)}, cpu)
    assert torch.equal(torch.rand(3), first[0])
    assert applied == []


def test_a_schedule_cannot_be_stretched_on_resume(tmp_path: Path) -> None:
    from zoo.trainer.checkpoint import check_resumable

    state = {"steps_per_epoch": 10, "total_steps": 30}
    check_resumable(state, tmp_path, steps=10, epochs=3, schedule="onecycle", scheduled=True)
    check_resumable(state, tmp_path, steps=10, epochs=5, schedule="none", scheduled=False)
    with pytest.raises(TrainingError) as info:
        check_resumable(state, tmp_path, steps=10, epochs=5, schedule="onecycle", scheduled=True)
    assert str(info.value) == (
        f"cannot resume {str(tmp_path)!r} with epochs=5: its onecycle schedule was planned "
        "for 3 epochs (only schedule 'none' can be extended); to train longer, start a new run "
        f"from its best weights: --init-from {tmp_path} --epochs N")
    with pytest.raises(TrainingError, match=r"it ran 10 steps per epoch, this configuration "
                                            r"gives 20 \(the global batch size"):
        check_resumable(state, tmp_path, steps=20, epochs=3, schedule="none", scheduled=False)


def test_a_run_checkpoint_that_does_not_fit_names_every_key(tmp_path: Path) -> None:
    from export_helpers import make_run

    from zoo.trainer.checkpoint import load_run_model

    run = tmp_path / "run"
    make_run(run, "Net")
    path = run / "checkpoints" / "best.pt"
    state = torch.load(path, weights_only=True)
    state["model"]["fc9.bias"] = state["model"].pop("fc2.bias")
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"best\.pt does not fit Net: Missing key\(s\) in "
                                              r"state_dict: \"fc2\.bias\"\.; Unexpected key\(s\) "
                                              r"in state_dict: \"fc9\.bias\""):
        load_run_model(run, zoo.default_registry(), command="test")


def test_the_run_lock_record_and_its_failures(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import json as json_module

    from zoo.trainer.rundir import RunLock

    run = tmp_path / "run"
    run.mkdir()
    (run / "run.lock").write_text("x" * 500 + "\n")  # a longer record of an older session
    lock = RunLock(run, command="zoo train Net")
    lock.acquire()
    lock.acquire()  # held already: nothing more is taken
    try:
        record = (run / "run.lock").read_text()
        assert record.count("\n") == 1 and json_module.loads(record)["command"] == "zoo train Net"
    finally:
        lock.release()
    with RunLock(run, command="again"):  # released: another can take it
        pass

    def full(*args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(TrainingError, match=r"cannot write .*run\.lock: the disk is full; "
                                            r"nothing was trained or changed"):
        RunLock(run, command="zoo train Net").acquire()
    assert (run / "run.lock").is_file()  # not ours to delete: it was there before
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    with pytest.raises(TrainingError, match="the disk is full"):
        RunLock(fresh, command="zoo train Net").acquire()
    assert not (fresh / "run.lock").exists()  # ours, half-written: removed
