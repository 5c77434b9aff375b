"""The server's JSON responses and Starlette's exception handlers: every error a client sees
is ``{"error": "<one sentence>"}`` (:func:`zoo.serve.protocol.error_body`), with the status
:class:`~zoo.serve.protocol.ProtocolError` carries, Starlette's 404 and 405 reworded to name
what is accepted, and an unexpected failure a 500 that names no internals (the traceback
goes to the log)."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from zoo.serve.protocol import ProtocolError, error_body

log = logging.getLogger("zoo.serve")

JSON = {"content-type": "application/json"}


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None
                  ) -> Response:
    return Response(orjson.dumps(data), status, {**JSON, **(headers or {})})


def error_response(exc: ProtocolError) -> Response:
    return Response(error_body(exc.message), exc.status, {**JSON, **exc.headers})


async def protocol_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProtocolError)
    return error_response(exc)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = (f"no endpoint {request.url.path!r}; accepted: /v2, /v2/health/live, "
                   "/v2/health/ready, /v2/models/NAME[/versions/V][/ready|/infer], "
                   "/zoo/models, /metrics, /")
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow")  # Starlette's order varies by run
        message = (f"{request.method} is not accepted on {request.url.path!r}; accepted: "
                   f"{', '.join(sorted(allowed.split(', '))) if allowed else 'another method'}")
    else:
        message = str(exc.detail)
    return Response(error_body(message), exc.status_code, {**JSON, **(exc.headers or {})})


async def server_error(request: Request, exc: Exception) -> Response:
    log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return Response(error_body(f"internal server error ({type(exc).__name__}); the "
                               "server logged it"), 500, JSON)


#: Starlette's ``exception_handlers`` for the routed endpoints
EXCEPTION_HANDLERS = {ProtocolError: protocol_error, HTTPException: http_error,
                      Exception: server_error}

__all__ = ["EXCEPTION_HANDLERS", "JSON", "error_response", "json_response"]
