"""Atomic writes: the usual file and folder modes, and nothing left behind by a failure."""

from __future__ import annotations

import errno
import os
import re
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from zoo.errors import ZooError
from zoo.util import fsutil
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


def test_the_umask_is_read_without_setting_it_where_proc_shows_it(
        monkeypatch: pytest.MonkeyPatch, umask: int) -> None:
    if not Path("/proc/self/status").is_file():
        pytest.skip("no /proc: the mask can only be read by setting it")

    def forbidden(mask: int) -> int:
        raise AssertionError("os.umask was called: other threads would see the mask change")

    with monkeypatch.context() as patch:
        patch.setattr(fsutil.os, "umask", forbidden)
        assert fsutil._umask() == umask


def test_without_proc_the_umask_is_read_by_setting_it_back(
        monkeypatch: pytest.MonkeyPatch, umask: int) -> None:
    real_open = open

    def no_proc(path: object, *args: object, **kwargs: object) -> object:
        if str(path).startswith("/proc/"):
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return real_open(path, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr("builtins.open", no_proc)
    assert fsutil._umask() == umask
    assert os.umask(umask) == umask  # left as it was


def test_temporaries_of_live_writers_are_kept_and_their_writers_untouched(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".run.json.zoo-{writer.pid}-abc.tmp"
        live.write_text("half")
        dead_pid = _dead_pid()
        dead = tmp_path / f".run.json.zoo-{dead_pid}-abc.tmp"
        dead.write_text("half")
        dead_dir = tmp_path / f".bundle.zoo-{dead_pid}-x.tmp"
        (dead_dir / "sub").mkdir(parents=True)
        assert fsutil.clean_stale_temporaries(tmp_path / "run.json") == [dead]
        assert live.exists() and dead_dir.exists()
        assert writer.poll() is None  # probed with signal 0, not signalled
        assert fsutil.clean_stale_temporaries(tmp_path / "other", any_name=True) == [dead_dir]
        assert not dead_dir.exists() and live.exists()
        # a writer of another user: the probe is refused (EPERM), so it is alive
        other = tmp_path / f".run.json.zoo-{dead_pid}-def.tmp"
        other.write_text("half")
        with monkeypatch.context() as patch:
            patch.setattr(fsutil.os, "kill", _refuse)
            assert fsutil.clean_stale_temporaries(tmp_path / "run.json") == []
        assert other.exists()
    finally:
        writer.kill()
        writer.wait()


def _dead_pid() -> int:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return gone.pid


def _refuse(pid: int, sig: int) -> None:
    raise PermissionError(1, "Operation not permitted")


@pytest.mark.parametrize(("make", "exc", "expected"), [
    (lambda p: p.mkdir(), PermissionError(13, "Permission denied"), ": Permission denied$"),
    (lambda p: None, OSError(28, "No space left on device"), ": the disk is full$"),
    (lambda p: None, OSError(122, "Disk quota exceeded"), ": the disk is full$"),
    (lambda p: None, OSError("no errno at all"), ": no errno at all$"),
    (lambda p: p.write_text(""), PermissionError(13, "Permission denied"),
     "out' is a file; accepted: a folder"),
])
def test_a_write_error_names_its_cause(tmp_path: Path, make: Callable[[Path], object],
                                       exc: OSError, expected: str) -> None:
    make(tmp_path / "out")
    message = str(fsutil.write_error(tmp_path / "out", exc, "bundle"))
    assert message.startswith(f"cannot write the bundle {str(tmp_path / 'out')!r}")
    assert re.search(expected, message), message


def test_output_folders_are_checked_and_made_with_their_parents(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ZooError, match=r"'.*file' is a file; accepted: a folder"):
        fsutil.check_output_folder(tmp_path / "file" / "sub")
    fsutil.check_output_folder(tmp_path / "new" / "deeper")  # nothing there yet: fine
    with fsutil.output_folder(tmp_path / "a" / "b" / "c") as made:
        (made / "x").write_text("x")
    assert (tmp_path / "a" / "b" / "c" / "x").read_text() == "x"


def test_atomic_writes_make_missing_parent_folders(tmp_path: Path) -> None:
    fsutil.atomic_write_bytes(tmp_path / "a" / "b" / "f.bin", b"\1")
    with atomic_directory(tmp_path / "c" / "d" / "run") as tmp:
        (tmp / "f").write_text("y")
    assert (tmp_path / "a" / "b" / "f.bin").read_bytes() == b"\1"
    assert (tmp_path / "c" / "d" / "run" / "f").read_text() == "y"


def test_an_existing_folder_is_replaced_only_when_asked(tmp_path: Path) -> None:
    with atomic_directory(tmp_path / "run") as tmp:
        (tmp / "old").write_text("old")
    with pytest.raises(FileExistsError), atomic_directory(tmp_path / "run") as tmp:
        (tmp / "new").write_text("new")
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["old"]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_exchange_swaps_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("a").write_text("a")
    Path("b").mkdir()
    if not fsutil.exchange("a", "b"):
        pytest.skip("this filesystem cannot exchange paths")
    assert Path("b").read_text() == "a" and Path("a").is_dir()


class _FailingCall:
    """A C function that fails (returns -1; ``ctypes.get_errno`` is faked beside it)."""

    argtypes: object = None
    restype: object = None

    def __call__(self, *args: object) -> int:
        return -1


class _FakeLibc:
    renameat2 = _FailingCall()


@pytest.mark.parametrize(("libc", "err", "expected"), [
    (object(), 0, False),                  # a C library without renameat2
    (_FakeLibc(), errno.EINVAL, False),    # a filesystem that cannot exchange
    (_FakeLibc(), errno.ENOSYS, False),    # a kernel older than 3.15
    (_FakeLibc(), errno.EACCES, OSError),  # a real failure
])
def test_exchange_falls_back_only_where_the_system_cannot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, libc: object, err: int,
        expected: object) -> None:
    monkeypatch.setattr(fsutil.ctypes, "CDLL", lambda *a, **k: libc)
    monkeypatch.setattr(fsutil.ctypes, "get_errno", lambda: err)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    if expected is OSError:
        with pytest.raises(OSError, match="Permission denied"):
            fsutil.exchange(tmp_path / "a", tmp_path / "b")
    else:
        assert fsutil.exchange(tmp_path / "a", tmp_path / "b") is expected


def test_exchange_is_linux_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fsutil.sys, "platform", "darwin")
    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    assert fsutil.exchange(tmp_path / "a", tmp_path / "b") is False
    assert (tmp_path / "a").read_text() == "a"


def test_a_folder_that_cannot_be_deleted_does_not_fail_a_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Removing the old folder (or a dead writer's) may fail, e.g. on a busy NFS file: the
    write it follows has succeeded and stays so."""
    def busy(path: object, ignore_errors: bool = False) -> None:
        if not ignore_errors:
            raise OSError(errno.EBUSY, "Device or resource busy", str(path))

    with atomic_directory(tmp_path / "run") as tmp:
        (tmp / "v").write_text("old")
    dead = tmp_path / f".x.zoo-{_dead_pid()}-a.tmp"
    dead.mkdir()
    monkeypatch.setattr(fsutil.shutil, "rmtree", busy)
    for exchanges in (True, False):
        if not exchanges:
            monkeypatch.setattr(fsutil, "exchange", lambda a, b: False)
        with atomic_directory(tmp_path / "run", replace=True) as tmp:
            (tmp / "v").write_text(f"new {exchanges}")
        assert (tmp_path / "run" / "v").read_text() == f"new {exchanges}"
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "other") as tmp:
        raise RuntimeError("the writer failed")
