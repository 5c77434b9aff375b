"""The Open Inference Protocol codec (:mod:`zoo.serve.protocol`) on requests built by hand:
the binary tensor extension's offsets, each limit at its edge, and the exact error lines."""

from __future__ import annotations

import base64
import struct
from typing import Any

import numpy as np
import orjson
import pytest
from pydantic import TypeAdapter, ValidationError

from zoo.serve.protocol import (
    HEADER_LENGTH,
    MAX_DIMS,
    InferenceRequest,
    Output,
    ProtocolError,
    RequestInput,
    decode_bytes,
    decode_numbers,
    encode_response,
    parse_request,
    validation_message,
)


def tensor(name: str, shape: list[int], datatype: str = "FP32", **fields: Any) -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": datatype, **fields}


def binary_body(inputs: list[dict[str, Any]], blobs: list[bytes]) -> tuple[bytes, str]:
    header = orjson.dumps({"inputs": inputs})
    return header + b"".join(blobs), str(len(header))


def error(call: Any, *args: Any) -> str:
    with pytest.raises(ProtocolError) as caught:
        call(*args)
    assert caught.value.status == 400
    return caught.value.message


def test_a_parsed_request_holds_only_what_was_sent() -> None:
    sent: dict[str, Any] = {"inputs": [tensor("x", [1], data=[1.5])]}
    request, binary = parse_request(orjson.dumps(sent), None)
    assert request.model_dump(exclude_none=True) == sent and binary == {}
    assert request.id is None and request.parameters is None and request.outputs is None
    assert request.inputs[0].parameters is None
    sent["outputs"] = [{"name": "probabilities"}]
    request, _ = parse_request(orjson.dumps(sent), None)
    assert request.model_dump(exclude_none=True) == sent


def test_a_response_echoes_an_id_only_when_the_request_had_one() -> None:
    request, _ = parse_request(orjson.dumps({"inputs": [tensor("x", [1], data=[1])]}), None)
    out = Output("y", "FP32", (2,), np.array([0.25, 0.75], np.float32))
    body, headers = encode_response("Net", "1a2b", request.id, [out])
    assert orjson.loads(body) == {"model_name": "Net", "model_version": "1a2b", "outputs": [
        {"name": "y", "datatype": "FP32", "shape": [2], "data": [0.25, 0.75]}]}
    assert headers == {"content-type": "application/json"}
    body, _ = encode_response("Net", "1a2b", "req-7", [out])
    assert orjson.loads(body)["id"] == "req-7"


def test_three_inputs_in_binary_are_cut_at_their_own_offsets() -> None:
    a = np.arange(1, dtype="<f4").tobytes()
    b = np.arange(2, dtype="<f4").tobytes() + np.arange(2, 4, dtype="<f4").tobytes()
    c = np.array([7], "<i8").tobytes()
    inputs = [tensor("a", [1], parameters={"binary_data_size": 4}),
              tensor("b", [4], parameters={"binary_data_size": 16}),
              tensor("j", [2], data=[1, 2]),  # JSON data between binary ones
              tensor("c", [1], "INT64", parameters={"binary_data_size": 8})]
    body, length = binary_body(inputs, [a, b, c])
    request, binary = parse_request(body, length)
    assert sorted(binary) == [0, 1, 3]
    assert [bytes(binary[i]) for i in (0, 1, 3)] == [a, b, c]
    assert decode_numbers(request.inputs[1], binary[1]).tolist() == [0, 1, 2, 3]
    assert decode_numbers(request.inputs[3], binary[3]).tolist() == [7]


def test_a_binary_input_of_zero_bytes_is_an_empty_tensor() -> None:
    body, length = binary_body([tensor("x", [0, 3], parameters={"binary_data_size": 0})], [])
    request, binary = parse_request(body, length)
    assert decode_numbers(request.inputs[0], binary[0]).shape == (0, 3)


def test_the_header_length_may_be_the_whole_body_and_no_less_than_one_byte() -> None:
    body = orjson.dumps({"inputs": [tensor("x", [1], data=[3])]})
    request, binary = parse_request(body, str(len(body)))
    assert request.inputs[0].data == [3] and binary == {}
    # one byte of JSON is a JSON part too (here not an object)
    assert error(parse_request, b"7", "1") == (
        "the inference request is not a JSON object; accepted: "
        '{"inputs": [{"name", "shape", "datatype", "data"}], ...}')


@pytest.mark.parametrize("header", ["0", "-1", "abc", "31", ""])
def test_a_header_length_outside_the_body_is_refused(header: str) -> None:
    body = b'{"inputs": []}' + bytes(16)  # 30 bytes
    assert error(parse_request, body, header) == (
        f"{HEADER_LENGTH} is {header!r}, but the body has 30 bytes; accepted: the size of the "
        "JSON part, from 1 to the body's size")


@pytest.mark.parametrize("size", ["12", 1.5, True, -1, None])
def test_a_binary_data_size_that_is_not_a_count_is_refused(size: Any) -> None:
    inputs = [tensor("x", [3], parameters={"binary_data_size": size})]
    body, length = binary_body(inputs, [bytes(12)])
    if size is None:  # no size: the input has no binary data, so 12 bytes are left over
        assert error(parse_request, body, length) == (
            "12 bytes follow the JSON part that no input's binary_data_size accounts for; "
            "accepted: exactly the inputs' bytes")
        return
    assert error(parse_request, body, length) == (
        f"input 'x' has binary_data_size {size!r}; accepted: a byte count of 0 or more")


def test_truncated_binary_data_names_the_bytes_it_needed() -> None:
    inputs = [tensor("a", [1], parameters={"binary_data_size": 4}),
              tensor("b", [3], parameters={"binary_data_size": 12})]
    body, length = binary_body(inputs, [bytes(4), bytes(6)])
    assert error(parse_request, body, length) == (
        "the binary data is truncated: input 'b' needs bytes 4 to 16, but only 10 follow the "
        "JSON part")


def test_bytes_left_over_after_the_inputs_are_counted() -> None:
    inputs = [tensor("a", [1], parameters={"binary_data_size": 4}),
              tensor("b", [1], parameters={"binary_data_size": 4})]
    body, length = binary_body(inputs, [bytes(4), bytes(4), bytes(5)])
    assert error(parse_request, body, length) == (
        "5 bytes follow the JSON part that no input's binary_data_size accounts for; "
        "accepted: exactly the inputs' bytes")


@pytest.mark.parametrize(("shape", "ok"), [([], False), ([1] * MAX_DIMS, True),
                                           ([1] * (MAX_DIMS + 1), False), ([0], True),
                                           ([2, 0, 3], True), ([2, -1], False)])
def test_shapes_at_their_edges(shape: list[int], ok: bool) -> None:
    count = int(np.prod(shape)) if shape else 0
    request = RequestInput(name="x", shape=shape, datatype="FP32", data=[0.5] * count)
    if ok:
        assert decode_numbers(request, None).shape == tuple(shape)
    else:
        assert error(decode_numbers, request, None) == (
            f"input 'x' has shape {shape}; accepted: 1 to 8 sizes of 0 or more")
    assert MAX_DIMS == 8


def test_binary_numbers_of_the_wrong_size_name_the_size_needed() -> None:
    request = RequestInput(name="x", shape=[2, 3], datatype="FP64")
    assert error(decode_numbers, request, memoryview(bytes(40))) == (
        "input 'x' of shape [2, 3] and datatype FP64 needs 48 bytes, got 40")


def test_values_of_the_wrong_kind_are_shown_by_their_first_value() -> None:
    request = RequestInput(name="x", shape=[1, 2], datatype="FP32", data=[["a", "b"]])
    assert error(decode_numbers, request, None) == (
        "input 'x' holds 'U'-kind values (e.g. 'a'); accepted: FP32 numbers")
    long = "z" * 100
    request = RequestInput(name="x", shape=[1], datatype="INT32", data=[long])
    sample = f"e.g. {long!r}"[:60]
    assert error(decode_numbers, request, None) == (
        f"input 'x' holds 'U'-kind values ({sample}); accepted: INT32 numbers")
    assert len(sample) == 60


def elements(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


def test_binary_bytes_elements_including_empty_ones() -> None:
    request = RequestInput(name="img", shape=[3], datatype="BYTES")
    raw = elements(b"", b"abc", b"\x00\xff")
    assert decode_bytes(request, memoryview(raw)) == [b"", b"abc", b"\x00\xff"]
    assert decode_bytes(RequestInput(name="img", shape=[1], datatype="BYTES"),
                        memoryview(elements(b""))) == [b""]


def test_a_bytes_element_claiming_more_than_remains_is_refused() -> None:
    request = RequestInput(name="img", shape=[2], datatype="BYTES")
    raw = elements(b"abc") + struct.pack("<I", 10) + b"12345"
    assert error(decode_bytes, request, memoryview(raw)) == (
        "input 'img': BYTES element 1 claims 10 bytes but 5 remain")
    # exactly what remains is accepted
    raw = elements(b"abc") + struct.pack("<I", 5) + b"12345"
    assert decode_bytes(request, memoryview(raw)) == [b"abc", b"12345"]


def test_a_cut_off_length_prefix_is_refused() -> None:
    request = RequestInput(name="img", shape=[2], datatype="BYTES")
    assert error(decode_bytes, request, memoryview(elements(b"abc") + b"\x01\x00\x00")) == (
        "input 'img': BYTES element 1 is truncated (its 4-byte length is cut off)")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_json_bytes_nested_by_the_shape() -> None:
    request = RequestInput(name="img", shape=[1, 2], datatype="BYTES",
                           data=[[b64(b"one"), {"b64": b64(b"two")}]])
    assert decode_bytes(request, None) == [b"one", b"two"]
    request = RequestInput(name="img", shape=[1, 1], datatype="BYTES", data=[[b64(b"one")]])
    assert decode_bytes(request, None) == [b"one"]


@pytest.mark.parametrize("text", ["ab$d", "YWJj ZA==", "YW=JjZA=="])
def test_base64_with_characters_outside_its_alphabet_is_refused(text: str) -> None:
    request = RequestInput(name="img", shape=[1], datatype="BYTES", data=[text])
    assert error(decode_bytes, request, None) == (
        "input 'img': BYTES element 0 is not valid base64; accepted: base64 of the image file")


def test_validation_messages_show_the_first_three_problems_with_their_places() -> None:
    raw = {"inputs": [{"name": 1}, {"shape": "x"}], "id": 5}
    with pytest.raises(ValidationError) as caught:
        InferenceRequest.model_validate(raw)
    assert len(caught.value.errors()) > 3
    message = validation_message(caught.value, "the inference request")
    assert message.startswith("the inference request is malformed: ")
    problems = message.removeprefix("the inference request is malformed: ").split("; ")
    assert problems == ["id: input should be a valid string",
                        "inputs[0].name: input should be a valid string",
                        "inputs[0].shape: field required"]


def test_a_problem_of_the_whole_value_is_placed_at_the_root() -> None:
    with pytest.raises(ValidationError) as caught:
        TypeAdapter(int).validate_python("seven")
    assert validation_message(caught.value, "the count") == (
        "the count is malformed: (root): input should be a valid integer, unable to parse "
        "string as an integer")


def test_outputs_are_json_unless_asked_for_in_binary() -> None:
    out = Output("labels", "BYTES", (2,), [b"bird", b"plane"])
    assert out.binary is False and out.parameters == {}
    body, _ = encode_response("Net", "1", None, [out])
    assert orjson.loads(body)["outputs"][0]["data"] == ["bird", "plane"]
    binary = Output("labels", "BYTES", (2,), [b"bird", b"plane"], binary=True)
    body, headers = encode_response("Net", "1", None, [binary])
    split = int(headers[HEADER_LENGTH.lower()])
    assert orjson.loads(body[:split])["outputs"][0]["parameters"] == {"binary_data_size": 17}
    assert body[split:] == elements(b"bird", b"plane")
