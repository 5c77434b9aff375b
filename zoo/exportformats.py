"""Export formats: what ``zoo export --format`` can write, as specs plugins provide.

A format is an :class:`ExportFormat` returned by a plugin's ``zoo_export_formats``
hook: its name, the files it writes into the bundle, and two ``"module:function"``
references, imported only when the format is used:

* ``writer(model, directory, config) -> None`` writes the files into ``directory``
  (the bundle being built) from the eval-mode ``model`` and its
  :class:`~zoo.spec.ModelConfig`;
* ``verifier(model, directory, config, inputs, atol, rtol) -> list[CheckResult]``
  loads them back and compares their outputs with the eager model's on ``inputs``
  (``[(name, float32 array)]``: the same random batches and validation samples as
  the ONNX checks) within ``|theirs - torch| <= atol + rtol * |torch|``
  (:func:`compare`).

The zoo's own formats are ``onnx`` (always written: every bundle reader loads it)
and ``pt2`` (torch.export's ExportedProgram, ``torch.export.save``).
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from zoo.errors import ExportError
from zoo.manifest import CheckResult, FileEntry, FormatRecord, file_entry

if TYPE_CHECKING:
    from zoo.registry import Registry
    from zoo.spec import ModelConfig

#: The format every bundle has: its readers (zoo.load, the ONNX predictor) load model.onnx.
REQUIRED_FORMAT = "onnx"


class ExportFormat(BaseModel):
    """One export format: its name, its files, and how it is written and verified."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="What --format names it by.")
    summary: str = Field(description="One line.")
    files: tuple[str, ...] = Field(min_length=1, description="The files it adds to a bundle.")
    writer: str = Field(pattern=r"^[\w.]+:\w+$", description="'module:function' writing them.")
    verifier: str = Field(pattern=r"^[\w.]+:\w+$",
                          description="'module:function' checking them against the model.")

    def load_writer(self) -> Callable[..., None]:
        writer: Callable[..., None] = _resolve(self.writer)
        return writer

    def load_verifier(self) -> Callable[..., list[CheckResult]]:
        verifier: Callable[..., list[CheckResult]] = _resolve(self.verifier)
        return verifier


def _resolve(reference: str) -> Any:
    module, _, name = reference.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ExportError(f"cannot load {reference!r}: {exc}") from None


def compare(name: str, expected: np.ndarray, actual: np.ndarray, atol: float,
            rtol: float) -> CheckResult:
    """One check: ``actual`` against the eager model's ``expected`` logits."""
    if expected.shape != actual.shape:
        return CheckResult(name=name, batch_size=max(1, expected.shape[0]),
                           max_abs_diff=float("inf"), max_rel_diff=float("inf"),
                           top1_agreement=0.0, passed=False)
    diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    scale = np.abs(expected.astype(np.float64))
    rel = diff / np.maximum(scale, np.finfo(np.float32).tiny)
    finite = bool(np.isfinite(actual).all() and np.isfinite(expected).all())
    passed = finite and bool((diff <= atol + rtol * scale).all())
    agreement = float((actual.argmax(axis=1) == expected.argmax(axis=1)).mean())
    return CheckResult(name=name, batch_size=int(expected.shape[0]),
                       max_abs_diff=float(diff.max()), max_rel_diff=float(rel.max()),
                       top1_agreement=agreement, passed=passed)


def available_formats(registry: Registry) -> dict[str, ExportFormat]:
    """Every installed format by name, from the ``zoo_export_formats`` hooks."""
    formats: dict[str, ExportFormat] = {}
    for returned in registry.call_hook("zoo_export_formats"):
        for item in returned or ():
            spec = item if isinstance(item, ExportFormat) else ExportFormat.model_validate(item)
            formats.setdefault(spec.name, spec)
    return formats


def parse_formats(names: str | Sequence[str], registry: Registry) -> list[ExportFormat]:
    """``"onnx,pt2"`` (or a list) as format specs; unknown or missing onnx is an error."""
    wanted = [n.strip() for n in (names.split(",") if isinstance(names, str) else names)]
    wanted = list(dict.fromkeys(n for n in wanted if n))
    installed = available_formats(registry)
    for name in wanted:
        if name not in installed:
            raise ExportError(f"unknown export format {name!r}; installed: "
                              f"{', '.join(sorted(installed))}")
    if REQUIRED_FORMAT not in wanted:
        raise ExportError(f"--format {','.join(wanted) or repr('')} leaves out "
                          f"{REQUIRED_FORMAT!r}, which every bundle holds (its readers load "
                          f"model.onnx); use --format {','.join([REQUIRED_FORMAT, *wanted])}")
    return [installed[name] for name in wanted]


def write_formats(formats: Sequence[ExportFormat], model: Any, directory: Path,
                  config: ModelConfig, inputs: list[tuple[str, np.ndarray]], atol: float,
                  rtol: float) -> tuple[dict[str, FormatRecord], dict[str, FileEntry]]:
    """Write and verify each format but ONNX (the exporter's own path) into ``directory``.

    Returns the manifest's records and file entries; a format whose files are missing
    after writing, or whose checks fail, is an :class:`~zoo.errors.ExportError`.
    """
    records: dict[str, FormatRecord] = {}
    files: dict[str, FileEntry] = {}
    for spec in formats:
        if spec.name == REQUIRED_FORMAT:
            continue
        start = time.perf_counter()
        spec.load_writer()(model, directory, config)
        written = time.perf_counter() - start
        missing = [f for f in spec.files if not (directory / f).is_file()]
        if missing:
            raise ExportError(f"export format {spec.name!r} did not write {', '.join(missing)}")
        checks = spec.load_verifier()(model, directory, config, inputs, atol, rtol)
        record = FormatRecord(files=spec.files, passed=all(c.passed for c in checks) and
                              bool(checks), atol=atol, rtol=rtol, checks=tuple(checks),
                              export_seconds=written,
                              verify_seconds=time.perf_counter() - start - written)
        if not record.passed:
            worst = max((c.max_abs_diff for c in checks), default=float("nan"))
            raise ExportError(f"the {spec.name} export of {config.architecture} does not match "
                              f"PyTorch within atol {atol:g} and rtol {rtol:g} (max abs diff "
                              f"{worst:.3g}); nothing was written")
        records[spec.name] = record
        files.update({f: file_entry(directory / f) for f in spec.files})
    return records, files


def verify_formats(bundle: str | Path, *, registry: Registry | None = None,
                   expect_sha256: str | None = None) -> dict[str, FormatRecord]:
    """Re-run the checks of a bundle's extra formats (``zoo verify``), with the tolerances
    its manifest records, on random batches of 1 and 7 (a bundle keeps no samples).

    The files are checked against their SHA-256 first (:func:`zoo.bundle.load_bundle`);
    a format no installed plugin provides is a :class:`~zoo.errors.BundleError`.
    """
    from zoo.bundle import load_bundle
    from zoo.errors import BundleError
    from zoo.exporter import check_inputs
    from zoo.registry import default_registry

    registry = registry or default_registry()
    loaded = load_bundle(bundle, registry=registry, expect_sha256=expect_sha256)
    installed = available_formats(registry)
    records: dict[str, FormatRecord] = {}
    for name, recorded in loaded.manifest.formats.items():
        spec = installed.get(name)
        if spec is None:
            raise BundleError(f"bundle {str(bundle)!r} holds export format {name!r}, which no "
                              f"installed plugin provides; installed: {', '.join(installed)}")
        start = time.perf_counter()
        checks = spec.load_verifier()(loaded.model, loaded.path, loaded.manifest.model,
                                      check_inputs(loaded.manifest.model, None),
                                      recorded.atol, recorded.rtol)
        records[name] = FormatRecord(
            files=recorded.files, passed=bool(checks) and all(c.passed for c in checks),
            atol=recorded.atol, rtol=recorded.rtol, checks=tuple(checks),
            verify_seconds=time.perf_counter() - start)
    return records


__all__ = ["REQUIRED_FORMAT", "ExportFormat", "available_formats", "compare", "parse_formats",
           "verify_formats", "write_formats"]
