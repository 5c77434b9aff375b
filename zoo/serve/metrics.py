"""Prometheus metrics of a server (``GET /metrics``), in a registry of its own.

* ``zoo_serve_requests_total{model, endpoint, outcome}``: requests by outcome
  (``ok``, ``client_error``, ``overloaded``, ``timeout``, ``server_error``);
* ``zoo_serve_request_errors_total{model, status}``: failed requests by HTTP status;
* ``zoo_serve_request_duration_seconds{model, endpoint}``: latency histogram of
  inference requests, from the first byte read to the answer;
* ``zoo_serve_batch_size{model}`` and ``zoo_serve_batch_duration_seconds{model}``:
  rows per onnxruntime call, and its time (including image decoding);
* ``zoo_serve_queue_rows{model}``: rows waiting for the batcher (the queue depth),
  ``zoo_serve_in_flight_rows{model}``: waiting or being computed;
* ``zoo_serve_loop_lag_seconds``: how late the event loop runs (requests are refused
  while it is over ``--max-loop-lag-ms``);
* ``zoo_serve_model_info{model, version, architecture}``: 1 per served model.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

if TYPE_CHECKING:
    from zoo.serve.batching import DynamicBatcher, LoopLag
    from zoo.serve.models import ServedModel

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0,
                   5.0, 10.0)


def _rows(batcher: DynamicBatcher, in_flight: bool) -> float:
    return float(batcher.in_flight_rows if in_flight else batcher.queued_rows)


def outcome(status: int) -> str:
    """The ``outcome`` label of an HTTP status."""
    if status < 400:
        return "ok"
    if status == 503:
        return "overloaded"
    if status == 504:
        return "timeout"
    return "client_error" if status < 500 else "server_error"


class ServeMetrics:
    """The server's collectors; :meth:`render` is the ``/metrics`` body."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, models: Sequence[ServedModel], max_batch_size: int) -> None:
        self.registry = CollectorRegistry()
        self._children: dict[tuple[str, str, int], tuple[Any, Any, Any]] = {}
        r = self.registry
        self.requests = Counter("zoo_serve_requests", "Requests by model, endpoint and outcome.",
                                ["model", "endpoint", "outcome"], registry=r)
        self.errors = Counter("zoo_serve_request_errors", "Failed requests by HTTP status.",
                              ["model", "status"], registry=r)
        self.latency = Histogram("zoo_serve_request_duration_seconds",
                                 "Latency of inference requests.", ["model", "endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        sizes = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, max_batch_size})
        self.batch_size = Histogram("zoo_serve_batch_size", "Rows per onnxruntime call.",
                                    ["model"], buckets=[s for s in sizes if s <= max_batch_size],
                                    registry=r)
        self.batch_seconds = Histogram("zoo_serve_batch_duration_seconds",
                                       "Time of one batch: decoding and onnxruntime.", ["model"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        queue = Gauge("zoo_serve_queue_rows", "Rows waiting for the batcher.", ["model"],
                      registry=r)
        in_flight = Gauge("zoo_serve_in_flight_rows", "Rows waiting or being computed.",
                          ["model"], registry=r)
        info = Gauge("zoo_serve_model_info", "The served models.",
                     ["model", "version", "architecture"], registry=r)
        for model in models:
            batcher = model.batcher
            queue.labels(model.name).set_function(partial(_rows, batcher, False))
            in_flight.labels(model.name).set_function(partial(_rows, batcher, True))
            info.labels(model.name, model.version, model.manifest.architecture).set(1)

    def watch_lag(self, lag: LoopLag) -> None:
        """Export the event loop's lag (``zoo_serve_loop_lag_seconds``)."""
        gauge = Gauge("zoo_serve_loop_lag_seconds", "How late the event loop runs a timer; "
                      "inference requests are refused while it exceeds the limit.",
                      registry=self.registry)
        gauge.set_function(lambda: lag.lag_s)

    def observe_request(self, model: str, endpoint: str, status: int, seconds: float) -> None:
        """Count one request (and its error), and its latency when it reached a model."""
        key = (model, endpoint, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(model, endpoint, outcome(status)),
                self.errors.labels(model, str(status)) if status >= 400 else None,
                self.latency.labels(model, endpoint) if model else None)
        count, error, latency = children
        count.inc()
        if error is not None:
            error.inc()
        if latency is not None:
            latency.observe(seconds)

    def observe_batch(self, model: str, rows: int, jobs: int, seconds: float) -> None:
        """One onnxruntime call of ``rows`` rows (``jobs`` requests) that took ``seconds``."""
        self.batch_size.labels(model).observe(rows)
        self.batch_seconds.labels(model).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


__all__ = ["LATENCY_BUCKETS", "ServeMetrics", "outcome"]
