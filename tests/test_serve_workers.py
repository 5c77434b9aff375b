"""``zoo serve --workers 2``: two processes answer on one port, metrics add up over them,
a dead worker is replaced, SIGTERM stops them all with status 0."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from serve_support import binary_request, call, pixels

from zoo.deploy import OnnxClassifier
from zoo.serve.workers import MAX_RESTARTS

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("ZOO_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    clean["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "plugins")])
    return clean


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # reaped since the kill above
        return False


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _cmdline(pid: int) -> str | None:
    """A process's command line; None once it has gone (a child can be reaped between
    listing the children and reading this)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None


def _workers(pid: int) -> set[int]:
    """The worker processes (not multiprocessing's resource tracker); a zombie counts
    until it is reaped."""
    workers = set()
    for child in _children(pid):
        cmdline = _cmdline(child)
        if cmdline is not None and "resource_tracker" not in cmdline:
            workers.add(child)
    return workers


def _counter(metrics: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_two_workers_share_the_port_add_up_metrics_and_restart_a_dead_one() -> None:
    classifier = OnnxClassifier("Net")
    images = np.stack([pixels(seed).transpose(2, 0, 1) for seed in range(3)])
    x = classifier.preprocess(images)
    expected = classifier.probabilities(images)
    proc = subprocess.Popen([sys.executable, "-m", "zoo", "serve", "Net", "--port", "0",
                             "--workers", "2", "--max-loop-lag-ms", "0",
                             "--max-queue-wait-ms", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(), cwd=ROOT)
    assert proc.stdout is not None and proc.stderr is not None
    log: list[str] = []  # the server's stderr, as it comes
    reader = threading.Thread(target=lambda: log.extend(iter(proc.stderr.readline, "")),
                              daemon=True)
    reader.start()
    try:
        line = proc.stdout.readline()
        assert " with 2 workers " in line, line + "".join(log)
        url = line.split(" at ")[1].split()[0]
        workers = _workers(proc.pid)
        assert len(workers) == 2

        header = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                              "parameters": {"binary_data_size": x.nbytes}}],
                  "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}
        body, headers = binary_request(header, x.tobytes())
        for _ in range(40):  # each on a new connection: the kernel spreads them
            reply = call(f"{url}v2/models/Net/infer", "POST", body, headers)
            assert reply.status == 200
            size = int(reply.headers["inference-header-content-length"])
            probs = np.frombuffer(reply.body[size:], dtype=np.float32).reshape(3, -1)
            np.testing.assert_allclose(probs, expected, atol=1e-6)

        metrics = call(f"{url}metrics").body.decode()
        assert _counter(metrics, "zoo_serve_requests_total", endpoint="infer",
                        outcome="ok") == 40  # over both workers, whichever answered
        assert _counter(metrics, "zoo_serve_batch_size_count", model="Net") == 40
        assert re.search(r'^zoo_serve_model_info\{.*model="Net".*\} 1\.0$', metrics, re.M)

        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = _workers(proc.pid)
            if victim not in now and len(now) == 2:
                break
            time.sleep(0.1)
        replacement = _workers(proc.pid) - workers
        assert len(replacement) == 1, "the dead worker was not replaced"
        deadline = time.monotonic() + 60
        while f"Started server process [{min(replacement)}]" not in "".join(log):
            assert time.monotonic() < deadline, "the new worker did not start serving"
            time.sleep(0.05)
        deadline = time.monotonic() + 60
        answered = 0
        while answered < 20 and time.monotonic() < deadline:  # the new one loads, then answers
            answered += call(f"{url}v2/models/Net/infer", "POST", body, headers).status == 200
        assert answered == 20
        metrics = call(f"{url}metrics").body.decode()
        # the dead worker's counts stay: a counter never goes down
        assert _counter(metrics, "zoo_serve_requests_total", endpoint="infer",
                        outcome="ok") == 60

        proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=60)
        reader.join(timeout=30)
        text = "".join(log)
        assert status == 0, text
        assert f"worker {victim} exited with status -9" in text
        served = {json.loads(entry)["pid"] for entry in text.splitlines()
                  if '"path":"/v2/models/Net/infer"' in entry}
        assert served >= workers - {victim}  # both original workers answered requests
        assert len(served) >= 2
        assert not any(_alive(pid) for pid in workers | replacement)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_workers_that_keep_dying_stop_the_server_with_status_1() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "zoo", "serve", "Net", "--port", "0",
                             "--workers", "2"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        assert " with 2 workers " in proc.stdout.readline()
        killed: set[int] = set()
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            for pid in _workers(proc.pid) - killed:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            time.sleep(0.05)
        assert proc.wait(timeout=60) == 1
        log = proc.stderr.read()
        # five replacements, then the sixth death in a minute stops the server
        assert log.count("started worker") == MAX_RESTARTS
        assert f"{MAX_RESTARTS + 1} workers died within 60 s: stopping the server" in log
        assert not any(_alive(pid) for pid in killed)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_workers_out_of_range_is_one_line() -> None:
    result = subprocess.run([sys.executable, "-m", "zoo", "serve", "Net", "--workers", "0"],
                            capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=60)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "zoo: error: --workers must be from 1 to 64, got 0"]
