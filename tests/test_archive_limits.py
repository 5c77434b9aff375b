"""Each limit of :class:`zoo.util.archive.Archive` at its edge: the value itself is
accepted, one more is refused; zip and tar.gz alike, built here with the standard library."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from zoo.util import archive as archive_module
from zoo.util.archive import Archive, ArchiveLimits
from zoo.util.download import DownloadError


def make_zip(path: Path, members: dict[str, bytes], *,
             compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def make_tar(path: Path, members: dict[str, bytes | None]) -> Path:
    """A .tar.gz of ``members``; ``None`` is a folder."""
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def refused(path: Path, limits: ArchiveLimits, why: str) -> None:
    with pytest.raises(DownloadError) as caught:
        Archive(path, limits).close()
    assert str(caught.value) == f"refusing archive {path.name}: {why}"


def files(path: Path, limits: ArchiveLimits | None = None) -> dict[str, int]:
    with Archive(path, limits) as archive:
        return archive.files


@pytest.mark.parametrize("suffix", ["zip", "tar.gz"])
def test_exactly_the_most_members_is_accepted_and_one_more_refused(tmp_path: Path,
                                                                   suffix: str) -> None:
    make = make_zip if suffix == "zip" else make_tar
    members: dict[str, bytes] = {f"m{i}.txt": b"%d" % i for i in range(5)}
    at = make(tmp_path / f"five.{suffix}", members)  # type: ignore[operator]
    assert files(at, ArchiveLimits(max_members=5)) == {f"m{i}.txt": 1 for i in range(5)}
    over = make(tmp_path / f"six.{suffix}", {**members, "m5.txt": b"5"})  # type: ignore[operator]
    why = ("it holds 6 members, more than 5" if suffix == "zip"
           else "it holds more than 5 members")
    refused(over, ArchiveLimits(max_members=5), why)


@pytest.mark.parametrize("suffix", ["zip", "tar.gz"])
def test_members_adding_up_to_exactly_the_most_bytes_are_accepted(tmp_path: Path,
                                                                  suffix: str) -> None:
    # three members of 40 bytes: each far below the limit, their sum at it or one over
    make = make_zip if suffix == "zip" else make_tar
    members = {f"part{i}": os.urandom(40) for i in range(3)}
    at = make(tmp_path / f"at.{suffix}", members)  # type: ignore[operator]
    assert files(at, ArchiveLimits(max_bytes=120)) == {name: 40 for name in members}
    refused(at, ArchiveLimits(max_bytes=119), "its members add up to more than 119 bytes unpacked")


def test_folders_and_the_dot_member_are_listed_but_are_not_files(tmp_path: Path) -> None:
    at = make_tar(tmp_path / "folders.tar.gz", {".": None, "a": None, "a/b.txt": b"bee"})
    assert files(at) == {"a/b.txt": 3}
    zipped = tmp_path / "folders.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("a/", b"")
        zf.writestr("a/b.txt", b"bee")
    assert files(zipped) == {"a/b.txt": 3}


@pytest.mark.parametrize("mode", [0o120777, 0o120644])
def test_a_zip_member_marked_as_a_symbolic_link_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "link.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("plain.txt", b"text")
        info = zipfile.ZipInfo("model.pt")
        info.external_attr = mode << 16
        zf.writestr(info, b"/etc/passwd")
    refused(path, ArchiveLimits(), "member 'model.pt' is a symbolic link")


@pytest.mark.parametrize("mode", [0o100644, 0o100755, 0o040755, 0])
def test_zip_members_with_other_modes_are_not_links(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "modes.zip"
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo("model.pt")
        info.external_attr = mode << 16
        zf.writestr(info, b"weights")
    assert files(path) == {"model.pt": 7}


def test_the_expansion_limit_starts_above_its_floor(tmp_path: Path) -> None:
    # zeros deflate about a thousandfold: refused only once larger than the floor
    at = make_zip(tmp_path / "at.zip", {"zeros": bytes(4096)})
    assert files(at, ArchiveLimits(ratio_floor=4096)) == {"zeros": 4096}
    over = make_zip(tmp_path / "over.zip", {"zeros": bytes(4097)})
    with zipfile.ZipFile(over) as zf:
        packed = zf.getinfo("zeros").compress_size
    refused(over, ArchiveLimits(ratio_floor=4096),
            f"member 'zeros' expands from {packed} to 4097 bytes, more than 100 times "
            "(a zip bomb?)")


def test_with_the_default_limits_small_text_that_compresses_well_is_accepted(
        tmp_path: Path) -> None:
    zipped = make_zip(tmp_path / "small.zip", {"labels.txt": bytes(100_000)})
    assert files(zipped) == {"labels.txt": 100_000}
    tarred = make_tar(tmp_path / "small.tar.gz", {"labels.txt": bytes(100_000)})
    assert files(tarred) == {"labels.txt": 100_000}


def test_with_the_default_limits_large_members_that_barely_compress_are_accepted(
        tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    assert files(make_zip(tmp_path / "big.zip", {"model.pt": data})) == {"model.pt": 3 << 20}
    assert files(make_tar(tmp_path / "big.tar.gz", {"model.pt": data})) == {"model.pt": 3 << 20}


def test_a_member_expanding_exactly_the_most_times_is_accepted(tmp_path: Path) -> None:
    # stored: its compressed size is its size, a ratio of exactly 1
    stored = make_zip(tmp_path / "stored.zip", {"one": b"abcdef"}, compression=zipfile.ZIP_STORED)
    assert files(stored, ArchiveLimits(ratio_floor=0, max_ratio=1.0)) == {"one": 6}
    refused(stored, ArchiveLimits(ratio_floor=0, max_ratio=0.9),
            "member 'one' expands from 6 to 6 bytes, more than 0.9 times (a zip bomb?)")


def test_the_ratio_of_a_one_byte_member_is_taken_from_one_byte(tmp_path: Path) -> None:
    stored = make_zip(tmp_path / "byte.zip", {"b": b"x"}, compression=zipfile.ZIP_STORED)
    refused(stored, ArchiveLimits(ratio_floor=0, max_ratio=0.75),
            "member 'b' expands from 1 to 1 bytes, more than 0.75 times (a zip bomb?)")


def test_a_tar_gz_expanding_more_than_the_most_times_is_refused_above_the_floor(
        tmp_path: Path) -> None:
    at = make_tar(tmp_path / "zeros.tar.gz", {"zeros": bytes(1 << 16)})
    packed = at.stat().st_size
    assert files(at, ArchiveLimits(ratio_floor=1 << 16)) == {"zeros": 1 << 16}
    refused(at, ArchiveLimits(ratio_floor=(1 << 16) - 1),
            f"it expands from {packed} to more than {1 << 16} bytes, more than 100 times "
            "(a tar bomb?)")
    # above the floor, a ratio of exactly the limit passes: zeros of 100 times the
    # archive's own size (searched for, as the compressed size moves with the size)
    for packed in range(60, 400):
        size = 100 * packed
        exact = make_tar(tmp_path / "exact.tar.gz", {"zeros": bytes(size)})
        if exact.stat().st_size == packed:
            break
    else:
        pytest.fail("no size of zeros compresses to exactly a hundredth of itself")
    assert files(exact, ArchiveLimits(ratio_floor=0)) == {"zeros": size}
    refused(exact, ArchiveLimits(ratio_floor=0, max_ratio=99.9),
            f"it expands from {packed} to more than {size} bytes, more than 99.9 times "
            "(a tar bomb?)")


def test_a_member_streaming_more_than_it_lists_is_refused(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # the zip and tar readers stop at the listed size themselves; the check is the
    # zoo's own guarantee whatever reader is underneath, so it is shown with one that does not
    chunk = 1 << 16
    path = make_zip(tmp_path / "a.zip", {"model.pt": os.urandom(chunk * 5 // 2)})
    monkeypatch.setattr(Archive, "_open", lambda self, name: io.BytesIO(bytes(3 * chunk)))
    with Archive(path) as archive, pytest.raises(DownloadError) as caught:
        archive.read("model.pt", 10 * chunk)
    assert str(caught.value) == (f"refusing archive a.zip: member 'model.pt' holds more than "
                                 f"the {chunk * 5 // 2} bytes it lists")


def test_read_accepts_a_member_of_exactly_the_most_bytes(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "a.zip", {"manifest.json": b"{}" * 50})
    with Archive(path) as archive:
        assert archive.read("manifest.json", 100) == b"{}" * 50
        with pytest.raises(DownloadError, match=r"^refusing archive a\.zip: its manifest\.json "
                           r"is larger than the 99 bytes accepted$"):
            archive.read("manifest.json", 99)


@pytest.mark.parametrize("suffix", ["zip", "tar.gz"])
def test_extract_writes_members_into_new_nested_folders(tmp_path: Path, suffix: str) -> None:
    make = make_zip if suffix == "zip" else make_tar
    data = os.urandom(3 << 16)
    path = make(tmp_path / f"a.{suffix}", {"x/model.pt": data})  # type: ignore[operator]
    dest = tmp_path / "dest"
    dest.mkdir()
    with Archive(path) as archive:
        archive.extract({"x/model.pt": "deep/er/model.pt"}, dest)
    assert (dest / "deep" / "er" / "model.pt").read_bytes() == data


def test_extract_onto_an_existing_file_is_one_line_with_the_reason(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "a.zip", {"model.pt": b"new"})
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "model.pt").write_bytes(b"old")
    with Archive(path) as archive, pytest.raises(DownloadError) as caught:
        archive.extract({"model.pt": "model.pt"}, dest)
    assert str(caught.value) == f"cannot unpack a.zip into {dest}: File exists"
    assert (dest / "model.pt").read_bytes() == b"old"


def test_the_documented_defaults(tmp_path: Path) -> None:
    # docs/security.md: "at most 1000 members, 4 GiB unpacked, and no member above 1 MiB
    # that expands more than 100 times its compressed size"
    text = (Path(__file__).parents[1] / "docs" / "security.md").read_text()
    assert ("at most 1000 members, 4 GiB unpacked, and no member above 1 MiB that\n"
            "  expands more than 100 times") in text
    assert ArchiveLimits() == ArchiveLimits(max_members=1000, max_bytes=4 * 2**30,
                                            max_ratio=100.0, ratio_floor=2**20)


def test_reading_streams_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[int] = []

    class Recording(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            sizes.append(-1 if size is None else size)
            return super().read(size)

    data = os.urandom(200_000)
    path = make_zip(tmp_path / "a.zip", {"model.pt": data})
    monkeypatch.setattr(Archive, "_open", lambda self, name: Recording(data))
    with Archive(path) as archive:
        assert archive.read("model.pt", len(data)) == data
    # reads of at most 64 KiB (a member is never read whole into memory at once)
    assert len(sizes) >= 4 and set(sizes) == {archive_module._CHUNK}
    assert 0 < archive_module._CHUNK <= 1 << 16
