"""Re-check a bundle on any machine (``zoo verify``, ``zoo.verify``).

The bundle is opened and every file hashed once (:func:`~zoo.bundles.integrity.check_bundle`),
the model rebuilt once through its plugin and loaded from the checked bytes, the
graph's inputs and outputs checked against the manifest; then every format it holds,
``onnx`` first, is verified again by its plugin's verifier against the model, on
random batches of 1 and 7 (a bundle keeps no samples) with the tolerances its
manifest records. One report holds it all.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from pydantic import Field, ValidationError

from zoo.bundles.integrity import check_bundle
from zoo.bundles.store import resolve_bundle
from zoo.deploy.runtime import load_graph
from zoo.errors import BundleError, ZooError, reason
from zoo.exporter.checks import check_tolerances, verification_inputs
from zoo.exporter.formats import installed_format, run_verifier
from zoo.exporter.trainingdata import TrainingData
from zoo.host.registry import Registry, default_registry
from zoo.models.load import load_checked
from zoo.spec.exportformat import REQUIRED_FORMAT, ExportTarget
from zoo.spec.manifest import ONNX_FILE, WEIGHTS_FILE, FormatRecord, VerificationReport


class BundleVerification(VerificationReport):
    """What ``zoo verify`` found: the bundle's identity, its ONNX report, its other formats.

    ``passed`` is whether the ONNX graph and every other format passed.
    """

    path: str = Field(description="The bundle directory checked.")
    sha256: str = Field(description="The bundle's identity: SHA-256 of its manifest.json.")
    formats: dict[str, FormatRecord] = Field(default_factory=dict,
                                             description="Its formats besides ONNX, re-checked.")

    def format(self) -> str:
        """A human-readable table of the report, a line per extra format after ONNX's."""
        lines = [super().format()]
        for name, record in self.formats.items():
            lines.append(record.format(name, self.ort_latency_ms_batch1))
        return "\n".join(lines)


def verify_bundle(bundle: str | os.PathLike[str], *, atol: float | None = None,
                  rtol: float | None = None, registry: Registry | None = None,
                  expect_sha256: str | None = None, weights: str | None = None,
                  accuracy: bool = False,
                  data_dir: str | os.PathLike[str] | None = None) -> BundleVerification:
    """Re-run a bundle's checks (``zoo.verify``): SHA-256 sums, manifest, safe load, numerics
    of every format it holds.

    Tolerances default to those recorded in the manifest, each format's options to those
    it was written with. With ``accuracy``, formats that measure accuracy on the weights'
    training data (``int8``) measure it again: the data is loaded again as the run loaded
    it (``data_dir``: the folder of a folder dataset, which a bundle does not locate) and
    must have the content key the bundle records. Returns the report (its ``passed``
    says whether every format matches); a missing, tampered or unreadable bundle, one
    whose graph disagrees with its manifest, or one holding a format no installed plugin
    provides, raises :class:`~zoo.errors.BundleError`.
    """
    registry = registry or default_registry()
    path = resolve_bundle(bundle, weights=weights, registry=registry)
    checked = check_bundle(path, expect_sha256=expect_sha256, read=(WEIGHTS_FILE, ONNX_FILE))
    manifest = checked.manifest
    loaded = load_checked(checked, registry)
    load_graph(path, manifest, data=checked.data[ONNX_FILE])  # no external data; shapes agree
    target = ExportTarget(name=path.name, classes=manifest.classes)
    if data_dir is not None and not accuracy:
        raise ZooError("a data folder (--data-dir) is read only to measure accuracy again; "
                       "add --accuracy (accuracy=True)")
    training = manifest.training
    data = TrainingData(registry, manifest.model, manifest.normalization, training,
                        None if training is None else training.recipe,
                        data_dir=None if data_dir is None else Path(data_dir),
                        what=f"the bundle {path.name!r}", local_paths=False) if accuracy else None
    inputs = verification_inputs(manifest.model, None)
    records: dict[str, FormatRecord] = {}
    onnx_report: VerificationReport | None = None
    recorded = {REQUIRED_FORMAT: (manifest.verification.atol, manifest.verification.rtol),
                **{name: (r.atol, r.rtol) for name, r in manifest.formats.items()}}
    for name, (format_atol, format_rtol) in recorded.items():
        spec = installed_format(registry, name, path)
        use_atol = format_atol if atol is None else atol
        use_rtol = format_rtol if rtol is None else rtol
        check_tolerances(use_atol, use_rtol)
        try:
            options = spec.options.model_validate(
                manifest.export.model_dump(include={"opset", "exporter"})
                if name == REQUIRED_FORMAT else manifest.formats[name].options)
        except ValidationError as exc:
            raise BundleError(f"bundle {str(path)!r} records options of format {name!r} that "
                              f"its installed plugin does not accept: {reason(exc)}") from None
        start = time.perf_counter()
        checks, report = run_verifier(spec, loaded.model, path, manifest.model, inputs, use_atol,
                                      use_rtol, options=options, target=target,
                                      data=data)
        if name == REQUIRED_FORMAT:
            assert report is not None  # the onnx verifier gives its full report
            onnx_report = report
            continue
        records[name] = FormatRecord(
            files=manifest.formats[name].files, atol=use_atol, rtol=use_rtol, checks=checks,
            passed=bool(checks) and all(c.passed for c in checks),
            export_seconds=manifest.formats[name].export_seconds,
            verify_seconds=time.perf_counter() - start,
            ort_latency_ms_batch1=None if report is None else report.ort_latency_ms_batch1,
            options=options.model_dump(mode="json"))
    assert onnx_report is not None
    passed = onnx_report.passed and all(r.passed for r in records.values())
    return BundleVerification(**{**onnx_report.model_dump(), "passed": passed},
                              path=str(path), sha256=checked.sha256, formats=records)


__all__ = ["BundleVerification", "verify_bundle"]
