"""The ``pt2`` export format: torch.export's ExportedProgram, saved with ``torch.export.save``.

The program has a dynamic batch axis (like the ONNX graph) and is verified by
loading it back and running it on the same inputs as the ONNX checks. Load it
with :func:`load_pt2` (or ``torch.export.load("model.pt2").module()`` for a file
you trust).

``torch.export.load`` is not safe on a file from elsewhere: it unpickles members
with ``weights_only=False`` (pickled weights and constants, a legacy weights file,
and the sample inputs whenever their ``weights_only`` load fails), unpickles opaque
constants with plain ``pickle.loads``, ``eval``\\ s the graph's symbolic shapes
through sympy, compiles its guards as Python code, and resolves node targets to any
attribute of ``torch`` (``torch.os.system``), called when the program runs. So
:func:`check_pt2` first reads the archive with the very reader torch uses and refuses
anything but what ``torch.export.save`` writes for a zoo model: the fixed members
and numbered raw tensor payloads (no pickled payload, custom or opaque object,
legacy file, extra member or second program), sample inputs that load with
``weights_only=True``, no guards code, node targets among ATen operators (none that
touches files) and symbolic-arithmetic operators, and symbolic expressions of
sympy constructors and symbol names only. Then the load runs under
:func:`zoo.util.pickleguard.strict_unpickling`, which refuses any global an
unpickler would resolve: defence in depth should a check miss a way in.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.bundles.integrity import read_checked, read_manifest, read_member
from zoo.errors import BundleError, ExportError, reason
from zoo.exporter.checks import check_outputs
from zoo.spec.architecture import ModelConfig
from zoo.spec.manifest import MANIFEST_FILE, CheckResult
from zoo.util.pickleguard import UnpicklingRefused, strict_unpickling

PT2_FILE = "model.pt2"
#: The largest ``model.pt2`` read, and the most members it may hold.
MAX_PT2_BYTES = 4 << 30
MAX_PT2_MEMBERS = 1 << 16

_ROOT = re.compile(r"^[A-Za-z0-9_.\-]+/")
_FIXED = frozenset({"archive_format", "archive_version", "byteorder", ".data/version",
                    ".data/serialization_id"})
_PROGRAM = "models/model.json"
_WEIGHTS_CONFIG = "data/weights/model_weights_config.json"
_CONSTANTS_CONFIG = "data/constants/model_constants_config.json"
_SAMPLE_INPUTS = "data/sample_inputs/model.pt"
_REQUIRED = frozenset({_PROGRAM, _WEIGHTS_CONFIG, _CONSTANTS_CONFIG, _SAMPLE_INPUTS})
_PAYLOADS = {_WEIGHTS_CONFIG: ("data/weights/", re.compile(r"^weight_\d+$")),
             _CONSTANTS_CONFIG: ("data/constants/", re.compile(r"^tensor_\d+$"))}
_PAYLOAD_NAME = re.compile(r"^data/(weights/weight|constants/tensor)_\d+$")

_ATEN = re.compile(r"^torch\.ops\.aten\.(?P<op>[A-Za-z][A-Za-z0-9_]*)\.[A-Za-z_][A-Za-z0-9_]*$")
#: ATen operators that read, write or print outside the tensors they are given.
_ATEN_REFUSED = frozenset({"save", "from_file", "_print", "warn"})
_SYMBOLIC = frozenset({f"_operator.{n}" for n in (
    "getitem", "eq", "ne", "le", "ge", "lt", "gt", "neg", "pos", "mul", "add", "sub",
    "floordiv", "mod", "pow", "truediv", "and_", "or_")} | {"math.trunc"} | {
    f"torch.sym_{n}" for n in ("not", "int", "float", "ite", "max", "min", "sqrt")})
#: Argument and input kinds that would bring objects or code other than tensors.
_REFUSED_KEYS = frozenset({"as_custom_obj", "as_operator", "as_graph", "custom_obj"})
_EXPR_TOKEN = re.compile(r"\s+|\d+(?:\.\d+)?(?:e[-+]?\d+)?|'[A-Za-z][A-Za-z0-9_]*'"
                         r"|[A-Za-z][A-Za-z0-9_]*|\*\*|//|[-+*/%(),=<>]")
_EXPR_NAMES = frozenset({
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Mod", "FloorDiv",
    "CeilToInt", "FloorToInt", "CleanDiv", "IntTrueDiv", "Max", "Min", "Eq", "Ne", "Lt", "Le",
    "Gt", "Ge", "And", "Or", "Not", "True", "False", "oo", "positive", "negative",
    "nonnegative", "integer", "real", "finite"})
_SYMBOL_NAME = re.compile(r"^[a-z]+\d+$")
_TORCH_LOGGERS = ("torch.export", "torch._export.serde.serialize",
                  "torch.export.pt2_archive._package")


def write_pt2(model: torch.nn.Module, directory: Path, config: ModelConfig) -> None:
    """Export ``model`` (eval mode) with a dynamic batch axis to ``directory/model.pt2``."""
    example = torch.zeros((2, *config.input_shape.as_tuple()))
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.export.export(
                model.eval(), (example,),
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1 << 16)},))
    except Exception as exc:  # torch.export raises many types; one clear error
        raise ExportError(f"torch.export failed on {config.architecture}: {reason(exc)}") from None
    torch.export.save(program, directory / PT2_FILE)


def _refuse(where: str, why: str) -> BundleError:
    return BundleError(f"refusing {where}: {why}; the zoo loads only the torch.export archives "
                       "it writes (raw tensors and the program's JSON, nothing unpickled)")


def _members(data: bytes, where: str) -> tuple[str, Any]:
    """The archive's root folder and torch's own reader of it, after the zip-level checks."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise _refuse(where, f"it is not a zip archive ({exc})") from None
    if not infos or len(infos) > MAX_PT2_MEMBERS:
        raise _refuse(where, f"it holds {len(infos)} members (accepted: 1 to {MAX_PT2_MEMBERS})")
    root = _ROOT.match(infos[0].filename)
    prefix = root.group() if root else ""
    names = [info.filename for info in infos]
    for info in infos:
        if not prefix or not info.filename.startswith(prefix):
            raise _refuse(where, f"member {info.filename!r} is outside the archive's one folder")
        if info.flag_bits & 0x1 or info.compress_type != zipfile.ZIP_STORED:
            raise _refuse(where, f"member {info.filename!r} is encrypted or compressed")
    if len(set(names)) != len(names):
        raise _refuse(where, "it names a member twice")
    try:
        reader = torch._C.PyTorchFileReader(io.BytesIO(data))
        records = set(reader.get_all_records())
    except Exception as exc:  # torch's C++ reader raises RuntimeError and others
        raise _refuse(where, f"torch cannot read it ({reason(exc)})") from None
    if records != {n[len(prefix):] for n in names}:
        raise _refuse(where, "torch's reader and Python's zipfile see different members")
    for name in sorted(records):
        if name not in _FIXED | _REQUIRED and not _PAYLOAD_NAME.match(name):
            raise _refuse(where, f"it holds member {name!r}, which a torch.export archive of a "
                          "zoo model does not")
    missing = sorted(_REQUIRED - records)
    if missing:
        raise _refuse(where, f"it lacks {', '.join(missing)}")
    return prefix, reader


def _json(reader: Any, name: str, where: str) -> Any:
    try:
        return json.loads(bytes(reader.get_record(name)).decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError, RuntimeError) as exc:
        raise _refuse(where, f"its {name} is not JSON ({reason(exc)})") from None


def _check_payloads(reader: Any, where: str) -> None:
    """Every weight and constant a raw tensor payload, none pickled nor an object."""
    records = set(reader.get_all_records())
    used: set[str] = set()
    for config_name, (folder, pattern) in _PAYLOADS.items():
        config = _json(reader, config_name, where)
        entries = config.get("config") if isinstance(config, dict) else None
        if not isinstance(entries, dict):
            raise _refuse(where, f"its {config_name} is not a payload configuration")
        for fqn, entry in entries.items():
            path = entry.get("path_name") if isinstance(entry, dict) else None
            if not isinstance(entry, dict) or entry.get("use_pickle", False) is not False:
                raise _refuse(where, f"{fqn!r} in {config_name} is pickled")
            if not isinstance(path, str) or not pattern.match(path) or \
                    folder + path not in records:
                raise _refuse(where, f"{fqn!r} in {config_name} is not a raw tensor payload "
                              f"({path!r})")
            used.add(folder + path)
    stray = sorted(n for n in records if _PAYLOAD_NAME.match(n) and n not in used)
    if stray:
        raise _refuse(where, f"it holds payload {stray[0]!r}, which no configuration names")


def _check_expr(expr: object, where: str) -> None:
    text = expr if isinstance(expr, str) else ""
    pos = 0
    while pos < len(text):
        token = _EXPR_TOKEN.match(text, pos)
        if token is None:
            break
        word = token.group()
        if word[0].isalpha() and word not in _EXPR_NAMES and not _SYMBOL_NAME.match(word):
            break
        pos = token.end()
    if not text or pos < len(text):
        raise _refuse(where, f"its program holds symbolic expression {expr!r}, which is not "
                      "made of sympy constructors, symbols and numbers only")


def _check_program(program: Any, where: str) -> None:
    """Node targets, symbolic expressions, guards and object kinds of the program's JSON."""
    if not isinstance(program, dict) or not isinstance(program.get("graph_module"), dict):
        raise _refuse(where, f"its {_PROGRAM} is not an exported program")
    if program.get("guards_code"):
        raise _refuse(where, "its program carries guard code, which would run as Python")
    stack: list[Any] = [program]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
            continue
        if not isinstance(item, dict):
            continue
        for key, value in item.items():
            if key in _REFUSED_KEYS or (key == "custom_obj_values" and value):
                raise _refuse(where, f"its program holds {key!r}, an object other than tensors")
            if key == "target" and isinstance(value, str):
                aten = _ATEN.match(value)
                if not (aten and aten["op"] not in _ATEN_REFUSED) and value not in _SYMBOLIC:
                    raise _refuse(where, f"its program calls {value!r}; accepted: ATen "
                                  "operators and symbolic arithmetic")
            elif key == "expr_str":
                _check_expr(value, where)
            else:
                stack.append(value)


def check_pt2(data: bytes, where: str) -> None:
    """Refuse (:class:`BundleError`) a ``model.pt2`` that ``torch.export.load`` could not
    read without unpickling, evaluating or calling something other than tensors and
    ATen operators (see the module's docstring)."""
    _, reader = _members(data, where)
    if bytes(reader.get_record("archive_format")) != b"pt2":
        raise _refuse(where, "its archive_format is not 'pt2'")
    _check_payloads(reader, where)
    _check_program(_json(reader, _PROGRAM, where), where)
    try:
        with strict_unpickling():
            inputs = torch.load(io.BytesIO(bytes(reader.get_record(_SAMPLE_INPUTS))),
                                map_location="cpu", weights_only=True)
    except Exception as exc:  # the weights-only unpickler raises many types
        raise _refuse(where, f"its sample inputs do not load with weights_only=True "
                      f"({reason(exc)})") from None
    if not isinstance(inputs, (tuple, dict)):
        raise _refuse(where, f"its sample inputs are a {type(inputs).__name__}")


@contextlib.contextmanager
def _quiet_torch() -> Iterator[None]:
    """torch.export logs a traceback before some fallbacks: errors here are one line."""
    loggers = [logging.getLogger(name) for name in _TORCH_LOGGERS]
    before = [logger.disabled for logger in loggers]
    for logger in loggers:
        logger.disabled = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, was in zip(loggers, before, strict=True):
            logger.disabled = was


def load_pt2(data: bytes, where: str) -> torch.export.ExportedProgram:
    """The ExportedProgram in ``data`` (a ``model.pt2``'s bytes), after :func:`check_pt2`,
    loaded with unrestricted unpickling refused; anything else is a :class:`BundleError`."""
    check_pt2(data, where)
    try:
        with _quiet_torch(), strict_unpickling():
            return torch.export.load(io.BytesIO(data))
    except UnpicklingRefused as exc:
        raise _refuse(where, str(exc)) from None
    except Exception as exc:  # torch.export raises many types; one clear error
        raise BundleError(f"torch.export cannot load {where}: {reason(exc)}") from None


def read_pt2(directory: Path) -> bytes:
    """The bytes of ``directory/model.pt2``: checked against the manifest where the bundle has
    one that lists it (``zoo verify``), else read through no link (an export being built)."""
    if (directory / MANIFEST_FILE).exists():
        manifest = read_manifest(directory)
        if PT2_FILE in manifest.files:
            return read_checked(directory, manifest, PT2_FILE)
    return read_member(directory, PT2_FILE, MAX_PT2_BYTES)


def verify_pt2(model: torch.nn.Module, directory: Path, config: ModelConfig,
               inputs: list[tuple[str, np.ndarray]], atol: float,
               rtol: float) -> list[CheckResult]:
    """Load ``model.pt2`` back (:func:`load_pt2`) and compare it with the eager ``model`` on
    ``inputs``."""
    program = load_pt2(read_pt2(directory), str(directory / PT2_FILE))
    with strict_unpickling():
        loaded = program.module()
    checks = []
    for name, x in inputs:
        with torch.no_grad(), strict_unpickling():
            expected = model.eval()(torch.from_numpy(x)).numpy()
            actual = loaded(torch.from_numpy(x)).numpy()
        checks.append(check_outputs(name, expected, actual, atol, rtol))
    return checks


__all__ = ["MAX_PT2_BYTES", "MAX_PT2_MEMBERS", "PT2_FILE", "check_pt2", "load_pt2", "read_pt2",
           "verify_pt2", "write_pt2"]
