"""Core plugin: ``curves.png`` of whatever epochs completed, when the run ends however."""

from __future__ import annotations

import sys

from zoo.events import RunStatus, TrainingRun
from zoo.hookspecs import hookimpl
from zoo.run import CURVES_PNG, RunSummary


@hookimpl
def zoo_train_end(run: TrainingRun, summary: RunSummary, status: RunStatus) -> None:
    from zoo.curves import write_curves

    try:
        write_curves(run.run_dir, run.history, run.title)
    except Exception as exc:  # a plot must never lose a run
        print(f"zoo: warning: could not draw {CURVES_PNG}: {exc}", file=sys.stderr)
