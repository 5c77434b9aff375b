"""A cache of compiled C kernels that loads only the shared objects it built itself.

A cached ``.so`` is ``dlopen``ed, so its constructors run inside the process:
loading a file someone else put there runs their code. A library is loaded only
if this process's user owns it and its folder, neither is group- or
world-writable nor a symbolic link, and its SHA-256 is the one this cache recorded
when it built it. The digests are kept in the folder's index (``index.json``, mode
0600, written atomically, checked like the library): a library cannot carry its
own digest beside itself, as a ``NAME.so.sha256`` file copied in with it could.
The library is opened without following links (``O_NOFOLLOW``), checked and hashed
through that descriptor, then loaded by its path while the descriptor is held (only
this user can rename files in the private folder between the two).

Anything else is rebuilt: compiled to a temporary name in the same folder, hashed,
loaded from there, then renamed into place, so the process runs exactly the bytes
it compiled and hashed and no reader ever sees a half-written file. The folder is
created with mode 0700; one that others can write to is made private and its
contents are not trusted; one owned by another user, a symbolic link, or one that
cannot be created, is not used (the kernels are built for the process alone).
Temporaries that crashed builds left behind are removed at the next build.

These checks keep out other users of the machine and files copied in by mistake.
Someone who runs code as this user can replace the zoo's own source, so against
them the checks are defence in depth, not a boundary (``docs/security.md``).

Each rebuild, and the first build, is announced on stderr in one line.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import hashlib
import json
import os
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

INDEX_FILE = "index.json"
LEGACY_DIGEST_SUFFIX = ".sha256"  # the digest files of earlier versions, no longer trusted
STALE_AFTER_S = 3600  # a temporary this old is a crashed build's, not a running one's
_PRIVATE = 0o700
_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH
_NOFOLLOW = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_MAX_INDEX_BYTES = 1 << 20


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
    Raises OSError (a reason in its message) where the folder cannot be used at all:
    another user's, or a symbolic link (``lstat``: never followed).
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir(mode=_PRIVATE)
        os.chmod(folder, _PRIVATE)  # whatever the umask
        return None
    except FileExistsError:
        pass
    st = os.lstat(folder)
    if stat.S_ISLNK(st.st_mode):
        raise NotADirectoryError(f"the folder {folder} is a symbolic link")
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(f"{folder} is not a folder")
    if st.st_uid != os.geteuid():
        raise PermissionError(f"the folder {folder} belongs to another user (uid {st.st_uid})")
    if st.st_mode & _OTHERS_WRITE:
        os.chmod(folder, _PRIVATE)
        return (f"its folder was group- or world-writable (mode "
                f"{stat.S_IMODE(st.st_mode):04o}; now 0700)")
    return None


def _hash_fd(fd: int) -> str:
    digest = hashlib.sha256()
    offset = 0
    while block := os.pread(fd, 1 << 20, offset):
        digest.update(block)
        offset += len(block)
    return digest.hexdigest()


def index_path(library: Path) -> Path:
    """The index of the folder of ``library``: the digests of the libraries this cache built."""
    return library.with_name(INDEX_FILE)


@contextlib.contextmanager
def _open_private(path: Path, what: str) -> Iterator[int]:
    """A descriptor of ``path``, opened without following a link: a regular file of this user
    that others cannot write (OSError, its reason in the message, otherwise)."""
    try:
        fd = os.open(path, _NOFOLLOW)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise OSError(f"{what} is not a regular file") from None  # ELOOP: a link
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{what} is not a regular file")
        why = _unsafe(st, what)
        if why is not None:
            raise OSError(why)
        yield fd
    finally:
        os.close(fd)


def _read_index(library: Path) -> dict[str, str]:
    """The digests recorded in the index ({} where there is none); OSError where it may
    not be trusted (a link, another user's, writable by others)."""
    path = index_path(library)
    try:
        with _open_private(path, INDEX_FILE) as fd:
            data = os.read(fd, _MAX_INDEX_BYTES)
    except FileNotFoundError:
        return {}
    try:
        raw = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return {}
    entries = raw.get("libraries") if isinstance(raw, dict) else None
    if not isinstance(entries, dict):
        return {}
    return {str(k): str(v) for k, v in entries.items() if isinstance(v, str)}


def recorded_digest(library: Path) -> str | None:
    """The SHA-256 the index holds for ``library``, or None."""
    return _read_index(library).get(library.name)


def record_digest(library: Path, digest: str) -> None:
    """Record ``digest`` for ``library`` in its folder's index: rewritten atomically, 0600."""
    try:
        entries = _read_index(library)
    except OSError:
        entries = {}  # an untrusted index is replaced, not merged
    entries[library.name] = digest
    text = json.dumps({"format": 1, "libraries": dict(sorted(entries.items()))}, indent=1)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{INDEX_FILE}.", suffix=".tmp",
                                    dir=library.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, index_path(library))
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # an earlier version's digest file beside the library
        library.with_name(library.name + LEGACY_DIGEST_SUFFIX).unlink()


def _check(library: Path, fd: int) -> str | None:
    """Why the library open at ``fd`` may not be loaded, or None (its index entry agrees)."""
    try:
        recorded = recorded_digest(library)
    except OSError as exc:
        return _first_line(exc)
    if recorded is None:
        return f"{library.name} has no recorded digest"
    if recorded != _hash_fd(fd):
        return f"{library.name} does not match the digest recorded when it was built"
    return None


def untrusted(library: Path) -> str | None:
    """Why the cached ``library`` may not be loaded, or None where it may.

    The folder's own checks are :func:`load`'s; this checks the file (a regular file of
    this user, not writable by others, reached through no link) and the index (the
    same), and that the index records the file's digest.
    """
    try:
        with _open_private(library, library.name) as fd:
            return _check(library, fd)
    except FileNotFoundError:
        return "absent"
    except OSError as exc:
        return _first_line(exc)


def _load_trusted(library: Path) -> tuple[ctypes.CDLL | None, str]:
    """The library loaded once its descriptor was checked, or None and why not.

    (Not through ``/proc/self/fd/N``: the dynamic loader matches names first, and would
    hand back whatever library an earlier load through that descriptor number mapped.)
    """
    try:
        with _open_private(library, library.name) as fd:
            why = _check(library, fd)
            if why is not None:
                return None, why
            try:
                return ctypes.CDLL(str(library)), ""
            except OSError as exc:
                return None, f"{library.name} could not be loaded ({_first_line(exc)})"
    except FileNotFoundError:
        return None, "absent"
    except OSError as exc:
        return None, _first_line(exc)


def _remove_stale(library: Path) -> None:
    """Remove temporaries that crashed builds of ``library`` left (not a running build's)."""
    cutoff = time.time() - STALE_AFTER_S
    for pattern in (f".{glob.escape(library.name)}*.tmp", f".{INDEX_FILE}.*.tmp"):
        for tmp in library.parent.glob(pattern):
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
        with _open_private(tmp, library.name) as built:
            digest = _hash_fd(built)
            lib = ctypes.CDLL(str(tmp))  # the bytes just hashed; stays mapped when renamed
        if record:
            record_digest(library, digest)
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
        lib, why = _load_trusted(library)
        if lib is not None:
            return lib, str(library)
    if why == "absent":
        _say(f"zoo: compiling {what} (first use, a few seconds)…")
    else:
        _say(f"zoo: rebuilding {what} (a few seconds): {why}…")
    return _build_and_load(library, build, record=True), str(library)
