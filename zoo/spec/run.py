"""What a training run leaves on disk, as pydantic models (no torch import).

A run directory holds::

    config.json        the resolved TrainConfig
    run.json           RunSummary: model, data, normalization, metrics, checkpoints
    metrics.jsonl      one EpochMetrics per line
    metrics.csv        the same as CSV
    curves.png         loss and accuracy per epoch
    tensorboard/       TensorBoard event files (with --log tensorboard)
    val_samples.npy    up to 64 uint8 validation images (N, C, H, W), for export checks
    run.lock           the advisory lock of the trainer writing it (zoo.trainer.rundir)
    checkpoints/last.pt, checkpoints/best.pt

A checkpoint is a dict loadable with ``torch.load(..., weights_only=True)``;
its ``"model"`` entry is the model's state_dict and its ``"digest"`` the
SHA-256 of its content (zoo.trainer.checkpoint). Each epoch writes last.pt, then best.pt
(a copy of it when the epoch is the best so far), then the metrics and run.json,
each atomically: last.pt is the run's truth, and ``--resume`` repairs the others
from it after a crash between those writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from zoo.errors import ZooError
from zoo.spec.architecture import ModelConfig

CONFIG_FILE = "config.json"
SUMMARY_FILE = "run.json"
METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
CURVES_PNG = "curves.png"
VAL_SAMPLES = "val_samples.npy"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
#: Validation confusion matrices are recorded for at most this many classes.
CONFUSION_MAX_CLASSES = 100

#: ``confusion[true][predicted]``: validation images of class ``true`` predicted ``predicted``.
Confusion = tuple[tuple[int, ...], ...]


class Normalization(BaseModel):
    """Per-channel mean and std of the training split, on images scaled to [0, 1]."""

    model_config = ConfigDict(frozen=True)

    mean: tuple[float, ...]
    std: tuple[float, ...]


class DataInfo(BaseModel):
    """Which data a run used, and how it was split."""

    model_config = ConfigDict(frozen=True)

    dataset: str
    source: str | None = Field(None, description="Data directory or download location.")
    content_key: str = Field(description="Hash of the source's content.")
    split: str = Field(description="How train and validation were separated.")
    classes: tuple[str, ...]
    train_size: int
    val_size: int


class EpochMetrics(BaseModel):
    """One epoch of a run (the accuracies are fractions in [0, 1])."""

    model_config = ConfigDict(frozen=True)

    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    images_per_s: float
    lr: float
    seconds: float


class RunSummary(BaseModel):
    """Everything about a run that an exporter or a reader needs, in ``run.json``."""

    model_config = ConfigDict(frozen=True)

    model: ModelConfig
    train_config: dict[str, Any]
    data: DataInfo
    normalization: Normalization
    seed: int
    device: str
    epochs_completed: int
    train_seconds: float = 0.0
    best: EpochMetrics | None = None
    last: EpochMetrics | None = None
    best_confusion: Confusion | None = Field(
        None, description="Validation confusion matrix of the best epoch (rows: true class).")
    last_confusion: Confusion | None = Field(
        None, description="Validation confusion matrix of the last epoch (rows: true class).")
    zoo_version: str
    torch_version: str
    status: Literal["running", "completed", "stopped", "interrupted", "failed"] | None = Field(
        None, description="How the run's last session ended (None: a run of an older zoo).")
    failure: str | None = Field(
        None, description="Why the last session failed (status failed): the error it raised.")
    stop_reason: str | None = Field(
        None, description="Why a stop request ended the run before its last epoch.")
    init_from: str | None = Field(
        None, description="The run whose best weights this run started from (--init-from).")
    plugins: dict[str, Any] = Field(
        default_factory=dict, description="Entries training plugins added (zoo_train_start).")
    history: list[EpochMetrics] = Field(
        default_factory=list, description="Every completed epoch's metrics, earlier sessions "
        "of a resumed run included (empty in runs of zoo 0.1, which kept them in "
        "metrics.jsonl only).")


def read_summary(run_dir: Path) -> RunSummary:
    """Read ``run.json`` of a run directory, with a clear error if it is not one."""
    path = Path(run_dir) / SUMMARY_FILE
    if not Path(run_dir).is_dir():
        raise ZooError(f"run directory {str(run_dir)!r} does not exist")
    if not path.is_file():
        raise ZooError(f"{str(run_dir)!r} is not a run directory: it has no {SUMMARY_FILE}")
    try:
        return RunSummary.model_validate_json(path.read_text())
    except ValueError as exc:
        raise ZooError(f"{path} is not a valid run summary: {exc}") from None


def checkpoint_path(run_dir: Path, which: str = BEST_CHECKPOINT) -> Path:
    """The path of a run's checkpoint; an error naming the run if it has none."""
    path = Path(run_dir) / CHECKPOINT_DIR / which
    if not path.is_file():
        raise ZooError(f"run {str(run_dir)!r} has no checkpoint {CHECKPOINT_DIR}/{which}")
    return path
