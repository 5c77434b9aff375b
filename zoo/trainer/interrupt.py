"""Ctrl-C during training: the first one is a request checked between steps, a second
one ends the process at once.

The first Ctrl-C lets the current step finish; the trainer then saves the epoch so
far and stops. A second one (the user will not wait for that) exits with status 130
right away, as a kill would: every file of a run is written atomically and
``last.pt`` is its truth, so ``--resume`` finds a consistent run (it repairs the
records after ``last.pt`` if they were being written).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType
from typing import Any


class StopFlag:
    """Turns the first Ctrl-C into a flag checked between steps; a second one exits (130).

    A disabled flag (distributed runs) leaves Ctrl-C alone and is never raised.
    """

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> StopFlag:
        if self.enabled and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            sys.stderr.write("\nzoo: second Ctrl-C: exiting now; the last checkpoint is intact "
                             "and --resume continues from it\n")
            sys.stderr.flush()
            os._exit(130)
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False
