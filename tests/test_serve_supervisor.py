"""The supervisor of ``zoo serve --workers`` (:mod:`zoo.serve.workers`) with small
spawned workers of known behaviour: started, restarted within its limit, drained, killed
when they do not stop (real servers as workers: ``test_serve_workers.py``)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import worker_targets

from zoo.errors import ZooError
from zoo.serve import workers
from zoo.serve.metrics import MULTIPROCESS_DIR
from zoo.serve.models import ServeSettings
from zoo.serve.workers import BundleRef, Supervisor, WorkerSpec, serve_workers

SPEC = WorkerSpec(bundles=(), settings=ServeSettings(), host="127.0.0.1", port=0,
                  log_access=False, log_level="warning")


STARTED: list[Any] = []


@pytest.fixture(autouse=True)
def _no_worker_outlives_its_test() -> Any:
    """A failing test must not leave a forked worker holding the test runner's output."""
    yield
    while STARTED:
        process = STARTED.pop()
        if process.is_alive():
            process.kill()
            process.join(5)


class Of(Supervisor):
    """A supervisor whose workers run ``target`` instead of a server."""

    def __init__(self, target: Callable[[Any, Any], None], count: int) -> None:
        super().__init__(SPEC, count)
        self.target = target
        # forked, not spawned as servers are: these targets import nothing, and a fork
        # starts in milliseconds (the supervision is the same whatever the start method)
        self.context = multiprocessing.get_context("fork")  # type: ignore[assignment]

    def _start_one(self) -> Any:
        ready = self.context.Event()
        process = self.context.Process(target=self.target, args=(self.spec, ready), daemon=True)
        process.start()
        STARTED.append(process)
        return process, ready


def test_workers_start_and_drain_on_sigterm() -> None:
    supervisor = Of(worker_targets.drains, 2)
    supervisor.start()
    assert all(ready.is_set() and process.is_alive() for process, ready in supervisor.workers)
    assert supervisor.stop(10.0) is True
    assert [process.exitcode for process, _ in supervisor.workers] == [0, 0]


def test_a_worker_that_ignores_sigterm_is_killed_and_the_stop_is_not_clean() -> None:
    supervisor = Of(worker_targets.stubborn, 1)
    supervisor.start()
    assert supervisor.stop(0.5) is False
    assert supervisor.workers[0][0].exitcode == -signal.SIGKILL


def test_a_worker_that_dies_while_starting_is_one_line() -> None:
    supervisor = Of(worker_targets.never_ready, 1)
    with pytest.raises(ZooError, match=r"^worker \d+ exited with status 4 while starting; its "
                                       r"log is above$"):
        supervisor.start()


def test_dying_workers_are_restarted_until_the_limit(monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(workers, "MAX_RESTARTS", 2)  # three deaths: two restarts, then stop
    supervisor = Of(worker_targets.dies, 1)
    supervisor.start()
    assert supervisor.watch() == 1
    assert len(supervisor.restarts) == 2
    died = [r.getMessage() for r in caplog.records if "exited with status 3" in r.getMessage()]
    assert len(died) == 3
    assert "3 workers died within 60 s: stopping the server" in caplog.text


def test_watching_ends_with_0_when_asked_to_stop() -> None:
    supervisor = Of(worker_targets.drains, 1)
    supervisor.start()
    threading.Timer(0.3, supervisor.stopping.set).start()
    assert supervisor.watch() == 0 and supervisor.restarts == []
    assert supervisor.stop(10.0) is True


def test_the_metrics_folder_is_fresh_and_put_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MULTIPROCESS_DIR, raising=False)
    with workers._metrics_folder() as folder:
        assert os.environ[MULTIPROCESS_DIR] == folder and os.listdir(folder) == []
    assert MULTIPROCESS_DIR not in os.environ and not os.path.exists(folder)
    monkeypatch.setenv(MULTIPROCESS_DIR, "/somewhere/else")
    with workers._metrics_folder() as folder:
        assert os.environ[MULTIPROCESS_DIR] == folder
    assert os.environ[MULTIPROCESS_DIR] == "/somewhere/else"


def test_signals_are_handled_inside_and_restored_after() -> None:
    seen: list[int] = []
    before = signal.getsignal(signal.SIGTERM)
    with workers._signals(seen.append):
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGINT)
    assert seen == [signal.SIGTERM, signal.SIGINT]
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_bundle_is_referred_to_by_its_absolute_path(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    model: Any = type("M", (), {"name": "Net", "sha256": "ab" * 32,
                                "classifier": type("C", (), {"path": Path("exports/Net")})()})()
    assert BundleRef.of(model) == BundleRef("Net", str(tmp_path / "exports" / "Net"), "ab" * 32)


@pytest.mark.parametrize("count", [0, -1])
def test_fewer_than_one_worker_is_refused(count: int) -> None:
    with pytest.raises(ZooError, match=rf"^--workers must be at least 1, got {count}$"):
        serve_workers((), ServeSettings(), workers=count)


def test_start_waits_for_a_worker_that_takes_a_while_to_load() -> None:
    supervisor = Of(worker_targets.slow_to_start, 2)
    supervisor.start()
    assert all(ready.is_set() for _, ready in supervisor.workers)
    assert supervisor.stop(10.0) is True
