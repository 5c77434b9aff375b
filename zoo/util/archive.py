"""Unpacking downloaded ``.zip`` and ``.tar.gz`` archives, within limits (torch-free).

:func:`open_archive` lists an archive's members and refuses, before anything is
written, one that would land outside the folder it is unpacked to (absolute names,
``..``, drive letters), that is not a plain file or folder (links, devices), that is
named twice, encrypted, or compressed by a method other than stored or deflated,
and an archive whose members are too many (:data:`MAX_MEMBERS`), add up to too much
(:data:`MAX_UNPACKED_BYTES`) or expand too much from their compressed size
(:data:`MAX_RATIO`, for members above :data:`RATIO_FLOOR`): a bomb is refused
before it is inflated. :meth:`Archive.extract` then writes only the members asked
for (:mod:`zoo.bundles.hub` asks for those the bundle's manifest lists), each
checked against its listed size as it streams. Every failure is one
:class:`~zoo.util.download.DownloadError` line.
"""

from __future__ import annotations

import re
import tarfile
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import IO

from zoo.util.download import DownloadError

_CHUNK = 1 << 16
_DRIVE = re.compile(r"^[A-Za-z]:")
#: The most members an archive may hold.
MAX_MEMBERS = 1000
#: The most bytes an archive's members may add up to, unpacked.
MAX_UNPACKED_BYTES = 4 << 30
#: The most a member (a .tar.gz: the whole archive) may expand from its compressed size...
MAX_RATIO = 100.0
#: ...once it is larger than this, unpacked (small files of text compress well).
RATIO_FLOOR = 1 << 20
_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}


@dataclass(frozen=True)
class ArchiveLimits:
    """How many members, how many bytes and what expansion an archive may have."""

    max_members: int = field(default_factory=lambda: MAX_MEMBERS)
    max_bytes: int = field(default_factory=lambda: MAX_UNPACKED_BYTES)
    max_ratio: float = field(default_factory=lambda: MAX_RATIO)
    ratio_floor: int = field(default_factory=lambda: RATIO_FLOOR)


def _member_name(name: str, archive: Path) -> str:
    """``name`` as a relative POSIX path without ``.`` parts, or a DownloadError."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or "\\" in name or _DRIVE.match(name):
        raise DownloadError(f"refusing archive {archive.name}: member {name!r} would be written "
                            "outside the folder it is extracted to")
    return "/".join(part for part in path.parts if part != ".")


class Archive:
    """A ``.zip``, ``.tar.gz`` or ``.tgz`` whose members were listed and checked against
    ``limits``: :attr:`files` maps each plain file's name to its size."""

    def __init__(self, path: Path, limits: ArchiveLimits | None = None) -> None:
        self.path = path
        self.limits = limits or ArchiveLimits()
        self.files: dict[str, int] = {}
        self._zip: zipfile.ZipFile | None = None
        self._tar: tarfile.TarFile | None = None
        self._members: dict[str, zipfile.ZipInfo | tarfile.TarInfo] = {}
        self._seen: set[str] = set()
        self._total = 0
        lower = path.name.lower()
        try:
            if lower.endswith(".zip"):
                self._zip = zipfile.ZipFile(path)
                self._scan_zip(self._zip)
            elif lower.endswith((".tar.gz", ".tgz")):
                self._tar = tarfile.open(path, "r:gz")  # noqa: SIM115 (closed by close())
                self._scan_tar(self._tar)
            else:
                raise DownloadError(f"cannot unpack {path.name}: accepted archives end in .zip, "
                                    ".tar.gz or .tgz")
        except BaseException as exc:
            self.close()
            if isinstance(exc, (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError,
                                zlib.error, ValueError)):
                raise DownloadError(f"cannot unpack {path.name}: {exc}") from None
            raise

    def _refuse(self, why: str) -> DownloadError:
        return DownloadError(f"refusing archive {self.path.name}: {why}")

    def _add(self, raw: str, member: zipfile.ZipInfo | tarfile.TarInfo, is_dir: bool,
             size: int) -> None:
        limits = self.limits
        name = _member_name(raw, self.path)
        if len(self._seen) >= limits.max_members:
            raise self._refuse(f"it holds more than {limits.max_members} members")
        if name in self._seen:
            raise self._refuse(f"it names member {name!r} twice")
        self._seen.add(name)
        if is_dir or not name:
            return
        self._total += size
        if self._total > limits.max_bytes:
            raise self._refuse(f"its members add up to more than {limits.max_bytes} bytes "
                               "unpacked")
        self.files[name] = size
        self._members[name] = member

    def _scan_zip(self, zf: zipfile.ZipFile) -> None:
        limits = self.limits
        infos = zf.infolist()
        if len(infos) > limits.max_members:
            raise self._refuse(f"it holds {len(infos)} members, more than {limits.max_members}")
        for info in infos:
            name = info.filename
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise self._refuse(f"member {name!r} is a symbolic link")
            if info.flag_bits & 0x1:
                raise self._refuse(f"member {name!r} is encrypted")
            if info.compress_type not in _METHODS:
                raise self._refuse(f"member {name!r} is compressed with method "
                                   f"{info.compress_type}; accepted: stored or deflated")
            if (info.file_size > limits.ratio_floor
                    and info.file_size > limits.max_ratio * max(info.compress_size, 1)):
                raise self._refuse(f"member {name!r} expands from {info.compress_size} to "
                                   f"{info.file_size} bytes, more than {limits.max_ratio:g} "
                                   "times (a zip bomb?)")
            self._add(name, info, info.is_dir(), info.file_size)

    def _scan_tar(self, tf: tarfile.TarFile) -> None:
        limits = self.limits
        packed = max(self.path.stat().st_size, 1)
        for member in tf:  # one header at a time: a bomb stops at the first limit
            if not (member.isfile() or member.isdir()):
                raise self._refuse(f"member {member.name!r} is not a plain file or folder")
            self._add(member.name, member, member.isdir(), member.size)
            if self._total > limits.ratio_floor and self._total > limits.max_ratio * packed:
                raise self._refuse(f"it expands from {packed} to more than {self._total} bytes, "
                                   f"more than {limits.max_ratio:g} times (a tar bomb?)")

    def _open(self, name: str) -> IO[bytes]:
        member = self._members[name]
        if isinstance(member, zipfile.ZipInfo):
            assert self._zip is not None
            return self._zip.open(member)
        assert self._tar is not None
        data = self._tar.extractfile(member)
        assert data is not None  # a regular file
        return data

    def _stream(self, name: str) -> Iterator[bytes]:
        """The bytes of file member ``name``, no more than its listed size."""
        expected, done = self.files[name], 0
        try:
            with self._open(name) as src:
                while chunk := src.read(_CHUNK):
                    done += len(chunk)
                    if done > expected:
                        raise self._refuse(f"member {name!r} holds more than the {expected} "
                                           "bytes it lists")
                    yield chunk
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, RuntimeError,
                NotImplementedError, OSError) as exc:
            raise DownloadError(f"cannot unpack {name!r} from {self.path.name}: {exc}") from None

    def read(self, name: str, max_bytes: int) -> bytes:
        """The bytes of file member ``name`` (at most ``max_bytes``, else a DownloadError)."""
        if name not in self.files:
            raise DownloadError(f"archive {self.path.name} holds no {name}")
        if self.files[name] > max_bytes:
            raise self._refuse(f"its {name} is larger than the {max_bytes} bytes accepted")
        return b"".join(self._stream(name))

    def extract(self, wanted: Mapping[str, str], dest: Path) -> None:
        """Write each member of ``wanted`` (archive name → relative path) under ``dest``."""
        for name, relative in wanted.items():
            if name not in self.files:
                raise DownloadError(f"archive {self.path.name} holds no {name}")
            target = dest / _member_name(relative, self.path)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "xb") as out:
                    for chunk in self._stream(name):
                        out.write(chunk)
            except OSError as exc:
                raise DownloadError(f"cannot unpack {self.path.name} into {dest}: "
                                    f"{exc.strerror or exc}") from None

    def close(self) -> None:
        for handle in (self._zip, self._tar):
            if handle is not None:
                handle.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def open_archive(path: Path, limits: ArchiveLimits | None = None) -> Archive:
    """``path`` (``.zip``, ``.tar.gz``, ``.tgz``) listed and checked; see :class:`Archive`."""
    return Archive(path, limits)


def extract_archive(archive: Path, dest: Path, limits: ArchiveLimits | None = None) -> None:
    """Unpack every file of ``archive`` into the existing folder ``dest``, within ``limits``."""
    with open_archive(archive, limits) as opened:
        opened.extract({name: name for name in opened.files}, dest)


__all__ = ["MAX_MEMBERS", "MAX_RATIO", "MAX_UNPACKED_BYTES", "RATIO_FLOOR", "Archive",
           "ArchiveLimits", "extract_archive", "open_archive"]
