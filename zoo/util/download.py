"""Downloading pinned archives, bounded in time and size (standard library only, torch-free).

:func:`download` streams a URL into a temporary file beside its destination,
hashing as it goes, and renames it into place only when the SHA-256 is the one
expected: a tampered, truncated or wrong file never appears at the destination.
A hostile or broken server cannot hold it or fill the disk:

- an overall deadline (:data:`DEADLINE_S`, on the monotonic clock) bounds the whole
  transfer, headers included: a watchdog shuts the connection's socket down when it
  passes, and each read waits at most the time left (and at most :data:`TIMEOUT_S`),
  so a server that sends one byte every few seconds is cut off like a silent one;
- a byte cap (``max_bytes``: :func:`download_limit` of the declared archive size, else
  :data:`MAX_DOWNLOAD_BYTES`) refuses a larger ``Content-Length`` before the body and
  stops an endless body as soon as it passes the cap, before the hash is checked;
- a write that fails (a full disk) is one :class:`DownloadError` line, like every
  other failure, and nothing is left behind.

Archives are unpacked by :mod:`zoo.util.archive`, with limits of their own.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TextIO

from zoo.errors import BundleError
from zoo.util.fsutil import atomic_path

_CHUNK = 1 << 16
#: Seconds to wait for the server to answer or send more bytes (each read).
TIMEOUT_S = 30.0
#: Seconds a whole download may take, headers included.
DEADLINE_S = 600.0
#: The byte cap of a download whose size is not declared.
MAX_DOWNLOAD_BYTES = 1 << 30
#: The margin over a declared size: a fraction of it, and at least this many bytes.
SIZE_MARGIN = 0.125
MIN_SIZE_MARGIN = 1 << 16


class DownloadError(BundleError):
    """A download that failed, or whose content is not what its pin says."""


def download_limit(declared: int | None) -> int:
    """The byte cap of a download of ``declared`` bytes: that plus a margin (an eighth, at
    least 64 KiB); :data:`MAX_DOWNLOAD_BYTES` where the size is not declared."""
    if declared is None:
        return MAX_DOWNLOAD_BYTES
    return declared + max(MIN_SIZE_MARGIN, int(declared * SIZE_MARGIN))


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
            filled = min(width, int(width * done / self.total))
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

    def abandon(self) -> None:
        """Clear a bar redrawn in place, so that the error that follows is one clean line."""
        if self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()


def _size(n: int) -> str:
    if n >= 1 << 30:
        return f"{n / (1 << 30):.1f} GiB"
    if n >= 1 << 20:
        return f"{n / (1 << 20):.1f} MiB"
    return f"{n / 1024:.0f} KiB"


class _Watchdog:
    """Shuts down the sockets of a download when its deadline passes, and bounds each read."""

    def __init__(self, seconds: float) -> None:
        self.fired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(seconds, 0.0), self._fire)
        self._timer.daemon = True

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._timer.cancel()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            fired = self.fired
        if fired:
            _shutdown(sock)

    def settimeout(self, seconds: float) -> None:
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.settimeout(max(seconds, 0.001))

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # a recv blocked in another thread returns at once
        sock.shutdown(socket.SHUT_RDWR)


def _opener(watchdog: _Watchdog) -> urllib.request.OpenerDirector:
    """urllib's opener, its HTTP(S) connections' sockets handed to ``watchdog``."""

    def watched(base: type[http.client.HTTPConnection]) -> Any:
        class Watched(base):  # type: ignore[valid-type,misc]
            def connect(self) -> None:
                super().connect()
                watchdog.watch(self.sock)
        return Watched

    class HTTPHandler(urllib.request.HTTPHandler):
        def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(watched(http.client.HTTPConnection), req)

    class HTTPSHandler(urllib.request.HTTPSHandler):
        def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(watched(http.client.HTTPSConnection), req,
                                context=getattr(self, "_context", None))

    return urllib.request.build_opener(HTTPHandler, HTTPSHandler)


def _create(path: Path) -> IO[bytes]:
    """The temporary file a download is written to (a seam for the tests' full disk)."""
    return open(path, "wb")


def _write_error(what: str, where: Path, exc: OSError) -> DownloadError:
    why = ("the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT)
           else exc.strerror or str(exc))
    return DownloadError(f"cannot write the download of {what} to {where}: {why}; nothing "
                         "was kept")


def download(url: str, dest: Path, *, sha256: str, what: str, progress: bool = True,
             timeout: float | None = None, deadline_s: float | None = None,
             max_bytes: int | None = None, size_hint: str = "") -> Path:
    """Download ``url`` to ``dest`` if its SHA-256 is ``sha256``; nothing is left otherwise.

    ``timeout`` bounds each read (default :data:`TIMEOUT_S`), ``deadline_s`` the whole
    download (default :data:`DEADLINE_S`), ``max_bytes`` its size (default
    :data:`MAX_DOWNLOAD_BYTES`; ``size_hint`` says where the cap comes from). Raises
    :class:`DownloadError` when the server cannot be reached (offline), answers with an
    error, is too slow, sends too much, content of another SHA-256, or the file cannot
    be written.
    """
    timeout = TIMEOUT_S if timeout is None else timeout
    deadline_s = DEADLINE_S if deadline_s is None else deadline_s
    max_bytes = MAX_DOWNLOAD_BYTES if max_bytes is None else max_bytes
    hint = f" ({size_hint})" if size_hint else ""
    try:
        with _Watchdog(deadline_s) as watchdog, atomic_path(dest) as tmp:
            _fetch(url, tmp, sha256=sha256, what=what, progress=progress, timeout=timeout,
                   deadline_s=deadline_s, max_bytes=max_bytes, hint=hint, watchdog=watchdog)
    except OSError as exc:  # the destination's folder: not creatable, not writable
        raise _write_error(what, dest.parent, exc) from None
    return dest


def _fetch(url: str, tmp: Path, *, sha256: str, what: str, progress: bool, timeout: float,
           deadline_s: float, max_bytes: int, hint: str, watchdog: _Watchdog) -> None:
    deadline = time.monotonic() + deadline_s
    digest = hashlib.sha256()
    done = 0

    def too_slow() -> DownloadError:
        return DownloadError(f"the download of {what} from {url} took longer than its "
                             f"{deadline_s:g} s deadline ({_size(done)} received): the server "
                             "is too slow or stalled; try again later")

    try:
        response = _opener(watchdog).open(url, timeout=max(min(timeout, deadline_s), 0.001))
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"cannot download {what} from {url}: the server answered "
                            f"HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        if watchdog.fired:
            raise too_slow() from None
        reason = getattr(exc, "reason", None) or exc
        raise DownloadError(f"cannot download {what} from {url}: {reason} (no network? the "
                            "weights are downloaded once, then read from the cache)") from None
    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        if total is not None and total > max_bytes:
            raise DownloadError(f"refusing the download of {what} from {url}: the server "
                                f"announces {total} bytes, more than the {max_bytes} accepted"
                                f"{hint}")
        bar = DownloadProgress(what, total) if progress else None
        read = getattr(response, "read1", response.read)
        try:
            try:
                fh = _create(tmp)
            except OSError as exc:
                raise _write_error(what, tmp.parent, exc) from None
            with fh:
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0 or watchdog.fired:
                        raise too_slow()
                    watchdog.settimeout(min(timeout, left))
                    try:
                        chunk = read(_CHUNK)
                    except (OSError, ValueError, http.client.HTTPException) as exc:
                        if watchdog.fired or time.monotonic() >= deadline:
                            raise too_slow() from None
                        raise DownloadError(f"the download of {what} from {url} broke off "
                                            f"after {_size(done)}: {exc}") from None
                    if not chunk:
                        if watchdog.fired:
                            raise too_slow()
                        break
                    done += len(chunk)
                    if done > max_bytes:
                        raise DownloadError(f"refusing the download of {what} from {url}: the "
                                            f"server sent more than the {max_bytes} bytes "
                                            f"accepted{hint}")
                    try:
                        fh.write(chunk)
                    except OSError as exc:
                        raise _write_error(what, tmp.parent, exc) from None
                    digest.update(chunk)
                    if bar is not None:
                        bar.update(done)
        except BaseException:
            if bar is not None:
                bar.abandon()
            raise
        if bar is not None:
            bar.close(done)
    actual = digest.hexdigest()
    if actual != sha256:
        raise DownloadError(f"refusing the download of {what} from {url}: its SHA-256 is "
                            f"{actual}, not the pinned {sha256} (a tampered or wrong file)")


__all__ = ["DEADLINE_S", "MAX_DOWNLOAD_BYTES", "TIMEOUT_S", "DownloadError", "DownloadProgress",
           "download", "download_limit"]
