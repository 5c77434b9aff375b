"""Writing and verifying export formats: one path for every format, ONNX included.

The formats are plugins' :class:`~zoo.spec.exportformat.ExportFormat` specs, as the
registry collected them (:meth:`zoo.Registry.formats`). :func:`parse_formats` turns
``--format`` into specs (ONNX always first), :func:`format_options` validates each
format's options, and :func:`write_and_verify` writes one format into the bundle
being built, checks its files are there, and runs its verifier: its writer and
verifier are plugin code, so what they raise is a :class:`~zoo.errors.PluginError`
naming the plugin. A format whose checks fail fails the export.
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from zoo.bundles.integrity import file_entry
from zoo.errors import ExportError
from zoo.exporter.trainingdata import TrainingData
from zoo.host.contract import call_plugin
from zoo.host.registry import Registry
from zoo.spec.architecture import ModelConfig
from zoo.spec.exportformat import REQUIRED_FORMAT, ExportFormat, ExportTarget, FormatOptions
from zoo.spec.manifest import (
    CheckResult,
    FileEntry,
    FormatRecord,
    VerificationError,
    VerificationReport,
)


def parse_formats(names: str | Sequence[str], registry: Registry) -> list[ExportFormat]:
    """``"pt2"``, ``"onnx,pt2"`` (or a list) as format specs, ``onnx`` first (every bundle
    holds it, asked for or not); an unknown name is an :class:`ExportError`."""
    wanted = [n.strip() for n in (names.split(",") if isinstance(names, str) else names)]
    wanted = list(dict.fromkeys([REQUIRED_FORMAT, *(n for n in wanted if n)]))
    return [registry.get_format(name) for name in wanted]


def format_options(formats: Sequence[ExportFormat],
                   given: Mapping[str, Mapping[str, Any]]) -> dict[str, FormatOptions]:
    """Each format's options, validated by its options model (``given``: by format name)."""
    names = {spec.name for spec in formats}
    for name in given:
        if name not in names:
            raise ExportError(f"options were given for export format {name!r}, which is not "
                              f"written; written: {', '.join(sorted(names))}")
    out: dict[str, FormatOptions] = {}
    for spec in formats:
        try:
            out[spec.name] = spec.options.model_validate(dict(given.get(spec.name, {})))
        except ValidationError as exc:
            err = exc.errors()[0]
            key = ".".join(str(p) for p in err["loc"]) or "(options)"
            accepted = ", ".join(spec.options.model_fields) or "none"
            raise ExportError(f"invalid option {spec.name}.{key}={err.get('input')!r}: "
                              f"{err['msg']}; the {spec.name} format's options: {accepted}"
                              ) from None
    return out


def _call(what: str, spec: ExportFormat, fn: Callable[..., Any], *args: Any,
          **optional: Any) -> Any:
    """Call a writer or verifier with the keyword arguments its signature names; an
    OSError (a full disk, a permission) is the environment's and passes as it is."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in optional.items() if takes_all or k in params}
    return call_plugin(f"the {what} {getattr(spec, what)!r} of export format {spec.name!r}",
                       spec.provenance, fn, *args, passthrough=(OSError,), **kwargs)


def _written(directory: Path, name: str) -> bool:
    """Whether ``directory/name`` is a regular file reached through no symbolic link."""
    path = directory
    for part in name.split("/"):
        path = path / part
        if path.is_symlink():
            return False
    return path.is_file()


@dataclass(frozen=True)
class FormatOutcome:
    """What writing and verifying one format gave: its record, report and files."""

    record: FormatRecord
    report: VerificationReport | None
    files: dict[str, FileEntry]


def run_verifier(spec: ExportFormat, model: Any, directory: Path, config: ModelConfig,
                 inputs: list[tuple[str, np.ndarray]], atol: float, rtol: float, *,
                 options: FormatOptions, target: ExportTarget, data: TrainingData | None = None
                 ) -> tuple[tuple[CheckResult, ...], VerificationReport | None]:
    """Run ``spec``'s verifier: its checks, and its full report if it gives one. ``data``
    (None when re-checking a bundle, which keeps no data) goes to a verifier that names it."""
    result = _call("verifier", spec, spec.load_verifier(), model, directory, config, inputs,
                   atol, rtol, options=options, target=target,
                   **({} if data is None else {"data": data}))
    if isinstance(result, VerificationReport):
        return result.checks, result
    if isinstance(result, (list, tuple)) and all(isinstance(c, CheckResult) for c in result):
        return tuple(result), None
    raise ExportError(f"the verifier {spec.verifier!r} of export format {spec.name!r} from "
                      f"{spec.provenance.describe() if spec.provenance else 'its plugin'} "
                      f"returned {type(result).__name__}, not a list of CheckResult")


def write_and_verify(spec: ExportFormat, model: Any, directory: Path, config: ModelConfig,
                     inputs: list[tuple[str, np.ndarray]], atol: float, rtol: float, *,
                     options: FormatOptions, target: ExportTarget,
                     data: TrainingData | None = None) -> FormatOutcome:
    """Write format ``spec`` into ``directory`` (the bundle being built), then verify it.

    ``data``, the weights' training data, goes to a writer and a verifier that name
    it; it loads only when one of them uses it. A format that leaves a file out, or
    whose checks fail, is an :class:`ExportError` (a
    :class:`~zoo.spec.manifest.VerificationError` with its report, for one that gives a
    report); nothing is written at the bundle's destination then.
    """
    try:
        files = spec.files_for(target.name)
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    start = time.perf_counter()
    _call("writer", spec, spec.load_writer(), model, directory, config, options=options,
          target=target, data=data)
    written = time.perf_counter() - start
    missing = [f for f in files if not _written(directory, f)]
    if missing:
        raise ExportError(f"export format {spec.name!r} did not write {', '.join(missing)} "
                          "(as regular files)")
    checks, report = run_verifier(spec, model, directory, config, inputs, atol, rtol,
                                  options=options, target=target, data=data)
    passed = bool(checks) and all(c.passed for c in checks) and (report is None or report.passed)
    record = FormatRecord(files=files, passed=passed, atol=atol, rtol=rtol, checks=checks,
                          export_seconds=written,
                          verify_seconds=time.perf_counter() - start - written,
                          ort_latency_ms_batch1=None if report is None
                          else report.ort_latency_ms_batch1,
                          options=options.model_dump(mode="json"))
    lost = [c for c in checks if not c.passed and c.accuracy is not None
            and c.reference_accuracy is not None]
    if lost:
        c = lost[0]
        assert c.accuracy is not None and c.reference_accuracy is not None
        raise ExportError(
            f"the {spec.name} export of {config.architecture} fails its accuracy check "
            f"'{c.name}': top-1 {c.reference_accuracy:.3f} -> {c.accuracy:.3f} "
            f"({100 * (c.reference_accuracy - c.accuracy):.1f} points lost); nothing was "
            f"written to {target.name}")
    if not passed:
        worst = max((c.max_abs_diff for c in checks), default=float("nan"))
        what = (f"the ONNX graph of {config.architecture}" if spec.name == REQUIRED_FORMAT
                else f"the {spec.name} export of {config.architecture}")
        message = (f"{what} does not match PyTorch within atol {atol:g} and rtol {rtol:g} (max "
                   f"abs diff {worst:.3g}); nothing was written to {target.name}")
        if report is not None:
            raise VerificationError(message, report)
        raise ExportError(message)
    return FormatOutcome(record=record, report=report,
                         files={f: file_entry(directory / f) for f in files})


def installed_format(registry: Registry, name: str, where: str | os.PathLike[str]
                     ) -> ExportFormat:
    """The installed format a bundle holds, or a BundleError saying none provides it."""
    from zoo.errors import BundleError

    try:
        return registry.get_format(name)
    except ExportError as exc:
        raise BundleError(f"bundle {str(where)!r} holds export format {name!r}, which no "
                          f"installed plugin provides ({exc})") from None


__all__ = ["FormatOutcome", "format_options", "installed_format", "parse_formats",
           "run_verifier", "write_and_verify"]
