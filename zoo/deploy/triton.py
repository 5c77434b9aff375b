"""Triton Inference Server model repositories for bundles, written and checked.

:func:`write_triton` lays out one model of a Triton model repository::

    REPOSITORY/NAME/config.pbtxt     platform "onnxruntime_onnx", max_batch_size,
                                     inputs/outputs from the manifest, dynamic_batching
    REPOSITORY/NAME/1/model.onnx     the bundle's graph, byte for byte
    REPOSITORY/NAME/labels.txt       the classes, one per line (the output's label_filename)

so that ``tritonserver --model-repository=REPOSITORY`` serves the bundle under the
same model, input and output names as ``zoo serve``, and Triton's classification
extension answers the same labels. :func:`write_triton_bundle` does it from a
verified bundle; :func:`verify_triton` parses ``config.pbtxt`` with Triton's own
``ModelConfig`` protobuf schema (from ``tritonclient[grpc]``) and checks it against
the graph as onnxruntime loads it.

``zoo serve BUNDLE --triton-repository DIR`` writes one from any bundle, and the
``triton`` export format (:mod:`zoo.exporter.triton`, ``zoo export --format triton``)
writes one into the bundle itself: ``tritonserver --model-repository=BUNDLE/triton``.
Torch-free; checking needs ``tritonclient[grpc]`` (``pip install "zoo[triton]"``).
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo.errors import BundleError, ZooError
from zoo.spec.manifest import (
    INPUT_NAME,
    ONNX_FILE,
    OUTPUT_NAME,
    Manifest,
)
from zoo.util.fsutil import atomic_directory

PLATFORM = "onnxruntime_onnx"
CONFIG_FILE = "config.pbtxt"
LABELS_FILE = "labels.txt"
VERSION = "1"
#: How long Triton waits to fill a batch, unless told: one default for the API and the format.
DEFAULT_MAX_QUEUE_DELAY_US = 500
_ORT_TYPES = {"tensor(float)": "TYPE_FP32"}


@dataclass(frozen=True)
class TritonModel:
    """What ``config.pbtxt`` says: names and shapes from the manifest, batching settings."""

    name: str
    classes: tuple[str, ...]
    input_dims: tuple[int, ...]
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    max_batch_size: int = 64
    max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US
    max_queue_size: int = 0  # 0: unbounded (Triton's default)
    instance_count: int = 1
    threads: int | None = None  # onnxruntime intra-op threads per instance

    @classmethod
    def from_manifest(cls, manifest: Manifest, name: str | None = None,
                      **settings: Any) -> TritonModel:
        """The model of a bundle's manifest, named ``name`` (default: its architecture)."""
        return cls(name=name or manifest.architecture, classes=tuple(manifest.classes),
                   input_dims=manifest.model.input_shape.as_tuple(),
                   input_name=manifest.export.input_name,
                   output_name=manifest.export.output_name, **settings)


def config_pbtxt(model: TritonModel) -> str:
    """The model's ``config.pbtxt`` (protobuf text format of Triton's ``ModelConfig``)."""
    if model.max_batch_size < 1:
        raise ZooError(f"max_batch_size is {model.max_batch_size}; accepted: 1 or more")
    dims = ", ".join(str(d) for d in model.input_dims)
    lines = [
        f"name: {json.dumps(model.name)}",
        f"platform: {json.dumps(PLATFORM)}",
        f"max_batch_size: {model.max_batch_size}",
        "input [",
        "  {",
        f"    name: {json.dumps(model.input_name)}",
        "    data_type: TYPE_FP32",
        f"    dims: [ {dims} ]",
        "  }",
        "]",
        "output [",
        "  {",
        f"    name: {json.dumps(model.output_name)}",
        "    data_type: TYPE_FP32",
        f"    dims: [ {len(model.classes)} ]",
        f"    label_filename: {json.dumps(LABELS_FILE)}",
        "  }",
        "]",
        "dynamic_batching {",
        f"  max_queue_delay_microseconds: {model.max_queue_delay_us}",
    ]
    if model.max_queue_size:
        lines.append(f"  default_queue_policy {{ max_queue_size: {model.max_queue_size} }}")
    lines += ["}",
              f"instance_group [ {{ count: {model.instance_count}, kind: KIND_CPU }} ]",
              "version_policy { latest { num_versions: 1 } }"]
    if model.threads is not None:
        lines.append('parameters { key: "intra_op_thread_count" '
                     f'value {{ string_value: "{model.threads}" }} }}')
    return "\n".join(lines) + "\n"


def model_files(model: TritonModel, onnx: bytes) -> dict[str, bytes]:
    """The files of ``model``'s directory, by path inside it."""
    return {CONFIG_FILE: config_pbtxt(model).encode("utf-8"),
            LABELS_FILE: "".join(f"{c}\n" for c in model.classes).encode("utf-8"),
            f"{VERSION}/{ONNX_FILE}": onnx}


def write_triton(repository: Path | str, model: TritonModel, onnx: bytes, *,
                 force: bool = False) -> Path:
    """Write ``REPOSITORY/NAME`` (config, ``1/model.onnx``, labels); returns that directory.

    An existing ``REPOSITORY/NAME`` is refused unless ``force`` (then it is replaced).
    """
    repo = Path(repository)
    target = repo / model.name
    if repo.exists() and not repo.is_dir():
        raise ZooError(f"cannot write Triton model {target}: {repo} is not a folder")
    try:
        if target.exists() and not force:
            raise ZooError(f"{target} exists; pass --force to replace it")
        with atomic_directory(target, replace=force) as tmp:  # all of it, or nothing
            (tmp / VERSION).mkdir()
            for name, data in model_files(model, onnx).items():
                (tmp / name).write_bytes(data)
    except OSError as exc:
        raise ZooError(f"cannot write Triton model {target}: {exc.strerror or exc}") from None
    return target


def write_triton_bundle(bundle: Path | str, repository: Path | str, *, name: str | None = None,
                        expect_sha256: str | None = None, force: bool = False,
                        **settings: Any) -> Path:
    """Write a Triton model of a bundle (checked file by file first) into ``repository``."""
    from zoo.bundles.integrity import open_bundle

    manifest = open_bundle(bundle, expect_sha256=expect_sha256)
    onnx = (Path(bundle) / ONNX_FILE).read_bytes()
    if hashlib.sha256(onnx).hexdigest() != manifest.files[ONNX_FILE].sha256:
        raise BundleError(f"{Path(bundle) / ONNX_FILE} changed while it was read")
    model = TritonModel.from_manifest(manifest, name, **settings)
    return write_triton(repository, model, onnx, force=force)


# -- checking ------------------------------------------------------------------------------


def _schema() -> Any:
    try:
        return importlib.import_module("tritonclient.grpc.model_config_pb2")
    except ImportError:
        raise ZooError("checking a Triton model needs Triton's schema from tritonclient: "
                       "pip install 'tritonclient[grpc]'") from None


def triton_problems(model_dir: Path | str, *, classes: Sequence[str] | None = None
                    ) -> tuple[Any, list[str]]:
    """The parsed ``ModelConfig`` (or None) and every way the model directory is wrong."""
    from zoo.deploy.runtime import ort_session

    pb = _schema()
    text_format = importlib.import_module("google.protobuf.text_format")
    model_dir = Path(model_dir)
    config = pb.ModelConfig()
    try:
        text_format.Parse((model_dir / CONFIG_FILE).read_text(encoding="utf-8"), config)
    except (OSError, UnicodeDecodeError, text_format.ParseError) as exc:
        return None, [f"{model_dir / CONFIG_FILE} does not parse as a Triton ModelConfig: {exc}"]
    problems = []
    if config.name != model_dir.name:
        problems.append(f"name {config.name!r} is not the directory's name {model_dir.name!r}")
    if config.platform != PLATFORM and config.backend != "onnxruntime":
        problems.append(f"platform {config.platform!r}; expected {PLATFORM!r}")
    versions = sorted(p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
    graph_file = config.default_model_filename or ONNX_FILE
    if not versions or not all((v / graph_file).is_file() for v in versions):
        return config, [*problems, f"no version directory of {model_dir} holds {graph_file}"]
    session = ort_session((versions[-1] / graph_file).read_bytes(), threads=1)
    batch = config.max_batch_size > 0
    for kind, declared, actual in (("input", config.input, session.get_inputs()),
                                   ("output", config.output, session.get_outputs())):
        graph = {t.name: t for t in actual}
        if sorted(graph) != sorted(t.name for t in declared):
            problems.append(f"{kind}s {[t.name for t in declared]} are not the graph's "
                            f"{sorted(graph)}")
            continue
        for tensor in declared:
            node = graph[tensor.name]
            type_name = pb.DataType.Name(tensor.data_type)
            if _ORT_TYPES.get(node.type) != type_name:
                problems.append(f"{kind} {tensor.name!r} is {type_name}, the graph's is "
                                f"{node.type}")
            shape = list(node.shape)
            dynamic_batch = bool(shape) and not isinstance(shape[0], int)
            # Triton writes a dimension of any size as -1 (the graph: a name, or None)
            expected = [d if isinstance(d, int) else -1 for d in (shape[1:] if batch else shape)]
            if batch and not dynamic_batch:
                problems.append(f"{kind} {tensor.name!r} has a fixed batch size {shape[0]} in "
                                "the graph, but max_batch_size > 0 needs a dynamic one")
            if list(tensor.dims) != expected:
                problems.append(f"{kind} {tensor.name!r} has dims {list(tensor.dims)}, the "
                                f"graph's are {expected} (shape {shape})")
            if kind == "output" and tensor.label_filename:
                labels = (model_dir / tensor.label_filename)
                names = (labels.read_text(encoding="utf-8").splitlines()
                         if labels.is_file() else [])
                if len(names) != (list(tensor.dims) or [0])[-1]:
                    problems.append(f"{labels} has {len(names)} labels for "
                                    f"{list(tensor.dims)} outputs")
                elif classes is not None and names != list(classes):
                    problems.append(f"{labels} has labels {names}, the bundle's classes are "
                                    f"{list(classes)}")
    if batch and config.HasField("dynamic_batching"):
        too_big = [s for s in config.dynamic_batching.preferred_batch_size
                   if s > config.max_batch_size]
        if too_big:
            problems.append(f"preferred_batch_size {too_big} exceeds max_batch_size "
                            f"{config.max_batch_size}")
    return config, problems


def verify_triton(model_dir: Path | str, *, classes: Sequence[str] | None = None) -> Any:
    """Triton's ``ModelConfig`` of ``model_dir``, checked against the graph; else a BundleError."""
    config, problems = triton_problems(model_dir, classes=classes)
    if problems:
        raise BundleError(f"Triton model {model_dir} is not consistent: {'; '.join(problems)}")
    return config


__all__ = ["CONFIG_FILE", "LABELS_FILE", "PLATFORM", "VERSION", "TritonModel", "config_pbtxt",
           "model_files", "triton_problems", "verify_triton", "write_triton",
           "write_triton_bundle"]
