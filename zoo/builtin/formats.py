"""Core plugin: the zoo's own export formats, ``onnx`` (every bundle's), ``pt2``, ``triton``
and ``int8``.

Declared through ``zoo_export_formats`` like any plugin's formats, and written and
verified through the same path (:mod:`zoo.exporter.formats`). It cannot be blocked
(``-p no:formats`` is refused): every bundle holds the ONNX graph its readers load.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from zoo.host.hookspecs import hookimpl
from zoo.spec.exportformat import ExportFormat, FormatOptions


class OnnxOptions(FormatOptions):
    """The ``onnx`` format's options (``zoo export --opset N --exporter NAME``)."""

    opset: int | None = Field(None, ge=1, le=100, description="ONNX opset (default: 17, or "
                              "the lowest the exporter produces above it).")
    exporter: Literal["torchscript", "dynamo"] = Field(
        "torchscript", description="torch.onnx.export with dynamo=False (torchscript: 20-30x "
        "faster here) or dynamo=True (opsets 18 and up).")


class TritonOptions(FormatOptions):
    """The ``triton`` format's options: its ``config.pbtxt``'s batching and instances."""

    max_batch_size: int = Field(64, ge=1, le=65536, description="Triton's max_batch_size.")
    max_queue_delay_us: int = Field(
        500, ge=0, le=10_000_000,
        description="dynamic_batching's max_queue_delay_microseconds (how long Triton waits "
                    "to fill a batch).")
    instance_count: int = Field(1, ge=1, le=256, description="Model instances on the CPU.")


class Int8Options(FormatOptions):
    """The ``int8`` format's options: calibration, activation type and the accuracy limit."""

    calibration_images: int = Field(512, ge=1, le=100_000, description="Training images its "
                                    "activation ranges are calibrated on.")
    activations: Literal["uint8", "int8"] = Field(
        "uint8", description="Activation type (uint8 x int8 weights: the operand order of "
        "VNNI and AVX2 integer dot products).")
    max_drop_points: float = Field(0.5, ge=0.0, le=100.0, description="The most top-1 "
                                   "accuracy (points) it may lose on the held-out split.")
    reduce_range: bool = Field(
        True, description="7-bit weights (onnxruntime's reduce_range): sums no CPU overflows, "
        "where 8-bit ones overflow x86's 16-bit sums without VNNI (AVX2); false "
        "only for CPUs with VNNI, AMX or Arm's dot product.")


@hookimpl
def zoo_export_formats() -> list[ExportFormat]:
    return [
        ExportFormat(name="onnx", summary="ONNX graph with a dynamic batch axis (onnxruntime)",
                     files=("model.onnx",), writer="zoo.exporter.onnx:write_onnx",
                     verifier="zoo.exporter.onnx:verify_onnx_format", options=OnnxOptions),
        ExportFormat(name="pt2", summary="torch.export ExportedProgram (torch.export.load)",
                     files=("model.pt2",), writer="zoo.exporter.pt2:write_pt2",
                     verifier="zoo.exporter.pt2:verify_pt2"),
        ExportFormat(name="triton",
                     summary="Triton model repository (tritonserver --model-repository=BUNDLE/"
                             "triton)",
                     files=("triton/{name}/config.pbtxt", "triton/{name}/1/model.onnx",
                            "triton/{name}/labels.txt"),
                     writer="zoo.exporter.triton:write_triton_format",
                     verifier="zoo.exporter.triton:verify_triton_format", options=TritonOptions),
        ExportFormat(name="int8",
                     summary="int8 ONNX graph (static QDQ, calibrated on training images; "
                             "refused if it loses accuracy on the held-out split)",
                     files=("model.int8.onnx",), writer="zoo.exporter.int8:write_int8",
                     verifier="zoo.exporter.int8:verify_int8", options=Int8Options),
    ]
