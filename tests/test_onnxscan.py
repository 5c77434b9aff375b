"""zoo.deploy.onnxscan against models built with the onnx package: an external tensor is
found wherever ONNX can hold one, and malformed varints are refused."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import (
    AttributeProto,
    FunctionProto,
    GraphProto,
    ModelProto,
    TensorProto,
    helper,
    numpy_helper,
)

from zoo.deploy.onnxscan import OnnxScanError, external_data_files


def _external(location: str | None, name: str = "t") -> TensorProto:
    tensor = numpy_helper.from_array(np.zeros(2, np.float32), name)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    if location is not None:
        entry = tensor.external_data.add()
        entry.key, entry.value = "location", location
        other = tensor.external_data.add()
        other.key, other.value = "offset", "0"
    return tensor


def _sparse(values: str, indices: str) -> object:
    return helper.make_sparse_tensor(_external(values, "v"), _external(indices, "i"), [4])


def _graph(initializer: str, name: str = "g") -> GraphProto:
    return helper.make_graph([], name, [], [], initializer=[_external(initializer)])


def _everywhere() -> ModelProto:
    node = helper.make_node("Custom", [], ["y"], axis=-1)  # a 10-byte varint
    attributes = [
        helper.make_attribute("t", _external("attr_t.bin")),
        helper.make_attribute("ts", [_external("attr_ts.bin")]),
        helper.make_attribute("g", _graph("attr_g.bin")),
        helper.make_attribute("gs", [_graph("attr_gs.bin")]),
        helper.make_attribute("st", _sparse("attr_st_values.bin", "attr_st_indices.bin")),
    ]
    sparse_list = AttributeProto(name="sts", type=AttributeProto.SPARSE_TENSORS)
    sparse_list.sparse_tensors.append(_sparse("attr_sts_values.bin", "attr_sts_indices.bin"))
    attributes.append(sparse_list)
    node.attribute.extend(attributes)
    graph = helper.make_graph([node], "main", [], [], initializer=[_external("init.bin")])
    graph.sparse_initializer.append(_sparse("sparse_values.bin", "sparse_indices.bin"))
    function = FunctionProto(name="f", domain="custom")
    function_node = helper.make_node("Constant", [], ["c"])
    function_node.attribute.append(helper.make_attribute("value", _external("function.bin")))
    function.node.append(function_node)
    model = helper.make_model(graph)
    model.functions.append(function)
    return model


def test_every_place_an_onnx_model_can_hold_an_external_tensor() -> None:
    found = external_data_files(_everywhere().SerializeToString())
    assert sorted(found) == sorted([
        "init.bin", "sparse_values.bin", "sparse_indices.bin", "attr_t.bin", "attr_ts.bin",
        "attr_g.bin", "attr_gs.bin", "attr_st_values.bin", "attr_st_indices.bin",
        "attr_sts_values.bin", "attr_sts_indices.bin", "function.bin"])


def test_an_external_tensor_without_a_location_is_still_reported() -> None:
    graph = helper.make_graph([], "g", [], [], initializer=[_external(None)])
    assert external_data_files(helper.make_model(graph).SerializeToString()) == ["?"]


def test_unknown_fixed_width_fields_are_skipped() -> None:
    model = _everywhere().SerializeToString()
    fixed64 = b"\x99\x06" + bytes(range(8))  # field 99, wire type 1: 8 bytes
    fixed32 = b"\x9d\x06" + bytes(range(4))  # field 99, wire type 5: 4 bytes
    assert sorted(external_data_files(fixed64 + fixed32 + model)) == \
        sorted(external_data_files(model))


def test_varints_of_ten_bytes_are_read_and_longer_ones_refused() -> None:
    assert external_data_files(b"\x08" + b"\xff" * 9 + b"\x01") == []
    with pytest.raises(OnnxScanError, match="truncated or overlong varint"):
        external_data_files(b"\x08" + b"\x80" * 10 + b"\x01")
