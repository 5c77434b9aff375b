"""The model.pt2 archive checks one by one: members, payload configurations, the program's
targets, keys and symbolic expressions, each accepted where torch writes it and refused
otherwise (test_security_pickle.py plants the payloads that would run; this file walks
the edges of each check)."""

from __future__ import annotations

import io
import logging
import zipfile
from typing import Any

import pytest
import torch
from export_helpers import make_run
from test_security_pickle import _edit_json, _first_node

from zoo.errors import BundleError
from zoo.exporter import pt2
from zoo.exporter.write import export

_WEIGHTS = "data/weights/model_weights_config.json"
_PROGRAM = "models/model.json"


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    root = tmp_path_factory.mktemp("pt2-archive")
    make_run(root / "run", "Net")
    export(root / "run", out=root / "bundle", formats="pt2")
    return (root / "bundle" / pt2.PT2_FILE).read_bytes()


def _refused(data: bytes) -> str:
    with pytest.raises(BundleError) as info:
        pt2.check_pt2(data, "b/model.pt2")
    return str(info.value)


def _zip(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, content in members:
            zf.writestr(zipfile.ZipInfo(name), content)
    return out.getvalue()


def _members(data: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return [(info.filename, zf.read(info)) for info in zf.infolist()]


def test_the_archive_torch_writes_passes(archive: bytes) -> None:
    pt2.check_pt2(archive, "b/model.pt2")


def test_the_member_count_is_bounded(archive: bytes) -> None:
    assert "it holds 0 members (accepted: 1 to 65536)" in _refused(_zip([]))
    filler = [(f"m/data/x{i}", b"") for i in range(pt2.MAX_PT2_MEMBERS - 1)]
    at_limit = _refused(_zip([("m/archive_format", b"pt2"), *filler]))
    assert "members (accepted" not in at_limit  # refused later, for what the members are
    over = _refused(_zip([("m/archive_format", b"pt2"), *filler, ("m/data/last", b"")]))
    assert f"it holds {pt2.MAX_PT2_MEMBERS + 1} members (accepted: 1 to 65536)" in over


def test_an_archive_of_one_member_is_refused_in_one_line() -> None:
    assert _refused(_zip([("m/archive_format", b"pt2")])).startswith(
        "refusing b/model.pt2: torch cannot read it (")


def test_every_member_is_in_the_one_folder(archive: bytes) -> None:
    assert "member 'other/x' is outside the archive's one folder" in _refused(
        _zip([*_members(archive), ("other/x", b"")]))
    assert "member 'top.pkl' is outside the archive's one folder" in _refused(
        _zip([("top.pkl", b""), *_members(archive)]))


def test_an_encrypted_member_is_refused(archive: bytes) -> None:
    """Bit 0 of a member's flags (zipfile writes no encrypted member: set in the bytes)."""
    data = bytearray(archive)
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        info = zf.infolist()[3]
        central = zf.start_dir
    data[info.header_offset + 6] |= 0x1  # the local header's flags
    for _ in range(3):  # to the fourth central directory record
        names, extra, comment = (int.from_bytes(data[central + o:central + o + 2], "little")
                                 for o in (28, 30, 32))
        central += 46 + names + extra + comment
    assert data[central:central + 4] == b"PK\x01\x02"
    data[central + 8] |= 0x1
    assert f"member {info.filename!r} is encrypted or compressed" in _refused(bytes(data))


def test_a_missing_required_member_is_named(archive: bytes) -> None:
    kept = [(n, c) for n, c in _members(archive) if not n.endswith("sample_inputs/model.pt")]
    assert "it lacks data/sample_inputs/model.pt" in _refused(_zip(kept))


def test_payload_entries_without_use_pickle_are_raw(archive: bytes) -> None:
    def drop(raw: Any) -> None:
        for entry in raw["config"].values():
            del entry["use_pickle"]
    pt2.check_pt2(_edit_json(archive, _WEIGHTS, drop), "b/model.pt2")


@pytest.mark.parametrize("path_name", ["model_weights_config.json", "../weight_0", 7])
def test_a_payload_path_is_a_payload_of_its_folder(archive: bytes, path_name: object) -> None:
    def point(raw: Any) -> None:
        raw["config"]["conv1.weight"]["path_name"] = path_name
    message = _refused(_edit_json(archive, _WEIGHTS, point))
    assert f"'conv1.weight' in {_WEIGHTS} is not a raw tensor payload ({path_name!r})" in message


@pytest.mark.parametrize("target", [
    "_operator.getitem", "_operator.mul", "_operator.floordiv", "math.trunc", "torch.sym_max",
    "torch.sym_not", "torch.ops.aten.relu.default"])
def test_symbolic_arithmetic_and_aten_targets_are_accepted(archive: bytes, target: str) -> None:
    def edit(raw: Any) -> None:
        _first_node(raw)["target"] = target
    pt2.check_pt2(_edit_json(archive, _PROGRAM, edit), "b/model.pt2")


def _with_expr(archive: bytes, expr: str) -> bytes:
    def edit(raw: Any) -> None:
        values = raw["graph_module"]["graph"]["tensor_values"]
        sizes = next(iter(values.values()))["sizes"]
        sizes[0] = {"as_expr": {"expr_str": expr, "hint": {"as_int": 2}}}
    return _edit_json(archive, _PROGRAM, edit)


@pytest.mark.parametrize(("expr", "accepted"), [
    ("s0", True), ("2*s0 + 1", True), ("Max(s0, 4)", True), ("FloorDiv(s12, 2)", True),
    ("s0 + os", False), ("open", False), ("", False), ("s0; 1", False)])
def test_symbolic_expressions_are_sympy_constructors_symbols_and_numbers(
        archive: bytes, expr: str, accepted: bool) -> None:
    data = _with_expr(archive, expr)
    if accepted:
        pt2.check_pt2(data, "b/model.pt2")
    else:
        assert f"its program holds symbolic expression {expr!r}" in _refused(data)


def test_a_program_without_a_graph_module_is_refused(archive: bytes) -> None:
    def edit(raw: Any) -> None:
        del raw["graph_module"]
    assert f"its {_PROGRAM} is not an exported program" in _refused(
        _edit_json(archive, _PROGRAM, edit))


@pytest.mark.parametrize(("key", "value", "refused"), [
    ("as_custom_obj", {"name": "x", "class_fqn": "os.system"}, True),
    ("as_graph", {"graph": {}}, True),
    ("custom_obj_values", {"x": 1}, True),
    ("custom_obj_values", {}, False),  # torch writes it empty
])
def test_objects_other_than_tensors_are_refused(archive: bytes, key: str, value: Any,
                                                refused: bool) -> None:
    def edit(raw: Any) -> None:
        _first_node(raw)["metadata"] = {**_first_node(raw).get("metadata", {}), key: value}
    data = _edit_json(archive, _PROGRAM, edit)
    if refused:
        assert f"its program holds {key!r}, an object other than tensors" in _refused(data)
    else:
        pt2.check_pt2(data, "b/model.pt2")


def test_the_program_takes_any_batch_from_one(archive: bytes) -> None:
    program = pt2.load_pt2(archive, "b/model.pt2")
    for batch in (1, 3):
        assert program.module()(torch.zeros(batch, 3, 32, 32)).shape == (batch, 3)


def test_torch_loggers_are_quiet_while_loading_and_restored_after() -> None:
    loggers = [logging.getLogger(name) for name in pt2._TORCH_LOGGERS]
    loggers[0].disabled = True  # one already off stays off
    try:
        with pt2._quiet_torch():
            assert all(logger.disabled is True for logger in loggers)
        assert [logger.disabled for logger in loggers] == [True, False, False]
    finally:
        loggers[0].disabled = False
