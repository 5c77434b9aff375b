"""The bundle manifest: what a bundle holds and the proof that its ONNX graph is faithful.

Torch-free (pydantic, hashlib and json only): the exporter writes it, and both
the torch loader (:mod:`zoo.bundle`) and the ONNX predictor (:mod:`zoo.deploy`)
read and check it. A bundle is a directory::

    model.pt        the state_dict (loadable with ``torch.load(..., weights_only=True)``)
    model.onnx      the ONNX graph, batch axis dynamic
    manifest.json   a :class:`Manifest` (JSON Schema: ``zoo/schemas/manifest.schema.json``)

Every file but the manifest is listed in ``Manifest.files`` with its size and
SHA-256; :func:`open_bundle` checks them all before anything is loaded. The
bundle's identity is the SHA-256 of ``manifest.json`` itself
(:func:`bundle_sha256`): it covers every file through their listed digests, so
pinning it (``expect_sha256=``, ``--expect-sha256``) pins the whole bundle.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from zoo.errors import BundleError, ExportError
from zoo.fsutil import atomic_write_text
from zoo.run import EpochMetrics, Normalization
from zoo.spec import ModelConfig, Provenance

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

SCHEMA_PATH = Path(__file__).parent / "schemas" / "manifest.schema.json"

_CHUNK = 1 << 20


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
    """onnxruntime against PyTorch on one batch of inputs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="What was compared, e.g. 'random batch 7'.")
    batch_size: int = Field(ge=1)
    max_abs_diff: float = Field(description="Largest |onnx - torch| over all logits.")
    max_rel_diff: float = Field(description="Largest |onnx - torch| / |torch| over all logits.")
    top1_agreement: float = Field(ge=0.0, le=1.0,
                                  description="Fraction of inputs whose predicted class agrees.")
    passed: bool = Field(description="Whether |onnx - torch| <= atol + rtol * |torch| everywhere.")


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
    """Regenerate the published schema file (``python -m zoo.manifest``)."""
    atomic_write_text(path, json.dumps(manifest_schema(), indent=2, sort_keys=True) + "\n")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def bundle_sha256(bundle_dir: Path) -> str:
    """A bundle's identity: the SHA-256 hex digest of its manifest.json's bytes.

    The manifest lists every other file's SHA-256, so this one digest pins the bundle.
    """
    return hashlib.sha256((Path(bundle_dir) / MANIFEST_FILE).read_bytes()).hexdigest()


def file_entry(path: Path) -> FileEntry:
    return FileEntry(size=path.stat().st_size, sha256=sha256_file(path))


def check_expected_sha256(expect_sha256: str) -> str:
    """``expect_sha256`` as 64 lowercase hex digits, or a :class:`BundleError`."""
    text = expect_sha256.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise BundleError(f"expected SHA-256 {expect_sha256!r} is not 64 hexadecimal digits")
    return text


def read_manifest(bundle: Path | str, *, expect_sha256: str | None = None) -> Manifest:
    """Read and validate ``bundle/manifest.json``; files are checked by :func:`open_bundle`.

    With ``expect_sha256``, a manifest whose SHA-256 (:func:`bundle_sha256`) differs
    is refused before it is parsed.
    """
    expected = check_expected_sha256(expect_sha256) if expect_sha256 is not None else None
    bundle = Path(bundle)
    if not bundle.exists():
        raise BundleError(f"bundle {str(bundle)!r} does not exist")
    if not bundle.is_dir():
        raise BundleError(f"bundle {str(bundle)!r} is not a directory; a bundle is a directory "
                          f"holding {MANIFEST_FILE}, {WEIGHTS_FILE} and {ONNX_FILE}")
    path = bundle / MANIFEST_FILE
    if not path.is_file():
        raise BundleError(f"{str(bundle)!r} is not a bundle: it has no {MANIFEST_FILE}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc.strerror or exc}") from None
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise BundleError(f"bundle {str(bundle)!r} is not the one expected: its manifest's "
                          f"SHA-256 is {hashlib.sha256(data).hexdigest()}, expected {expected}")
    try:
        raw = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON: {exc}") from None
    except RecursionError:
        raise BundleError(f"{path} is not a bundle manifest: it is nested too deeply") from None
    if not isinstance(raw, dict):
        raise BundleError(f"{path} does not hold a JSON object")
    version = raw.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        accepted = ", ".join(str(v) for v in SUPPORTED_FORMAT_VERSIONS)
        raise BundleError(f"{path} has format_version {version!r}, which this zoo cannot read; "
                          f"accepted: {accepted} (upgrade zoo to read newer bundles)")
    try:
        return Manifest.model_validate(raw)
    except RecursionError:
        raise BundleError(f"{path} is not a bundle manifest: it is nested too deeply") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}"
            for e in exc.errors()[:5])
        raise BundleError(f"{path} does not validate as a bundle manifest: {problems}") from None


def check_consistency(bundle: Path | str, manifest: Manifest) -> None:
    """Check that the manifest agrees with itself: classes, shape and a usable normalization."""
    where = f"manifest of {str(bundle)!r}"
    model = manifest.model
    if len(manifest.classes) != model.num_classes:
        raise BundleError(f"{where} names {len(manifest.classes)} classes but its model has "
                          f"{model.num_classes} outputs")
    if manifest.architecture != model.architecture:
        raise BundleError(f"{where} says architecture {manifest.architecture!r} but its model "
                          f"is {model.architecture!r}")
    check_normalization(manifest.normalization, model.input_shape.channels, where)


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


def read_checked(bundle: Path | str, manifest: Manifest, name: str) -> bytes:
    """The bytes of bundle file ``name``, read once and checked against the manifest.

    Readers use these very bytes: what was checked is what is loaded.
    """
    entry = manifest.files.get(name)
    path = Path(bundle) / name
    if entry is None:
        raise BundleError(f"manifest of {str(bundle)!r} does not list {name}")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"bundle {str(bundle)!r} is missing {name}") from None
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
        raise BundleError(f"{path} does not match its SHA-256 in the manifest (size {len(data)}, "
                          f"expected {entry.size}): the file was modified or corrupted")
    return data


def check_files(bundle: Path | str, manifest: Manifest) -> None:
    """Check that every file the manifest lists is present, of its size and SHA-256."""
    bundle = Path(bundle)
    for required in BUNDLE_FILES:
        if required not in manifest.files:
            raise BundleError(f"manifest of {str(bundle)!r} does not list {required}")
    for name, entry in manifest.files.items():
        if Path(name).name != name:
            raise BundleError(f"manifest of {str(bundle)!r} lists {name!r}, which is not a plain "
                              "file name inside the bundle")
        path = bundle / name
        if not path.is_file():
            raise BundleError(f"bundle {str(bundle)!r} is missing {name}")
        size = path.stat().st_size
        if size != entry.size or sha256_file(path) != entry.sha256:
            raise BundleError(f"{path} does not match its SHA-256 in the manifest (size {size}, "
                              f"expected {entry.size}): the file was modified or corrupted")


def open_bundle(bundle: Path | str, *, expect_sha256: str | None = None) -> Manifest:
    """Read the manifest and check it and every file's SHA-256: the entry point of every reader.

    ``expect_sha256`` pins the bundle: any other manifest (:func:`bundle_sha256`) is refused.
    """
    manifest = read_manifest(bundle, expect_sha256=expect_sha256)
    check_consistency(bundle, manifest)
    check_files(bundle, manifest)
    return manifest


if __name__ == "__main__":
    write_schema()
    print(SCHEMA_PATH)
