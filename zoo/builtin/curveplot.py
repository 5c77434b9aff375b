"""Core plugin: ``curves.png`` of whatever epochs completed, when a session ends.

Not after Ctrl-C: drawing imports matplotlib (seconds), and the user asked to stop;
the resumed run draws them.
"""

from __future__ import annotations

import sys

from zoo.host.events import RunStatus, TrainingRun
from zoo.host.hookspecs import hookimpl
from zoo.spec.run import CURVES_PNG, RunSummary


@hookimpl
def zoo_train_end(run: TrainingRun, summary: RunSummary, status: RunStatus) -> None:
    if status == "interrupted":
        return
    from zoo.trainer.curves import write_curves

    try:
        write_curves(run.run_dir, run.history, run.title)
    except Exception as exc:  # a plot must never lose a run
        print(f"zoo: warning: could not draw {CURVES_PNG}: {exc}", file=sys.stderr)
