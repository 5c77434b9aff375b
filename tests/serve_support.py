"""Helpers of the ``zoo serve`` tests: a server in a thread, HTTP calls, test images."""

from __future__ import annotations

import http.client
import io
import json
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from zoo.serve.models import ServedModel, ServeSettings
from zoo.serve.repository import load_models, parse_sources
from zoo.serve.server import bind, make_server, url_of


@dataclass
class Running:
    """A server running in a thread: its URL, models and application."""

    url: str
    models: dict[str, ServedModel]
    app: Any

    @property
    def port(self) -> int:
        return int(urlsplit(self.url).port or 0)


@contextmanager
def thread_server(bundles: Sequence[str], settings: ServeSettings | None = None,
                  *, log_access: bool = True) -> Iterator[Running]:
    """``zoo serve BUNDLES`` on a free loopback port, in a thread of this process.

    Without ``settings``, load is never shed (no loop-lag or queue-wait limit): a busy
    test machine must not turn the answers these tests check into 503s.
    """
    settings = settings or ServeSettings(max_loop_lag_s=0, max_queue_wait_s=0)
    models = load_models(parse_sources(list(bundles)), settings)
    sock = bind("127.0.0.1", 0)
    server, app = make_server(models, settings, log_access=log_access)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield Running(url_of(sock), {m.name: m for m in models}, app)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def call(url: str, method: str = "GET", body: bytes | None = None,
         headers: dict[str, str] | None = None, timeout: float = 30) -> Reply:
    """One HTTP request on a new connection."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        connection.request(method, path or "/", body=body, headers=headers or {})
        response = connection.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()},
                     response.read())
    finally:
        connection.close()


def post_json(url: str, data: Any, headers: dict[str, str] | None = None) -> Reply:
    return call(url, "POST", json.dumps(data).encode(),
                {"Content-Type": "application/json", **(headers or {})})


def pixels(seed: int, size: tuple[int, int] = (32, 32)) -> np.ndarray:
    """A CIFAR-style uint8 image (H, W, 3): smooth colour blobs, not noise."""
    rng = np.random.default_rng(seed)
    h, w = size
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    channels = [np.sin(rng.uniform(1, 6) * x + rng.uniform(1, 6) * y + rng.uniform(0, 6))
                for _ in range(3)]
    image = (np.stack(channels, -1) * 0.5 + 0.5) * 255
    return np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)


def encoded(array: np.ndarray, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, fmt)
    return out.getvalue()


def binary_request(header: dict[str, Any], *blobs: bytes) -> tuple[bytes, dict[str, str]]:
    """A body of the binary tensor extension and its headers."""
    text = json.dumps(header).encode()
    return text + b"".join(blobs), {"Inference-Header-Content-Length": str(len(text)),
                                    "Content-Type": "application/octet-stream"}


def bytes_tensor(items: Sequence[bytes]) -> bytes:
    return b"".join(len(item).to_bytes(4, "little") + item for item in items)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def metric_samples(exposition: str | bytes) -> Samples:
    """Every sample of a Prometheus exposition (``/metrics``), by name and sorted labels."""
    from prometheus_client.parser import text_string_to_metric_families

    text = exposition.decode() if isinstance(exposition, bytes) else exposition
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def server_metrics(url: str) -> Samples:
    """:func:`metric_samples` of the server at ``url``."""
    return metric_samples(call(f"{url}metrics").body)


def metric(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 where it was never counted)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)
