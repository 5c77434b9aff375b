"""Training progress on stderr: a one-line bar with ETA on a terminal, log lines otherwise."""

from __future__ import annotations

import os
import sys
import time

from zoo.errors import ZooError
from zoo.spec.run import EpochMetrics

#: Seconds between log lines inside an epoch (``progress = "log"``), unless set by
#: ``$ZOO_PROGRESS_LOG_SECONDS``: a long epoch still shows it is alive.
DEFAULT_LOG_SECONDS = 30.0
ENV_LOG_SECONDS = "ZOO_PROGRESS_LOG_SECONDS"


def log_seconds() -> float:
    """The interval of log lines inside an epoch: ``$ZOO_PROGRESS_LOG_SECONDS``, else 30."""
    text = os.environ.get(ENV_LOG_SECONDS, "").strip()
    if not text:
        return DEFAULT_LOG_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ZooError(f"${ENV_LOG_SECONDS} must be a positive number of seconds, got {text!r}")
    return value


class Progress:
    """A one-line progress bar with ETA on a terminal; plain log lines otherwise.

    ``mode`` is ``auto`` (a bar on a TTY, else log lines), ``bar``, ``log`` or
    ``none``; a disabled one (every rank but 0) prints nothing. In ``log`` mode a
    line with the step, its time and the epoch's ETA is printed inside an epoch
    at most every ``log_every`` seconds (default: :func:`log_seconds`).
    """

    def __init__(self, mode: str, enabled: bool, *, log_every: float | None = None,
                 images_per_step: int | None = None) -> None:
        self.stream = sys.stderr
        tty = self.stream.isatty()
        if mode == "auto":
            mode = "bar" if tty else "log"
        self.mode = mode if enabled else "none"
        self.log_every = log_every if log_every is not None else (
            log_seconds() if self.mode == "log" else DEFAULT_LOG_SECONDS)
        self.images_per_step = images_per_step
        self._last = 0.0
        self._epoch = -1  # the epoch being timed, and from when and which step
        self._since = 0.0
        self._since_step = 0

    def step(self, epoch: int, epochs: int, step: int, steps: int) -> None:
        """Redraw the bar after ``step`` of ``steps`` (at most five times a second).

        The step time and ETA are measured from the end of the epoch's first step seen
        by this process: one-time work (kernel compilation, allocator and cache warm-up)
        happens in that step and would inflate the estimate.
        """
        now = time.perf_counter()
        if epoch != self._epoch:
            self._epoch, self._since, self._since_step = epoch, now, step
            self._last = now if self.mode == "log" else self._last
        if self.mode == "log":
            if now - self._last >= self.log_every and step != steps:
                self._last = now
                self.stream.write(f"epoch {epoch}/{epochs}  step {step}/{steps}  "
                                  f"{self._timing(now, step, steps, rate=True).strip()}\n")
                self.stream.flush()
            return
        if self.mode != "bar" or (now - self._last < 0.2 and step != steps):
            return
        self._last = now
        timing = self._timing(now, step, steps)
        width = 30
        filled = int(width * step / steps)
        self.stream.write(f"\r\033[Kepoch {epoch}/{epochs} [{'#' * filled}{'.' * (width - filled)}]"
                          f" {step}/{steps} {timing}")
        self.stream.flush()

    def _timing(self, now: float, step: int, steps: int, *, rate: bool = False) -> str:
        """``" 100.0ms/step eta   8.8s"`` (``rate``: with images per second), measured from
        the epoch's first step seen."""
        timed = step - self._since_step
        if timed <= 0:
            return "warming up"
        per_step = (now - self._since) / timed
        images = (f" ({self.images_per_step / per_step:,.0f} img/s)"
                  if rate and self.images_per_step and per_step > 0 else "")
        return f"{per_step * 1000:6.1f}ms/step{images} eta {per_step * (steps - step):5.1f}s"

    def epoch(self, m: EpochMetrics, epochs: int) -> None:
        """Report a finished epoch on a line of its own (replacing the bar)."""
        if self.mode == "none":
            return
        if self.mode == "bar":
            self.stream.write("\r\033[K")
        self.stream.write(
            f"epoch {m.epoch}/{epochs}  train loss {m.train_loss:.4f} acc {m.train_acc:.4f}  "
            f"val loss {m.val_loss:.4f} acc {m.val_acc:.4f}  {m.images_per_s:,.0f} img/s  "
            f"lr {m.lr:.3g}  {m.seconds:.1f}s\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        """Print a line, unless progress is off."""
        if self.mode != "none":
            self.stream.write(text + "\n")
            self.stream.flush()
