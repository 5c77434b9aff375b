"""A run's directory: where a new one goes, whether it may be used, its lock, undoing one
never begun (no torch import).

One writer per run directory: an advisory lock (``fcntl.flock``) on the run
directory itself, which deleting or replacing a file inside it cannot undo, and
on ``RUN_DIR/run.lock``, the record of who holds it (and the lock older zoos
take). A trainer holds both exclusively for the whole run (released by the
kernel when the process ends, however it ends); a reader that needs a
consistent run, such as ``zoo export RUN``, holds them shared while it reads. A
second trainer, or an export of a run being trained, fails at once with a
:class:`RunLockedError` naming the holder: the lock file records its pid, host,
command and start time. Where ``fcntl`` does not exist (Windows) the lock is a
no-op.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

from zoo.errors import TrainingError, ZooError
from zoo.spec.run import (
    BEST_CHECKPOINT,
    CHECKPOINT_DIR,
    CONFIG_FILE,
    LAST_CHECKPOINT,
    SUMMARY_FILE,
    VAL_SAMPLES,
    read_summary,
)
from zoo.util.fsutil import atomic_path, atomic_write_text

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = "run.lock"


class RunLockedError(TrainingError):
    """The run directory is held by another process (a trainer, or an export reading it)."""


def describe_holder(path: Path) -> str:
    """Who holds the lock, from what the lock file records."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return (f"{info['command']} (pid {info['pid']} on host {info['host']}, started "
                f"{info['started']})")
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


class RunLock:
    """An advisory lock on a run directory; use as a context manager or acquire/release.

    ``shared=True`` takes a read lock (several readers, no trainer); it writes
    nothing, so a read-only run directory can still be read.
    """

    def __init__(self, run_dir: Path, *, command: str, shared: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.command = command
        self.shared = shared
        self._fds: list[int] = []

    def _lock(self, fd: int) -> None:
        """flock ``fd`` now, or close every descriptor taken and raise naming the holder."""
        self._fds.append(fd)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            self._close()
            raise RunLockedError(f"run directory {str(self.run_dir)!r} is in use by "
                                 f"{describe_holder(self.path)}; wait for it to finish, or "
                                 "choose another directory") from None
        except BaseException:
            self._close()
            raise

    def acquire(self) -> None:
        """Take the lock now or raise :class:`RunLockedError` naming the holder (a
        :class:`~zoo.errors.TrainingError` if the lock record cannot be written)."""
        if fcntl is None or self._fds:
            return
        cloexec = getattr(os, "O_CLOEXEC", 0)
        try:
            folder = os.open(self.run_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | cloexec)
        except OSError as exc:
            raise TrainingError(f"cannot lock run directory {str(self.run_dir)!r}: "
                                f"{exc.strerror or exc}") from None
        try:
            self._lock(folder)
        except RunLockedError:
            raise
        except OSError:
            # a filesystem that cannot lock a folder (NFS locks need a file open for
            # writing): run.lock alone holds the lock, as in older zoos
            self._close()
        created = False
        try:
            if self.shared:
                fd = os.open(self.path, os.O_RDONLY | cloexec)
            else:
                created = not self.path.exists()
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | cloexec, 0o666)
        except FileNotFoundError:
            if self.shared:  # a run of an older zoo, or one whose run.lock was deleted
                return
            self._close()
            raise self._write_failure(FileNotFoundError(
                errno.ENOENT, f"{str(self.run_dir)!r} was removed")) from None
        except OSError as exc:
            self._close()
            raise self._write_failure(exc) from None
        self._lock(fd)
        if self.shared:
            return
        info = {"command": self.command, "pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        data = (json.dumps(info) + "\n").encode()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
        except OSError as exc:
            if created:
                self.path.unlink(missing_ok=True)
            self.release()
            raise self._write_failure(exc) from None

    def _write_failure(self, exc: OSError) -> TrainingError:
        why = ("the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT)
               else exc.strerror or str(exc))
        return TrainingError(f"cannot write {self.path}: {why}; nothing was trained or "
                             "changed")

    def acquire_and_release(self) -> None:
        """Fail as :meth:`acquire` would if the lock is held; otherwise hold nothing."""
        try:
            self.acquire()
        finally:
            self.release()

    def _close(self) -> None:
        for fd in reversed(self._fds):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []

    def release(self) -> None:
        if fcntl is not None:
            for fd in reversed(self._fds):
                with contextlib.suppress(OSError):
                    fcntl.flock(fd, fcntl.LOCK_UN)
        self._close()

    @property
    def held(self) -> bool:
        return bool(self._fds)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def probe_writable(path: Path) -> None:
    """Fail early, before loading data, if the run directory cannot be created and written."""
    target = path if path.exists() else path.parent
    try:
        target.mkdir(parents=True, exist_ok=True)
        with atomic_path(target / ".zoo-write-probe"):
            pass
        (target / ".zoo-write-probe").unlink(missing_ok=True)
    except OSError as exc:
        raise TrainingError(f"output directory {str(path)!r} is not writable "
                            f"({exc.strerror or exc}); choose another --out") from None


def reusable(out: Path) -> bool:
    """Whether a new run may use the existing directory ``out``.

    It may if it is empty, or if it is a run that stopped before its first epoch
    began (it has a lock file but no ``run.json``): its files are rewritten.
    """
    names = {p.name for p in out.iterdir()}
    return not names or (LOCK_FILE in names and SUMMARY_FILE not in names)


def check_resumable_files(run_dir: Path, architecture: str) -> bool:
    """Whether resuming ``run_dir`` continues from its ``last.pt`` (False: the run stopped
    before its first checkpoint and starts again from the beginning); a
    :class:`~zoo.errors.TrainingError` saying what can still be done when ``last.pt`` is
    gone from a run that completed epochs."""
    ckpt_dir = run_dir / CHECKPOINT_DIR
    if (ckpt_dir / LAST_CHECKPOINT).is_file():
        return True
    done = read_summary(run_dir).epochs_completed
    if done == 0:
        return False
    best = ckpt_dir / BEST_CHECKPOINT
    rescue = (f"its best weights ({best}) can still be exported (zoo export {run_dir}), or "
              f"trained on in a new run: zoo train {architecture} --init-from {run_dir}"
              if best.is_file() else f"its {CHECKPOINT_DIR}/{BEST_CHECKPOINT} is missing too, "
              "so nothing of it can be used: start a new run")
    raise TrainingError(f"cannot resume {str(run_dir)!r}: its {CHECKPOINT_DIR}/{LAST_CHECKPOINT} "
                        f"is missing, though {SUMMARY_FILE} records {done} completed epoch(s), "
                        f"and the run cannot continue without it; {rescue}")


def record_failure(run_dir: Path, failure: str) -> None:
    """Mark ``run.json`` as ``failed`` with its reason, its records left those of its last
    epoch (``zoo train --resume`` continues it once the cause is fixed). Nothing is said
    if it cannot be written: the failure itself is what the user must see."""
    with contextlib.suppress(ZooError, OSError):
        summary = read_summary(run_dir)
        atomic_write_text(run_dir / SUMMARY_FILE, summary.model_copy(
            update={"status": "failed", "failure": failure}).model_dump_json(indent=2))


def default_out(architecture: str, dataset: str) -> Path:
    """``runs/ARCH-DATASET-TIMESTAMP``: where a run goes when no --out is given."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{architecture}-{dataset}-{stamp}"


def drop_unstarted(out: Path, *, made_dir: bool) -> None:
    """After a failure before the run began (no run.json), leave no trace of it."""
    if (out / SUMMARY_FILE).exists():
        return
    for name in (CONFIG_FILE, VAL_SAMPLES, LOCK_FILE):
        (out / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        (out / CHECKPOINT_DIR).rmdir()
    if made_dir:
        with contextlib.suppress(OSError):
            out.rmdir()


__all__ = ["LOCK_FILE", "RunLock", "RunLockedError", "check_resumable_files", "default_out",
           "describe_holder", "drop_unstarted", "probe_writable", "record_failure", "reusable"]
