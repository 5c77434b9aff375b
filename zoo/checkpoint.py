"""Training checkpoints: atomic save and load, RNG states, and whether a run can be resumed.

A checkpoint holds everything an exact resume needs: model, optimizer,
scheduler, gradient scaler, RNG states (one per rank under DDP), epoch and
step, and the partial totals of an epoch interrupted mid-way. It is a plain
dict that ``torch.load(..., weights_only=True)`` reads.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import torch

from zoo.errors import DataError, TrainingError
from zoo.fsutil import atomic_path
from zoo.run import RunSummary

CHECKPOINT_FORMAT = 1


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically: a crash never leaves half a checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint onto the CPU (tensors and plain data only); a clear error if unusable."""
    if not path.is_file():
        raise TrainingError(f"cannot resume from {str(path.parent.parent)!r}: it has no "
                            f"{path.parent.name}/{path.name} (no epoch was completed)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError,
            TypeError, OSError) as exc:
        raise TrainingError(f"cannot read checkpoint {path}: {type(exc).__name__}: "
                            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                            ) from None
    if not isinstance(state, dict) or "model" not in state:
        raise TrainingError(f"{path} is not a zoo training checkpoint")
    return state


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's RNG states: torch's, Python's and, on CUDA, the device's."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def check_same_run(previous: RunSummary, run_dir: Path, architecture: str,
                   content_key: str) -> None:
    """Fail unless the run being resumed trained ``architecture`` on the same data."""
    if previous.model.architecture != architecture:
        raise TrainingError(f"run {str(run_dir)!r} trained {previous.model.architecture!r}, "
                            f"not {architecture!r}")
    if previous.data.content_key != content_key:
        raise DataError(f"the data of run {str(run_dir)!r} is not what it started with "
                        f"(content key {previous.data.content_key}, now {content_key}): "
                        "its files changed, or the run predates content-hashed keys; "
                        "start a new run instead")


def check_resumable(state: dict[str, Any], run_dir: Path, *, steps: int, epochs: int,
                    schedule: str, scheduled: bool) -> None:
    """Fail unless ``state`` can continue with ``steps`` per epoch for ``epochs`` epochs.

    ``scheduled``: whether the run has a learning-rate scheduler, whose total
    step count is fixed when it starts.
    """
    if state.get("steps_per_epoch") != steps:
        raise TrainingError(
            f"cannot resume {str(run_dir)!r}: it ran {state.get('steps_per_epoch')} steps "
            f"per epoch, this configuration gives {steps} (the global batch size, "
            "batch_size x processes, changed)")
    if scheduled and state.get("total_steps") != steps * epochs:
        raise TrainingError(
            f"cannot resume {str(run_dir)!r} with epochs={epochs}: its {schedule} "
            f"schedule was planned for {state['total_steps'] // steps} epochs (only "
            "schedule 'none' can be extended)")
