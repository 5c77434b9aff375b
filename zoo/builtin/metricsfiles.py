"""Core plugin: every epoch's metrics as ``metrics.jsonl`` and ``metrics.csv``."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from zoo.host.events import TrainingRun
from zoo.host.hookspecs import hookimpl
from zoo.spec.run import METRICS_CSV, METRICS_JSONL, EpochMetrics
from zoo.util.fsutil import atomic_write_text


def write_metrics(run_dir: Path, metrics: Sequence[EpochMetrics]) -> None:
    """Write every epoch's metrics as ``metrics.jsonl`` and ``metrics.csv`` (atomically)."""
    atomic_write_text(run_dir / METRICS_JSONL,
                      "".join(m.model_dump_json() + "\n" for m in metrics))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    names = list(EpochMetrics.model_fields)
    writer.writerow(names)
    for m in metrics:
        writer.writerow([getattr(m, n) for n in names])
    atomic_write_text(run_dir / METRICS_CSV, buf.getvalue())


def _write(run: TrainingRun) -> None:
    from zoo.trainer.checkpoint import write_failure

    try:
        write_metrics(run.run_dir, run.history)
    except OSError as exc:
        raise write_failure(run.run_dir / METRICS_JSONL, exc,
                            f"the checkpoints of epoch {len(run.history)} are written; "
                            f"--resume {run.run_dir} completes the records") from None


@hookimpl
def zoo_train_start(run: TrainingRun) -> None:
    if run.history:  # a resumed run: the files agree with its last checkpoint again
        _write(run)


@hookimpl
def zoo_train_epoch_end(run: TrainingRun, metrics: EpochMetrics) -> None:
    _write(run)
