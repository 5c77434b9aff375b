"""SIGKILL at random points (seeded), many times: resumed training ends bitwise equal to an
uninterrupted run, and an interrupted export leaves no bundle or a complete one.

Each attempt runs in a child process that kills itself with SIGKILL at a chosen point:
just before or just after the k-th rename that publishes a file (every atomic write ends
in one), inside the k-th fsync of a checkpoint being written, or after a random delay.
Nothing of the zoo is changed for the test: the child wraps ``os.replace``, ``os.fsync``
and ``zoo.util.fsutil.exchange``.

The children come from multiprocessing's fork server, which imports torch and the zoo
once, before any thread exists: an attempt costs milliseconds, not an interpreter start,
and no child inherits a lock that another thread of the test process (onnxruntime's or
OpenMP's pools, a thread an earlier test left) held when it forked. Forking the test
process itself could do that, and the child then waited forever. Every attempt and each
test as a whole also have a deadline: a test never hangs.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import zoo.util.fsutil
from zoo.bundles.integrity import open_bundle
from zoo.deploy import OnnxClassifier
from zoo.exporter.verify import verify_bundle
from zoo.exporter.write import export
from zoo.spec.manifest import WEIGHTS_FILE
from zoo.trainer.loop import train

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not hasattr(os, "fork") or sys.platform != "linux",
                                 reason="forks and SIGKILLs itself (Linux)")]

CFG: dict[str, Any] = {
    "dataset_options": {"size": 64, "num_classes": 2},
    "model": {"in_height": 8, "in_width": 8},
    "batch_size": 16,
    "epochs": 3,
    "progress": "none",
    "num_threads": 1,
    "schedule": "onecycle",
}
MIN_KILLS = 14
CHILD_TIMEOUT_S = 60.0


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _arm(mode: str, k: int, delay: float) -> None:
    """In the child: SIGKILL this process at the chosen point."""
    calls = {"n": 0}
    if mode in ("before-rename", "after-rename"):
        real = os.replace

        def replace(src: Any, dst: Any, **kw: Any) -> None:
            calls["n"] += 1
            if calls["n"] == k and mode == "before-rename":
                _kill()
            real(src, dst, **kw)
            if calls["n"] == k and mode == "after-rename":
                _kill()

        os.replace = replace  # type: ignore[assignment]
    elif mode == "in-fsync":
        real_fsync = os.fsync

        def fsync(fd: Any) -> None:
            calls["n"] += 1
            if calls["n"] == k:
                _kill()
            real_fsync(fd)

        os.fsync = fsync
    elif mode == "in-exchange":
        real_exchange = zoo.util.fsutil.exchange

        def exchange(a: Any, b: Any) -> bool:
            if k % 2:
                _kill()
            done = real_exchange(a, b)
            _kill()
            return done

        zoo.util.fsutil.exchange = exchange
    else:
        timer = threading.Timer(delay, _kill)
        timer.daemon = True
        timer.start()


#: Fork server children: started clean (no threads), torch and the zoo already imported.
_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload([
    "torch", "zoo.trainer.loop", "zoo.exporter.write", "zoo_chapter8.models",
    "zoo_datasets.synthetic", "matplotlib.pyplot", "zoo.trainer.curves", "torch._dynamo"])
#: The most one test may take (it takes seconds): an attempt that hangs fails it, never waits.
TEST_DEADLINE_S = 240.0


def _child(mode: str, k: int, delay: float, environ: dict[str, str], job: str,
           args: tuple[Any, ...]) -> None:  # pragma: no cover - the child
    os.environ.clear()
    os.environ.update(environ)
    code = 0
    try:
        torch.set_num_threads(1)
        _arm(mode, k, delay)
        JOBS[job](*args)
    except BaseException:
        traceback.print_exc()
        code = 3
    finally:
        os._exit(code)


def _train_job(run: Path) -> None:  # pragma: no cover - the child
    if (run / "run.json").is_file():
        train("Net", resume=run)
    else:
        train("Net", out=run, **CFG)


def _export_job(run: Path, dest: Path) -> None:  # pragma: no cover - the child
    export(run, out=dest, force=dest.exists())


JOBS: dict[str, Callable[..., None]] = {"train": _train_job, "export": _export_job}


def _in_child(mode: str, k: int, delay: float, deadline: float, job: str,
              *args: Any) -> int:
    """Run ``job`` in a fresh child that arms its kill point. Its fate: killed (-1) or 0."""
    process = _CONTEXT.Process(target=_child, args=(mode, k, delay, dict(os.environ), job,
                                                    args))
    process.start()
    process.join(max(0.0, min(CHILD_TIMEOUT_S, deadline - time.monotonic())))
    if process.is_alive():
        process.kill()
        process.join()
        pytest.fail(f"attempt {mode} {k} {delay:.2f} of {job} hung, or the test ran out "
                    f"of time")
    code = process.exitcode
    if code == -signal.SIGKILL:
        return -1
    assert code == 0, f"attempt {mode} {k} {delay:.2f} failed (see its traceback above)"
    return 0


def _kill_point(rng: random.Random, modes: tuple[str, ...], *, writes: int = 4,
                seconds: float = 0.4) -> tuple[str, int, float]:
    return rng.choice(modes), rng.randint(1, writes), rng.uniform(0.0, seconds)


def _state(run: Path, name: str) -> dict[str, torch.Tensor]:
    weights: dict[str, torch.Tensor] = torch.load(run / "checkpoints" / name,
                                                  weights_only=True)["model"]
    return weights


def _records(run: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    timing = ("images_per_s", "seconds")
    rows = [{k: v for k, v in json.loads(line).items() if k not in timing}
            for line in (run / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run / "run.json").read_text())
    kept = {"epochs_completed": summary["epochs_completed"],
            "best": {k: v for k, v in summary["best"].items() if k not in timing},
            "last": {k: v for k, v in summary["last"].items() if k not in timing}}
    return rows, kept


def test_training_killed_at_random_points_resumes_bitwise_equal(
        tmp_path: Path) -> None:
    # ZOO_CACHE_DIR stays the session's (conftest): the kernels are compiled once
    deadline = time.monotonic() + TEST_DEADLINE_S
    reference = tmp_path / "reference"
    train("Net", out=reference, **CFG)
    rng = random.Random(15)
    kills = rounds = attempts = 0
    modes = ("before-rename", "after-rename", "in-fsync", "timer")
    while kills < MIN_KILLS:
        rounds += 1
        run = tmp_path / f"run{rounds}"
        while True:
            attempts += 1
            assert attempts < 200, "no progress"
            mode, k, delay = _kill_point(rng, modes)
            if _in_child(mode, k, delay, deadline, "train", run) == 0:
                break
            kills += 1
        for name in ("last.pt", "best.pt"):
            a, b = _state(reference, name), _state(run, name)
            assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
        assert _records(run) == _records(reference)
        left = [p.name for p in [*run.iterdir(), *(run / "checkpoints").iterdir()]
                if p.name.startswith(".")]
        assert not left, left
    assert kills >= MIN_KILLS
    print(f"training: {kills} kills, {rounds} round(s), {attempts} attempts")


def test_export_killed_at_random_points_leaves_no_bundle_or_a_complete_one(
        tmp_path: Path) -> None:
    deadline = time.monotonic() + TEST_DEADLINE_S
    run = tmp_path / "run"
    train("Net", out=run, **{**CFG, "epochs": 1})
    weights = hashlib.sha256(
        (export(run, out=tmp_path / "reference").path / WEIGHTS_FILE).read_bytes()).hexdigest()
    rng = random.Random(8)
    dest = tmp_path / "bundle"
    kills = attempt = 0
    while kills < 12:
        attempt += 1
        assert attempt < 60, "too few kills"
        existed = dest.exists()
        # an export publishes with one rename (a new bundle) or one exchange (--force)
        modes = ("in-exchange", "timer") if existed else ("before-rename", "after-rename",
                                                          "timer")
        mode, k, delay = _kill_point(rng, modes, writes=2 if existed else 1, seconds=0.25)
        fate = _in_child(mode, k, delay, deadline, "export", run, dest)
        kills += fate == -1
        if not dest.exists():
            assert not existed, f"attempt {attempt} ({mode}) lost the existing bundle"
            continue
        manifest = open_bundle(dest)  # every file present and matching its SHA-256
        assert hashlib.sha256((dest / WEIGHTS_FILE).read_bytes()).hexdigest() == weights
        assert OnnxClassifier(dest).manifest == manifest
    print(f"export: {kills} kills in {attempt} attempts")
    export(run, out=dest, force=True)  # the next write clears what killed writers left
    assert verify_bundle(dest).passed
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
