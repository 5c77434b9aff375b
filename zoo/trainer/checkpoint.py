"""Training checkpoints: atomic save and load, RNG states, and whether a run can be resumed.

A checkpoint holds everything an exact resume needs: model, optimizer,
scheduler, gradient scaler, RNG states (one per rank under DDP), epoch and
step, and the partial totals of an epoch interrupted mid-way. It is a plain
dict that ``torch.load(..., weights_only=True)`` reads.

Since format 2 a checkpoint proves itself: its ``"digest"`` entry is the
SHA-256 of everything else it holds (:func:`content_digest`: every key, plain
value and tensor byte, in order), checked by :func:`load_checkpoint` before
anything is used. A flipped byte anywhere in the tensors or values is an error
naming the file. Checkpoints of format 1 (no digest) still load.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import pickle
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from zoo.errors import DataError, TrainingError, ZooError, reason
from zoo.spec.run import BEST_CHECKPOINT, LAST_CHECKPOINT, RunSummary
from zoo.util.fsutil import atomic_path
from zoo.util.pickleguard import strict_unpickling

if TYPE_CHECKING:
    from zoo.host.registry import Registry

CHECKPOINT_FORMAT = 2
DIGEST_KEY = "digest"


class CheckpointError(TrainingError):
    """A checkpoint that is missing, unreadable or damaged (its content fails its digest)."""


def _feed(digest: Any, obj: Any) -> None:
    """Hash ``obj`` (nested dicts, lists, tensors, plain values) into ``digest``, in order."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        digest.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        digest.update(f"D{len(obj)}".encode())
        for key, value in obj.items():
            _feed(digest, key)
            _feed(digest, value)
    elif isinstance(obj, (list, tuple)):
        digest.update(f"L{len(obj)}".encode())
        for item in obj:
            _feed(digest, item)
    else:  # str, int, float, bool, None: repr is exact (floats round-trip)
        digest.update(f"{type(obj).__name__}:{obj!r};".encode())


def content_digest(state: dict[str, Any]) -> str:
    """SHA-256 hex of a checkpoint's content, without its own ``"digest"`` entry."""
    digest = hashlib.sha256()
    _feed(digest, {k: v for k, v in state.items() if k != DIGEST_KEY})
    return digest.hexdigest()


def _no_space(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def write_failure(path: Path, exc: OSError, kept: str) -> TrainingError:
    """One clear line for a write that failed (disk full, permissions), saying what is kept."""
    why = "the disk is full" if _no_space(exc) else (exc.strerror or str(exc))
    return TrainingError(f"cannot write {path}: {why}; {kept}")


def save_checkpoint(path: Path, state: dict[str, Any]) -> str:
    """Write ``state`` with its digest to ``path`` atomically; return the digest.

    A crash or a full disk never leaves half a checkpoint: the previous file stays
    whole (a full disk is a :class:`~zoo.errors.TrainingError` saying so).
    """
    state = {**state, DIGEST_KEY: content_digest(state)}
    buffer = io.BytesIO()
    torch.save(state, buffer)  # serialized in memory: a write error below is an OSError
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            fh.write(buffer.getbuffer())
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise write_failure(path, exc, f"the previous {path.name} is intact") from None
    return str(state[DIGEST_KEY])


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint onto the CPU (tensors and plain data only), checking its digest.

    A missing, unreadable or damaged checkpoint is a :class:`CheckpointError`
    naming the file; a damaged one is never returned.
    """
    if not path.is_file():
        raise CheckpointError(f"cannot resume from {str(path.parent.parent)!r}: it has no "
                              f"{path.parent.name}/{path.name} (no epoch was completed)")
    try:
        with strict_unpickling():  # weights_only's unpickler, and no fallback to another
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError,
            TypeError, OSError, KeyError, IndexError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: "
                              f"{reason(exc)}") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not a zoo training checkpoint")
    recorded = state.get(DIGEST_KEY)
    has_digest = recorded is not None or int(state.get("format") or 1) >= 2
    if has_digest and recorded != content_digest(state):
        raise CheckpointError(f"checkpoint {path} is damaged: its content does not match "
                              "the SHA-256 digest it was written with; it was not loaded")
    return state


def copy_checkpoint(src: Path, dest: Path) -> None:
    """Copy checkpoint ``src`` to ``dest`` atomically (best.pt from last.pt)."""
    data = src.read_bytes()
    try:
        with atomic_path(dest) as tmp, open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise write_failure(dest, exc, f"the previous {dest.name} is intact") from None


def best_epoch(metrics: list[dict[str, Any]]) -> int | None:
    """The epoch whose weights best.pt must hold: the first with the highest val accuracy."""
    if not metrics:
        return None
    return int(max(metrics, key=lambda m: float(m["val_acc"]))["epoch"])


def checkpoint_position(state: dict[str, Any]) -> tuple[int, int]:
    """(epoch, step) of a checkpoint: epochs completed, and steps into the next one."""
    return int(state.get("epoch") or 0), int(state.get("step") or 0)


def repair_best(ckpt_dir: Path, last_state: dict[str, Any]) -> str:
    """Make ``best.pt`` hold the best epoch recorded by ``last.pt``; say what was done.

    A crash after last.pt was written but before best.pt was leaves best.pt one
    best epoch behind: when the best epoch is last.pt's own, best.pt is copied
    from it. Returns an empty string when nothing needed doing, else one line.
    """
    wanted = best_epoch(list(last_state.get("metrics") or []))
    if wanted is None:
        return ""
    best = ckpt_dir / BEST_CHECKPOINT
    problem = ""
    if not best.is_file():
        problem = "it is missing"
    else:
        try:
            held = checkpoint_position(load_checkpoint(best))
            if held != (wanted, 0):
                problem = f"it holds epoch {held[0]}"
        except CheckpointError as exc:
            problem = str(exc)
    if not problem:
        return ""
    if checkpoint_position(last_state) == (wanted, 0):
        copy_checkpoint(ckpt_dir / LAST_CHECKPOINT, best)
        return (f"repaired {best} from {LAST_CHECKPOINT} (best epoch {wanted}; before: "
                f"{problem})")
    return (f"warning: {best} cannot be repaired ({problem}; the best epoch {wanted} is no "
            "longer in last.pt); export --checkpoint last, or train on to a new best")


def check_checkpoint_agrees(state: dict[str, Any], summary: RunSummary, path: Path) -> None:
    """Fail unless checkpoint ``path`` holds the epoch ``run.json`` says it does.

    best.pt must hold the best epoch and last.pt the last completed one; a run
    interrupted while saving, or mid-epoch, disagrees until it is resumed.
    """
    epoch, step = checkpoint_position(state)
    run_dir = path.parent.parent
    if path.name == BEST_CHECKPOINT:
        wanted = summary.best.epoch if summary.best is not None else None
        what = "best epoch"
    else:
        wanted, what = summary.epochs_completed, "last completed epoch"
    if wanted is not None and "epoch" in state and (epoch, step) != (wanted, 0):
        held = f"epoch {epoch}" + (f" and {step} steps of the next" if step else "")
        raise CheckpointError(
            f"{path} holds {held} but {str(run_dir)!r}'s run.json records {what} {wanted}: "
            f"the run was interrupted; resume it (zoo train --resume {run_dir}) to bring them "
            "together")


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
            "schedule 'none' can be extended); to train longer, start a new run from its best "
            f"weights: --init-from {run_dir} --epochs N")


def load_run_model(run_dir: Path, registry: Registry, which: str = BEST_CHECKPOINT, *,
                   command: str, error: type[ZooError] = CheckpointError,
                   ) -> tuple[torch.nn.Module, RunSummary, Path]:
    """A trained run's model from its checkpoint ``which``, as every reader of runs loads it.

    Read under a shared run lock (no trainer writing meanwhile); the checkpoint's
    digest is checked, its epoch checked against ``run.json``, and its weights loaded
    strictly. A checkpoint that does not fit the model is an ``error`` naming it.
    """
    from zoo.models.statedict import strip_prefix
    from zoo.spec.run import checkpoint_path, read_summary
    from zoo.trainer.rundir import RunLock

    with RunLock(run_dir, command=command, shared=True):
        summary = read_summary(run_dir)
        ckpt = checkpoint_path(run_dir, which)
        state = load_checkpoint(ckpt)
        check_checkpoint_agrees(state, summary, ckpt)
        model = registry.build(summary.model)
        try:
            model.load_state_dict(strip_prefix(state["model"]), strict=True)
        except RuntimeError as exc:
            raise error(f"checkpoint {ckpt} does not fit {summary.model.architecture}: "
                        f"{reason(exc, every_line=True)}") from None
    return model, summary, ckpt
