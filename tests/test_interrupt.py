"""Ctrl-C in ``zoo train``: one stops within a step, saves and exits 130 at once; a second
one exits immediately and leaves a run that --resume accepts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from zoo.trainer.checkpoint import load_checkpoint


def _train_then_interrupt(tmp_path: Path, *gaps: float) -> tuple[int, float, str]:
    """Start ``zoo train``, send SIGINT after a second of training (and again after each gap);
    return the exit status, the seconds from the first SIGINT to the exit, and stderr."""
    # the session's kernel cache (conftest): a build of their own would take seconds
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "zoo", "train", "Net", "--option", "size=2000", "--set",
           "in_height=16", "--set", "in_width=16", "--epochs", "50", "--progress", "log",
           "--num-threads", "1", "--out", str(tmp_path / "run")]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    training = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("epoch 1/"):
                training.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert training.wait(120), "".join(lines)
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    for gap in gaps:
        time.sleep(gap)
        proc.send_signal(signal.SIGINT)
    status = proc.wait(60)
    seconds = time.monotonic() - start
    reader.join(5)
    return status, seconds, "".join(lines)


@pytest.mark.slow
def test_ctrl_c_saves_prints_the_resume_command_and_exits_130_at_once(tmp_path: Path) -> None:
    status, seconds, err = _train_then_interrupt(tmp_path)
    assert status == 130, err
    assert seconds < 1.5, f"{seconds:.2f} s from Ctrl-C to exit"
    assert f"continue with: zoo train Net --resume {tmp_path / 'run'}" in err
    assert err.endswith("zoo: interrupted\n")
    # the seconds torch takes to import are announced, not silent
    assert err.splitlines()[0] == "zoo: loading PyTorch…"
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")  # digest checked
    summary = json.loads((tmp_path / "run" / "run.json").read_text())
    assert summary["status"] == "interrupted"
    assert summary["epochs_completed"] == len(state["metrics"]) >= 1


@pytest.mark.slow
def test_a_second_ctrl_c_exits_immediately_and_the_run_stays_resumable(tmp_path: Path) -> None:
    status, seconds, err = _train_then_interrupt(tmp_path, 0.005)
    assert status == 130, err
    assert seconds < 1.5
    run = tmp_path / "run"
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    summary = json.loads((run / "run.json").read_text())
    assert summary["epochs_completed"] in (len(state["metrics"]), len(state["metrics"]) - 1)
    leftovers = [p.name for p in run.rglob("*") if p.name.endswith((".tmp", ".old"))]
    assert not leftovers or all(".zoo-" in name for name in leftovers)  # cleaned on next write
