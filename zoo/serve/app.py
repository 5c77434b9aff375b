"""The ASGI application: the Open Inference Protocol's REST API, the web page and ``/metrics``.

Endpoints (``V`` is optional everywhere: ``/v2/models/NAME/versions/V/...``):

=====================================  =================================================
``GET  /v2``                           server metadata (name, version, extensions)
``GET  /v2/health/live`` and ``ready``  liveness; readiness (every model loaded, not draining)
``GET  /v2/models/NAME``               model metadata: inputs and outputs
``GET  /v2/models/NAME/ready``         model readiness
``POST /v2/models/NAME/infer``         inference: JSON, binary tensors, or an image upload
``POST /v2/repository/index``          the served models (Triton's repository extension)
``GET  /zoo/models``                   the served models with their model cards
``POST /zoo/models/NAME/classify``     one image (raw ``image/*`` or multipart): top-k JSON
``GET  /``                             the web page; ``/static/...`` its script and style
``GET  /metrics``                      Prometheus metrics
=====================================  =================================================

Every error is ``{"error": "<one sentence>"}`` with a 4xx status for the client's
mistakes, 503 (with ``Retry-After``) when a model's queue is full or the server is
draining, 504 past the request timeout; an unexpected failure is a 500 whose body
names no internals (the traceback goes to the log).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from zoo.serve.batching import LoopLag
from zoo.serve.metrics import REFRESH_S, ServeMetrics
from zoo.serve.models import ServedModel, ServeSettings
from zoo.serve.protocol import (
    HEADER_LENGTH,
    InferenceRequest,
    ProtocolError,
    RequestInput,
    ServerMetadata,
    encode_response,
    error_body,
    parse_request,
)
from zoo.serve.responses import EXCEPTION_HANDLERS, error_response, json_response
from zoo.serve.transport import (
    AccessLog,
    Disconnected,
    header_map,
    is_upload,
    read_body,
    read_image,
    send_bytes,
    send_error,
    send_raw,
)
from zoo.serve.webpage import WebPage
from zoo.util.version import __version__

log = logging.getLogger("zoo.serve")

#: The inference endpoint, answered on plain ASGI (the hot path).
INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")

#: The headers of a 503 answered while the event loop is overloaded.
OVERLOADED_HEADERS = [(b"content-type", b"application/json"), (b"retry-after", b"1")]
EXTENSIONS = ["binary_tensor_data", "classification", "model_repository", "zoo_web_page"]

class ServeApp:
    """The server's state and handlers; an ASGI application (:attr:`asgi` adds the access log).

    ``POST .../infer`` is answered on plain ASGI (:meth:`infer`); every other path goes
    through Starlette's routing, exception handling and responses.
    """

    def __init__(self, models: Sequence[ServedModel], settings: ServeSettings, *,
                 log_access: bool = True, on_ready: Callable[[], None] | None = None) -> None:
        self.models = {m.name: m for m in models}
        self.settings = settings
        self.ready = False
        self.on_ready = on_ready
        self.loop: asyncio.AbstractEventLoop | None = None
        self.lag = LoopLag(settings.max_loop_lag_s)
        self.metrics = ServeMetrics(models, settings.max_batch_size, self.lag)
        self._overloaded_body = error_body(
            f"the server is over capacity (its event loop runs over "
            f"{settings.max_loop_lag_s * 1e3:g} ms late); retry after a second")
        self.webpage = WebPage()
        for model in models:
            model.batcher.on_batch = (
                lambda rows, jobs, s, name=model.name: self.metrics.observe_batch(name, rows,
                                                                                   jobs, s))
        versioned = "/v2/models/{name}/versions/{version}"
        routes = [
            Route("/v2", self.server_metadata),
            Route("/v2/health/live", self.live),
            Route("/v2/health/ready", self.server_ready),
            Route("/v2/repository/index", self.repository_index, methods=["POST"]),
            *(Route(base + tail, handler, methods=["GET"])
              for base in ("/v2/models/{name}", versioned)
              for tail, handler in (("", self.model_metadata), ("/ready", self.model_ready))),
            Route("/zoo/models", self.model_cards),
            Route("/zoo/models/{name}/classify", self.classify, methods=["POST"]),
            Route("/", self.webpage.page),
            Route("/static/{file}", self.webpage.static_file),
            Route("/metrics", self.prometheus),
        ]
        self.starlette = Starlette(routes=routes, lifespan=self.lifespan,
                                   exception_handlers=EXCEPTION_HANDLERS)
        self.asgi: ASGIApp = AccessLog(self) if log_access else self

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            match = INFER_PATH.fullmatch(scope["path"])
            if match is not None and scope["method"] == "POST":
                await self.infer(scope, receive, send, match[1], match[2])
                return
            if match is not None:
                await send_error(send, ProtocolError(
                    f"{scope['method']} is not accepted on {scope['path']!r}; accepted: POST",
                    405, {"Allow": "POST"}))
                return
        await self.starlette(scope, receive, send)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.loop = asyncio.get_running_loop()
        for model in self.models.values():
            model.batcher.start()
        self.lag.start()
        refresher = (asyncio.get_running_loop().create_task(self._refresh_metrics())
                     if self.metrics.multiprocess else None)
        self.ready = True
        log.info("ready: %s", ", ".join(f"{n} (version {m.version})"
                                        for n, m in self.models.items()))
        if self.on_ready is not None:
            self.on_ready()
        try:
            yield
        finally:
            self.ready = False
            for model in self.models.values():
                await model.batcher.close()
            await self.lag.stop()
            if refresher is not None:
                refresher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await refresher
            self.metrics.refresh()

    async def _refresh_metrics(self) -> None:
        """With several workers, keep this one's gauges current for whichever renders."""
        while True:
            self.metrics.refresh()
            await asyncio.sleep(REFRESH_S)

    def begin_drain(self) -> None:
        """Report not ready and stop waiting for batches to fill (safe in a signal handler)."""
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        self.ready = False
        for model in self.models.values():
            model.batcher.flush()

    def model(self, name: str, version: str | None = None) -> ServedModel:
        """The model served as ``name`` (of ``version``, if given), else a 404 ProtocolError."""
        model = self.models.get(name)
        if model is None:
            raise ProtocolError(f"no model {name!r}; accepted: "
                                f"{', '.join(self.models) or 'none is served'}", 404)
        model.check_version(version)
        return model

    # -- inference (plain ASGI) --------------------------------------------------------

    async def infer(self, scope: Scope, receive: Receive, send: Send, name: str,
                    version: str | None) -> None:
        """``POST /v2/models/NAME[/versions/V]/infer``: JSON, binary tensors or an image."""
        start = time.perf_counter()
        label, status = "", 500
        try:
            model = self.model(name, version)
            label = model.name
            if self.lag.overloaded:
                # the cheapest answer there is: under overload, refusing must cost far less
                # than answering, or the refusals alone saturate the event loop
                status = 503
                await send_raw(send, 503, self._overloaded_body, OVERLOADED_HEADERS)
                return
            headers = header_map(scope)
            body = await read_body(receive, headers, self.settings.max_body_bytes)
            header_length = headers.get(HEADER_LENGTH.lower())
            if header_length is None and is_upload(headers.get("content-type", "")):
                image = await read_image(headers, body, self.settings.max_body_bytes)
                request = InferenceRequest(inputs=[RequestInput(
                    name=model.input_name, shape=[1], datatype="BYTES")])
                binary = {0: memoryview(len(image).to_bytes(4, "little") + image)}
            else:
                request, binary = parse_request(body, header_length)
            outputs = await model.infer(request, binary)
            content, extra = encode_response(model.name, model.version, request.id, outputs)
            status = 200
            await send_bytes(send, 200, content, extra,
                             extra["content-type"].encode("latin-1"))
        except ProtocolError as exc:
            status = exc.status
            await send_error(send, exc)
        except Disconnected:
            status = 499
        except Exception as exc:
            log.error("internal error on POST %s", scope["path"], exc_info=exc)
            await send_error(send, ProtocolError(
                f"internal server error ({type(exc).__name__}); the server logged it", 500))
        finally:
            self.metrics.observe_request(label, "infer", status, time.perf_counter() - start)

    # -- the protocol's other endpoints ------------------------------------------------

    async def server_metadata(self, request: Request) -> Response:
        meta = ServerMetadata(name="zoo", version=__version__, extensions=EXTENSIONS)
        return json_response(meta.model_dump())

    async def live(self, request: Request) -> Response:
        return json_response({"live": True})

    async def server_ready(self, request: Request) -> Response:
        return json_response({"ready": self.ready}, 200 if self.ready else 503)

    async def repository_index(self, request: Request) -> Response:
        state = "READY" if self.ready else "UNAVAILABLE"
        return json_response([{"name": n, "version": m.version, "state": state}
                              for n, m in self.models.items()])

    def _model(self, request: Request) -> ServedModel:
        return self.model(request.path_params["name"], request.path_params.get("version"))

    async def model_metadata(self, request: Request) -> Response:
        return json_response(self._model(request).metadata().model_dump())

    async def model_ready(self, request: Request) -> Response:
        model = self._model(request)
        return json_response({"name": model.name, "ready": self.ready},
                             200 if self.ready else 503)

    # -- the web page and its API ------------------------------------------------------

    async def model_cards(self, request: Request) -> Response:
        return json_response({"models": [m.card() for m in self.models.values()],
                              "max_body_bytes": self.settings.max_body_bytes})

    async def classify(self, request: Request) -> Response:
        """``POST /zoo/models/NAME/classify[?top_k=K]``: one image, its top-k as JSON."""
        start = time.perf_counter()
        label, status = "", 500
        try:
            model = self._model(request)
            label = model.name
            text = request.query_params.get("top_k")
            try:
                top_k = int(text) if text is not None else None
            except ValueError:
                raise ProtocolError(f"top_k is {text!r}; accepted: an integer from 1 to "
                                    f"{len(model.classes)}") from None
            limit = self.settings.max_body_bytes
            headers = dict(request.headers)
            image = await read_image(headers, await read_body(request.receive, headers, limit),
                                     limit)
            response = json_response(await model.classify(image, top_k))
            status = 200
            return response
        except ProtocolError as exc:
            status = exc.status
            return error_response(exc)
        except Disconnected:
            status = 499
            return Response(status_code=499)
        finally:
            self.metrics.observe_request(label, "classify", status, time.perf_counter() - start)

    async def prometheus(self, request: Request) -> Response:
        return Response(self.metrics.render(), 200, {"content-type": self.metrics.content_type})


def create_app(models: Sequence[ServedModel], settings: ServeSettings | None = None, *,
               log_access: bool = True) -> ASGIApp:
    """The ASGI application serving ``models`` (run it with uvicorn or
    :func:`zoo.serve.server.serve`)."""
    return ServeApp(models, settings or ServeSettings(), log_access=log_access).asgi


__all__ = ["ServeApp", "create_app"]
