"""Resuming a run: the config it keeps and may change, and where it stands (``Position``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo.errors import TrainingError
from zoo.spec.run import CONFIG_FILE, Confusion, EpochMetrics
from zoo.spec.training import TrainConfig, validate_config


def merge_config(config: TrainConfig | None,
                  fields: dict[str, Any]) -> tuple[TrainConfig, set[str]]:
    """The run's config, and the fields that were set rather than left at their defaults."""
    data: dict[str, Any] = {}
    explicit: set[str] = set(fields)
    if config is not None:
        data = config.model_dump()
        explicit |= set(config.model_fields_set)
    data.update(fields)
    resume = data.get("resume")
    if resume is not None:
        run_dir = Path(resume)
        cfg_path = run_dir / CONFIG_FILE
        if not cfg_path.is_file():
            raise TrainingError(f"cannot resume {str(run_dir)!r}: it is not a run directory "
                                f"(no {CONFIG_FILE})")
        try:
            saved = json.loads(cfg_path.read_text())
        except (OSError, ValueError) as exc:
            raise TrainingError(f"cannot resume {str(run_dir)!r}: its {CONFIG_FILE} is "
                                f"unreadable ({exc})") from None
        if not isinstance(saved, dict):
            raise TrainingError(f"cannot resume {str(run_dir)!r}: its {CONFIG_FILE} does not "
                                "hold a training config")
        saved["resume"] = run_dir
        saved["out"] = run_dir
        check_resume_changes(run_dir, saved, {k: data[k] for k in explicit
                                               if k in data and k != "resume"})
        saved.update({k: data[k] for k in explicit if k in RESUME_SETTABLE and k in data})
        data = saved
        explicit = set(saved)  # a resumed run keeps the recipe it started with
    return validate_config(data, "training config"), explicit


#: What a resumed run may change: how it executes (``batch_size`` is per process: the
#: global batch must stay the same, see check_resumable), and how long it trains
#: (``epochs``, within what its schedule allows). Anything else would be recorded but
#: not used (the optimizer and schedule come from the checkpoint) or would change the
#: split.
RESUME_SETTABLE = frozenset({"epochs", "device", "progress", "num_threads", "eval_batch_size",
                             "cache_dir", "tune_allocator", "dist_timeout_s", "download",
                             "strict", "data_dir", "val_dir", "batch_size", "loggers"})


def check_resume_changes(run_dir: Path, saved: dict[str, Any],
                          requested: dict[str, Any]) -> None:
    """Refuse a resume that asks for a setting it could not truthfully apply."""
    before = validate_config(saved, f"{run_dir / CONFIG_FILE}")
    for key, value in sorted(requested.items()):  # the first refusal does not vary by run
        if key in RESUME_SETTABLE:
            continue
        after = validate_config({**saved, key: value}, "training config")
        if key == "out":
            if Path(after.out or run_dir).resolve() != run_dir.resolve():
                raise TrainingError(f"--out {str(value)!r} cannot be combined with --resume: a "
                                    f"resumed run continues in its own directory {str(run_dir)!r}")
            continue
        if getattr(after, key) != getattr(before, key):
            raise TrainingError(
                f"cannot resume {str(run_dir)!r} with {key}={getattr(after, key)!r}: the run "
                f"started with {key}={getattr(before, key)!r}, and a resumed run keeps its "
                "model, data, split and recipe (it may change only "
                f"{', '.join(sorted(RESUME_SETTABLE))}); start a new run to change it")


@dataclass
class Position:
    """Where the run stands: what a checkpoint restores besides model and optimizer."""

    start_epoch: int = 0
    start_step: int = 0  # non-zero when resuming an epoch interrupted mid-way
    metrics: list[EpochMetrics] = field(default_factory=list)
    train_seconds: float = 0.0
    partial: dict[str, Any] | None = None  # the interrupted epoch's totals so far
    scaler: dict[str, Any] | None = None
    batch_split: int | None = None  # the parts per batch the run was started with
    best_confusion: Confusion | None = None  # validation confusion matrices
    last_confusion: Confusion | None = None

    @property
    def best_acc(self) -> float:
        """The best validation accuracy so far (-1 before the first epoch)."""
        return max((m.val_acc for m in self.metrics), default=-1.0)
