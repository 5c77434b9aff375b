"""Downloading and unpacking pinned archives (standard library only, torch-free).

:func:`download` streams a URL into a temporary file beside its destination,
hashing as it goes, and renames it into place only when the SHA-256 is the one
expected: a tampered, truncated or wrong file never appears at the destination.
:func:`extract_archive` unpacks a ``.zip`` or ``.tar.gz`` after refusing any
member that would land outside the target folder or is not a plain file or folder.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from typing import TextIO

from zoo.errors import BundleError
from zoo.util.fsutil import atomic_path

_CHUNK = 1 << 16
_DRIVE = re.compile(r"^[A-Za-z]:")
#: Seconds to wait for the server to answer or send more bytes.
TIMEOUT_S = 30.0


class DownloadError(BundleError):
    """A download that failed, or whose content is not what its pin says."""


class DownloadProgress:
    """One line on stderr: a bar redrawn in place on a terminal, start and end lines otherwise."""

    def __init__(self, what: str, total: int | None, stream: TextIO | None = None) -> None:
        self.what = what
        self.total = total or None
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._last = 0.0
        self._start = time.perf_counter()
        size = f" ({_size(self.total)})" if self.total else ""
        if not self.tty:
            self.stream.write(f"downloading {what}{size}\n")
            self.stream.flush()

    def update(self, done: int) -> None:
        now = time.perf_counter()
        if not self.tty or now - self._last < 0.1:
            return
        self._last = now
        if self.total:
            width = 30
            filled = int(width * done / self.total)
            bar = f"[{'#' * filled}{'.' * (width - filled)}] {done / self.total:4.0%} "
            shown = f"{bar}{_size(done)} of {_size(self.total)}"
        else:
            shown = _size(done)
        self.stream.write(f"\rdownloading {self.what} {shown}")
        self.stream.flush()

    def close(self, done: int) -> None:
        seconds = time.perf_counter() - self._start
        if self.tty:
            self.stream.write("\r\033[K")
        self.stream.write(f"downloaded {self.what}: {_size(done)} in {seconds:.1f} s\n")
        self.stream.flush()


def _size(n: int) -> str:
    if n >= 1 << 20:
        return f"{n / (1 << 20):.1f} MiB"
    return f"{n / 1024:.0f} KiB"


def download(url: str, dest: Path, *, sha256: str, what: str, progress: bool = True,
             timeout: float = TIMEOUT_S) -> Path:
    """Download ``url`` to ``dest`` if its SHA-256 is ``sha256``; nothing is left otherwise.

    Raises :class:`DownloadError` when the server cannot be reached (offline), answers
    with an error, or sends content of another SHA-256.
    """
    digest = hashlib.sha256()
    done = 0
    with atomic_path(dest) as tmp:
        try:
            response = urllib.request.urlopen(url, timeout=timeout)
        except urllib.error.HTTPError as exc:
            raise DownloadError(f"cannot download {what} from {url}: the server answered "
                                f"HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DownloadError(f"cannot download {what} from {url}: {reason} (no network? the "
                                "weights are downloaded once, then read from the cache)") from None
        with response, open(tmp, "wb") as fh:
            length = response.headers.get("Content-Length")
            bar = (DownloadProgress(what, int(length) if length and length.isdigit() else None)
                   if progress else None)
            try:
                while chunk := response.read(_CHUNK):
                    fh.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if bar is not None:
                        bar.update(done)
            except OSError as exc:
                raise DownloadError(f"the download of {what} from {url} broke off after "
                                    f"{_size(done)}: {exc}") from None
            if bar is not None:
                bar.close(done)
        actual = digest.hexdigest()
        if actual != sha256:
            raise DownloadError(f"refusing the download of {what} from {url}: its SHA-256 is "
                                f"{actual}, not the pinned {sha256} (a tampered or wrong file)")
    return dest


def _safe_member(name: str, where: Path) -> None:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or "\\" in name or _DRIVE.match(name):
        raise DownloadError(f"refusing archive {where.name}: member {name!r} would be written "
                            "outside the folder it is extracted to")


def extract_archive(archive: Path, dest: Path) -> None:
    """Unpack a ``.zip``, ``.tar.gz`` or ``.tgz`` into the existing folder ``dest``.

    Only plain files and folders inside ``dest`` are accepted: absolute names, ``..``,
    links and devices are refused (:class:`DownloadError`) before anything is written.
    """
    name = archive.name.lower()
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    _safe_member(info.filename, archive)
                    if (info.external_attr >> 16) & 0o170000 == 0o120000:
                        raise DownloadError(f"refusing archive {archive.name}: member "
                                            f"{info.filename!r} is a symbolic link")
                for info in zf.infolist():
                    target = dest / info.filename
                    if info.is_dir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out)
        elif name.endswith((".tar.gz", ".tgz")):
            with tarfile.open(archive, "r:gz") as tf:
                members = tf.getmembers()
                for member in members:
                    _safe_member(member.name, archive)
                    if not (member.isfile() or member.isdir()):
                        raise DownloadError(f"refusing archive {archive.name}: member "
                                            f"{member.name!r} is not a plain file or folder")
                for member in members:
                    target = dest / member.name
                    if member.isdir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    data = tf.extractfile(member)
                    assert data is not None  # a regular file
                    with data, open(target, "wb") as out:
                        shutil.copyfileobj(data, out)
        else:
            raise DownloadError(f"cannot unpack {archive.name}: accepted archives end in .zip, "
                                ".tar.gz or .tgz")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise DownloadError(f"cannot unpack {archive.name}: {exc}") from None


__all__ = ["DownloadError", "DownloadProgress", "download", "extract_archive"]
