"""Export a trained run, or any architecture, to a verified bundle (``zoo export``).

A bundle is built in a temporary folder beside its destination: the state_dict
(``model.pt``), the ONNX graph with a dynamic batch axis (``model.onnx``), then
the verification (``onnx.checker`` full check, and onnxruntime against the
PyTorch model in eval mode on random inputs at batch 1 and 7 and on the run's
validation samples), and only if that passes the manifest; the folder is then
renamed into place. A bundle that fails verification never appears at its
destination: :class:`zoo.manifest.VerificationError` carries the report.

The exporter is ``torch.onnx.export(..., dynamo=False)`` (the TorchScript
exporter) by default: on the project's 2-core CPU it exports the chapter-8
networks in 0.03-0.5 s where the dynamo exporter takes 1.9-3.6 s (plus a
one-off 2-3 s import), and both produce graphs that verify to ~1e-7.
``exporter="dynamo"`` (opsets 18 and up) selects the other; the manifest
records which one was used (``bench/bench_export.py`` measures both).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import platform
import statistics
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort
import torch

from zoo import __version__
from zoo.bundle import load_bundle
from zoo.checkpoint import load_run_model
from zoo.contract import check_onnx_output
from zoo.deploy import default_threads, load_graph, ort_session
from zoo.errors import ExportError, UnknownArchitectureError, reason
from zoo.exportformats import compare, parse_formats, write_formats
from zoo.fsutil import atomic_directory
from zoo.imaging import normalize
from zoo.manifest import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    FORMAT_VERSION,
    INPUT_NAME,
    MANIFEST_FILE,
    ONNX_FILE,
    OUTPUT_NAME,
    WEIGHTS_FILE,
    CheckResult,
    ExportInfo,
    Manifest,
    TrainingInfo,
    VerificationError,
    VerificationReport,
    Versions,
    check_normalization,
    file_entry,
)
from zoo.modelcard import write_card
from zoo.portable import portable_recipe, portable_source
from zoo.pretrained import accuracy_split, user_exports_dir
from zoo.registry import Registry, default_registry
from zoo.run import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    SUMMARY_FILE,
    VAL_SAMPLES,
    Normalization,
    RunSummary,
)
from zoo.spec import ModelConfig

Exporter = Literal["torchscript", "dynamo"]
EXPORTERS: tuple[Exporter, ...] = ("torchscript", "dynamo")
DEFAULT_EXPORTER: Exporter = "torchscript"
#: Batch sizes of the random-input checks: 1 and a batch other than the export's example (2).
RANDOM_BATCHES = (1, 7)
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
    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter {exporter!r}; accepted: {', '.join(EXPORTERS)}")
    low, high = opset_range(exporter)
    if opset is None:
        return min(max(DEFAULT_OPSET, low), high)
    if not low <= opset <= high:
        raise ExportError(f"opset {opset} cannot be produced by the {exporter} exporter of "
                          f"torch {torch.__version__}; accepted: {low} to {high}")
    return opset


@dataclass(frozen=True)
class ExportResult:
    """Where the bundle was written, its manifest (with the verification report) and identity.

    ``sha256`` is :func:`zoo.manifest.bundle_sha256` of the bundle: pin it with
    ``--expect-sha256`` / ``expect_sha256=`` wherever the bundle is used.
    """

    path: Path
    manifest: Manifest
    sha256: str = ""


#: The largest input an export accepts, in pixels per channel (height x width): the
#: verification runs the model at batch 7 and the graph is built for it.
MAX_EXPORT_PIXELS = 1024 * 1024


@dataclass
class _Source:
    model: torch.nn.Module
    config: ModelConfig
    summary: RunSummary | None
    checkpoint: str | None
    samples: np.ndarray | None
    name: str
    run_dir: Path | None = None


def _identity_normalization(channels: int) -> Normalization:
    return Normalization(mean=(0.0,) * channels, std=(1.0,) * channels)


def _load_source(source: str | Path, overrides: Mapping[str, Any], registry: Registry,
                 checkpoint: str, seed: int) -> _Source:
    path = Path(source)
    text = str(source)
    looks_like_name = (isinstance(source, str) and "/" not in text and os.sep not in text
                       and text not in ("", ".", ".."))
    if (path / SUMMARY_FILE).is_file() or not looks_like_name:
        if overrides:
            raise ExportError("--set overrides apply to an architecture name, not to run "
                              f"directory {str(source)!r} (its hyperparameters are fixed)")
        if not path.exists():
            raise ExportError(f"run directory {str(source)!r} does not exist")
        if not (path / SUMMARY_FILE).is_file():
            raise ExportError(f"{str(source)!r} is not a run directory (it has no {SUMMARY_FILE}) "
                              "nor an architecture name")
        which = {"best": BEST_CHECKPOINT, "last": LAST_CHECKPOINT}.get(checkpoint)
        if which is None:
            raise ExportError(f"unknown checkpoint {checkpoint!r}; accepted: best, last")
        model, summary, _ = load_run_model(path, registry, which, command="zoo export",
                                           error=ExportError)
        samples = None
        sample_path = path / VAL_SAMPLES
        if sample_path.is_file():
            try:
                samples = np.load(sample_path, allow_pickle=False)
            except (ValueError, OSError, EOFError) as exc:  # damaged, or pickled objects
                raise ExportError(f"{sample_path} is not a plain array of images: "
                                  f"{reason(exc)}") from None
            expected = summary.model.input_shape.as_tuple()
            if samples.ndim != 4 or samples.shape[1:] != expected or samples.dtype != np.uint8:
                raise ExportError(f"{sample_path} holds {samples.dtype} {samples.shape}; expected "
                                  f"uint8 (N, {', '.join(map(str, expected))})")
            if len(samples) == 0:
                samples = None
        return _Source(model, summary.model, summary, which, samples,
                       f"{summary.model.architecture}-{summary.data.dataset}", path)
    try:
        config = registry.resolve(text, **dict(overrides))
    except UnknownArchitectureError as exc:
        if path.is_dir():
            raise ExportError(f"{text!r} is neither a run directory (it has no {SUMMARY_FILE}) "
                              f"nor an architecture name ({exc})") from None
        raise
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = registry.build(config)
    return _Source(model, config, None, None, None, config.architecture)


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
    return time.perf_counter() - start


def _latency_ms(session: ort.InferenceSession, shape: tuple[int, int, int], runs: int) -> float:
    x = np.random.default_rng(1).standard_normal((1, *shape)).astype(np.float32)
    feed = {INPUT_NAME: x}
    for _ in range(10):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def default_destination(name: str) -> Path:
    """``user_exports_dir()/NAME``: ``$ZOO_EXPORTS/NAME`` when set, else the user exports
    folder (``~/.local/share/zoo/exports/NAME`` on Linux), where ``zoo predict NAME``
    and ``zoo.load(NAME)`` look (:func:`zoo.pretrained.search_dirs`)."""
    return user_exports_dir() / name


def check_tolerances(atol: float, rtol: float) -> None:
    """Tolerances must be finite and non-negative (NaN would fail every comparison)."""
    if not (0 <= atol < float("inf") and 0 <= rtol < float("inf")):
        raise ExportError(f"tolerances must be finite and non-negative, got atol {atol} and "
                          f"rtol {rtol}")


def check_inputs(config: ModelConfig, samples: np.ndarray | None,
                 seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """The inputs every format is checked on: random batches of 1 and 7, and the samples."""
    rng = np.random.default_rng(seed)
    shape = config.input_shape.as_tuple()
    inputs = [(f"random batch {n}", rng.standard_normal((n, *shape)).astype(np.float32))
              for n in RANDOM_BATCHES]
    if samples is not None and len(samples):
        inputs.append((f"val samples ({len(samples)})", samples.astype(np.float32)))
    return inputs


def write_onnx_format(model: torch.nn.Module, directory: Path, config: ModelConfig) -> None:
    """The ``onnx`` format's writer (default exporter and opset)."""
    export_onnx(model, directory / ONNX_FILE, config,
                opset=check_opset(None, DEFAULT_EXPORTER))


def verify_onnx_format(model: torch.nn.Module, directory: Path, config: ModelConfig,
                       inputs: list[tuple[str, np.ndarray]], atol: float,
                       rtol: float) -> list[CheckResult]:
    """The ``onnx`` format's verifier: onnxruntime against the eager model on ``inputs``."""
    session = ort_session(directory / ONNX_FILE, threads=default_threads())
    with torch.no_grad():
        return [compare(name, model.eval()(torch.from_numpy(x)).numpy(),
                        np.asarray(session.run(None, {INPUT_NAME: x})[0]), atol, rtol)
                for name, x in inputs]


def verify_onnx(model: torch.nn.Module, onnx_path: Path, config: ModelConfig, *,
                samples: np.ndarray | None = None, atol: float = DEFAULT_ATOL,
                rtol: float = DEFAULT_RTOL, seed: int = 0,
                latency_runs: int = LATENCY_RUNS) -> VerificationReport:
    """Check ``onnx_path`` against ``model`` (eval mode); ``samples`` are already normalized."""
    check_tolerances(atol, rtol)
    start = time.perf_counter()
    model.eval()
    try:
        onnx.checker.check_model(str(onnx_path), full_check=True)
        checker = "passed (full_check)"
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        checker = f"FAILED: {reason(exc)}"
        return VerificationReport(passed=False, atol=atol, rtol=rtol, onnx_checker=checker,
                                  seconds=time.perf_counter() - start)
    threads = default_threads()
    session = ort_session(onnx_path, threads=threads)
    shape = config.input_shape.as_tuple()
    inputs = check_inputs(config, samples, seed)
    checks = []
    for name, x in inputs:
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        try:
            actual = np.asarray(session.run(None, {INPUT_NAME: x})[0])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ExportError(f"onnxruntime failed to run {onnx_path.name} on {name}: "
                              f"{reason(exc)}") from None
        checks.append(compare(name, expected, actual, atol, rtol))
    latency = _latency_ms(session, shape, latency_runs) if latency_runs > 0 else None
    return VerificationReport(
        passed=all(c.passed for c in checks), atol=atol, rtol=rtol, onnx_checker=checker,
        checks=tuple(checks), ort_latency_ms_batch1=latency, ort_threads=threads,
        seconds=time.perf_counter() - start)


def _versions() -> Versions:
    return Versions(zoo=__version__, torch=torch.__version__, onnx=onnx.__version__,
                    onnxruntime=ort.__version__, python=platform.python_version())


def _training(summary: RunSummary, checkpoint: str) -> TrainingInfo:
    data = summary.data
    info = TrainingInfo(
        # no paths of this machine in a bundle: the data directory's last component only
        dataset=data.dataset, source=portable_source(data.source), content_key=data.content_key,
        split=data.split, train_size=data.train_size, val_size=data.val_size, seed=summary.seed,
        device=summary.device, epochs_completed=summary.epochs_completed,
        train_seconds=summary.train_seconds, recipe=portable_recipe(summary.train_config),
        checkpoint=checkpoint,
        best=summary.best, last=summary.last)
    return info.model_copy(update={"val_images": accuracy_split(info)})


def _check_destination(dest: Path, force: bool) -> None:
    if not dest.exists() and not dest.is_symlink():
        return
    if not force:
        raise ExportError(f"{dest} already exists; pass --force (force=True) to replace it")
    is_bundle = dest.is_dir() and (dest / MANIFEST_FILE).is_file()
    is_empty = dest.is_dir() and not any(dest.iterdir())
    if not (is_bundle or is_empty):
        raise ExportError(f"{dest} exists and is not a bundle; --force replaces only a bundle "
                          "directory (one holding manifest.json) or an empty directory")


def export(
    source: str | Path,
    *,
    overrides: Mapping[str, Any] | None = None,
    out: str | Path | None = None,
    force: bool = False,
    opset: int | None = None,
    exporter: Exporter = DEFAULT_EXPORTER,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    checkpoint: str = "best",
    seed: int = 0,
    registry: Registry | None = None,
    formats: str | Sequence[str] = "onnx",
) -> ExportResult:
    """Export a run directory or an architecture name to a verified bundle (``zoo.export``).

    ``source`` is a run directory (its ``best`` or ``last`` checkpoint, normalization,
    classes and validation samples) or an architecture name with ``overrides``
    (weights initialized with ``seed``, identity normalization, classes
    ``class0``...). The bundle goes to ``out``, by default ``exports/<Arch>-<dataset>``
    for a run and ``exports/<Arch>`` for a name. ``formats`` adds export formats to
    ONNX (``"onnx,pt2"``, :mod:`zoo.exportformats`), each verified like it. Raises
    :class:`ExportError` on bad input and :class:`~zoo.manifest.VerificationError` (with
    the report) when the graph does not match; in both cases nothing is left at the destination.
    """
    registry = registry or default_registry()
    check_tolerances(atol, rtol)
    opset = check_opset(opset, exporter)
    format_specs = parse_formats(formats, registry)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ExportError(f"seed must be an integer from 0 to 2**63 - 1, got {seed!r}")
    src = _load_source(source, overrides or {}, registry, checkpoint, seed)
    dest = Path(out) if out is not None else default_destination(src.name)
    _check_destination(dest, force)
    config = src.config
    shape = config.input_shape
    if shape.height * shape.width > MAX_EXPORT_PIXELS:
        raise ExportError(f"input size {shape.height}x{shape.width} is too large to export; "
                          f"accepted: at most {MAX_EXPORT_PIXELS} pixels (e.g. 1024x1024)")
    spec = registry.get_spec(config.architecture)
    if src.summary is not None:
        norm = src.summary.normalization
        classes = tuple(src.summary.data.classes)
    else:
        norm = _identity_normalization(config.input_shape.channels)
        classes = tuple(f"class{i}" for i in range(config.num_classes))
    if len(classes) != config.num_classes:
        raise ExportError(f"the run names {len(classes)} classes but its model has "
                          f"{config.num_classes} outputs")
    if len(norm.mean) != config.input_shape.channels:
        raise ExportError(f"the run's normalization has {len(norm.mean)} channels but the model "
                          f"takes {config.input_shape.channels}")
    check_normalization(norm, config.input_shape.channels, f"run {str(source)!r}")
    samples = None
    if src.samples is not None:
        samples = normalize(src.samples, norm.mean, norm.std)
    model = src.model.eval()
    try:
        with atomic_directory(dest, replace=force) as tmp:
            weights = io.BytesIO()
            torch.save(model.state_dict(), weights)  # in memory: a full disk is an OSError
            (tmp / WEIGHTS_FILE).write_bytes(weights.getbuffer())
            seconds = export_onnx(model, tmp / ONNX_FILE, config, opset=opset, exporter=exporter)
            check_onnx_output(tmp / ONNX_FILE, config, classes)
            report = verify_onnx(model, tmp / ONNX_FILE, config, samples=samples, atol=atol,
                                 rtol=rtol)
            if not report.passed:
                raise VerificationError(
                    f"the ONNX graph of {config.architecture} does not match PyTorch within "
                    f"atol {atol:g} and rtol {rtol:g}; nothing was written to {dest}", report)
            records, extra_files = write_formats(format_specs, model, tmp, config,
                                                 check_inputs(config, samples), atol, rtol)
            manifest = Manifest(
                format_version=FORMAT_VERSION,
                architecture=config.architecture,
                model=config,
                provenance=spec.provenance,
                normalization=norm,
                classes=classes,
                num_parameters=sum(p.numel() for p in model.parameters()),
                training=(_training(src.summary, src.checkpoint or BEST_CHECKPOINT)
                          if src.summary is not None else None),
                files={**{name: file_entry(tmp / name) for name in (WEIGHTS_FILE, ONNX_FILE)},
                       **extra_files},
                formats=records,
                verification=report,
                export=ExportInfo(exporter=exporter, opset=opset, export_seconds=seconds),
                versions=_versions(),
                created=datetime.now(timezone.utc),
            )
            # the model card and its pictures, hashed by the manifest like the model files
            card = write_card(tmp, manifest, dest.name, spec=spec, summary=src.summary,
                              run_dir=src.run_dir)
            manifest = manifest.model_copy(update={"files": {
                **manifest.files, **{name: file_entry(tmp / name) for name in card}}})
            manifest_bytes = manifest.to_json().encode("utf-8")
            (tmp / MANIFEST_FILE).write_bytes(manifest_bytes)
    except FileExistsError:
        raise ExportError(f"{dest} appeared while exporting; pass --force to replace it") from None
    except OSError as exc:
        why = "the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else (
            exc.strerror or str(exc))
        kept = "the existing bundle is unchanged" if dest.exists() else "nothing was written"
        raise ExportError(f"cannot write bundle {dest}: {why}; {kept}") from None
    return ExportResult(path=dest, manifest=manifest,
                        sha256=hashlib.sha256(manifest_bytes).hexdigest())


def verify_bundle(bundle: str | Path, *, atol: float | None = None, rtol: float | None = None,
                  registry: Registry | None = None,
                  expect_sha256: str | None = None) -> VerificationReport:
    """Re-run a bundle's checks (``zoo.verify``): SHA-256 sums, manifest, safe load, numerics.

    Tolerances default to those recorded in the manifest. Returns the report (its
    ``passed`` says whether the graph matches); a missing, tampered or unreadable
    bundle, or one whose graph disagrees with its manifest, raises
    :class:`~zoo.errors.BundleError`.
    """
    loaded = load_bundle(bundle, registry=registry, expect_sha256=expect_sha256)
    load_graph(loaded.path, loaded.manifest)  # no external data; inputs and outputs agree
    recorded = loaded.manifest.verification
    return verify_onnx(loaded.model, loaded.path / ONNX_FILE, loaded.manifest.model,
                       atol=recorded.atol if atol is None else atol,
                       rtol=recorded.rtol if rtol is None else rtol)


__all__ = ["DEFAULT_ATOL", "DEFAULT_RTOL", "EXPORTERS", "ExportResult", "check_opset", "export",
           "export_onnx", "opset_range", "verify_bundle", "verify_onnx"]
