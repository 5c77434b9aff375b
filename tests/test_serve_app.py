"""The serving application's own states and answers, in-process: readiness through the
lifespan and a drain, shedding load while the event loop runs late, internal errors,
disconnected clients, its 404/405 messages and the metrics of the web page's endpoint."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from serve_support import (
    Running,
    call,
    encoded,
    metric,
    metric_samples,
    pixels,
    post_json,
    server_metrics,
    thread_server,
)
from starlette.testclient import TestClient

from zoo.serve.app import ServeApp, create_app
from zoo.serve.models import ServedModel, ServeSettings
from zoo.serve.repository import load_models, parse_sources
from zoo.serve.transport import AccessLog

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

#: No load shedding: a busy test machine must not turn the answers checked into 503s.
CALM = ServeSettings(max_loop_lag_s=0, max_queue_wait_s=0)


@pytest.fixture(scope="module")
def models() -> list[ServedModel]:
    return load_models(parse_sources(["Net"]), CALM)


@pytest.fixture(scope="module")
def server() -> Iterator[Running]:
    with thread_server(["Net"]) as running:
        yield running


def _good_request() -> dict[str, Any]:
    return {"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32",
                        "data": [0.0] * (3 * 32 * 32)}]}


def _wait_for(condition: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.01)


def test_readiness_follows_the_lifespan_and_a_drain(models: list[ServedModel]) -> None:
    seen: list[bool] = []
    app = ServeApp(models, CALM, log_access=False, on_ready=lambda: seen.append(app.ready))
    app.begin_drain()  # before the server runs: nothing to drain, and no error
    idle = TestClient(app)  # no lifespan: the models were never started
    assert idle.get("/v2/health/live").json() == {"live": True}
    reply = idle.get("/v2/health/ready")
    assert (reply.status_code, reply.json()) == (503, {"ready": False})
    reply = idle.get("/v2/models/Net/ready")
    assert (reply.status_code, reply.json()) == (503, {"name": "Net", "ready": False})
    assert [m["state"] for m in idle.post("/v2/repository/index").json()] == ["UNAVAILABLE"]

    with TestClient(app) as client:
        assert seen == [True]  # called once, when the models were ready
        reply = client.get("/v2/health/ready")
        assert (reply.status_code, reply.json()) == (200, {"ready": True})
        reply = client.get("/v2/models/Net/ready")
        assert (reply.status_code, reply.json()) == (200, {"name": "Net", "ready": True})
        assert client.post("/v2/repository/index").json() == [
            {"name": "Net", "version": models[0].version, "state": "READY"}]
        assert client.post("/v2/models/Net/infer", json=_good_request()).status_code == 200

        app.begin_drain()  # what SIGTERM calls, from another thread
        _wait_for(lambda: not app.ready)
        reply = client.get("/v2/health/ready")
        assert (reply.status_code, reply.json()) == (503, {"ready": False})
        assert client.get("/v2/health/live").json() == {"live": True}
    assert app.ready is False
    assert seen == [True]
    app.begin_drain()  # after the server stopped (its loop closed): no error


def test_a_late_event_loop_sheds_inference_with_503_and_retry_after() -> None:
    settings = ServeSettings(max_loop_lag_s=0.05, max_queue_wait_s=0)
    with thread_server(["Net"], settings) as server:
        assert post_json(f"{server.url}v2/models/Net/infer", _good_request()).status == 200
        loop = server.app.loop
        assert loop is not None
        stop = threading.Event()

        def block() -> None:  # the loop busy 0.1 s at a time, as under a flood of requests
            time.sleep(0.1)
            if not stop.is_set():
                loop.call_soon(block)

        loop.call_soon_threadsafe(block)
        try:
            _wait_for(lambda: server.app.lag.overloaded)
            reply = post_json(f"{server.url}v2/models/Net/infer", _good_request())
        finally:
            stop.set()
        assert reply.status == 503
        assert reply.headers["retry-after"] == "1"
        assert reply.headers["content-type"] == "application/json"
        assert reply.json() == {"error": "the server is over capacity (its event loop runs over "
                                         "50 ms late); retry after a second"}
        _wait_for(lambda: not server.app.lag.overloaded)
        assert post_json(f"{server.url}v2/models/Net/infer", _good_request()).status == 200
        samples = server_metrics(server.url)
        assert metric(samples, "zoo_serve_request_errors_total", model="Net", status="503") == 1
        assert metric(samples, "zoo_serve_requests_total", model="Net", endpoint="infer",
                      outcome="ok") == 2


def test_an_internal_error_is_a_500_the_server_logs_and_survives(
        server: Running, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    model = server.models["Net"]
    before = server_metrics(server.url)

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(model, "infer", broken)
    monkeypatch.setattr(model, "classify", broken)
    with caplog.at_level(logging.ERROR, logger="zoo.serve"):
        infer = post_json(f"{server.url}v2/models/Net/infer", _good_request())
        page = call(f"{server.url}zoo/models/Net/classify", "POST", encoded(pixels(0)),
                    {"Content-Type": "image/png"})
    for reply in (infer, page):
        assert reply.status == 500
        assert reply.json() == {"error": "internal server error (RuntimeError); the server "
                                         "logged it"}
    logged = [r for r in caplog.records if r.name == "zoo.serve" and r.exc_info]
    assert {r.getMessage() for r in logged} == {
        "internal error on POST /v2/models/Net/infer",
        "internal error on POST /zoo/models/Net/classify"}
    monkeypatch.undo()
    assert post_json(f"{server.url}v2/models/Net/infer", _good_request()).status == 200
    after = server_metrics(server.url)
    errors = "zoo_serve_request_errors_total"
    assert metric(after, errors, model="Net", status="500") - \
        metric(before, errors, model="Net", status="500") == 2


def test_a_client_that_disconnects_is_counted_as_499_and_sent_nothing(
        models: list[ServedModel]) -> None:
    app = ServeApp(models, CALM, log_access=False)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    for path in ("/v2/models/Net/infer", "/zoo/models/Net/classify"):
        scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(),
                 "query_string": b"", "root_path": "", "scheme": "http", "http_version": "1.1",
                 "headers": [(b"content-type", b"image/png"), (b"content-length", b"1000")],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "app": app}
        asyncio.run(app(scope, receive, send))
    samples = metric_samples(app.metrics.render())
    for endpoint in ("infer", "classify"):
        assert metric(samples, "zoo_serve_requests_total", model="Net", endpoint=endpoint,
                      outcome="client_error") == 1
    assert metric(samples, "zoo_serve_request_errors_total", model="Net", status="499") == 2
    # infer sends nothing; the page's endpoint starts a 499 (what the access log records)
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [499]
    assert not [m for m in sent if m["type"] == "http.response.body" and m.get("body")]


def test_unknown_paths_and_methods_are_protocol_errors_naming_what_is_accepted(
        models: list[ServedModel]) -> None:
    client = TestClient(ServeApp(models, CALM, log_access=False))
    reply = client.get("/nope")
    assert reply.status_code == 404
    assert reply.json()["error"].startswith("no endpoint '/nope'; accepted: /v2, ")
    reply = client.post("/v2/health/live")
    assert reply.status_code == 405
    assert set(reply.headers["allow"].split(", ")) == {"GET", "HEAD"}
    assert reply.json() == {"error": "POST is not accepted on '/v2/health/live'; accepted: "
                                     "GET, HEAD"}
    reply = client.get("/static/nope.js")
    assert reply.status_code == 404
    assert reply.json() == {"error": "no static file 'nope.js'; accepted: index.html, app.js, "
                                     "style.css"}


def test_the_web_pages_classify_endpoint_has_its_metrics(server: Running) -> None:
    before = server_metrics(server.url)
    start = time.perf_counter()
    image, png = encoded(pixels(3)), {"Content-Type": "image/png"}
    ok = call(f"{server.url}zoo/models/Net/classify?top_k=2", "POST", image, png)
    assert ok.status == 200 and len(ok.json()["predictions"]) == 2
    assert call(f"{server.url}zoo/models/Net/classify?top_k=two", "POST", image,
                png).status == 400
    assert call(f"{server.url}zoo/models/nope/classify", "POST", image, png).status == 404
    elapsed = time.perf_counter() - start
    after = server_metrics(server.url)

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    requests = "zoo_serve_requests_total"
    assert delta(requests, endpoint="classify", model="Net", outcome="ok") == 1
    assert delta(requests, endpoint="classify", model="Net", outcome="client_error") == 1
    assert delta(requests, endpoint="classify", model="", outcome="client_error") == 1
    assert delta("zoo_serve_request_errors_total", model="Net", status="400") == 1
    assert delta("zoo_serve_request_errors_total", model="", status="404") == 1
    latency = "zoo_serve_request_duration_seconds"
    assert delta(f"{latency}_count", endpoint="classify", model="Net") == 2
    assert 0 < delta(f"{latency}_sum", endpoint="classify", model="Net") <= elapsed


def test_the_access_log_is_on_by_default(models: list[ServedModel],
                                         caplog: pytest.LogCaptureFixture) -> None:
    assert isinstance(ServeApp(models, CALM).asgi, AccessLog)
    assert not isinstance(ServeApp(models, CALM, log_access=False).asgi, AccessLog)
    app = create_app(models)  # default settings and access log
    with caplog.at_level(logging.INFO, logger="zoo.serve.access"):
        assert TestClient(app).get("/v2/health/live").status_code == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "zoo.serve.access"]
    assert len(lines) == 1 and '"path":"/v2/health/live"' in lines[0].replace(" ", "")
