"""onnxruntime sessions of bundle graphs: tuned for latency, loaded from checked bytes only.

Torch-free: onnxruntime, and :mod:`zoo.deploy.onnxscan` to refuse graphs that
would read files no digest covers.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from zoo.bundles.integrity import read_checked
from zoo.deploy.onnxscan import OnnxScanError, external_data_files
from zoo.errors import BundleError, ZooError, reason
from zoo.spec.manifest import ONNX_FILE, Manifest
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


def load_graph(bundle: Path, manifest: Manifest, *, threads: int | None = None,
               data: bytes | None = None) -> ort.InferenceSession:
    """The bundle's ONNX graph in onnxruntime, from the very bytes checked against the manifest
    (``data``, where the caller checked them already).

    Refuses a graph that keeps tensors in external files (it would read files no
    digest covers) and one whose input or output disagrees with the manifest.
    """
    if data is None:
        data = read_checked(bundle, manifest, ONNX_FILE)
    try:
        external = external_data_files(data)
    except OnnxScanError as exc:
        raise BundleError(f"{bundle / ONNX_FILE} is not an ONNX model: {exc}") from None
    if external:
        raise BundleError(f"{bundle / ONNX_FILE} keeps tensors in external file(s) "
                          f"{', '.join(sorted(set(external)))}, which bundles may not do (the "
                          "zoo reads only files whose digest it checked); re-export it")
    try:
        session = ort_session(data, threads=threads)
    except ZooError:
        raise
    except Exception as exc:  # onnxruntime's own exception types
        raise BundleError(f"onnxruntime cannot load {bundle / ONNX_FILE}: "
                          f"{reason(exc)}") from None
    check_graph(session, manifest, bundle)
    return session


def check_graph(session: ort.InferenceSession, manifest: Manifest, bundle: Path) -> None:
    """The graph takes one (N, C, H, W) input, gives (N, classes) logits, as the manifest says."""
    shape = manifest.model.input_shape
    inputs, outputs = session.get_inputs(), session.get_outputs()
    where = f"{bundle / ONNX_FILE}"
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


__all__ = ["check_graph", "load_graph", "ort_session"]
