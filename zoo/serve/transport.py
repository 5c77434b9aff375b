"""HTTP plumbing on plain ASGI: bounded bodies, image uploads, responses, the access log.

The inference endpoint runs on these directly (no framework layers on the hot
path); the other endpoints go through Starlette and use the same functions.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncGenerator, Mapping
from typing import Any

import orjson
from starlette.datastructures import Headers
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from zoo.serve.protocol import ProtocolError, error_body

access_log = logging.getLogger("zoo.serve.access")

JSON_TYPE = b"application/json"
#: How far past the body limit a body is still read (and dropped) so that the client
#: reads its 413 instead of a reset connection; past it the server stops reading.
DRAIN_FACTOR = 16


class Disconnected(Exception):
    """The client went away before its request was read."""


def header_map(scope: Scope) -> dict[str, str]:
    """The request's headers by lower-case name (the last of repeated ones)."""
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}


async def read_body(receive: Receive, headers: Mapping[str, str], limit: int) -> bytes:
    """The request body, at most ``limit`` bytes (a 413 ProtocolError beyond)."""
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise ProtocolError(f"Content-Encoding {encoding!r} is not accepted; accepted: an "
                            "uncompressed body (identity)", 415)
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > DRAIN_FACTOR * limit:
        raise ProtocolError(f"the body has {declared} bytes; accepted: at most {limit} bytes "
                            "(--max-body-bytes)", 413)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > DRAIN_FACTOR * limit:
            break
        if not message.get("more_body", False):
            break
    if size > limit:
        said = str(size) if size <= DRAIN_FACTOR * limit else f"over {DRAIN_FACTOR * limit}"
        raise ProtocolError(f"the body has {said} bytes; accepted: at most {limit} bytes "
                            "(--max-body-bytes)", 413)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def is_upload(content_type: str) -> bool:
    """Whether a body of this Content-Type is an image upload (not a protocol request)."""
    return content_type.startswith(("image/", "multipart/form-data"))


async def read_image(headers: Mapping[str, str], body: bytes, limit: int) -> bytes:
    """The one image of a raw ``image/*`` body, or of a multipart form's (first) file part."""
    content_type = headers.get("content-type", "")
    if content_type.startswith("image/") or content_type == "application/octet-stream":
        return body
    if not content_type.startswith("multipart/form-data"):
        raise ProtocolError(f"Content-Type {content_type or '(none)'!r} is not an image "
                            "upload; accepted: image/* or multipart/form-data", 415)

    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    try:
        form = await MultiPartParser(Headers(headers={"content-type": content_type}), stream(),
                                     max_files=1, max_fields=8, max_part_size=limit).parse()
    except MultiPartException as exc:
        raise ProtocolError(f"the multipart form is malformed ({exc.message}); accepted: one "
                            "file part holding an image") from None
    files = [v for _, v in form.multi_items() if not isinstance(v, str)]
    if not files:
        raise ProtocolError("the multipart form has no file part; accepted: one file part "
                            "holding an image (curl -F image=@bird.jpg)")
    data = await files[0].read()
    await form.close()
    return data


async def send_bytes(send: Send, status: int, body: bytes,
                     headers: Mapping[str, str] | None = None,
                     content_type: bytes = JSON_TYPE) -> None:
    """One complete response."""
    raw = [(b"content-type", content_type)]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1"))
            for k, v in (headers or {}).items() if k.lower() != "content-type"]
    await send_raw(send, status, body, raw)


async def send_raw(send: Send, status: int, body: bytes,
                   headers: list[tuple[bytes, bytes]]) -> None:
    """One complete response with ready-made (lower-case) headers: the hot paths'."""
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, exc: ProtocolError) -> None:
    await send_bytes(send, exc.status, error_body(exc.message), exc.headers)


class AccessLog:
    """ASGI middleware: one JSON line per HTTP request on the ``zoo.serve.access`` logger."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.pid = os.getpid()  # which worker answered (zoo serve --workers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not access_log.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0
        size = 0

        async def sending(message: Message) -> None:
            nonlocal status, size
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                size += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            client = scope.get("client")
            entry: dict[str, Any] = {
                "ts": round(time.time(), 6), "pid": self.pid,
                "client": client[0] if client else None,
                "method": scope["method"], "path": scope["path"], "status": status,
                "bytes": size, "ms": round((time.perf_counter() - start) * 1e3, 3)}
            access_log.info(orjson.dumps(entry).decode())


__all__ = ["AccessLog", "Disconnected", "header_map", "is_upload", "read_body", "read_image",
           "send_bytes", "send_error", "send_raw"]
