"""The compiled-kernel cache loads only the shared objects it built itself (issue 15, item 1).

Most tests cache a one-function C library (it compiles in a fraction of a second);
a planted library's constructor writes a marker file, so a test can prove it was
never ``dlopen``ed. Three tests run the real chapter-8 kernels' build (at -O1: the
cache is what they test).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from zoo_chapter8 import kernel_cache, kernels
from zoo_chapter8.kernel_cache import KernelBuildError

CC = shutil.which(os.environ.get("CC", "cc").split()[0]) if os.environ.get("CC", "cc") else None
pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler")

GOOD = "int zoo_answer(void) { return 42; }\n"
# A library an attacker plants: its constructor runs as soon as it is dlopened.
PLANTED = """
#include <stdio.h>
__attribute__((constructor)) static void payload(void) {
    FILE *f = fopen(MARKER, "w");
    if (f) { fputs("ran", f); fclose(f); }
}
int zoo_answer(void) { return 666; }
"""


def _compile(source: str, out: Path, *defines: str) -> None:
    src = out.with_name(out.name + ".c")
    src.write_text(source)
    subprocess.run([str(CC), "-shared", "-fPIC", *defines, "-o", str(out), str(src)],
                   check=True, capture_output=True)
    src.unlink()


def _build_good(dest: Path) -> None:
    _compile(GOOD, dest)


def _planted(tmp_path: Path) -> tuple[Path, Path]:
    """A library whose constructor writes a marker file; the marker's path."""
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "evil.so"
    _compile(PLANTED, evil, f'-DMARKER="{marker}"')
    return evil, marker


def _load(library: Path) -> int:
    lib, where = kernel_cache.load(library, _build_good, what="the test kernels")
    assert where == str(library)
    return int(lib.zoo_answer())


#: Appended to the real kernels' flags where a test is about the cache, not the code: GCC's
#: -O1 (the last level counts) builds the same sources in about 3 s instead of 7.
QUICK = "-O1"


@pytest.fixture
def quick_build(monkeypatch: pytest.MonkeyPatch) -> None:
    flags = kernels.arch_flags()
    monkeypatch.setattr(kernels, "arch_flags", lambda: [*flags, QUICK])


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _plant(library: Path, data: bytes) -> None:
    """Put ``data`` at ``library`` as a new file (writing a loaded library in place would
    change the pages this process has mapped)."""
    other = library.with_name("planted")
    other.write_bytes(data)
    os.replace(other, library)


def _record(library: Path) -> None:
    """What an attacker who can write the folder could do: a digest matching their file."""
    kernel_cache.record_digest(library, hashlib.sha256(library.read_bytes()).hexdigest())


def test_first_build_is_private_recorded_and_announced_once(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    library = tmp_path / "cache" / "kernels" / "k.so"
    assert _load(library) == 42
    assert capfd.readouterr().err == "zoo: compiling the test kernels (first use, a few seconds)…\n"
    index = kernel_cache.index_path(library)
    assert kernel_cache.recorded_digest(library) == hashlib.sha256(library.read_bytes()).hexdigest()
    assert (_mode(library.parent), _mode(library), _mode(index)) == (0o700, 0o700, 0o600)
    assert sorted(p.name for p in library.parent.iterdir()) == ["index.json", "k.so"]
    inode = os.stat(library).st_ino
    assert _load(library) == 42
    assert capfd.readouterr().err == ""  # loaded as built: nothing said, nothing rebuilt
    assert os.stat(library).st_ino == inode


def test_replaced_library_is_rebuilt_and_never_loaded(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    library = tmp_path / "kernels" / "k.so"
    _load(library)
    evil, marker = _planted(tmp_path)
    os.replace(evil, library)
    capfd.readouterr()
    assert _load(library) == 42
    assert not marker.exists()
    assert capfd.readouterr().err == (
        "zoo: rebuilding the test kernels (a few seconds): k.so does not match the digest "
        "recorded when it was built…\n")
    assert kernel_cache.untrusted(library) is None


@pytest.mark.parametrize("target", ["library", "digest", "folder"])
def test_group_or_world_writable_files_are_refused(
        tmp_path: Path, capfd: pytest.CaptureFixture[str], target: str) -> None:
    """A planted library with a matching digest is still refused where others could have
    written it: a 0666 library or digest, or a 0777 folder (made private again)."""
    library = tmp_path / "kernels" / "k.so"
    _load(library)
    evil, marker = _planted(tmp_path)
    os.replace(evil, library)
    _record(library)
    path = {"library": library, "digest": kernel_cache.index_path(library),
            "folder": library.parent}[target]
    os.chmod(path, 0o777 if target == "folder" else 0o666)
    capfd.readouterr()
    assert _load(library) == 42
    assert not marker.exists()
    err = capfd.readouterr().err
    assert err.startswith("zoo: rebuilding the test kernels") and err.count("\n") == 1
    assert "world-writable (mode 0" in err
    assert _mode(library.parent) == 0o700 and _mode(library) == 0o700
    assert kernel_cache.untrusted(library) is None


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                    reason="chown to another user needs root")
def test_files_of_another_user_are_refused(tmp_path: Path,
                                           capfd: pytest.CaptureFixture[str]) -> None:
    nobody = 65534
    library = tmp_path / "kernels" / "k.so"
    _load(library)
    evil, marker = _planted(tmp_path)
    os.replace(evil, library)
    _record(library)
    os.chown(library, nobody, nobody)
    capfd.readouterr()
    assert _load(library) == 42 and not marker.exists()
    assert "k.so belongs to another user (uid 65534)" in capfd.readouterr().err
    # a folder of another user is not used at all: the process builds its own copy
    os.replace(_planted(tmp_path)[0], library)
    _record(library)
    os.chown(library.parent, nobody, nobody)
    lib, where = kernel_cache.load(library, _build_good, what="the test kernels")
    assert (lib.zoo_answer(), where) == (42, "(a temporary build)")
    assert not marker.exists()
    assert "belongs to another user (uid 65534)" in capfd.readouterr().err


@pytest.mark.parametrize("recorded", [False, True])
def test_garbage_library_is_rebuilt(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                    recorded: bool) -> None:
    """Garbage fails the digest check, or (its digest recorded too) fails to load."""
    library = tmp_path / "kernels" / "k.so"
    _load(library)
    _plant(library, b"\x7fELF but not really" * 10)
    if recorded:
        _record(library)
    capfd.readouterr()
    assert _load(library) == 42
    err = capfd.readouterr().err
    assert err.startswith("zoo: rebuilding the test kernels")
    assert ("could not be loaded" if recorded else "does not match the digest") in err


def test_symlinked_library_is_refused(tmp_path: Path) -> None:
    library = tmp_path / "kernels" / "k.so"
    _load(library)
    evil, marker = _planted(tmp_path)
    library.unlink()
    library.symlink_to(evil)
    assert kernel_cache.untrusted(library) == "k.so is not a regular file"
    assert _load(library) == 42 and not marker.exists() and not library.is_symlink()


def test_failed_build_leaves_the_cache_as_it_was(tmp_path: Path) -> None:
    library = tmp_path / "kernels" / "k.so"

    def failing(dest: Path) -> None:
        dest.write_bytes(b"half a library")
        raise KernelBuildError("fused.c:1: error: something")

    with pytest.raises(KernelBuildError, match="something"):
        kernel_cache.load(library, failing, what="the test kernels")
    assert list(library.parent.iterdir()) == []
    _load(library)
    _plant(library, b"garbage")  # a rebuild that fails keeps nothing half-written either
    with pytest.raises(KernelBuildError):
        kernel_cache.load(library, failing, what="the test kernels")
    assert sorted(p.name for p in library.parent.iterdir()) == ["index.json", "k.so"]
    assert library.read_bytes() == b"garbage" and kernel_cache.untrusted(library) is not None


def test_a_crashed_builds_temporaries_are_removed_at_the_next_build(tmp_path: Path) -> None:
    library = tmp_path / "kernels" / "k.so"
    library.parent.mkdir(mode=0o700)
    stale = library.parent / ".k.so.abc123.tmp"
    running = library.parent / ".k.so.def456.tmp"  # another process's build in progress
    for path in (stale, running):
        path.write_bytes(b"half a library")
    old = time.time() - kernel_cache.STALE_AFTER_S - 60
    os.utime(stale, (old, old))
    assert _load(library) == 42
    assert not stale.exists() and running.exists()


@pytest.mark.slow
def test_real_kernels_are_built_once_and_a_planted_one_is_rebuilt(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str], quick_build: None) -> None:
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
    lib, where = kernels._load()
    assert lib is not None, where
    assert capfd.readouterr().err == ("zoo: compiling the chapter-8 CPU kernels (first use, a "
                                      "few seconds)…\n")
    library = Path(where)
    assert library.parent == tmp_path / "cache" / "kernels" and library.suffix == ".so"
    assert kernel_cache.untrusted(library) is None
    inode = os.stat(library).st_ino
    assert kernels._load()[0] is not None
    assert os.stat(library).st_ino == inode and capfd.readouterr().err == ""  # reused
    evil, marker = _planted(tmp_path)
    os.replace(evil, library)
    lib, where = kernels._load()
    assert lib is not None and where == str(library)
    assert not marker.exists()
    assert "rebuilding the chapter-8 CPU kernels" in capfd.readouterr().err
    assert kernel_cache.untrusted(library) is None


def test_no_compiler_or_a_failing_one_falls_back(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    lib, why = kernels._load()
    assert lib is None and "no C compiler" in why
    monkeypatch.setenv("CC", "false")  # exits 1: nothing half-written is left
    lib, why = kernels._load()
    assert lib is None and "could not be built" in why
    assert not list((tmp_path / "kernels").iterdir())
    monkeypatch.setenv("ZOO_FUSED", "0")
    assert kernels._load() == (None, "switched off by ZOO_FUSED=0")


def test_unusable_cache_directory_builds_for_the_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quick_build: None) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("ZOO_CACHE_DIR", str(blocker))
    lib, where = kernels._load()
    assert lib is not None and where == "(a temporary build)"
    assert blocker.read_text() == "not a directory"


def test_a_kernel_that_cannot_be_built_is_reported_once_and_training_runs(
        tmp_path: Path) -> None:
    """In a fresh process: one line on stderr, and a training step on the plain layers."""
    code = (
        "import torch, zoo\n"
        "from zoo_chapter8 import kernels\n"
        "model = zoo.create_model('Net').to(memory_format=torch.channels_last).train()\n"
        "x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)\n"
        "for _ in range(2):\n"
        "    model(x).sum().backward()\n"
        "assert kernels.library() is None\n"
        "print(kernels.status())\n")
    env = {**os.environ, "CC": "false", "ZOO_CACHE_DIR": str(tmp_path)}
    env.pop("ZOO_FUSED", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 2, done.stderr  # the build announced, then its failure, once each
    assert lines[0] == "zoo: compiling the chapter-8 CPU kernels (first use, a few seconds)…"
    assert lines[1].startswith("zoo: the chapter-8 CPU kernels are off (the kernel could not "
                               "be built or loaded: ")
    assert lines[1].endswith("training runs the plain PyTorch layers")
    assert done.stdout.startswith("fused chapter-8 kernels off:")


def test_threads_reaching_the_kernels_together_build_them_once(tmp_path: Path) -> None:
    """The batch-split threads call the kernels first at the same moment: one build, one line."""
    code = (
        "import threading\n"
        "from zoo_chapter8 import kernels\n"
        "flags = kernels.arch_flags()\n"
        f"kernels.arch_flags = lambda: [*flags, {QUICK!r}]\n"
        "start = threading.Barrier(4)\n"
        "libs = []\n"
        "def first_use():\n"
        "    start.wait()\n"
        "    libs.append(kernels.library())\n"
        "threads = [threading.Thread(target=first_use) for _ in range(4)]\n"
        "for t in threads: t.start()\n"
        "for t in threads: t.join()\n"
        "assert len(libs) == 4 and libs[0] is not None and all(lib is libs[0] for lib in libs)\n")
    env = {**os.environ, "ZOO_CACHE_DIR": str(tmp_path)}
    env.pop("ZOO_FUSED", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "zoo: compiling the chapter-8 CPU kernels (first use, a few seconds)…"]


def test_a_library_is_hashed_whole_whatever_its_size(tmp_path: Path) -> None:
    # libraries are read in 1 MiB blocks: one of 2.5 MiB takes three reads
    data = os.urandom((5 << 20) // 2)
    path = tmp_path / "big.so"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert kernel_cache._hash_fd(fd) == hashlib.sha256(data).hexdigest()
    finally:
        os.close(fd)
