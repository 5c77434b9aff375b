"""One status line on stderr for long data work (decoding images into the cache, hashing).

Nothing is printed for work that ends within :data:`QUIET_S` (a small folder stays
silent). Past it, a terminal gets one line redrawn in place (a bar, the count and
the seconds so far) and erased at the end, replaced by a summary line; a log or
pipe gets a start line, a line every :data:`LOG_EVERY_S` and an end line.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO

#: Work that takes less than this many seconds prints nothing.
QUIET_S = 0.5
#: Off a terminal, a progress line at most this often.
LOG_EVERY_S = 10.0
#: On a terminal, a redraw at most this often.
REDRAW_S = 0.1


class StatusLine:
    """``with StatusLine("decoding", 12000, "images of data/train") as status: status.update(n)``.

    ``enabled=False`` (the quiet ranks of a distributed run) prints nothing.
    """

    def __init__(self, verb: str, total: int, what: str, *, stream: TextIO | None = None,
                 enabled: bool = True) -> None:
        self.verb = verb
        self.total = max(total, 0)
        self.what = what
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self.done = 0
        self._start = time.perf_counter()
        self._shown = False  # whether anything was printed (then an end line follows)
        self._last = 0.0

    def __enter__(self) -> StatusLine:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close(failed=kind is not None)

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def update(self, done: int) -> None:
        """``done`` of ``total`` items are finished (cheap: call it for every item)."""
        self.done = done
        if not self.enabled:
            return
        now = time.perf_counter()
        elapsed = now - self._start
        if elapsed < QUIET_S:
            return
        if self.tty:
            if now - self._last >= REDRAW_S or done == self.total:
                self._last = now
                width = 30
                filled = int(width * done / self.total) if self.total else 0
                self._write(f"\r{self.verb} {self.what} [{'#' * filled}{'.' * (width - filled)}] "
                            f"{done:,}/{self.total:,} {elapsed:.1f}s")
                self._shown = True
        elif not self._shown:
            self._write(f"zoo: {self.verb} {self.total:,} {self.what}...\n")
            self._shown = True
            self._last = now
        elif now - self._last >= LOG_EVERY_S:
            self._last = now
            self._write(f"zoo: {self.verb} {self.what}: {done:,}/{self.total:,} after "
                        f"{elapsed:.0f} s\n")

    def close(self, *, failed: bool = False) -> None:
        """End the line: a summary if anything was shown, the redrawn line erased."""
        if not (self.enabled and self._shown):
            return
        if self.tty:
            self._write("\r\033[K")
        if not failed:
            seconds = time.perf_counter() - self._start
            past = {"decoding": "decoded", "hashing": "hashed", "reading": "read"}.get(
                self.verb, self.verb)
            self._write(f"zoo: {past} {self.done:,} {self.what} in {seconds:.1f} s\n")
        self._shown = False
