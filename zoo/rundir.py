"""A new run's directory: where it goes, whether it may be used, undoing one never begun."""

from __future__ import annotations

import contextlib
from datetime import datetime, timezone
from pathlib import Path

from zoo.errors import TrainingError
from zoo.fsutil import atomic_path
from zoo.run import CHECKPOINT_DIR, CONFIG_FILE, SUMMARY_FILE, VAL_SAMPLES
from zoo.runlock import LOCK_FILE


def probe_writable(path: Path) -> None:
    """Fail early, before loading data, if the run directory cannot be created and written."""
    target = path if path.exists() else path.parent
    try:
        target.mkdir(parents=True, exist_ok=True)
        with atomic_path(target / ".zoo-write-probe"):
            pass
        (target / ".zoo-write-probe").unlink(missing_ok=True)
    except OSError as exc:
        raise TrainingError(f"output directory {str(path)!r} is not writable "
                            f"({exc.strerror or exc}); choose another --out") from None


def reusable(out: Path) -> bool:
    """Whether a new run may use the existing directory ``out``.

    It may if it is empty, or if it is a run that stopped before its first epoch
    began (it has a lock file but no ``run.json``): its files are rewritten.
    """
    names = {p.name for p in out.iterdir()}
    return not names or (LOCK_FILE in names and SUMMARY_FILE not in names)


def default_out(architecture: str, dataset: str) -> Path:
    """``runs/ARCH-DATASET-TIMESTAMP``: where a run goes when no --out is given."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{architecture}-{dataset}-{stamp}"


def drop_unstarted(out: Path, *, made_dir: bool) -> None:
    """After a failure before the run began (no run.json), leave no trace of it."""
    if (out / SUMMARY_FILE).exists():
        return
    for name in (CONFIG_FILE, VAL_SAMPLES, LOCK_FILE):
        (out / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        (out / CHECKPOINT_DIR).rmdir()
    if made_dir:
        with contextlib.suppress(OSError):
            out.rmdir()
