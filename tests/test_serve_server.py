"""The server's parts (:mod:`zoo.serve.server`) without serving: JSON log lines, the
listening socket, uvicorn's settings, the drain on signals (whole servers:
``test_serve_cli.py``)."""

from __future__ import annotations

import io
import logging
import signal
import socket
import sys
import threading
import warnings
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
import uvicorn

from zoo.errors import CpuFeatureWarning, ZooError
from zoo.serve import server as server_module
from zoo.serve.models import ServeSettings
from zoo.serve.server import JsonLines, _Server, bind, configure_logging, make_server, url_of


def record(name: str, message: str, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    made = logging.LogRecord(name, logging.WARNING, __file__, 1, message, None, exc_info)
    made.created = 1700000000.1234567
    return made


def test_log_records_are_json_lines_and_access_records_pass_through() -> None:
    line = JsonLines().format(record("zoo.serve", "draining"))
    assert orjson.loads(line) == {"ts": 1700000000.123457, "level": "warning",
                                  "logger": "zoo.serve", "message": "draining"}
    try:
        raise ValueError("bad")
    except ValueError as exc:
        entry = orjson.loads(JsonLines().format(record("uvicorn.error", "failed", exc)))
    assert entry["traceback"].startswith("Traceback") and "ValueError: bad" in entry["traceback"]
    assert JsonLines().format(record("zoo.serve.access", '{"status": 200}')) == '{"status": 200}'


def test_logging_goes_to_its_stream_only(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    root_lines: list[str] = []

    class Root(logging.Handler):
        def emit(self, r: logging.LogRecord) -> None:
            root_lines.append(r.getMessage())

    root = Root()
    logging.getLogger().addHandler(root)
    try:
        configure_logging("warning", stream=stream)
        logging.getLogger("zoo.serve").warning("one")
        logging.getLogger("zoo.serve").info("hidden")
        logging.getLogger("uvicorn.access").warning("never")
    finally:
        logging.getLogger().removeHandler(root)
    assert [orjson.loads(x)["message"] for x in stream.getvalue().splitlines()] == ["one"]
    assert root_lines == []  # not propagated to the application's own handlers
    configure_logging("info")
    handler = logging.getLogger("zoo.serve").handlers[0]
    assert isinstance(handler, logging.StreamHandler) and handler.stream is sys.stderr


def test_the_zoos_warnings_are_json_lines_too() -> None:
    """A graph built for other CPUs warns while the models load: a JSON line, as every
    other line of the server's log; other warnings go where they went before."""
    others: list[str] = []
    warnings.showwarning = lambda message, *args, **kwargs: others.append(str(message))
    stream = io.StringIO()
    configure_logging("info", stream=stream)
    configure_logging("info", stream=stream)  # configured twice: still said once
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("g.onnx is built for CPUs with avx_vnni", CpuFeatureWarning, stacklevel=1)
        warnings.warn("something else", UserWarning, stacklevel=1)
    [line] = stream.getvalue().splitlines()
    entry = orjson.loads(line)
    assert (entry["level"], entry["logger"], entry["message"]) == (
        "warning", "zoo.serve", "g.onnx is built for CPUs with avx_vnni")
    assert others == ["something else"]


def test_zoo_serve_logs_what_loading_its_models_warns_of(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from zoo.cli import main

    def load_models(*args: Any, **kwargs: Any) -> list[Any]:
        warnings.warn("g.onnx is built for CPUs with avx_vnni", CpuFeatureWarning, stacklevel=2)
        return []

    monkeypatch.setattr("zoo.serve.repository.load_models", load_models)
    monkeypatch.setattr(server_module, "serve", lambda *args, **kwargs: 0)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["serve", "Net", "--port", "0"]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert [orjson.loads(x)["message"] for x in lines] == ["g.onnx is built for CPUs with "
                                                           "avx_vnni"]


def test_a_bound_socket_listens_and_can_be_inherited() -> None:
    sock = bind("127.0.0.1", 0)
    try:
        assert sock.get_inheritable()
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) != 0
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
        socket.create_connection(sock.getsockname()[:2], timeout=2).close()
    finally:
        sock.close()


def test_a_held_port_shares_with_workers_but_takes_no_connection() -> None:
    holder = bind("127.0.0.1", 0, reuse_port=True, listen=False)
    try:
        assert holder.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) != 0
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(holder.getsockname()[:2], timeout=2)
        worker = bind("127.0.0.1", holder.getsockname()[1], reuse_port=True)
        worker.close()
    finally:
        holder.close()


def test_a_port_in_use_and_an_unknown_host_are_one_line() -> None:
    taken = bind("127.0.0.1", 0)
    port = taken.getsockname()[1]
    try:
        with pytest.raises(ZooError, match=rf"^cannot listen on 127\.0\.0\.1:{port}: address "
                                           r"already in use; accepted: a free port"):
            bind("127.0.0.1", port)
    finally:
        taken.close()
    with pytest.raises(ZooError, match=r"^cannot listen on 'no-such-host\.invalid': "):
        bind("no-such-host.invalid", 0)


@pytest.mark.parametrize(("address", "url"), [(("127.0.0.1", 8000), "http://127.0.0.1:8000/"),
                                              (("::1", 8080, 0, 0), "http://[::1]:8080/")])
def test_urls_of_sockets(address: tuple[Any, ...], url: str) -> None:
    assert url_of(SimpleNamespace(getsockname=lambda: address)) == url  # type: ignore[arg-type]


def test_uvicorn_is_told_to_hide_itself_and_to_wait_out_a_request(monkeypatch: Any) -> None:
    server, app = make_server([], ServeSettings(timeout_s=7.5))
    config = server.config
    assert (config.server_header, config.access_log, config.log_config) == (False, False, None)
    assert config.timeout_graceful_shutdown == 12  # the request timeout and 5 s
    assert config.lifespan == "on" and config.backlog == 2048
    assert server.app is app
    server, _ = make_server([], ServeSettings(), graceful_timeout_s=3.0)
    assert server.config.timeout_graceful_shutdown == 3


class Drains:
    def __init__(self) -> None:
        self.drains = 0

    def begin_drain(self) -> None:
        self.drains += 1


def test_sigterm_drains_and_a_second_ctrl_c_stops_waiting() -> None:
    app = Drains()
    server = _Server(uvicorn.Config(app=lambda *a: None), app)  # type: ignore[arg-type]
    server._stop(signal.SIGTERM, None)
    assert (server.should_exit, server.force_exit, app.drains) == (True, False, 1)
    server._stop(signal.SIGTERM, None)
    assert server.force_exit is False
    server._stop(signal.SIGINT, None)
    assert (server.force_exit, app.drains) == (True, 3)
    first = _Server(uvicorn.Config(app=lambda *a: None), app)  # type: ignore[arg-type]
    first._stop(signal.SIGINT, None)
    assert (first.should_exit, first.force_exit) == (True, False)


def test_signals_are_captured_in_the_main_thread_only() -> None:
    server = _Server(uvicorn.Config(app=lambda *a: None), Drains())  # type: ignore[arg-type]
    before = signal.getsignal(signal.SIGTERM)
    with server.capture_signals():
        assert signal.getsignal(signal.SIGTERM) == server._stop
        assert signal.getsignal(signal.SIGINT) == server._stop
    assert signal.getsignal(signal.SIGTERM) is before
    seen: list[Any] = []

    def elsewhere() -> None:
        with server.capture_signals():
            seen.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join()
    assert seen == [before]


def test_serve_listens_where_zoo_serve_does_by_default() -> None:
    import inspect

    from test_serve_options import _serve_parser

    defaults = {a.dest: a.default for a in _serve_parser()._actions}
    parameters = inspect.signature(server_module.serve).parameters
    assert parameters["port"].default == defaults["port"] == 8000
    assert parameters["host"].default == defaults["host"]
    assert parameters["log_access"].default is (not defaults["no_access_log"])
    assert parameters["log_level"].default == defaults["log_level"]
