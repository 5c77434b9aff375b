"""Calling plugin code: a deadline for listing hooks, and naming what raised.

A listing hook is called in a daemon thread joined with a timeout
(:func:`call_with_deadline`): one that never returns is reported as failed after
the deadline while everything else works, and the process can still exit.
"""

from __future__ import annotations

import reprlib
import threading
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import pluggy

from zoo.errors import reason

#: Seconds a listing hook may take before its plugin is reported as failed.
LISTING_TIMEOUT_S = 10.0


class HookTimeout(TimeoutError):
    """A plugin's hook did not return within its deadline (it may still be running)."""


def call_with_deadline(function: Callable[[], Any], timeout: float, name: str) -> Any:
    """``function()``'s result or exception, or :class:`HookTimeout` after ``timeout`` seconds.

    The call runs in a daemon thread: one that never returns is left behind, and does
    not keep the process alive.
    """
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append((True, function()))
        except BaseException as exc:  # handed to the caller's thread
            outcome.append((False, exc))

    thread = threading.Thread(target=run, name=f"zoo {name}", daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        raise HookTimeout(f"{name} did not return within {timeout:g} s")
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def one_line(exc: BaseException) -> str:
    """``"TypeName: its first informative line"``."""
    return f"{type(exc).__name__}: {reason(exc)}"


def hook_failure(hook_name: str, exc: BaseException) -> str:
    """What is recorded against a plugin whose listing hook failed."""
    from pydantic import ValidationError

    if isinstance(exc, HookTimeout):
        return f"{exc}; nothing from this plugin's listing hooks was registered"
    if isinstance(exc, ValidationError):  # a spec the plugin failed to construct
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(spec)"
        return (f"{hook_name}() raised while building an invalid {exc.title}: {loc}: "
                f"{err['msg']} (got {reprlib.repr(err.get('input'))}); nothing from this hook "
                "was registered")
    return f"{hook_name}() raised {one_line(exc)}; nothing from this hook was registered"


def raising_impl(impls: Sequence[pluggy.HookImpl],
                 tb: TracebackType | None) -> pluggy.HookImpl | None:
    """The implementation whose frame is innermost in ``tb``: the one that raised."""
    codes = {getattr(impl.function, "__code__", None): impl for impl in impls}
    found = None
    while tb is not None:
        found = codes.get(tb.tb_frame.f_code, found)
        tb = tb.tb_next
    return found


__all__ = ["LISTING_TIMEOUT_S", "HookTimeout", "call_with_deadline", "hook_failure", "one_line",
           "raising_impl"]
