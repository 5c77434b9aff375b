"""The start and the end of a run: its lock, a full disk, a missing last.pt, flags that
would do nothing, a TensorBoard folder that goes away, log lines inside a long epoch."""

from __future__ import annotations

import errno
import io
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest

import zoo
from zoo.cli import main
from zoo.errors import TrainingError, ZooError
from zoo.exporter.write import export
from zoo.host.events import TrainingRun
from zoo.host.registry import Registry
from zoo.spec.run import EpochMetrics, read_summary
from zoo.trainer import progress as progress_module
from zoo.trainer.loop import train
from zoo.trainer.progress import Progress, log_seconds
from zoo.trainer.rundir import RunLock, RunLockedError

FAST: dict[str, Any] = {
    "dataset_options": {"size": 96, "num_classes": 2},
    "model": {"in_height": 16, "in_width": 16},
    "batch_size": 32,
    "progress": "none",
    "num_threads": 1,
    "schedule": "none",
}
FAST_FLAGS = ["--option", "size=96", "--option", "num_classes=2", "--set", "in_height=16",
              "--set", "in_width=16", "--batch-size", "32", "--progress", "none",
              "--num-threads", "1", "--schedule", "none"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of one epoch, copied by the tests that change it."""
    run = tmp_path_factory.mktemp("runs") / "run"
    train("Net", epochs=1, out=run, **FAST)
    return run


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("zoo: error: ") and err.count("\n") == 1, err
    return err.removeprefix("zoo: error: ").rstrip("\n")


def test_deleting_run_lock_lets_no_second_writer_in(finished: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    with RunLock(run, command="zoo train"):
        (run / "run.lock").unlink()  # the record is gone; the lock on the folder is not
        with pytest.raises(RunLockedError, match=f"^run directory {str(run)!r} is in use by "
                                                 "another process; wait for it to finish"):
            train("Net", epochs=2, resume=run)
        with pytest.raises(RunLockedError, match="is in use by another process"):
            export(run, out=tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    with RunLock(fresh, command="zoo train"):
        (fresh / "run.lock").unlink()
        with pytest.raises(RunLockedError, match="is in use by another process"):
            train("Net", epochs=1, out=fresh, **FAST)
    assert list(fresh.iterdir()) == []


def test_where_a_folder_cannot_be_locked_run_lock_alone_holds_the_lock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from zoo.trainer import rundir

    real = rundir.fcntl.flock

    def nfs(fd: int, operation: int) -> None:  # NFS: no lock on a folder opened read-only
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EBADF, "Bad file descriptor")
        real(fd, operation)

    monkeypatch.setattr(rundir.fcntl, "flock", nfs)
    with RunLock(tmp_path, command="zoo train") as lock:
        assert lock.held
        with pytest.raises(RunLockedError, match=r"in use by zoo train \(pid"):
            RunLock(tmp_path, command="zoo train").acquire()
    RunLock(tmp_path, command="zoo train").acquire_and_release()  # released


def test_a_full_disk_at_run_start_is_one_line_and_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    def full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    out = tmp_path / "runs" / "new"
    assert _error(capsys, ["train", "Net", "--out", str(out), *FAST_FLAGS]) == (
        f"cannot write {out / 'run.lock'}: the disk is full; nothing was trained or changed")
    assert list((tmp_path / "runs").iterdir()) == []


def test_a_resume_whose_last_checkpoint_is_gone_says_so(finished: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "checkpoints" / "last.pt").unlink()
    assert _error(capsys, ["train", "--resume", str(run), "--epochs", "2"]) == (
        f"cannot resume {str(run)!r}: its checkpoints/last.pt is missing, though run.json "
        "records 1 completed epoch(s), and the run cannot continue without it; its best "
        f"weights ({run / 'checkpoints' / 'best.pt'}) can still be exported (zoo export {run}), "
        f"or trained on in a new run: zoo train Net --init-from {run}")
    (run / "checkpoints" / "best.pt").unlink()
    with pytest.raises(TrainingError, match=r"its checkpoints/best\.pt is missing too, so "
                                            r"nothing of it can be used: start a new run$"):
        train("Net", resume=run, epochs=2)


def test_flags_that_would_do_nothing_are_refused(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert _error(capsys, ["train", "Net", "--early-stop-patience", "5"]) == (
        "--early-stop-patience 5 does nothing without --early-stop-metric; add "
        "--early-stop-metric val_acc (or val_loss, train_acc, train_loss), or drop it")
    file = tmp_path / "FILE"
    file.write_text("")
    assert _error(capsys, ["train", "Net", "--cache-dir", str(file)]) == (
        f"cache directory {str(file)!r} cannot be used: it is a file; accepted: a folder, or "
        "a path where one can be created")
    with pytest.raises(ZooError, match=f"cache directory {str(file / 'c')!r} cannot be used: "
                                       f"{str(file)!r} is a file"):
        train("Net", epochs=1, out=tmp_path / "run", cache_dir=file / "c", **FAST)
    assert not (tmp_path / "run").exists()


class _ReplaceTensorBoard:
    """Replaces RUN/tensorboard by a file after the first epoch's events are written."""

    @zoo.hookimpl(trylast=True)
    def zoo_train_epoch_end(self, run: TrainingRun, metrics: EpochMetrics) -> None:
        if metrics.epoch == 1:
            folder = run.run_dir / "tensorboard"
            shutil.rmtree(folder)
            folder.write_text("not a folder")


def test_a_tensorboard_folder_replaced_mid_run_stops_logging_not_the_run(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tensorboard")
    registry = Registry()
    registry.register(_ReplaceTensorBoard(), name="replace")
    result = train("Net", registry=registry, epochs=2, out=tmp_path / "run",
                   loggers=["tensorboard"], **FAST)
    assert result.summary.status == "completed" and result.summary.epochs_completed == 2
    err = capfd.readouterr().err
    assert err == (f"zoo: warning: tensorboard: cannot write {tmp_path / 'run' / 'tensorboard'} "
                   "(it is no longer a folder); TensorBoard logging is off for the rest of this "
                   "run, which goes on\n")
    with pytest.raises(ZooError, match="tensorboard, which is a file; move it away, or train "
                                       "without --log tensorboard"):
        train("Net", resume=tmp_path / "run", epochs=3)


def test_log_lines_inside_a_long_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: clock[0])
    log = Progress("log", True, images_per_step=128)
    assert log.log_every == 30.0
    log.stream = io.StringIO()
    clock[0] += 10.0  # the first step (warm-up) is left out of the rate
    log.step(1, 3, 1, 200)
    for step in range(2, 201):
        clock[0] += 0.5
        log.step(1, 3, step, 200)
    assert log.stream.getvalue() == (
        "epoch 1/3  step 61/200  500.0ms/step (256 img/s) eta  69.5s\n"
        "epoch 1/3  step 121/200  500.0ms/step (256 img/s) eta  39.5s\n"
        "epoch 1/3  step 181/200  500.0ms/step (256 img/s) eta   9.5s\n")
    monkeypatch.setenv("ZOO_PROGRESS_LOG_SECONDS", "0.5")
    assert Progress("log", True).log_every == 0.5 == log_seconds()
    assert Progress("none", True).log_every == 30.0  # read only where lines are logged
    monkeypatch.setenv("ZOO_PROGRESS_LOG_SECONDS", "soon")
    with pytest.raises(ZooError, match=r"^\$ZOO_PROGRESS_LOG_SECONDS must be a positive number "
                                       "of seconds, got 'soon'$"):
        log_seconds()


def test_log_mode_training_prints_inside_the_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ZOO_PROGRESS_LOG_SECONDS", "1e-9")
    train("Net", epochs=1, out=tmp_path / "run", **{**FAST, "progress": "log"})
    lines = capfd.readouterr().err.splitlines()
    steps = [line for line in lines if line.startswith("epoch 1/1  step ")]
    assert [line.split()[3] for line in steps] == ["2/3"]  # the last step is the epoch's line
    assert "ms/step (" in steps[0] and " img/s) eta " in steps[0]
    assert read_summary(tmp_path / "run").status == "completed"


def test_images_per_second_in_log_lines_only_and_only_when_known(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: clock[0])
    bar = Progress("bar", True, images_per_step=128)
    log = Progress("log", True, log_every=1.0)  # the batch size unknown
    for p in (bar, log):
        p.stream = io.StringIO()
    for step in range(1, 6):
        clock[0] += 0.5
        bar.step(1, 1, step, 10)
        log.step(1, 1, step, 10)
    assert "img/s" not in bar.stream.getvalue() and "500.0ms/step" in bar.stream.getvalue()
    assert log.stream.getvalue().splitlines()[0] == "epoch 1/1  step 3/10  500.0ms/step eta   3.5s"
