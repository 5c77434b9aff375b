"""A cache of compiled C kernels that loads only the shared objects it built itself.

A cached ``.so`` is ``dlopen``ed, so its constructors run inside the process:
loading a file someone else put there runs their code. A library is loaded only
if this process's user owns it and its folder, neither is group- or
world-writable, and its SHA-256 is the one recorded beside it
(``NAME.so.sha256``, written when it was built, checked the same way).
Anything else is rebuilt: compiled to a temporary name in the same folder,
hashed, loaded from there, then renamed into place, so the process runs exactly
the bytes it compiled and hashed and no reader ever sees a half-written file.
The folder is created with mode 0700; one that others can write to is made
private and its contents are not trusted; one owned by another user, or one
that cannot be created, is not used (the kernels are built for the process
alone). Temporaries that crashed builds left behind are removed at the next build.

Each rebuild, and the first build, is announced on stderr in one line.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import hashlib
import os
import stat
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

DIGEST_SUFFIX = ".sha256"
STALE_AFTER_S = 3600  # a temporary this old is a crashed build's, not a running one's
_PRIVATE = 0o700
_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH


class KernelBuildError(Exception):
    """The compiler failed; the message is one line (its last line of output)."""


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _unsafe(st: os.stat_result, what: str) -> str | None:
    """Why a file or folder with this status may not be trusted, or None."""
    if st.st_uid != os.geteuid():
        return f"{what} belongs to another user (uid {st.st_uid})"
    if st.st_mode & _OTHERS_WRITE:
        return f"{what} is group- or world-writable (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def _private_folder(folder: Path) -> str | None:
    """Create ``folder`` (mode 0700) or make it private; why its contents are distrusted.

    None: an existing private folder of ours, whose files may be checked and used.
    A reason: a folder that was open to others, now private; nothing in it is reused.
    Raises OSError (a reason in its message) where the folder cannot be used at all.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir(mode=_PRIVATE)
        os.chmod(folder, _PRIVATE)  # whatever the umask
        return None
    except FileExistsError:
        pass
    st = os.stat(folder)
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(f"{folder} is not a folder")
    if st.st_uid != os.geteuid():
        raise PermissionError(f"the folder {folder} belongs to another user (uid {st.st_uid})")
    if st.st_mode & _OTHERS_WRITE:
        os.chmod(folder, _PRIVATE)
        return (f"its folder was group- or world-writable (mode "
                f"{stat.S_IMODE(st.st_mode):04o}; now 0700)")
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def digest_path(library: Path) -> Path:
    """Where the SHA-256 of ``library``, recorded when it was built, is kept."""
    return library.with_name(library.name + DIGEST_SUFFIX)


def untrusted(library: Path) -> str | None:
    """Why the cached ``library`` may not be loaded, or None where it may.

    The folder's own checks are :func:`load`'s; this checks the file and its
    recorded digest: both regular files of this user, not writable by others,
    and the digest that of the file's bytes.
    """
    sidecar = digest_path(library)
    try:
        st = os.lstat(library)
    except FileNotFoundError:
        return "absent"
    if not stat.S_ISREG(st.st_mode):
        return f"{library.name} is not a regular file"
    why = _unsafe(st, library.name)
    if why is not None:
        return why
    try:
        side = os.lstat(sidecar)
    except FileNotFoundError:
        return f"{library.name} has no recorded digest"
    if not stat.S_ISREG(side.st_mode):
        return f"{sidecar.name} is not a regular file"
    why = _unsafe(side, sidecar.name)
    if why is not None:
        return why
    recorded = sidecar.read_text(encoding="ascii", errors="replace").strip()
    if recorded != _sha256(library):
        return f"{library.name} does not match the digest recorded when it was built"
    return None


def _write_private(dest: Path, text: str) -> None:
    """Write ``text`` to ``dest`` atomically, mode 0600."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, dest)
    finally:
        Path(tmp_name).unlink(missing_ok=True)


def _remove_stale(library: Path) -> None:
    """Remove temporaries that crashed builds of ``library`` left (not a running build's)."""
    cutoff = time.time() - STALE_AFTER_S
    for tmp in library.parent.glob(f".{glob.escape(library.name)}*.tmp"):
        with contextlib.suppress(OSError):
            if os.lstat(tmp).st_mtime < cutoff:
                tmp.unlink()


def _build_and_load(library: Path, build: Callable[[Path], None],
                    record: bool) -> ctypes.CDLL:
    """Build into a temporary name beside ``library``, load that, then rename it into place."""
    _remove_stale(library)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{library.name}.", suffix=".tmp",
                                    dir=library.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        build(tmp)
        os.chmod(tmp, _PRIVATE)  # the linker recreates the file with the umask's mode
        digest = _sha256(tmp)
        lib = ctypes.CDLL(str(tmp))  # exactly the bytes just hashed; stays mapped when renamed
        if record:
            _write_private(digest_path(library), digest + "\n")
            os.replace(tmp, library)
        return lib
    finally:
        tmp.unlink(missing_ok=True)


def load(library: Path, build: Callable[[Path], None], *, what: str) -> tuple[ctypes.CDLL, str]:
    """Load the cached ``library``, building it first unless this cache built it.

    ``build(path)`` compiles the library to ``path`` (raising :class:`KernelBuildError`).
    ``what`` names the kernels in the one stderr line said when they compile
    (for example ``"the chapter-8 CPU kernels"``). Returns the library and where
    it lives (``"(a temporary build)"`` where the cache folder cannot be used).
    Raises KernelBuildError, or OSError where the built library does not load.
    """
    try:
        why = _private_folder(library.parent)
    except OSError as exc:
        _say(f"zoo: compiling {what} for this process only (a few seconds): the cache "
             f"cannot be used ({_first_line(exc)})…")
        with tempfile.TemporaryDirectory(prefix="zoo-kernels-") as tmp:
            return _build_and_load(Path(tmp) / library.name, build, record=False), \
                "(a temporary build)"
    if why is None:
        try:
            why = untrusted(library)
        except OSError as exc:
            why = f"{library.name} could not be read ({_first_line(exc)})"
        if why is None:
            try:
                return ctypes.CDLL(str(library)), str(library)
            except OSError as exc:
                why = f"{library.name} could not be loaded ({_first_line(exc)})"
    if why == "absent":
        _say(f"zoo: compiling {what} (first use, a few seconds)…")
    else:
        _say(f"zoo: rebuilding {what} (a few seconds): {why}…")
    return _build_and_load(library, build, record=True), str(library)
