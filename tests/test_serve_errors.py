"""Bad input never hurts ``zoo serve``: each malformed request is a 4xx with a one-sentence
``{"error": ...}``, the server keeps serving, and a good request right after is answered."""

from __future__ import annotations

import base64
import json
import logging
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from serve_support import (
    Running,
    binary_request,
    bytes_tensor,
    call,
    encoded,
    pixels,
    thread_server,
)

from zoo.deploy import OnnxClassifier
from zoo.serve.models import ServeSettings

MAX_BODY = 1 << 20


def png_header(width: int, height: int, data: bytes = b"") -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (a decompression bomb's header)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(data))
            + chunk(b"IEND", b""))


def tensor(shape: Any = (1, 3, 32, 32), datatype: str = "FP32", data: Any = "zeros",
           name: str = "input", **extra: Any) -> dict[str, Any]:
    if isinstance(data, str) and data == "zeros":
        data = [0.0] * int(np.prod(shape))
    return {"name": name, "shape": list(shape) if isinstance(shape, tuple) else shape,
            "datatype": datatype, "data": data, **extra}


def infer(*inputs: dict[str, Any], **request: Any) -> tuple[bytes, dict[str, str]]:
    return json.dumps({"inputs": list(inputs), **request}).encode(), {
        "Content-Type": "application/json"}


def fp32_binary(shape: tuple[int, ...], raw: bytes, size: int | None = None
                ) -> tuple[bytes, dict[str, str]]:
    return binary_request({"inputs": [{"name": "input", "shape": list(shape), "datatype": "FP32",
                                       "parameters": {"binary_data_size": len(raw) if size is None
                                                      else size}}]}, raw)


def bytes_binary(raw: bytes, shape: tuple[int, ...] = (1,)) -> tuple[bytes, dict[str, str]]:
    return binary_request({"inputs": [{"name": "input", "shape": list(shape), "datatype": "BYTES",
                                       "parameters": {"binary_data_size": len(raw)}}]}, raw)


def multipart(parts: bytes, boundary: str = "b0und") -> tuple[bytes, dict[str, str]]:
    return parts, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


IMAGE = encoded(pixels(0))
TEXT_PART = (b"--b0und\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n"
             b"--b0und--\r\n")
# path, body and headers (or a method), and the expected status
CASES: dict[str, tuple[str, Any, int]] = {
    "invalid JSON": ("infer", (b'{"inputs": [', {}), 400),
    "JSON array": ("infer", (b"[]", {}), 400),
    "empty body": ("infer", (b"", {}), 400),
    "no inputs": ("infer", (b"{}", {}), 400),
    "empty inputs": ("infer", infer(), 400),
    "no datatype": ("infer", (json.dumps({"inputs": [{"name": "input", "shape": [1]}]}).encode(),
                              {}), 400),
    "unknown request key": ("infer", infer(tensor(), foo=1), 400),
    "wrong input name": ("infer", infer(tensor(name="image")), 400),
    "two inputs": ("infer", infer(tensor(), tensor()), 400),
    "wrong datatype": ("infer", infer(tensor(datatype="INT64")), 400),
    "unknown datatype": ("infer", infer(tensor(datatype="FLOAT")), 400),
    "wrong shape": ("infer", infer(tensor(shape=(1, 3, 16, 16))), 400),
    "3-D shape": ("infer", infer(tensor(shape=(3, 32, 32))), 400),
    "negative size": ("infer", infer(tensor(shape=[1, -3, 32, 32], data=[0.0])), 400),
    "shape not a list": ("infer", infer(tensor(shape="1x3x32x32", data=[0.0])), 400),
    "too few values": ("infer", infer(tensor(data=[0.5] * 10)), 400),
    "strings as numbers": ("infer", infer(tensor(data=["0.5"] * 3072)), 400),
    "booleans as numbers": ("infer", infer(tensor(data=[True] * 3072)), 400),
    "ragged nesting": ("infer", infer(tensor(data=[[0.0] * 3, [0.0]])), 400),
    "non-finite value": ("infer", infer(tensor(data=[1e39] * 3072)), 400),
    "no data": ("infer", infer(tensor(data=None)), 400),
    "batch over the limit": ("infer", fp32_binary((65, 3, 32, 32), bytes(65 * 12288)), 400),
    "empty batch": ("infer", infer(tensor(shape=(0, 3, 32, 32), data=[])), 400),
    "header length not a number": ("infer", (b"{}", {"Inference-Header-Content-Length": "x"}),
                                   400),
    "header length past the body": ("infer", (b"{}", {"Inference-Header-Content-Length": "99"}),
                                    400),
    "truncated binary tensor": ("infer", fp32_binary((1, 3, 32, 32), bytes(100), 12288), 400),
    "bytes after the tensors": ("infer", fp32_binary((1, 3, 32, 32), bytes(12300), 12288), 400),
    "negative binary size": ("infer", fp32_binary((1, 3, 32, 32), b"", -4), 400),
    "binary size of the wrong shape": ("infer", fp32_binary((1, 3, 32, 32), bytes(400)), 400),
    "BYTES length cut off": ("infer", bytes_binary(b"\x05\x00"), 400),
    "BYTES element overruns": ("infer", bytes_binary(b"\xff\x00\x00\x00abc"), 400),
    "BYTES count differs from shape": ("infer", bytes_binary(bytes_tensor([IMAGE]), (2,)), 400),
    "BYTES of 2-D shape": ("infer", bytes_binary(bytes_tensor([IMAGE]), (1, 2)), 400),
    "not an image": ("infer", bytes_binary(bytes_tensor([b"hello, world"])), 400),
    "truncated image": ("infer", bytes_binary(bytes_tensor([IMAGE[:60]])), 400),
    "invalid base64": ("infer", infer(tensor(shape=(1,), datatype="BYTES", data=["%%%"])), 400),
    "BYTES JSON number": ("infer", infer(tensor(shape=(1,), datatype="BYTES", data=[7])), 400),
    "decompression bomb": ("infer", bytes_binary(bytes_tensor([png_header(10_000, 10_000)])),
                           413),
    "huge image header": ("infer", bytes_binary(bytes_tensor([png_header(100_000, 100_000)])),
                          400),
    "zero-size image": ("infer", bytes_binary(bytes_tensor([png_header(0, 0)])), 400),
    "body over the limit": ("infer", (bytes(MAX_BODY + 10), {"Content-Type": "image/png"}), 413),
    "compressed body": ("infer", (zlib.compress(b"{}"), {"Content-Encoding": "deflate"}), 415),
    "unknown output": ("infer", infer(tensor(), outputs=[{"name": "scores"}]), 400),
    "classification of 0": ("infer", infer(tensor(), outputs=[
        {"name": "logits", "parameters": {"classification": 0}}]), 400),
    "classification of labels": ("infer", infer(tensor(), outputs=[
        {"name": "top_labels", "parameters": {"classification": 1}}]), 400),
    "top_k too large": ("infer", infer(tensor(), parameters={"top_k": 99}), 400),
    "binary_data not a boolean": ("infer", infer(tensor(), outputs=[
        {"name": "logits", "parameters": {"binary_data": "yes"}}]), 400),
    "multipart without a file": ("infer", multipart(TEXT_PART), 400),
    "malformed multipart": ("infer", multipart(b"--nope\r\n\r\n", boundary=""), 400),
    "classify plain text": ("classify", (b"hello", {"Content-Type": "text/plain"}), 415),
    "classify top_k not a number": ("classify?top_k=abc", (IMAGE, {"Content-Type": "image/png"}),
                                    400),
    "unknown model": ("/v2/models/Nope/infer", infer(tensor()), 404),
    "unknown version": ("/v2/models/Net/versions/1/infer", infer(tensor()), 404),
    "GET on infer": ("/v2/models/Net/infer", "GET", 405),
    "unknown endpoint": ("/v3/models", "GET", 404),
    "POST on metadata": ("/v2/models/Net", "POST", 405),
}


@pytest.fixture(scope="module")
def server() -> Iterator[Running]:
    settings = ServeSettings(max_body_bytes=MAX_BODY, max_loop_lag_s=0, max_queue_wait_s=0)
    with thread_server(["Net"], settings) as running:
        yield running


@pytest.fixture(scope="module")
def good() -> tuple[tuple[bytes, dict[str, str]], np.ndarray]:
    """A good request (a preprocessed image) and the probabilities OnnxClassifier gives it."""
    clf = OnnxClassifier("Net")
    image = pixels(7)
    return (infer(tensor(data=clf.preprocess([image]).ravel().tolist()),
                  outputs=[{"name": "probabilities"}]), clf.probabilities([image])[0])


def test_there_are_at_least_30_kinds_of_bad_request() -> None:
    assert len(CASES) >= 30


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("case", list(CASES))
def test_bad_request_is_a_4xx_and_the_server_keeps_serving(
        server: Running, good: tuple[tuple[bytes, dict[str, str]], np.ndarray], case: str,
        caplog: pytest.LogCaptureFixture) -> None:
    path, request, status = CASES[case]
    if not path.startswith("/"):
        path = f"/v2/models/Net/{path}" if path == "infer" else f"/zoo/models/Net/{path}"
    url = server.url.rstrip("/") + path
    with caplog.at_level(logging.ERROR):
        if isinstance(request, str):
            reply = call(url, request)
        else:
            body, headers = request
            reply = call(url, "POST", body, headers)
    assert reply.status == status, (case, reply.body)
    assert reply.headers["content-type"] == "application/json"
    error = reply.json()
    assert list(error) == ["error"] and isinstance(error["error"], str), error
    message = error["error"]
    assert "\n" not in message and "Traceback" not in message and len(message) < 400
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    # the server is still up, and answers a good request correctly
    (body, headers), expected = good
    answer = call(f"{server.url}v2/models/Net/infer", "POST", body, headers)
    assert answer.status == 200, answer.body
    probs = np.array(answer.json()["outputs"][0]["data"], dtype=np.float32)
    np.testing.assert_allclose(probs, expected, atol=1e-6)


def test_error_bodies_name_the_bad_value(server: Running) -> None:
    reply = call(f"{server.url}v2/models/Net/infer", "POST",
                 *infer(tensor(datatype="INT64")))
    assert reply.json()["error"] == ("input 'input' has datatype 'INT64'; accepted: FP32 or "
                                     "BYTES")
    reply = call(f"{server.url}v2/models/Nope/infer", "POST", *infer(tensor()))
    assert reply.json()["error"] == "no model 'Nope'; accepted: Net"
    b64 = base64.b64encode(b"not an image").decode()
    reply = call(f"{server.url}v2/models/Net/infer", "POST",
                 *infer(tensor(shape=(1,), datatype="BYTES", data=[{"b64": b64}])))
    assert "is not an image file of a known format; accepted: JPEG, PNG" in reply.json()["error"]
