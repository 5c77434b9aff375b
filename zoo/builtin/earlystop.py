"""Core plugin: stop a run when a metric has not improved for ``early_stop_patience`` epochs.

Configured by ``TrainConfig.early_stop_metric`` (``val_acc``, ``val_loss``,
``train_acc`` or ``train_loss``; accuracies must rise, losses fall) and
``early_stop_patience``. The decision is a function of the run's history alone,
so a resumed run stops at the same epoch as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Sequence

from zoo.host.events import StopRequest, TrainingRun
from zoo.host.hookspecs import hookimpl
from zoo.spec.run import EpochMetrics

#: The metrics early stopping may watch, and whether higher is better.
STOP_METRICS: dict[str, bool] = {"val_acc": True, "val_loss": False,
                                 "train_acc": True, "train_loss": False}


def stale_epochs(history: Sequence[EpochMetrics], metric: str) -> int:
    """How many epochs have passed since ``metric`` last reached its best (0: improved now)."""
    higher = STOP_METRICS[metric]
    values = [getattr(m, metric) for m in history]
    best_index = 0
    for i, value in enumerate(values):
        if (value > values[best_index]) if higher else (value < values[best_index]):
            best_index = i
    return len(values) - 1 - best_index


def stop_request(history: Sequence[EpochMetrics], metric: str,
                 patience: int) -> StopRequest | None:
    """A stop request once ``metric`` has not improved for ``patience`` epochs."""
    if not history or stale_epochs(history, metric) < patience:
        return None
    best = history[-1 - stale_epochs(history, metric)]
    return StopRequest(reason=f"early stop: {metric} has not improved for {patience} "
                              f"epoch(s) since epoch {best.epoch} "
                              f"({getattr(best, metric):.4f})")


@hookimpl
def zoo_train_should_stop(run: TrainingRun, metrics: EpochMetrics) -> StopRequest | None:
    metric = run.config.early_stop_metric
    if metric is None:
        return None
    return stop_request(run.history, metric, run.config.early_stop_patience)
