"""Running the server: uvicorn on a bound socket, JSON-lines logs, a graceful SIGTERM.

On SIGTERM (or Ctrl-C) the server stops accepting connections, answers every request
already received (the batchers drain their queues), and :func:`serve` returns 0: what
Kubernetes, systemd and docker expect of a replica being stopped.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from types import FrameType

import orjson
import uvicorn

from zoo.errors import ZooError, route_zoo_warnings
from zoo.serve.app import ServeApp
from zoo.serve.models import ServedModel, ServeSettings

log = logging.getLogger("zoo.serve")


class JsonLines(logging.Formatter):
    """One JSON object per record; access records (already JSON) pass through."""

    def format(self, record: logging.LogRecord) -> str:
        if record.name == "zoo.serve.access":
            return record.getMessage()
        entry = {"ts": round(record.created, 6), "level": record.levelname.lower(),
                 "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure_logging(level: str = "info", *, stream: object = None) -> None:
    """JSON lines on stderr for the ``zoo.serve`` and ``uvicorn`` loggers, and for the
    zoo's own warnings."""
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.setFormatter(JsonLines())
    for name in ("zoo.serve", "uvicorn", "uvicorn.error", "python_multipart", "multipart"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False
    logging.getLogger("uvicorn.access").disabled = True
    route_zoo_warnings(lambda text: log.warning("%s", text))


def bind(host: str, port: int, *, reuse_port: bool = False, listen: bool = True
         ) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one).

    ``reuse_port``: with ``SO_REUSEPORT``, so that several workers' sockets share the
    port and the kernel spreads connections over them; ``listen=False`` only holds the
    port (a socket that does not listen gets no connections).
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise ZooError(f"cannot listen on {host!r}: {exc.strerror}; accepted: an address of "
                       "this machine (127.0.0.1, 0.0.0.0, ::) or a name it resolves") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        if listen:
            sock.listen(2048)
    except OSError as exc:
        sock.close()
        why = (exc.strerror or str(exc)).lower()
        raise ZooError(f"cannot listen on {host}:{port}: {why}; accepted: a free port "
                       "(--port 0 picks one)" if exc.errno == errno.EADDRINUSE else
                       f"cannot listen on {host}:{port}: {why}") from None
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}/"


class _Server(uvicorn.Server):
    """uvicorn's server, but a SIGTERM or SIGINT ends with a drain and a normal return."""

    def __init__(self, config: uvicorn.Config, app: ServeApp) -> None:
        super().__init__(config)
        self.app = app

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self._stop) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl-C: stop waiting
        self.should_exit = True
        self.app.begin_drain()
        log.info("%s: draining in-flight requests, then exiting",
                 signal.Signals(sig).name)


def make_server(models: Sequence[ServedModel], settings: ServeSettings, *,
                log_access: bool = True, graceful_timeout_s: float | None = None,
                on_ready: Callable[[], None] | None = None
                ) -> tuple[uvicorn.Server, ServeApp]:
    """A uvicorn server running the application for ``models`` (not started);
    ``on_ready`` is called once the models are ready to answer."""
    app = ServeApp(models, settings, log_access=log_access, on_ready=on_ready)
    config = uvicorn.Config(
        app.asgi, lifespan="on", log_config=None, access_log=False, server_header=False,
        backlog=2048, timeout_keep_alive=30,
        timeout_graceful_shutdown=int(graceful_timeout_s or settings.timeout_s + 5))
    return _Server(config, app), app


def serve(models: Sequence[ServedModel], settings: ServeSettings, *, host: str = "127.0.0.1",
          port: int = 8000, log_access: bool = True, log_level: str = "info",
          announce: Callable[[str], None] | None = None, sock: socket.socket | None = None,
          on_ready: Callable[[], None] | None = None) -> int:
    """Serve ``models`` until SIGTERM or Ctrl-C, then drain; returns the exit status (0).

    ``announce`` gets the URL once the socket is bound (port 0 picks a free port);
    ``sock``, a listening socket to serve on instead of binding ``host:port``.
    """
    configure_logging(log_level)
    gc.collect()
    gc.freeze()  # the models and modules loaded so far stay out of the collector's way
    sock = sock if sock is not None else bind(host, port)
    url = url_of(sock)
    server, _ = make_server(models, settings, log_access=log_access, on_ready=on_ready)
    log.info("listening on %s", url)
    if announce is not None:
        announce(url)
    start = time.monotonic()
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    log.info("stopped after %.1f s", time.monotonic() - start)
    return 0 if server.started else 1


__all__ = ["JsonLines", "bind", "configure_logging", "make_server", "serve", "url_of"]
