"""Reading request bodies and uploads (:mod:`zoo.serve.transport`) from ASGI messages
built by hand: the size limit at its edge, in one message or many, the drain bound, and
the image of an upload."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from zoo.serve.protocol import ProtocolError
from zoo.serve.transport import DRAIN_FACTOR, Disconnected, read_body, read_image

LIMIT = 100


def receiver(*chunks: bytes) -> Any:
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
                for i, c in enumerate(chunks)]
    pulled: list[int] = []

    async def receive() -> dict[str, Any]:
        pulled.append(1)
        return messages[len(pulled) - 1]

    receive.pulled = pulled  # type: ignore[attr-defined]
    return receive


def body(*chunks: bytes, headers: dict[str, str] | None = None) -> bytes:
    return asyncio.run(read_body(receiver(*chunks), headers or {}, LIMIT))


def refused(call: Any, message: str, status: int) -> None:
    with pytest.raises(ProtocolError) as caught:
        asyncio.run(call)
    assert (caught.value.message, caught.value.status) == (message, status)


def test_a_body_of_exactly_the_limit_is_read_whole_in_one_message_or_many() -> None:
    assert body(b"x" * LIMIT) == b"x" * LIMIT
    assert body(b"a" * 40, b"b" * 60) == b"a" * 40 + b"b" * 60
    assert body(b"") == b""
    assert body(b"a", b"", b"b") == b"ab"


@pytest.mark.parametrize("chunks", [(b"x" * (LIMIT + 1),), (b"x" * 50, b"y" * 51)])
def test_one_byte_more_is_a_413_naming_its_size(chunks: tuple[bytes, ...]) -> None:
    refused(read_body(receiver(*chunks), {}, LIMIT),
            "the body has 101 bytes; accepted: at most 100 bytes (--max-body-bytes)", 413)


def test_an_endless_body_is_drained_up_to_a_bound_then_refused() -> None:
    chunk = b"z" * LIMIT
    receive = receiver(*([chunk] * (DRAIN_FACTOR + 5)))
    refused(read_body(receive, {}, LIMIT),
            f"the body has over {DRAIN_FACTOR * LIMIT} bytes; accepted: at most 100 bytes "
            "(--max-body-bytes)", 413)
    assert len(receive.pulled) == DRAIN_FACTOR + 1  # read no further than the bound
    exactly = receiver(*([chunk] * DRAIN_FACTOR))
    refused(read_body(exactly, {}, LIMIT),
            f"the body has {DRAIN_FACTOR * LIMIT} bytes; accepted: at most 100 bytes "
            "(--max-body-bytes)", 413)
    assert DRAIN_FACTOR == 16


def test_a_declared_length_past_the_bound_is_refused_before_reading() -> None:
    receive = receiver(b"x")
    refused(read_body(receive, {"content-length": str(DRAIN_FACTOR * LIMIT + 1)}, LIMIT),
            f"the body has {DRAIN_FACTOR * LIMIT + 1} bytes; accepted: at most 100 bytes "
            "(--max-body-bytes)", 413)
    assert receive.pulled == []
    # at the bound it is read (and refused for its real size only if it is over the limit)
    assert asyncio.run(read_body(receiver(b"ok"), {"content-length": str(DRAIN_FACTOR * LIMIT)},
                                 LIMIT)) == b"ok"


def test_a_compressed_body_and_a_client_that_left() -> None:
    refused(read_body(receiver(b"x"), {"content-encoding": "gzip"}, LIMIT),
            "Content-Encoding 'gzip' is not accepted; accepted: an uncompressed body "
            "(identity)", 415)
    assert body(b"x", headers={"content-encoding": " Identity "}) == b"x"
    with pytest.raises(Disconnected):
        asyncio.run(read_body(_left(), {}, LIMIT))


def _left() -> Any:
    """A client that sent part of its body, then went away."""
    messages: Any = iter([{"type": "http.request", "body": b"part", "more_body": True},
                     {"type": "http.disconnect"}])

    async def receive() -> dict[str, Any]:
        return next(messages)
    return receive


def test_uploads_by_content_type() -> None:
    assert asyncio.run(read_image({"content-type": "image/png"}, b"PNG", LIMIT)) == b"PNG"
    assert asyncio.run(read_image({"content-type": "application/octet-stream"}, b"B",
                                  LIMIT)) == b"B"
    refused(read_image({}, b"x", LIMIT), "Content-Type '(none)' is not an image upload; "
            "accepted: image/* or multipart/form-data", 415)
    refused(read_image({"content-type": "text/plain"}, b"x", LIMIT),
            "Content-Type 'text/plain' is not an image upload; accepted: image/* or "
            "multipart/form-data", 415)


def form(*parts: tuple[str, str | None, bytes]) -> tuple[dict[str, str], bytes]:
    boundary = "zooboundary"
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (
            f'; filename="{filename}"' if filename else "")
        out += (f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n").encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return {"content-type": f"multipart/form-data; boundary={boundary}"}, out


def test_a_form_gives_its_file_part() -> None:
    headers, data = form(("note", None, b"hello"), ("image", "a.png", b"IMAGEBYTES"))
    assert asyncio.run(read_image(headers, data, LIMIT)) == b"IMAGEBYTES"


def test_a_form_of_two_files_or_too_many_fields_is_malformed() -> None:
    headers, data = form(("a", "a.png", b"1"), ("b", "b.png", b"2"))
    with pytest.raises(ProtocolError, match=r"^the multipart form is malformed \("):
        asyncio.run(read_image(headers, data, LIMIT))
    fields = [(f"f{i}", None, b"v") for i in range(9)]
    headers, data = form(*fields, ("image", "a.png", b"1"))
    with pytest.raises(ProtocolError, match=r"^the multipart form is malformed \("):
        asyncio.run(read_image(headers, data, LIMIT))
    headers, data = form(*fields[:8], ("image", "a.png", b"1"))
    assert asyncio.run(read_image(headers, data, LIMIT)) == b"1"


def test_a_message_that_does_not_say_more_body_ends_the_body() -> None:
    messages = iter([{"type": "http.request", "body": b"all"}])

    async def receive() -> dict[str, Any]:
        return next(messages)

    assert asyncio.run(read_body(receive, {}, LIMIT)) == b"all"


def test_the_access_log_names_the_process_that_answered(
        caplog: pytest.LogCaptureFixture) -> None:
    import logging
    import os

    import orjson

    from zoo.serve.transport import AccessLog

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b"abc"})

    async def send(message: Any) -> None:
        return None

    scope = {"type": "http", "method": "GET", "path": "/v2", "client": ("127.0.0.1", 5)}
    logger = logging.getLogger("zoo.serve.access")
    with caplog.at_level(logging.INFO, logger="zoo.serve.access"):
        propagate, logger.propagate = logger.propagate, True
        try:
            asyncio.run(AccessLog(app)(scope, receiver(b""), send))
        finally:
            logger.propagate = propagate
    (entry,) = [orjson.loads(r.getMessage()) for r in caplog.records
                if r.name == "zoo.serve.access"]
    assert (entry["pid"], entry["client"], entry["method"], entry["path"], entry["status"],
            entry["bytes"]) == (os.getpid(), "127.0.0.1", "GET", "/v2", 204, 3)
