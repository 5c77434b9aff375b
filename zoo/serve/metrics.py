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

With several worker processes (``zoo serve --workers N``) every worker writes its
values to files in ``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess
mode, which ``zoo serve`` sets up) and ``/metrics``, whichever worker answers it, adds
them up: counters and histograms over every worker, the queue gauges over the live
ones, the loop lag as the largest of the live workers'.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

if TYPE_CHECKING:
    from zoo.serve.batching import LoopLag
    from zoo.serve.models import ServedModel

#: prometheus-client's multiprocess mode is on when this names a folder (read at import).
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"

#: How often each worker refreshes its gauges when several workers serve.
REFRESH_S = 0.1
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0,
                   5.0, 10.0)


def multiprocess_dir() -> str | None:
    """The folder of prometheus-client's multiprocess mode, or None (one process)."""
    return os.environ.get(MULTIPROCESS_DIR) or None


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
    """The server's collectors; :meth:`render` is the ``/metrics`` body.

    The gauges are set from the live state by :meth:`refresh`: at each rendering, and
    (with several workers, whose values a rendering cannot read) every
    :data:`REFRESH_S` seconds by the application.
    """

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, models: Sequence[ServedModel], max_batch_size: int,
                 lag: LoopLag | None = None) -> None:
        self.multiprocess = multiprocess_dir() is not None
        self.registry = CollectorRegistry()
        self._models = list(models)
        self._lag = lag
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
        self.queue = Gauge("zoo_serve_queue_rows", "Rows waiting for the batcher.", ["model"],
                           registry=r, multiprocess_mode="livesum")
        self.in_flight = Gauge("zoo_serve_in_flight_rows", "Rows waiting or being computed.",
                               ["model"], registry=r, multiprocess_mode="livesum")
        self.loop_lag = Gauge("zoo_serve_loop_lag_seconds", "How late the event loop runs a "
                              "timer; inference requests are refused while it exceeds the "
                              "limit.", registry=r, multiprocess_mode="livemax")
        info = Gauge("zoo_serve_model_info", "The served models.",
                     ["model", "version", "architecture"], registry=r, multiprocess_mode="max")
        for model in models:
            info.labels(model.name, model.version, model.manifest.architecture).set(1)
        self.refresh()

    def refresh(self) -> None:
        """Set the gauges (queue depths, loop lag) from the batchers and the loop now."""
        for model in self._models:
            self.queue.labels(model.name).set(model.batcher.queued_rows)
            self.in_flight.labels(model.name).set(model.batcher.in_flight_rows)
        self.loop_lag.set(self._lag.lag_s if self._lag is not None else 0.0)

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
        """The exposition: this process's metrics, or every worker's added up."""
        self.refresh()
        if not self.multiprocess:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)


__all__ = ["LATENCY_BUCKETS", "MULTIPROCESS_DIR", "REFRESH_S", "ServeMetrics", "multiprocess_dir",
           "outcome"]
