"""Core plugin: the progress bar (or log lines) on stderr, configured by ``progress``."""

from __future__ import annotations

from zoo.host.events import TrainingRun
from zoo.host.hookspecs import hookimpl
from zoo.spec.run import EpochMetrics
from zoo.trainer.progress import Progress

_KEY = "progressdisplay"


def _progress(run: TrainingRun) -> Progress:
    progress = run.state.get(_KEY)
    if progress is None:
        progress = run.state[_KEY] = Progress(
            run.config.progress, True, images_per_step=run.config.batch_size * run.world_size)
    return progress


@hookimpl
def zoo_train_note(run: TrainingRun, text: str) -> None:
    _progress(run).message(text)


@hookimpl
def zoo_train_step(run: TrainingRun, epoch: int, step: int, steps: int) -> None:
    _progress(run).step(epoch, run.config.epochs, step, steps)


@hookimpl
def zoo_train_epoch_end(run: TrainingRun, metrics: EpochMetrics) -> None:
    _progress(run).epoch(metrics, run.config.epochs)
