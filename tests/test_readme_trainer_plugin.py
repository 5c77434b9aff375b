"""The docs' trainer plugin (zoo-epochlog, docs/plugins/training-hooks.md), pip-installed,
in real ``zoo train`` runs.

It must receive every epoch's metrics, in one process and under ``torchrun`` with
2 processes (rank 0 only), and stop a run early through ``zoo_train_should_stop``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_readme_console import example_files

from zoo.cli import main
from zoo.host.registry import reset_default_registry

TRAIN = ["train", "Net", "--option", "size=200", "--set", "in_height=16", "--set",
         "in_width=16", "--batch-size", "32", "--num-threads", "1", "--progress", "log"]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("epochlog")
    files = {path: body for path, body in example_files().items()
             if path.startswith("zoo-epochlog/")}
    assert set(files) == {"zoo-epochlog/pyproject.toml", "zoo-epochlog/zoo_epochlog/__init__.py"}
    for rel, body in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(body)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--no-index", "--target", str(root / "site"),
                    str(root / "zoo-epochlog")], check=True, capture_output=True, timeout=300)
    return root / "site"


def _env(site: Path, tmp_path: Path, **extra: str) -> dict[str, str]:
    path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    # ZOO_CACHE_DIR stays the session's (conftest): the kernels built once, not per test
    return {**os.environ, "PYTHONPATH": path,
            "OMP_NUM_THREADS": "1", "EPOCHLOG_PATH": str(tmp_path / "epochs.jsonl"), **extra}


def _records(tmp_path: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (tmp_path / "epochs.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_the_plugin_gets_every_epoch_and_stops_a_run(
        site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # in this process (torch is imported already), found through its entry point
    monkeypatch.syspath_prepend(str(site))
    for key, value in _env(site, tmp_path).items():
        monkeypatch.setenv(key, value)
    reset_default_registry()
    try:
        run = tmp_path / "run"
        assert main([*TRAIN, "--epochs", "2", "--out", str(run)]) == 0
        metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        records = _records(tmp_path)
        assert [r["epoch"] for r in records] == [1, 2]
        assert [r["val_acc"] for r in records] == [m["val_acc"] for m in metrics]
        assert {r["ranks"] for r in records} == {1}
        # a target any epoch reaches: the run stops after its first epoch
        monkeypatch.setenv("EPOCHLOG_TARGET_ACC", "0")
        stopped = tmp_path / "stopped"
        capsys.readouterr()
        assert main([*TRAIN, "--epochs", "4", "--out", str(stopped)]) == 0
        assert "zoo: stopped after epoch 1: val_acc" in capsys.readouterr().err
        summary = json.loads((stopped / "run.json").read_text())
        assert (summary["status"], summary["epochs_completed"]) == ("stopped", 1)
        assert summary["stop_reason"].endswith("reached 0")
    finally:
        reset_default_registry()
        for module in [m for m in sys.modules if m.startswith("zoo_epochlog")]:
            del sys.modules[module]


@pytest.mark.slow
def test_under_torchrun_rank_0_reports_and_its_stop_request_stops_every_rank(
        site: Path, tmp_path: Path) -> None:
    """One torchrun job of two ranks (the command line a user types): rank 0 alone
    reports and writes one set of files, the plugin hears each epoch from rank 0 only,
    and its stop request after the first epoch ends every rank."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "zoo", *TRAIN, "--epochs", "3", "--out", str(run)]
    proc = subprocess.run(cmd, env=_env(site, tmp_path, EPOCHLOG_TARGET_ACC="0"),
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-12000:]  # the failing rank's own error too
    assert proc.stdout.count(str(run)) == 1  # only rank 0 reports
    assert "x2 ranks" in proc.stderr
    assert {p.name for p in run.iterdir()} >= {"config.json", "run.json", "metrics.jsonl",
                                                "metrics.csv", "val_samples.npy", "checkpoints"}
    records = _records(tmp_path)  # rank 0 only: one line per epoch, not two
    assert [(r["epoch"], r["ranks"]) for r in records] == [(1, 2)]
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_loss"] for r in records] == [m["val_loss"] for m in metrics]
    summary = json.loads((run / "run.json").read_text())
    assert (summary["status"], summary["epochs_completed"]) == ("stopped", 1)
