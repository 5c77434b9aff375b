"""A run's directory: where a new one goes, whether it may be used, its lock, undoing one
never begun (no torch import).

One writer per run directory: an advisory lock on ``RUN_DIR/run.lock``. A trainer
holds the lock exclusively for the whole run (``fcntl.flock``, released by the
kernel when the process ends, however it ends); a reader that needs a consistent
run, such as ``zoo export RUN``, holds it shared while it reads. A second trainer,
or an export of a run being trained, fails at once with a :class:`RunLockedError`
naming the holder: the lock file records its pid, host, command and start time.
Where ``fcntl`` does not exist (Windows) the lock is a no-op.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

from zoo.errors import TrainingError
from zoo.spec.run import CHECKPOINT_DIR, CONFIG_FILE, SUMMARY_FILE, VAL_SAMPLES
from zoo.util.fsutil import atomic_path

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

    ``shared=True`` takes a read lock (several readers, no trainer); a missing
    lock file (a run of an older zoo) or a read-only directory then locks nothing.
    """

    def __init__(self, run_dir: Path, *, command: str, shared: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.command = command
        self.shared = shared
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock now or raise :class:`RunLockedError` naming the holder."""
        if fcntl is None or self._fd is not None:
            return
        try:
            if self.shared:
                fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            else:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0),
                             0o666)
        except FileNotFoundError:
            if self.shared:
                return
            raise
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLockedError(f"run directory {str(self.run_dir)!r} is in use by "
                                 f"{describe_holder(self.path)}; wait for it to finish, or "
                                 "choose another directory") from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        if not self.shared:
            info = {"command": self.command, "pid": os.getpid(), "host": socket.gethostname(),
                    "started": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
            data = (json.dumps(info) + "\n").encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)

    def acquire_and_release(self) -> None:
        """Fail as :meth:`acquire` would if the lock is held; otherwise hold nothing."""
        try:
            self.acquire()
        finally:
            self.release()

    def release(self) -> None:
        if self._fd is not None and fcntl is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

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


__all__ = ["LOCK_FILE", "RunLock", "RunLockedError", "default_out", "describe_holder",
           "drop_unstarted", "probe_writable", "reusable"]
