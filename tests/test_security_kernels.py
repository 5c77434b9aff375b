"""The kernel cache follows no link and trusts no digest a library carries (issue 26).

A planted library's constructor writes a marker file: a test proves it was never
``dlopen``ed. The cache's folder as a link, its index as a link, and a library brought
in with its own digest file beside it (what the cache trusted before) are all refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from zoo_chapter8 import kernel_cache

CC = shutil.which(os.environ.get("CC", "cc").split()[0]) if os.environ.get("CC", "cc") else None
pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler")

GOOD = "int zoo_answer(void) { return 42; }\n"
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
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "evil.so"
    _compile(PLANTED, evil, f'-DMARKER="{marker}"')
    return evil, marker


def test_a_kernels_folder_that_is_a_link_is_not_used(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    evil, marker = _planted(tmp_path)
    shutil.copy(evil, elsewhere / "k.so")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "kernels").symlink_to(elsewhere, target_is_directory=True)
    kernel_cache.record_digest(elsewhere / "k.so",
                               hashlib.sha256((elsewhere / "k.so").read_bytes()).hexdigest())
    lib, where = kernel_cache.load(tmp_path / "cache" / "kernels" / "k.so", _build_good,
                                   what="the test kernels")
    assert (lib.zoo_answer(), where) == (42, "(a temporary build)")
    assert not marker.exists()
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "is a symbolic link" in err
    assert sorted(p.name for p in elsewhere.iterdir()) == ["index.json", "k.so"]  # untouched


def test_an_index_that_is_a_link_is_not_trusted(tmp_path: Path) -> None:
    library = tmp_path / "kernels" / "k.so"
    assert kernel_cache.load(library, _build_good, what="the test kernels")[0].zoo_answer() == 42
    evil, marker = _planted(tmp_path)
    os.replace(evil, library)
    digest = hashlib.sha256(library.read_bytes()).hexdigest()  # the planted library's
    (tmp_path / "index.json").write_text(json.dumps({"libraries": {"k.so": digest}}))
    kernel_cache.index_path(library).unlink()
    kernel_cache.index_path(library).symlink_to(tmp_path / "index.json")
    assert kernel_cache.untrusted(library) == "index.json is not a regular file"
    lib, _ = kernel_cache.load(library, _build_good, what="the test kernels")
    assert lib.zoo_answer() == 42 and not marker.exists()
    assert not kernel_cache.index_path(library).is_symlink()


def test_a_library_carrying_its_own_digest_file_is_not_trusted(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """A library copied in with the ``NAME.so.sha256`` of earlier versions beside it."""
    library = tmp_path / "kernels" / "k.so"
    library.parent.mkdir(mode=0o700)
    evil, marker = _planted(tmp_path)
    shutil.copy(evil, library)
    sidecar = library.with_name("k.so.sha256")
    sidecar.write_text(hashlib.sha256(library.read_bytes()).hexdigest() + "\n")
    assert kernel_cache.untrusted(library) == "k.so has no recorded digest"
    lib, _ = kernel_cache.load(library, _build_good, what="the test kernels")
    assert lib.zoo_answer() == 42 and not marker.exists()
    assert "zoo: rebuilding the test kernels (a few seconds): k.so has no recorded digest…" \
        in capfd.readouterr().err
    assert sorted(p.name for p in library.parent.iterdir()) == ["index.json", "k.so"]
    assert oct(os.stat(kernel_cache.index_path(library)).st_mode & 0o777) == "0o600"
