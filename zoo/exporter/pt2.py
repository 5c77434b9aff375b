"""The ``pt2`` export format: torch.export's ExportedProgram, saved with ``torch.export.save``.

The program has a dynamic batch axis (like the ONNX graph) and is verified by
loading it back (``torch.export.load``) and running it on the same inputs as
the ONNX checks. Load it with ``torch.export.load("model.pt2").module()``.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np
import torch

from zoo.errors import ExportError, reason
from zoo.exporter.checks import check_outputs
from zoo.spec.architecture import ModelConfig
from zoo.spec.manifest import CheckResult

PT2_FILE = "model.pt2"


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


def verify_pt2(model: torch.nn.Module, directory: Path, config: ModelConfig,
               inputs: list[tuple[str, np.ndarray]], atol: float,
               rtol: float) -> list[CheckResult]:
    """Load ``model.pt2`` back and compare it with the eager ``model`` on ``inputs``."""
    loaded = torch.export.load(directory / PT2_FILE).module()
    checks = []
    for name, x in inputs:
        with torch.no_grad():
            expected = model.eval()(torch.from_numpy(x)).numpy()
            actual = loaded(torch.from_numpy(x)).numpy()
        checks.append(check_outputs(name, expected, actual, atol, rtol))
    return checks
