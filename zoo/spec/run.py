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

    mean: tuple[float, ...] = Field(description="Per-channel mean, one per input channel.")
    std: tuple[float, ...] = Field(description="Per-channel standard deviation, one per input "
                                   "channel.")


class DataInfo(BaseModel):
    """Which data a run used, and how it was split."""

    model_config = ConfigDict(frozen=True)

    dataset: str = Field(description="The registered dataset's name.")
    source: str | None = Field(None, description="Data directory or download location.")
    content_key: str = Field(description="Hash of the source's content.")
    split: str = Field(description="How train and validation were separated.")
    classes: tuple[str, ...] = Field(description="Class names, in label order.")
    train_size: int = Field(description="Images in the training split.")
    val_size: int = Field(description="Images in the validation split.")


class EpochMetrics(BaseModel):
    """One epoch of a run (the accuracies are fractions in [0, 1])."""

    model_config = ConfigDict(frozen=True)

    epoch: int = Field(description="The epoch's number, from 1.")
    train_loss: float = Field(description="Mean training loss per image over the epoch.")
    train_acc: float = Field(description="Training accuracy over the epoch (augmented images, "
                             "model in training mode).")
    val_loss: float = Field(description="Mean validation loss after the epoch (eval mode).")
    val_acc: float = Field(description="Validation accuracy after the epoch (eval mode).")
    images_per_s: float = Field(description="Training images per second over the epoch.")
    lr: float = Field(description="The learning rate at the epoch's last step.")
    seconds: float = Field(description="Wall time of the epoch, validation included.")


class RunSummary(BaseModel):
    """Everything about a run that an exporter or a reader needs, in ``run.json``."""

    model_config = ConfigDict(frozen=True)

    model: ModelConfig = Field(description="The architecture, hyperparameters, input shape "
                               "and classes trained.")
    train_config: dict[str, Any] = Field(description="The resolved TrainConfig, as JSON.")
    data: DataInfo = Field(description="The data and its split.")
    normalization: Normalization = Field(description="The input normalization, from the "
                                         "training split.")
    seed: int = Field(description="The run's seed.")
    device: str = Field(description="The device it trained on, e.g. cpu or cuda:0.")
    epochs_completed: int = Field(description="Epochs completed over every session.")
    train_seconds: float = Field(0.0, description="Wall time of training over every session.")
    best: EpochMetrics | None = Field(None, description="The epoch of the best validation "
                                      "accuracy (the first such; best.pt's weights).")
    last: EpochMetrics | None = Field(None, description="The last completed epoch (last.pt).")
    best_confusion: Confusion | None = Field(
        None, description="Validation confusion matrix of the best epoch (rows: true class).")
    last_confusion: Confusion | None = Field(
        None, description="Validation confusion matrix of the last epoch (rows: true class).")
    zoo_version: str = Field(description="The zoo version that wrote it.")
    torch_version: str = Field(description="The torch version it trained with.")
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
