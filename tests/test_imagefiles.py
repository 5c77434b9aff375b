"""Finding images under a folder (:mod:`zoo.util.imagefiles`) when a folder cannot be read,
and where the cache lives (:mod:`zoo.util.paths`) without ``$ZOO_CACHE_DIR``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from zoo.errors import DataError
from zoo.util.imagefiles import find_images
from zoo.util.paths import ENV_CACHE_DIR, cache_dir


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for rel in ("a/x.png", "b/y.png", "b/c/z.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    real = os.scandir
    locked = str(tmp_path / "b")

    def scandir(path: Any = ".") -> Any:
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", locked)
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    return tmp_path


def test_a_folder_that_cannot_be_read_is_passed_over_by_default(tree: Path) -> None:
    assert find_images(tree) == [tree / "a" / "x.png"]


def test_strictly_a_folder_that_cannot_be_read_is_named(tree: Path) -> None:
    with pytest.raises(DataError) as caught:
        find_images(tree, strict=True)
    assert str(caught.value) == f"cannot read the folder {str(tree / 'b')!r}: Permission denied"


def test_a_missing_folder_holds_no_images_unless_strict(tmp_path: Path) -> None:
    assert find_images(tmp_path / "missing") == []
    with pytest.raises(DataError, match=r"^cannot read the folder '.*missing': No such file"):
        find_images(tmp_path / "missing", strict=True)


def test_the_cache_lives_in_the_home_folder_unless_told(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_CACHE_DIR, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "zoo"
    assert cache_dir("kernels") == tmp_path / ".cache" / "zoo" / "kernels"
    monkeypatch.setenv(ENV_CACHE_DIR, "")
    assert cache_dir() == tmp_path / ".cache" / "zoo"  # empty: unset
    monkeypatch.setenv(ENV_CACHE_DIR, str(tmp_path / "elsewhere"))
    assert cache_dir("weights") == tmp_path / "elsewhere" / "weights"
