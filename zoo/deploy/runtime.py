"""onnxruntime sessions of bundle graphs: tuned for latency, loaded from checked bytes only.

Torch-free: onnxruntime, and :mod:`zoo.deploy.onnxscan` to refuse graphs that
would read files no digest covers. A graph is checked against its manifest: its input
and output shapes, and the identity the exporter stamped in its ``metadata_props``
(architecture, hyperparameters, input shape, classes: :func:`zoo.spec.manifest.graph_metadata`,
read through onnxruntime's model metadata, not the ``onnx`` package). Graphs of older
exports carry no identity and are checked by their shapes alone.
"""

from __future__ import annotations

import json
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort

from zoo.bundles.integrity import read_checked
from zoo.deploy.onnxscan import OnnxScanError, external_data_files
from zoo.errors import BundleError, CpuFeatureWarning, ZooError, reason
from zoo.spec.exportformat import REQUIRED_FORMAT
from zoo.spec.manifest import (
    GRAPH_METADATA_KEYS,
    ONNX_FILE,
    REQUIRES_CPU_KEY,
    Manifest,
    graph_metadata,
)
from zoo.util.cpu import cpu_features
from zoo.util.threads import check_threads


def ort_session(onnx_model: Path | str | bytes, *,
                threads: int | None = None) -> ort.InferenceSession:
    """A CPU onnxruntime session tuned for latency: all graph optimizations, ``threads``.

    ``onnx_model`` is a path or the graph's bytes (as checked by the caller).
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = check_threads(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    model = onnx_model if isinstance(onnx_model, bytes) else str(onnx_model)
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def median_latency_ms(session: ort.InferenceSession, x: np.ndarray, runs: int, *,
                      warmup: int = 10) -> float:
    """The median wall time of ``session`` on the batch ``x``, in milliseconds, over ``runs``
    calls after ``warmup`` untimed ones."""
    feed = {session.get_inputs()[0].name: x}
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def graph_file(manifest: Manifest, graph: str, bundle: Path) -> str:
    """The file of the bundle's ONNX graph ``graph``: ``model.onnx`` for ``onnx``, else the
    one ``.onnx`` file of that export format (``int8``: ``model.int8.onnx``)."""
    if graph == REQUIRED_FORMAT:
        return ONNX_FILE
    graphs = [REQUIRED_FORMAT, *(name for name, record in manifest.formats.items()
                                 if len(record.files) == 1 and record.files[0].endswith(".onnx"))]
    record = manifest.formats.get(graph)
    if graph not in graphs or record is None:
        held = "holds no such format" if record is None else "holds it, but not as one ONNX graph"
        raise BundleError(f"bundle {str(bundle)!r} {held}: graph {graph!r}; its graphs: "
                          f"{', '.join(graphs)}")
    return record.files[0]


def load_graph(bundle: Path, manifest: Manifest, *, threads: int | None = None,
               data: bytes | None = None, file: str = ONNX_FILE) -> ort.InferenceSession:
    """The bundle's ONNX graph ``file`` in onnxruntime, from the very bytes checked against the
    manifest (``data``, where the caller checked them already).

    Refuses a graph that keeps tensors in external files (it would read files no
    digest covers) and one whose input or output disagrees with the manifest.
    """
    if data is None:
        data = read_checked(bundle, manifest, file)
    try:
        external = external_data_files(data)
    except OnnxScanError as exc:
        raise BundleError(f"{bundle / file} is not an ONNX model: {exc}") from None
    if external:
        raise BundleError(f"{bundle / file} keeps tensors in external file(s) "
                          f"{', '.join(sorted(set(external)))}, which bundles may not do (the "
                          "zoo reads only files whose digest it checked); re-export it")
    try:
        session = ort_session(data, threads=threads)
    except ZooError:
        raise
    except Exception as exc:  # onnxruntime's own exception types
        raise BundleError(f"onnxruntime cannot load {bundle / file}: "
                          f"{reason(exc)}") from None
    check_graph(session, manifest, bundle, file)
    check_cpu(session, bundle, file)
    return session


def check_graph(session: ort.InferenceSession, manifest: Manifest, bundle: Path,
                file: str = ONNX_FILE) -> None:
    """The graph takes one (N, C, H, W) input, gives (N, classes) logits, as the manifest says."""
    shape = manifest.model.input_shape
    inputs, outputs = session.get_inputs(), session.get_outputs()
    where = f"{bundle / file}"
    if len(inputs) != 1 or inputs[0].name != manifest.export.input_name:
        raise BundleError(f"{where} takes inputs {[i.name for i in inputs]}, but the manifest "
                          f"says one input {manifest.export.input_name!r}")
    got = list(inputs[0].shape)
    if len(got) != 4 or got[1:] != [shape.channels, shape.height, shape.width]:
        raise BundleError(f"{where} takes input shape {got}, but the manifest says (batch, "
                          f"{shape.channels}, {shape.height}, {shape.width})")
    out = list(outputs[0].shape) if outputs else []
    if len(outputs) != 1 or len(out) != 2 or out[1] != len(manifest.classes):
        raise BundleError(f"{where} gives outputs of shape {out} ({len(outputs)} output(s)), but "
                          f"the manifest names {len(manifest.classes)} classes")
    check_identity(session, manifest, bundle, file)


def check_identity(session: ort.InferenceSession, manifest: Manifest, bundle: Path,
                   file: str = ONNX_FILE) -> None:
    """The identity stamped in the graph's metadata, where it has one, is the manifest's."""
    try:
        recorded = dict(session.get_modelmeta().custom_metadata_map)
    except Exception as exc:  # onnxruntime's own exception types
        raise BundleError(f"onnxruntime cannot read the metadata of {bundle / file}: "
                          f"{reason(exc)}") from None
    expected = graph_metadata(manifest.model)
    for key in GRAPH_METADATA_KEYS:
        got = recorded.get(key)
        if got is None or got == expected[key]:
            continue
        if key == "zoo.hparams":
            try:
                if json.loads(got) == manifest.model.hparams:
                    continue
            except ValueError:
                pass
        what = key.removeprefix("zoo.").replace("_", " ")
        raise BundleError(f"{bundle / file} is a graph of {what} {got!r}, but the manifest "
                          f"says {expected[key]!r}: the graph is not the manifest's model")


def check_cpu(session: ort.InferenceSession, bundle: Path, file: str = ONNX_FILE) -> None:
    """Warn (:class:`~zoo.errors.CpuFeatureWarning`) when the graph names CPU features in its
    ``zoo.requires_cpu`` metadata and this CPU has none of them. Where the CPU's features
    cannot be read (outside Linux), nothing is said."""
    wanted = dict(session.get_modelmeta().custom_metadata_map).get(REQUIRES_CPU_KEY, "")
    features = {f.strip() for f in wanted.split(",") if f.strip()}
    have = cpu_features()
    if features and have and not features & have:
        warnings.warn(f"{bundle / file} is built for CPUs with {' or '.join(sorted(features))}, "
                      "and this one has none of them: its outputs, and the accuracy its export "
                      "measured, may not hold here (re-export it on this CPU, or use another "
                      "graph)", CpuFeatureWarning, stacklevel=4)


__all__ = ["check_cpu", "check_graph", "check_identity", "graph_file", "load_graph",
           "median_latency_ms", "ort_session"]
