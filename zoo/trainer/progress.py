"""Training progress on stderr: a one-line bar with ETA on a terminal, log lines otherwise."""

from __future__ import annotations

import sys
import time

from zoo.spec.run import EpochMetrics


class Progress:
    """A one-line progress bar with ETA on a terminal; plain log lines otherwise.

    ``mode`` is ``auto`` (a bar on a TTY, else log lines), ``bar``, ``log`` or
    ``none``; a disabled one (every rank but 0) prints nothing.
    """

    def __init__(self, mode: str, enabled: bool) -> None:
        self.stream = sys.stderr
        tty = self.stream.isatty()
        if mode == "auto":
            mode = "bar" if tty else "log"
        self.mode = mode if enabled else "none"
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
        if self.mode != "bar" or (now - self._last < 0.2 and step != steps):
            return
        self._last = now
        timed = step - self._since_step
        if timed > 0:
            per_step = (now - self._since) / timed
            timing = f"{per_step * 1000:6.1f}ms/step eta {per_step * (steps - step):5.1f}s"
        else:
            timing = "warming up"
        width = 30
        filled = int(width * step / steps)
        self.stream.write(f"\r\033[Kepoch {epoch}/{epochs} [{'#' * filled}{'.' * (width - filled)}]"
                          f" {step}/{steps} {timing}")
        self.stream.flush()

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
