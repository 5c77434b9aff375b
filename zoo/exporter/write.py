"""Export a trained run, or any architecture, to a verified bundle (``zoo export``).

A bundle is built in a temporary folder beside its destination: the state_dict
(``model.pt``), then every format asked for, ``onnx`` first, each written and
verified through its plugin's writer and verifier (:mod:`zoo.exporter.formats`),
then the model card and, only if every check passed, the manifest; the folder is
then renamed into place. A bundle that fails verification never appears at its
destination: :class:`zoo.spec.manifest.VerificationError` carries the report.
"""

from __future__ import annotations

import errno
import hashlib
import io
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
import torch

from zoo.bundles.integrity import file_entry
from zoo.bundles.store import user_exports_dir
from zoo.errors import ExportError
from zoo.exporter.checks import check_tolerances, verification_inputs
from zoo.exporter.formats import format_options, parse_formats, write_and_verify
from zoo.exporter.modelcard import write_card
from zoo.exporter.onnx import Exporter, export_info
from zoo.exporter.source import MAX_EXPORT_PIXELS, checked_classes_and_normalization, load_source
from zoo.exporter.trainingdata import TrainingData
from zoo.host.registry import Registry, default_registry
from zoo.spec.exportformat import REQUIRED_FORMAT, ExportTarget
from zoo.spec.manifest import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    FORMAT_VERSION,
    MANIFEST_FILE,
    WEIGHTS_FILE,
    Manifest,
    Versions,
)
from zoo.util.fsutil import atomic_directory
from zoo.util.imaging import normalize
from zoo.util.version import __version__


@dataclass(frozen=True)
class ExportResult:
    """Where the bundle was written, its manifest (with the verification report) and identity.

    ``sha256`` is :func:`zoo.bundles.integrity.bundle_sha256` of the bundle: pin it with
    ``--expect-sha256`` / ``expect_sha256=`` wherever the bundle is used.
    """

    path: Path
    manifest: Manifest
    sha256: str = ""


def default_destination(name: str) -> Path:
    """``user_exports_dir()/NAME``: ``$ZOO_EXPORTS/NAME`` when set, else the user exports
    folder (``~/.local/share/zoo/exports/NAME`` on Linux), where ``zoo predict NAME``
    and ``zoo.load(NAME)`` find it by that name (:mod:`zoo.bundles.store`)."""
    return user_exports_dir() / name


def _versions() -> Versions:
    return Versions(zoo=__version__, torch=torch.__version__, onnx=onnx.__version__,
                    onnxruntime=ort.__version__, python=platform.python_version())


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
    exporter: Exporter | None = None,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    checkpoint: str = "best",
    seed: int = 0,
    registry: Registry | None = None,
    formats: str | Sequence[str] = "onnx",
    options: Mapping[str, Mapping[str, Any]] | None = None,
    weights: str | None = None,
    data_dir: str | Path | None = None,
) -> ExportResult:
    """Export a run directory, a bundle or an architecture to a verified bundle (``zoo.export``).

    ``source`` is a run directory (its ``best`` or ``last`` checkpoint, normalization,
    classes and validation samples), a bundle (a directory, a declared name such as
    ``"Net-cifar2"``, or an architecture with ``weights="cifar2"``: its weights and
    records, written again) or an architecture name with ``overrides`` (weights
    initialized with ``seed``, identity normalization, classes ``class0``...). The
    bundle goes to ``out``, by default :func:`default_destination` of a name that
    identifies the source (:mod:`zoo.exporter.source`), where ``zoo predict NAME``
    finds it. ``formats`` adds export formats to ONNX (``"pt2"``; :mod:`zoo.spec.exportformat`),
    each verified like it; ``options`` are the formats' options by format name
    (``{"onnx": {"opset": 18}}``), ``opset`` and ``exporter`` those of ``onnx``. A format
    that needs the weights' training data (``int8``: calibration, held-out accuracy)
    loads it again as the run did; ``data_dir`` says where it lies for a bundle, which
    does not record that (:mod:`zoo.exporter.trainingdata`).
    Raises :class:`ExportError` on bad input and
    :class:`~zoo.spec.manifest.VerificationError` (with the report) when the graph
    does not match; in both cases nothing is left at the destination.
    """
    registry = registry or default_registry()
    check_tolerances(atol, rtol)
    specs = parse_formats(formats, registry)
    given = {name: dict(values) for name, values in (options or {}).items()}
    onnx_given = given.setdefault(REQUIRED_FORMAT, {})
    for key, value in (("opset", opset), ("exporter", exporter)):
        if value is not None:
            if onnx_given.get(key, value) != value:
                raise ExportError(f"{key}={value!r} and the onnx option {key}="
                                  f"{onnx_given[key]!r} disagree; give one of them")
            onnx_given[key] = value
    chosen = format_options(specs, given)
    export_info(chosen[REQUIRED_FORMAT], 0.0)  # an opset the exporter cannot write: now
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ExportError(f"seed must be an integer from 0 to 2**63 - 1, got {seed!r}")
    src = load_source(source, overrides or {}, registry, checkpoint, seed, weights=weights,
                      formats=[s.name for s in specs])
    dest = Path(out) if out is not None else default_destination(src.name)
    _check_destination(dest, force)
    config = src.config
    shape = config.input_shape
    if shape.height * shape.width > MAX_EXPORT_PIXELS:
        raise ExportError(f"input size {shape.height}x{shape.width} is too large to export; "
                          f"accepted: at most {MAX_EXPORT_PIXELS} pixels (e.g. 1024x1024)")
    spec = registry.get_spec(config.architecture)
    classes, norm = checked_classes_and_normalization(src, source)
    samples = None if src.samples is None else normalize(src.samples, norm.mean, norm.std)
    inputs = verification_inputs(config, samples)
    target = ExportTarget(name=dest.name, classes=classes)
    model = src.model.eval()
    data = TrainingData(registry, config, norm, src.training, src.recipe,
                        data_dir=None if data_dir is None else Path(data_dir),
                        what=f"the source {str(source)!r}", local_paths=src.run_dir is not None)
    try:
        with atomic_directory(dest, replace=force) as tmp:
            state = io.BytesIO()
            torch.save(model.state_dict(), state)  # in memory: a full disk is an OSError
            (tmp / WEIGHTS_FILE).write_bytes(state.getbuffer())
            outcomes = {s.name: write_and_verify(s, model, tmp, config, inputs, atol, rtol,
                                                 options=chosen[s.name], target=target,
                                                 data=data)
                        for s in specs}
            onnx_outcome = outcomes.pop(REQUIRED_FORMAT)
            assert onnx_outcome.report is not None  # the onnx verifier gives its full report
            files = {WEIGHTS_FILE: file_entry(tmp / WEIGHTS_FILE), **onnx_outcome.files}
            for outcome in outcomes.values():
                files.update(outcome.files)
            manifest = Manifest(
                format_version=FORMAT_VERSION,
                architecture=config.architecture,
                model=config,
                provenance=spec.provenance,
                normalization=norm,
                classes=classes,
                num_parameters=sum(p.numel() for p in model.parameters()),
                training=src.training,
                files=files,
                formats={name: outcome.record for name, outcome in outcomes.items()},
                verification=onnx_outcome.report,
                export=export_info(chosen[REQUIRED_FORMAT],
                                   onnx_outcome.record.export_seconds),
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


__all__ = ["DEFAULT_ATOL", "DEFAULT_RTOL", "ExportResult", "default_destination", "export"]
