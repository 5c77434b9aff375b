"""Ctrl-C during training: the first one is a request checked between steps."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any


class StopFlag:
    """Turns the first Ctrl-C into a flag checked between steps; a second one interrupts.

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
        self.requested = True
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False
