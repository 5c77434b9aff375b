"""The serving metrics (:mod:`zoo.serve.metrics`) read back through prometheus-client's own
parser: outcomes by status at their edges, batch-size buckets up to the largest batch,
gauges from the live state (``/metrics`` over HTTP: ``test_serve_protocol.py``)."""

from __future__ import annotations

from itertools import pairwise
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from zoo.serve.metrics import (
    LATENCY_BUCKETS,
    MULTIPROCESS_DIR,
    ServeMetrics,
    multiprocess_dir,
    outcome,
)


def served(name: str, queued: int = 0, in_flight: int = 0) -> Any:
    return SimpleNamespace(name=name, version="abc123", manifest=SimpleNamespace(
        architecture="Net"), batcher=SimpleNamespace(queued_rows=queued, in_flight_rows=in_flight))


def samples(metrics: ServeMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.mark.parametrize(("status", "expected"), [
    (200, "ok"), (399, "ok"), (400, "client_error"), (499, "client_error"),
    (500, "server_error"), (502, "server_error"), (503, "overloaded"), (504, "timeout"),
    (505, "server_error")])
def test_outcomes_by_status(status: int, expected: str) -> None:
    assert outcome(status) == expected


def test_multiprocess_mode_follows_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MULTIPROCESS_DIR, raising=False)
    assert multiprocess_dir() is None
    monkeypatch.setenv(MULTIPROCESS_DIR, "")
    assert multiprocess_dir() is None
    monkeypatch.setenv(MULTIPROCESS_DIR, "/tmp/prom")
    assert multiprocess_dir() == "/tmp/prom"


def test_requests_errors_and_latency_by_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MULTIPROCESS_DIR, raising=False)
    metrics = ServeMetrics([served("Net")], max_batch_size=64)
    for status in (200, 200, 399, 400, 503):
        metrics.observe_request("Net", "infer", status, 0.003)
    metrics.observe_request("", "page", 404, 0.001)  # no model: no latency
    got = samples(metrics)
    count = "zoo_serve_requests_total"
    assert got[(count, (("endpoint", "infer"), ("model", "Net"), ("outcome", "ok")))] == 3
    assert got[(count, (("endpoint", "infer"), ("model", "Net"),
                        ("outcome", "client_error")))] == 1
    errors = {k[1]: v for k, v in got.items() if k[0] == "zoo_serve_request_errors_total"}
    assert errors == {(("model", "Net"), ("status", "400")): 1,
                      (("model", "Net"), ("status", "503")): 1,
                      (("model", ""), ("status", "404")): 1}
    latency = {k[1]: v for k, v in got.items()
               if k[0] == "zoo_serve_request_duration_seconds_count"}
    assert latency == {(("endpoint", "infer"), ("model", "Net")): 5}


@pytest.mark.parametrize(("largest", "bounds"), [
    (48, [1, 2, 4, 8, 16, 32, 48]), (64, [1, 2, 4, 8, 16, 32, 64]), (1, [1]),
    (300, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300])])
def test_batch_size_buckets_double_up_to_the_largest_batch(
        monkeypatch: pytest.MonkeyPatch, largest: int, bounds: list[int]) -> None:
    monkeypatch.delenv(MULTIPROCESS_DIR, raising=False)
    metrics = ServeMetrics([served("Net")], max_batch_size=largest)
    metrics.observe_batch("Net", 1, 1, 0.002)
    got = samples(metrics)
    les = sorted(float(dict(labels)["le"]) for name, labels in got
                 if name == "zoo_serve_batch_size_bucket" and dict(labels)["le"] != "+Inf")
    assert les == bounds
    assert got[("zoo_serve_batch_size_count", (("model", "Net"),))] == 1
    assert got[("zoo_serve_batch_duration_seconds_sum", (("model", "Net"),))] == 0.002


def test_gauges_show_the_live_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MULTIPROCESS_DIR, raising=False)
    model = served("Net", queued=3, in_flight=5)
    metrics = ServeMetrics([model, served("NetRes")], max_batch_size=8,
                           lag=SimpleNamespace(lag_s=0.25))  # type: ignore[arg-type]
    model.batcher.queued_rows = 7  # read again at each rendering
    got = samples(metrics)
    assert got[("zoo_serve_queue_rows", (("model", "Net"),))] == 7
    assert got[("zoo_serve_in_flight_rows", (("model", "Net"),))] == 5
    assert got[("zoo_serve_queue_rows", (("model", "NetRes"),))] == 0
    assert got[("zoo_serve_loop_lag_seconds", ())] == 0.25
    assert got[("zoo_serve_model_info", (("architecture", "Net"), ("model", "Net"),
                                         ("version", "abc123")))] == 1
    assert metrics.multiprocess is False


def test_latency_buckets_increase_from_half_a_millisecond_to_ten_seconds() -> None:
    assert all(a < b for a, b in pairwise(LATENCY_BUCKETS))
    assert (LATENCY_BUCKETS[0], LATENCY_BUCKETS[-1]) == (0.0005, 10.0)
