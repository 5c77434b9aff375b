"""zoo.host.calls: the deadline of a listing hook, and finding which implementation raised."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

from zoo.host import calls

ROOT = Path(__file__).resolve().parents[1]


def test_the_documented_deadline() -> None:
    text = (ROOT / "docs" / "plugins" / "control-and-testing.md").read_text()
    documented = re.search(r"Each listing hook runs with a deadline \((\d+) s;", text)
    assert documented is not None and float(documented.group(1)) == calls.LISTING_TIMEOUT_S


def test_a_hook_past_its_deadline_is_left_in_a_daemon_thread() -> None:
    release = threading.Event()
    try:
        with pytest.raises(calls.HookTimeout, match=r"^slow hook did not return within 0\.05 s$"):
            calls.call_with_deadline(release.wait, 0.05, "slow hook")
        [left] = [t for t in threading.enumerate() if t.name == "zoo slow hook"]
        assert left.daemon  # it cannot keep the process alive
    finally:
        release.set()


def test_results_and_exceptions_come_back_to_the_caller() -> None:
    assert calls.call_with_deadline(lambda: 42, 5.0, "quick") == 42
    with pytest.raises(ValueError, match="bad"):
        calls.call_with_deadline(lambda: (_ for _ in ()).throw(ValueError("bad")), 5.0, "bad")


def test_no_implementation_in_the_traceback_is_none() -> None:
    try:
        raise RuntimeError("elsewhere")
    except RuntimeError as exc:
        assert calls.raising_impl([], exc.__traceback__) is None
