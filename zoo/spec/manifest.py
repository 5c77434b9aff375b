"""The bundle manifest: what a bundle holds and the proof that its ONNX graph is faithful.

Pydantic models only (no torch, no numpy): the exporter writes a :class:`Manifest`,
and the torch loader (:mod:`zoo.models.load`) and the ONNX predictor
(:mod:`zoo.deploy`) read it through :func:`zoo.bundles.integrity.open_bundle`. A
bundle is a directory::

    model.pt        the state_dict (loadable with ``torch.load(..., weights_only=True)``)
    model.onnx      the ONNX graph, batch axis dynamic
    manifest.json   a :class:`Manifest` (JSON Schema: ``zoo/spec/manifest.schema.json``)

Every file but the manifest is listed in ``Manifest.files`` with its size and
SHA-256, checked before anything is loaded. The bundle's identity is the SHA-256
of ``manifest.json`` itself (:func:`zoo.bundles.integrity.bundle_sha256`): it
covers every file through their listed digests, so pinning it (``expect_sha256=``,
``--expect-sha256``) pins the whole bundle.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from zoo.errors import BundleError, ExportError
from zoo.spec.architecture import ModelConfig
from zoo.spec.provenance import Provenance
from zoo.spec.run import EpochMetrics, Normalization
from zoo.util.fsutil import atomic_write_text

#: The manifest format this zoo writes and reads.
FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (FORMAT_VERSION,)

MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "model.pt"
ONNX_FILE = "model.onnx"
BUNDLE_FILES = (WEIGHTS_FILE, ONNX_FILE)

#: Default verification tolerances: |onnx - torch| <= atol + rtol * |torch|.
DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3

#: Names of the ONNX graph's input and output.
INPUT_NAME = "input"
OUTPUT_NAME = "logits"

SCHEMA_PATH = Path(__file__).with_name("manifest.schema.json")

#: Characters a manifest's text may not hold: C0 and C1 controls (newlines, ESC and the
#: terminal sequences it starts), line and paragraph separators, bidirectional overrides.
#: Printed raw, they would forge output lines or rewrite the terminal.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def unprintable(text: str) -> str | None:
    """The first control character of ``text`` (see :data:`_UNPRINTABLE`), or None."""
    found = _UNPRINTABLE.search(text)
    return found.group() if found else None


class VerificationError(ExportError):
    """A graph that does not compute what the PyTorch model computes; carries the report."""

    def __init__(self, message: str, report: VerificationReport) -> None:
        super().__init__(message)
        self.report = report


class FileEntry(BaseModel):
    """One file of a bundle, with its size and SHA-256."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    size: int = Field(ge=0, description="Size in bytes.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Hex SHA-256 of the content.")


class CheckResult(BaseModel):
    """A format's outputs against PyTorch's on one batch of inputs, or (``accuracy`` set)
    its top-1 accuracy against the float32 graph's on labelled images."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="What was compared, e.g. 'random batch 7'.")
    batch_size: int = Field(ge=1)
    max_abs_diff: float = Field(description="Largest |onnx - torch| over all logits.")
    max_rel_diff: float = Field(description="Largest |onnx - torch| / |torch| over all logits.")
    top1_agreement: float = Field(ge=0.0, le=1.0,
                                  description="Fraction of inputs whose predicted class agrees.")
    passed: bool = Field(description="Whether |onnx - torch| <= atol + rtol * |torch| everywhere "
                                     "(for an accuracy check: whether the accuracy lost is "
                                     "within the format's limit).")
    accuracy: float | None = Field(None, ge=0.0, le=1.0,
                                   description="Top-1 accuracy of the format on labelled images.")
    reference_accuracy: float | None = Field(
        None, ge=0.0, le=1.0, description="Top-1 accuracy of the float32 graph on the same images.")


class VerificationReport(BaseModel):
    """The proof that the ONNX graph computes what the PyTorch model computes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    passed: bool
    atol: float = Field(ge=0.0)
    rtol: float = Field(ge=0.0)
    onnx_checker: str = Field(description="'passed (full_check)' or the checker's error.")
    checks: tuple[CheckResult, ...] = ()
    ort_latency_ms_batch1: float | None = Field(
        None, description="Median onnxruntime CPU latency at batch 1, in milliseconds.")
    ort_threads: int | None = Field(None, description="intra_op threads of that session.")
    seconds: float = Field(0.0, description="Time the verification took.")

    def format(self) -> str:
        """A human-readable table of the report."""
        verdict = "PASSED" if self.passed else "FAILED"
        lines = [f"verification {verdict} (atol {self.atol:g}, rtol {self.rtol:g})",
                 f"  onnx.checker: {self.onnx_checker}"]
        for c in self.checks:
            mark = "ok  " if c.passed else "FAIL"
            lines.append(f"  {mark} {c.name:<24} max abs {c.max_abs_diff:.3g}  "
                         f"max rel {c.max_rel_diff:.3g}  top-1 agreement {c.top1_agreement:.1%}")
        if self.ort_latency_ms_batch1 is not None:
            lines.append(f"  onnxruntime CPU latency, batch 1: {self.ort_latency_ms_batch1:.3f} ms "
                         f"(median, {self.ort_threads} threads)")
        return "\n".join(lines)


class TrainingInfo(BaseModel):
    """How the exported weights were trained (present when exported from a run)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset: str
    source: str | None = Field(None, description="Data directory or download location.")
    content_key: str = Field(description="Hash of the data source's content.")
    split: str = Field(description="How train and validation were separated.")
    val_images: str | None = Field(
        None, description="The images the val metrics (best, last) were measured on, in words: "
        "e.g. '10% of the training images, seed 0'.")
    train_size: int
    val_size: int
    seed: int
    device: str
    epochs_completed: int
    train_seconds: float
    recipe: dict[str, Any] = Field(description="The run's training configuration.")
    checkpoint: str = Field(description="Which checkpoint was exported (best.pt or last.pt).")
    best: EpochMetrics | None = Field(
        None, description="The epoch with the best val accuracy (on the val_images).")
    last: EpochMetrics | None = Field(None, description="The last epoch (val on the val_images).")

    @property
    def exported(self) -> EpochMetrics | None:
        """The metrics of the epoch whose weights the bundle holds (``checkpoint``)."""
        return self.last if self.checkpoint == "last.pt" else self.best

    @property
    def accuracy_split(self) -> str:
        """The images the val accuracy was measured on, in words.

        ``val_images`` where recorded; else, for older bundles, ``"10% of the training
        images, seed 0"`` for a seeded held-out fraction and otherwise the run's own
        description of its split.
        """
        if self.val_images:
            return self.val_images
        fraction = self.recipe.get("val_split")
        if (not self.recipe.get("val_dir") and isinstance(fraction, (int, float))
                and 0 < fraction < 1 and self.split.startswith("seeded stratified split")):
            return f"{fraction * 100:g}% of the training images, seed {self.seed}"
        return self.split


class ExportInfo(BaseModel):
    """How the ONNX graph was produced."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    exporter: Literal["torchscript", "dynamo"] = Field(
        description="torch.onnx.export with dynamo=False (torchscript) or dynamo=True.")
    opset: int = Field(ge=1)
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    dynamic_batch: bool = True
    export_seconds: float = Field(0.0, description="Time torch.onnx.export took.")


class FormatRecord(BaseModel):
    """One extra export format in a bundle (``zoo export --format``): its files and checks."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    files: tuple[str, ...] = Field(description="Its files (each also in Manifest.files).")
    passed: bool
    atol: float = Field(ge=0.0)
    rtol: float = Field(ge=0.0)
    checks: tuple[CheckResult, ...] = ()
    export_seconds: float = Field(0.0, description="Time writing it took.")
    verify_seconds: float = Field(0.0, description="Time its verification took.")
    ort_latency_ms_batch1: float | None = Field(
        None, description="Median onnxruntime CPU latency at batch 1, in milliseconds, of a "
                          "format that is a graph (compare with verification's).")
    options: dict[str, Any] = Field(
        default_factory=dict, description="The format's options it was written with (its "
        "options model's fields): re-checks use them.")

    def format(self, name: str, reference_latency_ms: float | None = None) -> str:
        """Lines for a report: the format's files and checks, the accuracy its checks on
        labelled images measured, its latency against the float32 graph's."""
        worst = max((c.max_abs_diff for c in self.checks if c.accuracy is None), default=0.0)
        lines = [f"  {name}: {', '.join(self.files)} {'verified' if self.passed else 'FAILED'} "
                 f"({len(self.checks)} checks, max abs {worst:.3g})"]
        for c in self.checks:
            if c.accuracy is not None and c.reference_accuracy is not None:
                lines.append(f"    top-1 {c.accuracy:.3f} (float32 {c.reference_accuracy:.3f}) "
                             f"on the {c.name}")
        if self.ort_latency_ms_batch1 is not None:
            ratio = ("" if not reference_latency_ms else
                     f" (float32 {reference_latency_ms:.3f} ms: "
                     f"{reference_latency_ms / self.ort_latency_ms_batch1:.2f}x as fast)")
            lines.append(f"    onnxruntime CPU latency, batch 1: "
                         f"{self.ort_latency_ms_batch1:.3f} ms{ratio}")
        return "\n".join(lines)


class Versions(BaseModel):
    """Versions of the software that produced the bundle."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    zoo: str
    torch: str
    onnx: str
    onnxruntime: str
    python: str


class Manifest(BaseModel):
    """``manifest.json`` of a bundle: what it is, where it came from, and its verification."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: Literal[1] = Field(description="Manifest format; readers refuse others.")
    architecture: str = Field(description="The registered architecture name.")
    model: ModelConfig = Field(description="Architecture, hyperparameters, input shape, classes.")
    provenance: Provenance | None = Field(
        None, description="The plugin (distribution and version) providing the architecture.")
    normalization: Normalization = Field(
        description="Per-channel mean and std applied to images scaled to [0, 1]; mean 0 and "
        "std 1 (identity) for an architecture exported without a run.")
    classes: tuple[str, ...] = Field(description="Class names, index order.")
    num_parameters: int = Field(ge=0, description="Number of parameters of the model.")
    training: TrainingInfo | None = Field(None, description="The run, when exported from one.")
    files: dict[str, FileEntry] = Field(description="Every bundle file but the manifest.")
    verification: VerificationReport
    export: ExportInfo
    versions: Versions
    created: datetime = Field(description="Creation time (UTC).")
    formats: dict[str, FormatRecord] = Field(
        default_factory=dict, description="Formats written besides ONNX (e.g. pt2), with "
        "their files and verification; absent in bundles that have none.")

    @property
    def total_bytes(self) -> int:
        """Size of the bundle's files (without the manifest)."""
        return sum(entry.size for entry in self.files.values())

    def to_json(self) -> str:
        # without extra formats, the same bytes as before the field existed
        exclude = None if self.formats else {"formats"}
        return self.model_dump_json(indent=2, exclude=exclude) + "\n"


def manifest_schema() -> dict[str, Any]:
    """The published JSON Schema of :class:`Manifest`."""
    return Manifest.model_json_schema()


def write_schema(path: Path = SCHEMA_PATH) -> None:
    """Regenerate the published schema file (``python -m zoo.spec.manifest``)."""
    atomic_write_text(path, json.dumps(manifest_schema(), indent=2, sort_keys=True) + "\n")


#: The keys of the identity the exporter stamps in an ONNX graph's ``metadata_props``.
GRAPH_METADATA_KEYS = ("zoo.architecture", "zoo.hparams", "zoo.input_shape", "zoo.num_classes")
#: A graph's ``metadata_props`` key naming CPU features (Linux's names, comma-separated), one
#: of which the graph needs to compute what its export measured (an export format stamps it:
#: ``int8`` with 8-bit weights names the int8 dot products). Readers warn on a CPU with none.
REQUIRES_CPU_KEY = "zoo.requires_cpu"


def graph_metadata(config: ModelConfig) -> dict[str, str]:
    """What the exporter records of ``config`` in its ONNX graph's ``metadata_props``, and
    what a reader checks against the manifest (:func:`zoo.deploy.runtime.check_graph`)."""
    shape = config.input_shape
    return {"zoo.architecture": config.architecture,
            "zoo.hparams": json.dumps(config.hparams, sort_keys=True, separators=(",", ":")),
            "zoo.input_shape": f"{shape.channels}x{shape.height}x{shape.width}",
            "zoo.num_classes": str(config.num_classes)}


def check_normalization(norm: Normalization, channels: int, where: str) -> None:
    """A normalization of ``channels`` finite means and finite stds above 0, or a BundleError."""
    if len(norm.mean) != channels or len(norm.std) != channels:
        raise BundleError(f"{where} has a normalization of {len(norm.mean)} means and "
                          f"{len(norm.std)} stds for {channels} input channels")
    if not all(math.isfinite(m) for m in norm.mean):
        raise BundleError(f"{where} has a non-finite normalization mean {norm.mean}; accepted: "
                          "finite numbers")
    if not all(math.isfinite(s) and s > 0 for s in norm.std):
        raise BundleError(f"{where} has normalization std {norm.std}; accepted: finite numbers "
                          "greater than 0")


if __name__ == "__main__":
    write_schema()
    print(SCHEMA_PATH)
