"""Worker targets for the supervisor's tests (imported by spawned processes, so plain)."""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any


def drains(spec: Any, ready: Any) -> None:
    """Ready at once; exits 0 on SIGTERM, as a draining server does."""
    signal.signal(signal.SIGTERM, lambda sig, frame: sys.exit(0))
    ready.set()
    while True:
        time.sleep(0.05)


def dies(spec: Any, ready: Any) -> None:
    """Ready, then dies with status 3 a moment later."""
    ready.set()
    time.sleep(0.05)
    os._exit(3)


def never_ready(spec: Any, ready: Any) -> None:
    """Exits with status 4 before it is ready."""
    os._exit(4)


def stubborn(spec: Any, ready: Any) -> None:
    """Ready; ignores SIGTERM."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ready.set()
    while True:
        time.sleep(0.05)


def slow_to_start(spec: Any, ready: Any) -> None:
    """Ready after 0.3 s (loading its models), then drains on SIGTERM."""
    signal.signal(signal.SIGTERM, lambda sig, frame: sys.exit(0))
    time.sleep(0.3)
    ready.set()
    while True:
        time.sleep(0.05)
