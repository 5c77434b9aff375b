"""Several worker processes on one port: ``zoo serve --workers N``.

One Python process answers on one core: its event loop parses every request while
onnxruntime runs in the batchers' threads. ``--workers N`` runs N copies of the
server, each a process of its own (spawned, not forked: onnxruntime's threads do not
survive a fork) with its own event loop, batchers and onnxruntime sessions, each
listening on the same port with ``SO_REUSEPORT`` so that the kernel spreads the
connections over them, as nginx's ``reuseport`` and Envoy do.

The parent process loads and checks every bundle first, so a bad name, bundle or pin
fails there with one line before any worker starts; the workers then load the
bundles by path with the parent's SHA-256 as their pin, so every worker serves the
very same weights (one model version). The parent holds the port (bound, not
listening), restarts a worker that dies (at most :data:`MAX_RESTARTS` in
:data:`RESTART_WINDOW_S`, beyond which it stops: a worker that keeps dying would
only hide the fault), and on SIGTERM or Ctrl-C has every worker drain its requests,
then exits 0. Metrics are added up over the workers through prometheus-client's
multiprocess mode (:mod:`zoo.serve.metrics`), in a temporary folder of its own.

uvicorn's own ``--workers`` supervisor is not used: it builds each worker's
application from an import string, where this one needs the parent's checked
bundles, and it shares one accepting socket instead of ``SO_REUSEPORT``.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import wait
from multiprocessing.context import SpawnProcess
from multiprocessing.synchronize import Event
from pathlib import Path
from types import FrameType

from zoo.errors import ZooError, ZooWarning
from zoo.serve.metrics import MULTIPROCESS_DIR
from zoo.serve.models import ServedModel, ServeSettings
from zoo.serve.server import bind, configure_logging, serve, url_of

log = logging.getLogger("zoo.serve")

#: The most restarts of dying workers in :data:`RESTART_WINDOW_S` before the server stops.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
#: How long the workers may take to load their models and start.
START_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class BundleRef:
    """A bundle the parent checked: served as ``name`` from ``path``, pinned to ``sha256``."""

    name: str
    path: str
    sha256: str

    @classmethod
    def of(cls, model: ServedModel) -> BundleRef:
        """The bundle ``model`` was loaded from, by absolute path."""
        return cls(model.name, str(Path(model.classifier.path).resolve()), model.sha256)


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs to serve (picklable: it crosses to a spawned process)."""

    bundles: tuple[BundleRef, ...]
    settings: ServeSettings
    host: str
    port: int
    log_access: bool
    log_level: str


def worker_main(spec: WorkerSpec, ready: Event) -> None:
    """A worker process: load the bundles, listen on the shared port, serve until SIGTERM."""
    from zoo.deploy import OnnxClassifier

    # stopped while loading: nothing is in flight yet, so exit at once, cleanly
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda sig, frame: sys.exit(0))
    configure_logging(spec.log_level)
    # the parent loaded the same bundles and logged what they warn of, once
    warnings.simplefilter("ignore", ZooWarning)
    try:
        models = [ServedModel(b.name, OnnxClassifier(b.path, threads=spec.settings.threads,
                                                     expect_sha256=b.sha256,
                                                     graph=spec.settings.graph),
                              b.sha256, spec.settings) for b in spec.bundles]
        sock = bind(spec.host, spec.port, reuse_port=True)
    except (ZooError, OSError) as exc:
        log.error("worker %d cannot start: %s", os.getpid(), exc)
        sys.exit(3)
    sys.exit(serve(models, spec.settings, sock=sock, log_access=spec.log_access,
                   log_level=spec.log_level, on_ready=ready.set))


class Supervisor:
    """Starts, watches, restarts and stops the workers of one :class:`WorkerSpec`."""

    def __init__(self, spec: WorkerSpec, workers: int) -> None:
        self.spec = spec
        self.count = workers
        self.context = multiprocessing.get_context("spawn")
        self.workers: list[tuple[SpawnProcess, Event]] = []
        self.restarts: list[float] = []
        self.stopping = threading.Event()

    def _start_one(self) -> tuple[SpawnProcess, Event]:
        ready = self.context.Event()
        process = self.context.Process(target=worker_main, args=(self.spec, ready),
                                       name="zoo-serve-worker", daemon=False)
        process.start()
        return process, ready

    def start(self) -> None:
        """Start every worker and wait until all are ready; a ZooError if one is not."""
        self.workers = [self._start_one() for _ in range(self.count)]
        deadline = time.monotonic() + START_TIMEOUT_S
        for process, ready in self.workers:
            while not ready.wait(0.1):
                if self.stopping.is_set():
                    return
                if process.exitcode is not None or time.monotonic() > deadline:
                    why = (f"exited with status {process.exitcode}"
                           if process.exitcode is not None
                           else f"was not ready within {START_TIMEOUT_S:g} s")
                    raise ZooError(f"worker {process.pid} {why} while starting; its log is "
                                   "above")

    def watch(self) -> int:
        """Restart workers that die until :meth:`stop` is asked for; 0, or 1 if they kept
        dying."""
        while not self.stopping.is_set():
            sentinels = [process.sentinel for process, _ in self.workers]
            if not wait(sentinels, timeout=0.2) or self.stopping.is_set():
                continue
            for index, (process, _) in enumerate(self.workers):
                if process.exitcode is None:
                    continue
                log.error("worker %d exited with status %s", process.pid, process.exitcode)
                self._forget(process)
                now = time.monotonic()
                self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW_S]
                if len(self.restarts) >= MAX_RESTARTS:
                    log.error("%d workers died within %g s: stopping the server",
                              len(self.restarts) + 1, RESTART_WINDOW_S)
                    return 1
                self.restarts.append(now)
                self.workers[index] = self._start_one()
                log.info("started worker %d in its place", self.workers[index][0].pid)
        return 0

    def stop(self, timeout_s: float) -> bool:
        """Ask every worker to drain (SIGTERM) and wait; True if all exited with status 0."""
        self.stopping.set()
        for process, _ in self.workers:
            if process.exitcode is None and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        clean = True
        for process, _ in self.workers:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.exitcode is None:
                log.error("worker %d did not stop within %g s: killed", process.pid, timeout_s)
                process.kill()
                process.join()
            clean = clean and process.exitcode == 0
            self._forget(process)
        return clean

    def _forget(self, process: SpawnProcess) -> None:
        from prometheus_client import multiprocess

        folder = os.environ.get(MULTIPROCESS_DIR)
        if folder and process.pid is not None:
            multiprocess.mark_process_dead(process.pid, folder)  # type: ignore[no-untyped-call]


@contextmanager
def _metrics_folder() -> Iterator[str]:
    """A fresh folder for the workers' metrics, in the environment they inherit."""
    folder = tempfile.mkdtemp(prefix="zoo-serve-metrics-")
    previous = os.environ.get(MULTIPROCESS_DIR)
    os.environ[MULTIPROCESS_DIR] = folder
    try:
        yield folder
    finally:
        if previous is None:
            os.environ.pop(MULTIPROCESS_DIR, None)
        else:
            os.environ[MULTIPROCESS_DIR] = previous
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def _signals(on_signal: Callable[[int], None]) -> Iterator[None]:
    handled = (signal.SIGINT, signal.SIGTERM)

    def handler(sig: int, frame: FrameType | None) -> None:
        on_signal(sig)

    previous = {sig: signal.signal(sig, handler) for sig in handled}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def serve_workers(bundles: Sequence[BundleRef], settings: ServeSettings, *, workers: int,
                  host: str = "127.0.0.1", port: int = 8000, log_access: bool = True,
                  log_level: str = "info", announce: Callable[[str], None] | None = None
                  ) -> int:
    """Serve the checked ``bundles`` (:meth:`BundleRef.of` a loaded model) from
    ``workers`` processes until SIGTERM or Ctrl-C.

    Each worker loads its own copy of every bundle. Returns 0 once every worker
    drained and exited cleanly.
    """
    if workers < 1:
        raise ZooError(f"--workers must be at least 1, got {workers}")
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ZooError(f"--workers {workers} needs SO_REUSEPORT, which this platform lacks "
                       "(Linux, macOS and the BSDs have it); accepted here: --workers 1")
    configure_logging(log_level)
    holder = bind(host, port, reuse_port=True, listen=False)
    try:
        url = url_of(holder)
        spec = WorkerSpec(
            bundles=tuple(bundles),
            settings=settings, host=host, port=holder.getsockname()[1], log_access=log_access,
            log_level=log_level)
        with _metrics_folder():
            supervisor = Supervisor(spec, workers)

            def on_signal(sig: int) -> None:
                if not supervisor.stopping.is_set():
                    log.info("%s: the workers drain their requests, then exit",
                             signal.Signals(sig).name)
                supervisor.stopping.set()

            with _signals(on_signal):
                try:
                    supervisor.start()
                    if not supervisor.stopping.is_set():
                        log.info("listening on %s with %d workers", url, workers)
                        if announce is not None:
                            announce(url)
                    status = supervisor.watch()
                finally:
                    clean = supervisor.stop(settings.timeout_s + 10)
    finally:
        holder.close()
    return status if status else (0 if clean else 1)


__all__ = ["MAX_RESTARTS", "RESTART_WINDOW_S", "BundleRef", "Supervisor", "WorkerSpec",
           "serve_workers", "worker_main"]
