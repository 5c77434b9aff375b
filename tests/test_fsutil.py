"""Atomic writes: the usual file and folder modes, and nothing left behind by a failure."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from zoo.util.fsutil import atomic_directory, atomic_path, atomic_write_text


@pytest.fixture(params=[0o022, 0o027])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    mask: int = request.param
    previous = os.umask(mask)
    try:
        yield mask
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_files_get_the_umask_mode(tmp_path: Path, umask: int) -> None:
    atomic_write_text(tmp_path / "a.txt", "hello")
    with atomic_path(tmp_path / "b.bin") as tmp, tmp.open("wb") as fh:
        fh.write(b"\0")
    assert (tmp_path / "a.txt").read_text() == "hello"
    assert _mode(tmp_path / "a.txt") == _mode(tmp_path / "b.bin") == 0o666 & ~umask
    (tmp_path / "plain.txt").write_text("")
    assert _mode(tmp_path / "a.txt") == _mode(tmp_path / "plain.txt")


def test_atomic_directories_get_the_umask_mode(tmp_path: Path, umask: int) -> None:
    with atomic_directory(tmp_path / "run") as tmp:
        (tmp / "file").write_text("x")
    assert _mode(tmp_path / "run") == 0o777 & ~umask
    (tmp_path / "plain").mkdir()
    assert _mode(tmp_path / "run") == _mode(tmp_path / "plain")
    with atomic_directory(tmp_path / "run", replace=True) as tmp:
        (tmp / "other").write_text("y")
    assert _mode(tmp_path / "run") == 0o777 & ~umask
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["other"]


def test_a_failure_leaves_nothing_behind(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "f.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "d") as tmpdir:
        (tmpdir / "part").write_text("half")
        raise RuntimeError("writer failed")
    assert list(tmp_path.iterdir()) == []


def test_a_failure_keeps_what_was_there(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "f.txt", "old")
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "f.txt") as tmp:
        tmp.write_text("new")
        raise RuntimeError("writer failed")
    with atomic_directory(tmp_path / "d") as tmpdir:
        (tmpdir / "old").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "d", replace=True) as tmpdir:
        (tmpdir / "new").write_text("new")
        raise RuntimeError("writer failed")
    assert (tmp_path / "f.txt").read_text() == "old"
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "f.txt"]
