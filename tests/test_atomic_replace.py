"""--force replacement in one atomic step, and temporaries of dead writers cleaned up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import zoo.util.fsutil as fsutil
from zoo.util.fsutil import atomic_directory, atomic_write_text, clean_stale_temporaries, exchange


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux's")
def test_replacing_a_folder_is_one_exchange_never_a_missing_destination(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with atomic_directory(tmp_path / "bundle") as tmp:
        (tmp / "v").write_text("old")
    assert exchange(tmp_path / "bundle", tmp_path / "bundle")  # supported here

    def crash(*args: object) -> None:
        raise KeyboardInterrupt  # a crash at any rename of the two-rename fallback

    monkeypatch.setattr(fsutil.os, "replace", crash)
    with atomic_directory(tmp_path / "bundle", replace=True) as tmp:
        (tmp / "v").write_text("new")
    assert (tmp_path / "bundle" / "v").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_without_exchange_the_two_rename_fallback_still_replaces(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fsutil, "exchange", lambda a, b: False)
    with atomic_directory(tmp_path / "bundle") as tmp:
        (tmp / "v").write_text("old")
    with atomic_directory(tmp_path / "bundle", replace=True) as tmp:
        (tmp / "v").write_text("new")
    assert (tmp_path / "bundle" / "v").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_exchange_reports_a_missing_path(tmp_path: Path) -> None:
    if not exchange(tmp_path, tmp_path):
        pytest.skip("no renameat2 here")
    (tmp_path / "a").mkdir()
    with pytest.raises(FileNotFoundError):
        exchange(tmp_path / "a", tmp_path / "missing")


def test_temporaries_of_dead_writers_are_removed_by_the_next_write(tmp_path: Path) -> None:
    dead = _dead_pid()
    stale_file = tmp_path / f".run.json.zoo-{dead}-abc123.tmp"
    stale_file.write_text("half")
    stale_dir = tmp_path / f".bundle.zoo-{dead}-xyz.tmp"
    (stale_dir / "inner").mkdir(parents=True)
    stale_old = tmp_path / f".bundle.zoo-{dead}-q.old"
    stale_old.mkdir()
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    live = tmp_path / f".run.json.zoo-{writer.pid}-live.tmp"  # a running process's
    live.write_text("in progress")
    unrelated = tmp_path / ".run.json.backup"
    unrelated.write_text("mine")
    atomic_write_text(tmp_path / "run.json", "{}")
    assert not stale_file.exists() and live.exists() and unrelated.exists()
    assert stale_dir.exists()  # another destination's: left for its own next write
    with atomic_directory(tmp_path / "bundle") as tmp:
        (tmp / "f").write_text("x")
    assert not stale_dir.exists() and not stale_old.exists()
    assert clean_stale_temporaries(tmp_path / "run.json") == []
    assert writer.poll() is None  # probed, never signalled
    writer.kill()
    writer.wait()


def test_replacing_a_link_to_a_folder_replaces_the_link(tmp_path: Path) -> None:
    with atomic_directory(tmp_path / "real") as tmp:
        (tmp / "v").write_text("old")
    (tmp_path / "bundle").symlink_to(tmp_path / "real")
    with atomic_directory(tmp_path / "bundle", replace=True) as tmp:
        (tmp / "v").write_text("new")
    assert not (tmp_path / "bundle").is_symlink()
    assert (tmp_path / "bundle" / "v").read_text() == "new"
    assert (tmp_path / "real" / "v").read_text() == "old"  # what it pointed to is kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "real"]
