"""The Open Inference Protocol (KServe V2) over REST: messages, and the JSON and binary codecs.

Requests are JSON (``application/json``), or JSON followed by raw tensor bytes: the
binary tensor data extension, where the ``Inference-Header-Content-Length`` header
gives the size of the JSON part and each input with a ``binary_data_size`` parameter
takes its bytes, in input order, from what follows. ``BYTES`` elements in binary
form are each a 4-byte little-endian length and the bytes; in JSON they are strings
(here: base64 strings, or ``{"b64": "..."}`` objects, since images are not text).

Responses mirror that: an output is sent in binary when the request asks for it
(``"binary_data": true`` on the output, or ``"binary_data_output": true`` on the
request, as ``tritonclient`` does), and the response then carries the header too.

Every mistake in a request is a :class:`ProtocolError`: an HTTP status (4xx for the
client's mistakes) and one sentence naming the bad value and what is accepted,
answered as ``{"error": "..."}``.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

#: The header of the binary tensor data extension: the size of the request's JSON part.
HEADER_LENGTH = "Inference-Header-Content-Length"

#: The protocol's fixed-size datatypes and their little-endian numpy dtypes.
NUMPY_DTYPES: dict[str, str] = {
    "BOOL": "?", "UINT8": "u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
    "INT8": "i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
    "FP16": "<f2", "FP32": "<f4", "FP64": "<f8",
}
#: Every datatype the protocol names.
DATATYPES = (*NUMPY_DTYPES, "BF16", "BYTES")
MAX_DIMS = 8


class ProtocolError(Exception):
    """A request the server cannot answer: an HTTP status and one sentence for ``{"error"}``."""

    def __init__(self, message: str, status: int = 400,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.headers = dict(headers or {})


# -- messages ------------------------------------------------------------------------------


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TensorMetadata(_Message):
    """One input or output of a model: name, datatype and shape (-1: any size)."""

    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(_Message):
    """``GET /v2/models/NAME[/versions/V]``."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadata(_Message):
    """``GET /v2``."""

    name: str
    version: str
    extensions: list[str]


class RequestInput(_Message):
    """One input tensor of an inference request."""

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: Any = None


class RequestOutput(_Message):
    """One output an inference request asks for, with its parameters."""

    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(_Message):
    """``POST /v2/models/NAME[/versions/V]/infer``: its JSON (or the JSON part)."""

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


@dataclass
class Output:
    """One output tensor of a response: numbers, or ``bytes`` elements for ``BYTES``."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray | list[bytes]
    binary: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)


# -- requests ------------------------------------------------------------------------------


def _loads(data: bytes | memoryview, what: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"{what} is not valid JSON ({exc}); accepted: the Open Inference "
                            "Protocol's JSON request") from None


def validation_message(exc: ValidationError, what: str) -> str:
    """pydantic's report as one sentence: the first problems with their places."""
    problems = []
    for err in exc.errors()[:3]:
        place = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
        place = place.lstrip(".") or "(root)"
        problems.append(f"{place}: {err['msg'].lower()}")
    return f"{what} is malformed: {'; '.join(problems)}"


def parse_request(body: bytes, header_length: str | None
                  ) -> tuple[InferenceRequest, dict[int, memoryview]]:
    """The request's JSON and, per input index, its binary data (binary tensor extension)."""
    if header_length is None:
        json_part, rest = memoryview(body), memoryview(b"")
    else:
        try:
            length = int(header_length)
        except ValueError:
            length = -1
        if not 0 < length <= len(body):
            raise ProtocolError(f"{HEADER_LENGTH} is {header_length!r}, but the body has "
                                f"{len(body)} bytes; accepted: the size of the JSON part, from 1 "
                                "to the body's size")
        view = memoryview(body)
        json_part, rest = view[:length], view[length:]
    raw = _loads(json_part, "the inference request")
    if not isinstance(raw, dict):
        raise ProtocolError("the inference request is not a JSON object; accepted: "
                            '{"inputs": [{"name", "shape", "datatype", "data"}], ...}')
    try:
        request = InferenceRequest.model_validate(raw)
    except ValidationError as exc:
        raise ProtocolError(validation_message(exc, "the inference request")) from None
    binary: dict[int, memoryview] = {}
    offset = 0
    for index, tensor in enumerate(request.inputs):
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is None:
            continue
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ProtocolError(f"input {tensor.name!r} has binary_data_size {size!r}; "
                                "accepted: a byte count of 0 or more")
        if tensor.data is not None:
            raise ProtocolError(f"input {tensor.name!r} has both JSON data and "
                                "binary_data_size; accepted: one of them")
        if offset + size > len(rest):
            raise ProtocolError(f"the binary data is truncated: input {tensor.name!r} needs "
                                f"bytes {offset} to {offset + size}, but only {len(rest)} follow "
                                "the JSON part")
        binary[index] = rest[offset:offset + size]
        offset += size
    if offset != len(rest):
        raise ProtocolError(f"{len(rest) - offset} bytes follow the JSON part that no input's "
                            "binary_data_size accounts for; accepted: exactly the inputs' bytes")
    return request, binary


def check_shape(tensor: RequestInput) -> int:
    """The number of elements of ``tensor``'s shape, or a ProtocolError."""
    shape = tensor.shape
    if not 1 <= len(shape) <= MAX_DIMS or any(d < 0 for d in shape):
        raise ProtocolError(f"input {tensor.name!r} has shape {shape}; accepted: 1 to "
                            f"{MAX_DIMS} sizes of 0 or more")
    return math.prod(shape)


def check_datatype(tensor: RequestInput, accepted: Sequence[str]) -> None:
    if tensor.datatype in accepted:
        return
    known = "" if tensor.datatype in DATATYPES else " (not a protocol datatype)"
    raise ProtocolError(f"input {tensor.name!r} has datatype {tensor.datatype!r}{known}; "
                        f"accepted: {' or '.join(accepted)}")


def decode_numbers(tensor: RequestInput, raw: memoryview | None) -> np.ndarray:
    """A fixed-size tensor (JSON numbers, flat or nested, or binary) as a numpy array."""
    count = check_shape(tensor)
    dtype = np.dtype(NUMPY_DTYPES[tensor.datatype])
    if raw is not None:
        if len(raw) != count * dtype.itemsize:
            raise ProtocolError(f"input {tensor.name!r} of shape {tensor.shape} and datatype "
                                f"{tensor.datatype} needs {count * dtype.itemsize} bytes, got "
                                f"{len(raw)}")
        return np.frombuffer(raw, dtype=dtype).reshape(tensor.shape)
    if tensor.data is None:
        raise ProtocolError(f"input {tensor.name!r} has no data; accepted: \"data\" or a "
                            "binary_data_size parameter")
    try:
        array = np.asarray(tensor.data)
    except (ValueError, TypeError):
        raise ProtocolError(f"input {tensor.name!r} has data of uneven nesting; accepted: "
                            "numbers, flat or nested by the shape") from None
    wanted = "b" if dtype.kind == "b" else ("iu" if dtype.kind in "iu" else "iuf")
    if array.size and array.dtype.kind not in wanted:
        raise ProtocolError(f"input {tensor.name!r} holds {array.dtype.kind!r}-kind values "
                            f"({_sample(tensor.data)}); accepted: {tensor.datatype} numbers")
    if array.size != count:
        raise ProtocolError(f"input {tensor.name!r} has {array.size} values for shape "
                            f"{tensor.shape} ({count} values)")
    with np.errstate(over="ignore", invalid="ignore"):
        return array.astype(dtype).reshape(tensor.shape)


def _sample(data: Any) -> str:
    while isinstance(data, list) and data:
        data = data[0]
    return f"e.g. {data!r}"[:60]


def decode_bytes(tensor: RequestInput, raw: memoryview | None) -> list[bytes]:
    """A ``BYTES`` tensor's elements: length-prefixed binary, or base64 strings in JSON."""
    count = check_shape(tensor)
    items: list[bytes] = []
    if raw is not None:
        offset = 0
        while offset < len(raw):
            if offset + 4 > len(raw):
                raise ProtocolError(f"input {tensor.name!r}: BYTES element {len(items)} is "
                                    "truncated (its 4-byte length is cut off)")
            (size,) = struct.unpack_from("<I", raw, offset)
            if offset + 4 + size > len(raw):
                raise ProtocolError(f"input {tensor.name!r}: BYTES element {len(items)} claims "
                                    f"{size} bytes but {len(raw) - offset - 4} remain")
            items.append(bytes(raw[offset + 4:offset + 4 + size]))
            offset += 4 + size
    else:
        data = tensor.data
        while isinstance(data, list) and len(data) == 1 and isinstance(data[0], list):
            data = data[0]
        if not isinstance(data, list):
            raise ProtocolError(f"input {tensor.name!r} has no list of BYTES data; accepted: "
                                'base64 strings or {"b64": "..."} objects')
        for index, item in enumerate(data):
            text = item.get("b64") if isinstance(item, dict) else item
            if not isinstance(text, str):
                raise ProtocolError(f"input {tensor.name!r}: BYTES element {index} is "
                                    f"{_sample(item)}; accepted: a base64 string or "
                                    '{"b64": "..."}')
            try:
                items.append(base64.b64decode(text, validate=True))
            except (binascii.Error, ValueError):
                raise ProtocolError(f"input {tensor.name!r}: BYTES element {index} is not "
                                    "valid base64; accepted: base64 of the image file") from None
    if len(items) != count:
        raise ProtocolError(f"input {tensor.name!r} has {len(items)} BYTES elements for shape "
                            f"{tensor.shape} ({count} elements)")
    return items


# -- responses -----------------------------------------------------------------------------


def serialize_bytes(items: Sequence[bytes]) -> bytes:
    """``BYTES`` elements in binary form: each a 4-byte little-endian length, then the bytes."""
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def encode_response(model_name: str, model_version: str, request_id: str | None,
                    outputs: Sequence[Output]) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers, binary outputs after the JSON part."""
    described: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for out in outputs:
        entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype,
                                 "shape": list(out.shape)}
        parameters = dict(out.parameters)
        if out.binary:
            blob = (serialize_bytes(out.data) if isinstance(out.data, list)
                    else np.ascontiguousarray(out.data).tobytes())
            parameters["binary_data_size"] = len(blob)
            blobs.append(blob)
        elif isinstance(out.data, list):
            entry["data"] = [item.decode("utf-8", "replace") for item in out.data]
        else:
            entry["data"] = np.ascontiguousarray(out.data).ravel()
        if parameters:
            entry["parameters"] = parameters
        described.append(entry)
    message: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        message["id"] = request_id
    message["outputs"] = described
    header = orjson.dumps(message, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, {"content-type": "application/json"}
    return b"".join([header, *blobs]), {"content-type": "application/octet-stream",
                                        HEADER_LENGTH.lower(): str(len(header))}


def error_body(message: str) -> bytes:
    """``{"error": message}`` as JSON bytes."""
    return orjson.dumps({"error": message})


__all__ = ["DATATYPES", "HEADER_LENGTH", "InferenceRequest", "ModelMetadata", "Output",
           "ProtocolError", "RequestInput", "RequestOutput", "ServerMetadata",
           "TensorMetadata", "check_datatype", "check_shape", "decode_bytes", "decode_numbers",
           "encode_response", "error_body", "parse_request", "serialize_bytes",
           "validation_message"]
