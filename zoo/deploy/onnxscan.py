"""Which files a serialized ONNX model would read besides itself (no onnx or torch import).

An ONNX tensor may keep its data in an external file (``data_location =
EXTERNAL`` with a ``location``), which onnxruntime then opens relative to the
model, or, for a model loaded from bytes, to the working directory. The
deployed predictor must not import the ``onnx`` package, so this module reads
just enough of the protobuf wire format to find those tensors: every tensor of
the graph, of nested graphs in node attributes, of sparse initializers and of
model-local functions.
"""

from __future__ import annotations

from collections.abc import Iterator

#: For each message kind walked: field number -> kind of the sub-message it holds
#: (onnx.proto: ModelProto, GraphProto, NodeProto, AttributeProto, SparseTensorProto,
#: FunctionProto; TensorProto is a leaf).
_SCHEMA: dict[str, dict[int, str]] = {
    "model": {7: "graph", 25: "function"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse",
                  23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "function": {7: "node"},
}
_TENSOR_EXTERNAL_DATA = 13
_TENSOR_DATA_LOCATION = 14
_EXTERNAL = 1


class OnnxScanError(ValueError):
    """Bytes that are not a well-formed protobuf message."""


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise OnnxScanError("truncated or overlong varint")
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7


def _fields(buf: memoryview) -> Iterator[tuple[int, int | memoryview]]:
    """(field number, value) of one message: ints for varints, views for length-delimited."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
            yield field, value
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            length, i = _varint(buf, i)
            if i + length > n:
                raise OnnxScanError("a field runs past the end of its message")
            yield field, buf[i:i + length]
            i += length
        else:
            raise OnnxScanError(f"unsupported wire type {wire}")
        if i > n:
            raise OnnxScanError("a field runs past the end of its message")


def _external_location(tensor: memoryview) -> str | None:
    external = False
    location = "?"
    for field, value in _fields(tensor):
        if field == _TENSOR_DATA_LOCATION and value == _EXTERNAL:
            external = True
        elif field == _TENSOR_EXTERNAL_DATA and isinstance(value, memoryview):
            entry = {f: v for f, v in _fields(value) if isinstance(v, memoryview)}
            if bytes(entry.get(1, b"")) == b"location":
                location = bytes(entry.get(2, b"")).decode("utf-8", "replace")
    return location if external else None


def external_data_files(model: bytes) -> list[str]:
    """The ``location`` of every tensor of ``model`` whose data lives in another file.

    Raises :class:`OnnxScanError` for bytes that are not a protobuf message.
    """
    found: list[str] = []
    stack: list[tuple[str, memoryview]] = [("model", memoryview(model))]
    while stack:  # iterative: a deeply nested graph cannot exhaust the Python stack
        kind, buf = stack.pop()
        if kind == "tensor":
            location = _external_location(buf)
            if location is not None:
                found.append(location)
            continue
        children = _SCHEMA[kind]
        for field, value in _fields(buf):
            child = children.get(field)
            if child is not None and isinstance(value, memoryview):
                stack.append((child, value))
    return found


__all__ = ["OnnxScanError", "external_data_files"]
