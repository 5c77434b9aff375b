"""The ``int8`` export format: a statically quantized copy of the bundle's ONNX graph.

``zoo export RUN --quantize int8`` (``--format int8``) writes ``model.int8.onnx``:
the verified float32 graph after onnxruntime's shape pre-processing, quantized by
``onnxruntime.quantization.quantize_static`` in QDQ form (int8 weights per output
channel; uint8 activations, the operand order of x86's VNNI and AVX2 integer dot
products), its activation ranges calibrated on training images of the run (never
held-out ones). The weights keep 7 bits by default (``reduce_range``): without VNNI,
x86's integer dot product (AVX2's ``vpmaddubsw``) adds two uint8 x int8 products in
16 bits, which 8-bit weights overflow (2 x 255 x 127 > 32767), so the same graph
would score less on such a CPU than on the one that exported it; no pair of products
with 7-bit weights overflows. A graph with 8-bit weights (``reduce_range=false``) names the
int8 dot-product features in its ``zoo.requires_cpu`` metadata, and loading it on a CPU with
none of them warns (:func:`zoo.deploy.runtime.check_cpu`). The verifier measures the top-1
accuracy of both graphs on the run's held-out split and refuses the format when the int8
graph loses more than ``max_drop_points`` (0.5 by default); it also times both graphs at
batch 1.

Re-checking a bundle (``zoo verify``) has no data: the int8 graph must then load,
keep the float32 graph's identity and give finite logits of the right shape, and
its top-1 agreement with the eager model on random inputs is reported.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from zoo.deploy.runtime import ort_session
from zoo.errors import ExportError, reason
from zoo.exporter.checks import check_outputs
from zoo.exporter.onnx import batch1_latency_ms
from zoo.exporter.trainingdata import TrainingData
from zoo.spec.architecture import ModelConfig
from zoo.spec.manifest import (
    INPUT_NAME,
    ONNX_FILE,
    REQUIRES_CPU_KEY,
    CheckResult,
    VerificationReport,
)
from zoo.util.cpu import INT8_FEATURES
from zoo.util.threads import default_threads

#: The file the format writes.
INT8_FILE = "model.int8.onnx"
#: Images per batch when running a split through a graph.
_BATCH = 256


class _Batches(CalibrationDataReader):  # type: ignore[misc]
    def __init__(self, images: np.ndarray, batch: int = 32) -> None:
        self._batches = iter([images[i:i + batch] for i in range(0, len(images), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._batches, None)
        return None if x is None else {INPUT_NAME: x}


def write_int8(model: torch.nn.Module, directory: Path, config: ModelConfig, *,
               options: Any, data: TrainingData) -> None:
    """The format's writer: ``model.int8.onnx`` from ``model.onnx``, calibrated on
    ``options.calibration_images`` training images."""
    calibration = data.calibration(options.calibration_images)
    activations = QuantType.QUInt8 if options.activations == "uint8" else QuantType.QInt8
    with tempfile.TemporaryDirectory(prefix="zoo-int8-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quantized = Path(tmp) / INT8_FILE
        quant_pre_process(str(directory / ONNX_FILE), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(quantized), _Batches(calibration),
                        quant_format=QuantFormat.QDQ, activation_type=activations,
                        weight_type=QuantType.QInt8, per_channel=True,
                        reduce_range=options.reduce_range)
        graph = onnx.load(str(quantized))
        # the float graph's identity (architecture, classes, input shape) travels with it
        source = onnx.load(str(directory / ONNX_FILE))
        del graph.metadata_props[:]
        graph.metadata_props.extend(source.metadata_props)
        if not options.reduce_range:
            # 8-bit weights compute what was measured only with integer dot products
            graph.metadata_props.add(key=REQUIRES_CPU_KEY, value=",".join(sorted(INT8_FEATURES)))
        (directory / INT8_FILE).write_bytes(graph.SerializeToString())


def _predict(session: Any, images: np.ndarray) -> np.ndarray:
    return np.concatenate([session.run(None, {INPUT_NAME: images[i:i + _BATCH]})[0]
                           for i in range(0, len(images), _BATCH)])


def verify_int8(model: torch.nn.Module, directory: Path, config: ModelConfig,
                inputs: list[tuple[str, np.ndarray]], atol: float, rtol: float, *,
                options: Any, data: TrainingData | None = None) -> VerificationReport:
    """The format's verifier: held-out accuracy of both graphs (with ``data``), agreement
    with the eager model on ``inputs``, latency at batch 1."""
    start = time.perf_counter()
    try:
        onnx.checker.check_model(str(directory / INT8_FILE), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"the int8 graph fails onnx.checker: {reason(exc)}") from None
    threads = default_threads()
    session = ort_session(directory / INT8_FILE, threads=threads)
    shape = config.input_shape.as_tuple()
    checks = []
    for name, x in inputs:
        with torch.no_grad():
            expected = model.eval()(torch.from_numpy(x)).numpy()
        actual = np.asarray(session.run(None, {INPUT_NAME: x})[0])
        # int8 is not within float tolerances: it passes with logits of the right shape, all
        # finite; the differences and the agreement are reported
        ok = actual.shape == expected.shape and bool(np.isfinite(actual).all())
        checks.append(check_outputs(name, expected, actual, atol, rtol).model_copy(
            update={"passed": ok}))
    if data is not None:
        held = data.held_out()
        reference = ort_session(directory / ONNX_FILE, threads=threads)
        ref = _predict(reference, held.images).argmax(1)
        got = _predict(session, held.images).argmax(1)
        ref_acc = float((ref == held.labels).mean())
        acc = float((got == held.labels).mean())
        lost = 100.0 * (ref_acc - acc)
        checks.append(CheckResult(
            name=f"{held.description}, at most {options.max_drop_points:g} points lost",
            batch_size=len(held.labels), max_abs_diff=0.0, max_rel_diff=0.0,
            top1_agreement=float((ref == got).mean()), accuracy=acc, reference_accuracy=ref_acc,
            passed=lost <= options.max_drop_points + 1e-9))
    return VerificationReport(
        passed=all(c.passed for c in checks), atol=atol, rtol=rtol,
        onnx_checker="passed (full_check)", checks=tuple(checks),
        ort_latency_ms_batch1=batch1_latency_ms(session, shape),
        ort_threads=threads,
        seconds=time.perf_counter() - start)


__all__ = ["INT8_FILE", "verify_int8", "write_int8"]
