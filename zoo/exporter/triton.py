"""The ``triton`` export format: a Triton model repository inside the bundle.

``zoo export RUN --format triton`` writes ``triton/NAME/config.pbtxt``,
``triton/NAME/1/model.onnx`` (the verified graph, byte for byte) and
``triton/NAME/labels.txt`` beside the bundle's own files, NAME being the bundle's
name; ``tritonserver --model-repository=BUNDLE/triton`` then serves it under the
names and shapes ``zoo serve`` uses. Declared by the core plugin ``formats`` and
written through the same path as every format; the verifier parses
``config.pbtxt`` with Triton's own ``ModelConfig`` schema (``tritonclient[grpc]``),
checks it against the graph, and runs the repository's graph against the eager
model on the verification inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.deploy.runtime import ort_session
from zoo.deploy.triton import VERSION, TritonModel, model_files, verify_triton
from zoo.errors import BundleError
from zoo.exporter.checks import check_outputs
from zoo.spec.architecture import ModelConfig
from zoo.spec.exportformat import ExportTarget
from zoo.spec.manifest import INPUT_NAME, ONNX_FILE, CheckResult

#: Where the repository goes inside the bundle.
REPOSITORY = "triton"


def write_triton_format(model: torch.nn.Module, directory: Path, config: ModelConfig, *,
                        options: Any, target: ExportTarget) -> None:
    """The format's writer: the model directory ``triton/NAME`` from ``model.onnx``."""
    triton = TritonModel(name=target.name, classes=target.classes,
                         input_dims=config.input_shape.as_tuple(),
                         max_batch_size=options.max_batch_size,
                         max_queue_delay_us=options.max_queue_delay_us,
                         instance_count=options.instance_count)
    model_dir = directory / REPOSITORY / target.name
    (model_dir / VERSION).mkdir(parents=True)
    for name, data in model_files(triton, (directory / ONNX_FILE).read_bytes()).items():
        (model_dir / name).write_bytes(data)


def _model_dir(directory: Path) -> Path:
    found = sorted(p.parent for p in (directory / REPOSITORY).glob("*/config.pbtxt"))
    if len(found) != 1:
        raise BundleError(f"{directory / REPOSITORY} holds {len(found)} Triton models; the "
                          "triton format writes one")
    return found[0]


def verify_triton_format(model: torch.nn.Module, directory: Path, config: ModelConfig,
                         inputs: list[tuple[str, np.ndarray]], atol: float, rtol: float, *,
                         target: ExportTarget) -> list[CheckResult]:
    """The format's verifier: the repository checked against its graph and the classes,
    then its graph (on onnxruntime) against the eager ``model``."""
    model_dir = _model_dir(directory)
    verify_triton(model_dir, classes=target.classes)
    session = ort_session((model_dir / VERSION / ONNX_FILE).read_bytes(), threads=1)
    checks = []
    for name, x in inputs:
        with torch.no_grad():
            expected = model.eval()(torch.from_numpy(x)).numpy()
        actual = np.asarray(session.run(None, {INPUT_NAME: x})[0])
        checks.append(check_outputs(name, expected, actual, atol, rtol))
    return checks


__all__ = ["REPOSITORY", "verify_triton_format", "write_triton_format"]
