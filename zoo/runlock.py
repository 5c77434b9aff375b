"""One writer per run directory: an advisory lock on ``RUN_DIR/run.lock`` (no torch import).

A trainer holds the lock exclusively for the whole run (``fcntl.flock``, released
by the kernel when the process ends, however it ends); a reader that needs a
consistent run, such as ``zoo export RUN``, holds it shared while it reads. A
second trainer, or an export of a run being trained, fails at once with a
:class:`RunLockedError` naming the holder: the lock file records its pid, host,
command and start time.

Where ``fcntl`` does not exist (Windows) the lock is a no-op.
"""

from __future__ import annotations

import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

from zoo.errors import TrainingError

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


__all__ = ["LOCK_FILE", "RunLock", "RunLockedError", "describe_holder"]
