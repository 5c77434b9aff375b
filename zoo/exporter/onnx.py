"""The ``onnx`` export format: the graph every bundle holds, written and verified.

Declared by the core plugin ``formats`` (:mod:`zoo.builtin.formats`) and reached
through the same hook path as any format: :func:`write_onnx` is its writer,
:func:`verify_onnx_format` its verifier.

The exporter is ``torch.onnx.export(..., dynamo=False)`` (the TorchScript
exporter) by default: on the project's 2-core CPU it exports the chapter-8
networks in 0.03-0.5 s where the dynamo exporter takes 1.9-3.6 s (plus a
one-off 2-3 s import), and both produce graphs that verify to ~1e-7. The
format's ``exporter`` option (``zoo export --exporter dynamo``, opsets 18 and up)
selects the other; the manifest records which one was used
(``bench/bench_export.py`` measures both).

The graph carries the model's identity in its ``metadata_props`` (architecture,
hyperparameters, input shape, number of classes: :func:`zoo.spec.manifest.graph_metadata`),
which readers check against the manifest (:func:`zoo.deploy.runtime.check_identity`).
Class names that hold control characters are refused before anything is written.

The verification is the ``onnx.checker`` full check, a probe batch that must give
one logit per class, then onnxruntime against the PyTorch model in eval mode on
the verification inputs, and the median onnxruntime latency at batch 1.
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort
import torch

from zoo.deploy.runtime import median_latency_ms, ort_session
from zoo.errors import ContractError, ExportError, reason
from zoo.exporter.checks import check_outputs, check_tolerances
from zoo.host.contract import PROBE_BATCH
from zoo.spec.architecture import ModelConfig
from zoo.spec.exportformat import ExportTarget
from zoo.spec.manifest import (
    INPUT_NAME,
    ONNX_FILE,
    OUTPUT_NAME,
    ExportInfo,
    VerificationReport,
    graph_metadata,
    unprintable,
)
from zoo.util.threads import default_threads

Exporter = Literal["torchscript", "dynamo"]
EXPORTERS: tuple[Exporter, ...] = ("torchscript", "dynamo")
DEFAULT_EXPORTER: Exporter = "torchscript"
LATENCY_RUNS = 100
#: The dynamo exporter's lowest native opset (the TorchScript one's floor is read from torch).
DYNAMO_MIN_OPSET = 18
DEFAULT_OPSET = 17


def opset_range(exporter: Exporter) -> tuple[int, int]:
    """The opsets ``exporter`` can produce with the installed torch, inclusive."""
    from torch.onnx import _constants

    if exporter == "torchscript":
        return int(_constants.ONNX_MIN_OPSET), int(_constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)
    return DYNAMO_MIN_OPSET, int(_constants.ONNX_MAX_OPSET)


def check_opset(opset: int | None, exporter: Exporter) -> int:
    """The opset to write: ``opset`` if ``exporter`` can produce it, else an ExportError."""
    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter {exporter!r}; accepted: {', '.join(EXPORTERS)}")
    low, high = opset_range(exporter)
    if opset is None:
        return min(max(DEFAULT_OPSET, low), high)
    if not low <= opset <= high:
        raise ExportError(f"opset {opset} cannot be produced by the {exporter} exporter of "
                          f"torch {torch.__version__}; accepted: {low} to {high}")
    return opset


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def export_onnx(model: torch.nn.Module, path: Path, config: ModelConfig, *, opset: int,
                exporter: Exporter = DEFAULT_EXPORTER) -> float:
    """Write ``model`` (eval mode) as ONNX with a dynamic batch axis; return the seconds taken."""
    model.eval()
    example = torch.zeros((2, *config.input_shape.as_tuple()))
    start = time.perf_counter()
    try:
        with _quiet(), torch.no_grad():
            if exporter == "torchscript":
                torch.onnx.export(
                    model, (example,), str(path), dynamo=False, opset_version=opset,
                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                    dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                    do_constant_folding=True,
                )
            else:
                torch.onnx.export(
                    model, (example,), str(path), dynamo=True, opset_version=opset,
                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                    dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                    external_data=False,
                )
    except Exception as exc:  # the exporters raise many types; one clear error
        raise ExportError(f"the {exporter} exporter failed on {config.architecture} at opset "
                          f"{opset}: {reason(exc)}") from None
    stamp_identity(path, config)
    return time.perf_counter() - start


def stamp_identity(path: Path, config: ModelConfig) -> None:
    """Record ``config``'s identity in the graph at ``path`` (its ``metadata_props``)."""
    graph = onnx.load(str(path))
    stamp = graph_metadata(config)
    kept = [(p.key, p.value) for p in graph.metadata_props if p.key not in stamp]
    del graph.metadata_props[:]
    for key, value in [*kept, *sorted(stamp.items())]:
        graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, str(path))


def check_class_names(classes: tuple[str, ...], architecture: str) -> None:
    """Class names printable, or an ExportError naming the first that is not (``repr``)."""
    for index, name in enumerate(classes):
        found = unprintable(name)
        if found is not None:
            raise ExportError(f"cannot export {architecture}: class {index} {name!r} holds the "
                              f"control character {found!r}; accepted: printable text (rename "
                              "the class)")


def write_onnx(model: torch.nn.Module, directory: Path, config: ModelConfig, *,
               options: Any, target: ExportTarget | None = None) -> None:
    """The ``onnx`` format's writer: ``model.onnx`` with the options' exporter and opset."""
    if target is not None:
        check_class_names(target.classes, config.architecture)
    export_onnx(model, directory / ONNX_FILE, config,
                opset=check_opset(options.opset, options.exporter), exporter=options.exporter)


def export_info(options: Any, seconds: float) -> ExportInfo:
    """What the manifest records of how the graph was produced (its ``export`` field)."""
    return ExportInfo(exporter=options.exporter, opset=check_opset(options.opset,
                                                                   options.exporter),
                      export_seconds=seconds)


def check_onnx_output(onnx_path: Path, config: ModelConfig, classes: tuple[str, ...]) -> None:
    """The ONNX graph must map a probe batch to one logit per class of the manifest.

    Run with onnxruntime on a zero batch of :data:`~zoo.host.contract.PROBE_BATCH`
    images, so that a graph that only agrees with a wrong PyTorch model never
    becomes a bundle.
    """
    probe = np.zeros((PROBE_BATCH, *config.input_shape.as_tuple()), dtype=np.float32)
    try:
        out = ort_session(onnx_path, threads=1).run(None, {INPUT_NAME: probe})
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ContractError(f"onnxruntime cannot run the ONNX graph of {config.architecture} "
                            f"on a {tuple(probe.shape)} probe: {reason(exc)}") from exc
    wanted = (PROBE_BATCH, len(classes))
    seen = tuple(int(d) for d in np.asarray(out[0]).shape) if out else ()
    if len(out) != 1 or seen != wanted:
        raise ContractError(
            f"the ONNX graph of {config.architecture} maps {tuple(probe.shape)} to "
            f"{len(out)} output(s) of shape {seen}; expected one of "
            f"{wanted}, a logit per class of the manifest ({', '.join(classes)})")


def batch1_latency_ms(session: ort.InferenceSession, shape: tuple[int, ...],
                      runs: int = LATENCY_RUNS) -> float:
    """The median latency of a graph at batch 1 (a fixed random input of ``shape``), in ms:
    what a bundle records of each graph it holds."""
    x = np.random.default_rng(1).standard_normal((1, *shape)).astype(np.float32)
    return median_latency_ms(session, x, runs)


def verify_onnx(model: torch.nn.Module, onnx_path: Path, config: ModelConfig,
                inputs: list[tuple[str, np.ndarray]], *, atol: float, rtol: float,
                latency_runs: int = LATENCY_RUNS) -> VerificationReport:
    """Check the graph at ``onnx_path`` against ``model`` (eval mode) on ``inputs``."""
    check_tolerances(atol, rtol)
    start = time.perf_counter()
    model.eval()
    try:
        onnx.checker.check_model(str(onnx_path), full_check=True)
        checker = "passed (full_check)"
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        return VerificationReport(passed=False, atol=atol, rtol=rtol,
                                  onnx_checker=f"FAILED: {reason(exc)}",
                                  seconds=time.perf_counter() - start)
    threads = default_threads()
    session = ort_session(onnx_path, threads=threads)
    checks = []
    for name, x in inputs:
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        try:
            actual = np.asarray(session.run(None, {INPUT_NAME: x})[0])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ExportError(f"onnxruntime failed to run {onnx_path.name} on {name}: "
                              f"{reason(exc)}") from None
        checks.append(check_outputs(name, expected, actual, atol, rtol))
    shape = config.input_shape.as_tuple()
    latency = batch1_latency_ms(session, shape, latency_runs) if latency_runs > 0 else None
    return VerificationReport(
        passed=all(c.passed for c in checks), atol=atol, rtol=rtol, onnx_checker=checker,
        checks=tuple(checks), ort_latency_ms_batch1=latency, ort_threads=threads,
        seconds=time.perf_counter() - start)


def verify_onnx_format(model: torch.nn.Module, directory: Path, config: ModelConfig,
                       inputs: list[tuple[str, np.ndarray]], atol: float, rtol: float, *,
                       target: ExportTarget) -> VerificationReport:
    """The ``onnx`` format's verifier: a probe batch gives one logit per class of ``target``,
    then :func:`verify_onnx`."""
    check_onnx_output(directory / ONNX_FILE, config, target.classes)
    return verify_onnx(model, directory / ONNX_FILE, config, inputs, atol=atol, rtol=rtol)


__all__ = ["DEFAULT_EXPORTER", "DEFAULT_OPSET", "EXPORTERS", "Exporter", "check_class_names",
           "check_onnx_output", "check_opset", "export_info", "export_onnx", "opset_range",
           "stamp_identity", "verify_onnx", "verify_onnx_format", "write_onnx"]
