"""Core plugin: the zoo's own export formats, ``onnx`` and ``pt2``."""

from __future__ import annotations

from zoo.exportformats import ExportFormat
from zoo.hookspecs import hookimpl


@hookimpl
def zoo_export_formats() -> list[ExportFormat]:
    return [
        ExportFormat(name="onnx", summary="ONNX graph with a dynamic batch axis (onnxruntime)",
                     files=("model.onnx",), writer="zoo.exporter:write_onnx_format",
                     verifier="zoo.exporter:verify_onnx_format"),
        ExportFormat(name="pt2", summary="torch.export ExportedProgram (torch.export.load)",
                     files=("model.pt2",), writer="zoo.pt2:write_pt2",
                     verifier="zoo.pt2:verify_pt2"),
    ]
