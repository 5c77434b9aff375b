"""Ctrl-C during training (``zoo.trainer.interrupt.StopFlag``): the first is a request, a
second exits with 130 at once, a disabled flag or another thread leaves Ctrl-C alone, and
the previous handler comes back."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import pytest

from zoo.trainer.interrupt import StopFlag


def _ctrl_c() -> None:
    signal.raise_signal(signal.SIGINT)


def test_the_first_ctrl_c_is_a_request_and_the_second_exits_130(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    before = signal.getsignal(signal.SIGINT)
    exits: list[int] = []

    def exit_now(code: int) -> None:
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(os, "_exit", exit_now)
    with StopFlag() as flag:
        assert flag.requested is False
        assert signal.getsignal(signal.SIGINT) == flag._handle
        _ctrl_c()  # no KeyboardInterrupt: the step in progress finishes
        assert flag.requested is True and exits == []
        with pytest.raises(SystemExit):
            _ctrl_c()
    assert exits == [130]
    assert "second Ctrl-C: exiting now" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is before


def test_leaving_twice_restores_once() -> None:
    before = signal.getsignal(signal.SIGINT)
    flag = StopFlag()
    with flag:
        pass
    assert signal.getsignal(signal.SIGINT) is before

    def other(signum: int, frame: Any) -> None:
        pass

    signal.signal(signal.SIGINT, other)
    try:
        flag.__exit__(None, None, None)  # already restored: a later handler is kept
        assert signal.getsignal(signal.SIGINT) is other
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_disabled_flag_leaves_ctrl_c_alone() -> None:
    before = signal.getsignal(signal.SIGINT)
    with StopFlag(enabled=False) as flag:
        assert signal.getsignal(signal.SIGINT) is before
        with pytest.raises(KeyboardInterrupt):
            _ctrl_c()
        assert flag.requested is False
    assert signal.getsignal(signal.SIGINT) is before


def test_a_flag_entered_off_the_main_thread_installs_nothing() -> None:
    before = signal.getsignal(signal.SIGINT)
    seen: list[Any] = []

    def enter() -> None:  # signal.signal would raise here: only the main thread may
        with StopFlag() as flag:
            seen.append((signal.getsignal(signal.SIGINT), flag.requested))

    thread = threading.Thread(target=enter)
    thread.start()
    thread.join()
    assert seen == [(before, False)]
    assert signal.getsignal(signal.SIGINT) is before
