"""Atomic writes: nothing half-written is ever left at a destination path.

Temporaries are made beside their destination and named
``.<dest>.zoo-<pid>-<random>.tmp`` (``.old`` for a replaced folder on its way
out). A process killed mid-write leaves its temporary behind; the next write to
the same destination removes those whose process is gone, and the next folder
written (:func:`atomic_directory`: an export) those of any destination beside it.

Replacing a folder (:func:`atomic_directory` with ``replace=True``) swaps the
new folder and the old one in one ``renameat2(RENAME_EXCHANGE)`` call on Linux
3.15+ filesystems that support it, so the destination always exists. Elsewhere
the fallback is two renames (old aside, new in place): a crash between them
leaves the destination missing, with the old folder kept as ``.<dest>.zoo-*.old``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from zoo.errors import ZooError


def _umask() -> int:
    """The process's umask, without changing it where the platform allows.

    ``os.umask`` can only read the mask by setting it, which for an instant
    affects files other threads create; Linux shows it in /proc instead.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temp_prefix(dest: Path) -> str:
    return f".{dest.name}.zoo-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    return True


def clean_stale_temporaries(dest: Path | str, *, any_name: bool = False) -> list[Path]:
    """Remove the temporaries of writes to ``dest`` whose process has died; return them.

    ``any_name``: those of writes to any destination in ``dest``'s folder (a killed
    export's folder stays forever otherwise, when its destination is never written again).
    """
    dest = Path(dest)
    name = r"[^/]+" if any_name else re.escape(dest.name)
    pattern = re.compile(rf"^\.{name}\.zoo-(\d+)-[^/]*\.(tmp|old)$")
    removed: list[Path] = []
    try:
        entries = list(dest.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None or int(match.group(1)) == os.getpid() or _alive(int(match.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
        removed.append(entry)
    return removed


def write_error(path: str | os.PathLike[str], exc: OSError, what: str = "output") -> ZooError:
    """One sentence for an :class:`OSError` writing the ``what`` at ``path``: a file where a
    folder must be, a full disk, a permission."""
    path = Path(path)
    if isinstance(exc, (FileExistsError, NotADirectoryError)) or (
            path.exists() and not path.is_dir()):
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), path)
        return ZooError(f"cannot write the {what} {str(path)!r}: {str(blocker)!r} is a file; "
                        "accepted: a folder, or a path where one can be created")
    why = ("the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT)
           else exc.strerror or str(exc))
    return ZooError(f"cannot write the {what} {str(path)!r}: {why}")


def check_output_folder(path: str | os.PathLike[str], what: str = "output folder") -> None:
    """Fail early, before any work, when ``path`` or one of its parents is a file."""
    path = Path(path)
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise write_error(path, NotADirectoryError(errno.ENOTDIR, "Not a directory"), what)


def check_output_file(path: str | os.PathLike[str], what: str = "output file") -> None:
    """Fail early, before any work, when ``path`` is a folder or one of its parents a file."""
    path = Path(path)
    if path.is_dir():
        raise ZooError(f"cannot write the {what} {str(path)!r}: it is a folder; accepted: a "
                       "file path, e.g. " + str(path / "compare.png"))
    if any(p.exists() and not p.is_dir() for p in path.parents):
        raise write_error(path, NotADirectoryError(errno.ENOTDIR, "Not a directory"), what)


@contextlib.contextmanager
def output_folder(path: str | os.PathLike[str],
                  what: str = "output folder") -> Iterator[Path]:
    """Create folder ``path`` (and its parents) and yield it; an :class:`OSError` raised
    creating it or writing into it becomes one :class:`~zoo.errors.ZooError` sentence."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        yield path
    except OSError as exc:
        raise write_error(path, exc, what) from None


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def exchange(a: Path | str, b: Path | str) -> bool:
    """Swap paths ``a`` and ``b`` atomically (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns False where the system or filesystem cannot (then nothing changed);
    other failures raise :class:`OSError`.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a libc without it (glibc < 2.28, musl < 1.2.?)
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


@contextlib.contextmanager
def atomic_path(dest: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it over ``dest`` if the block succeeds."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(dest)
    fd, tmp_name = tempfile.mkstemp(prefix=_temp_prefix(dest), suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp makes the file 0600; give it the mode a plain open() would have
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(dest: Path | str, text: str) -> None:
    """Write ``text`` to ``dest`` atomically."""
    with atomic_path(dest) as tmp:
        tmp.write_text(text)


def atomic_write_bytes(dest: Path | str, data: bytes) -> None:
    """Write ``data`` to ``dest`` atomically."""
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def atomic_directory(dest: Path | str, *, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``dest``; move it into place only if the block succeeds.

    With ``replace=True`` an existing ``dest`` is swapped out only after the new one
    is complete: in one atomic exchange where the system allows (see the module's
    docstring), the old folder is then removed.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(dest, any_name=True)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(dest), suffix=".tmp", dir=dest.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700, unlike a plain mkdir()
        if dest.exists():
            if not replace:
                raise FileExistsError(f"{dest} already exists")
            if exchange(tmp, dest):  # tmp now holds the old folder (or a link to it)
                if tmp.is_symlink():
                    tmp.unlink()
                else:
                    shutil.rmtree(tmp, ignore_errors=True)
                return
            aside = Path(tempfile.mkdtemp(prefix=_temp_prefix(dest), suffix=".old",
                                          dir=dest.parent))
            os.replace(dest, aside / "old")
            os.replace(tmp, dest)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    finally:
        if tmp.is_symlink():
            tmp.unlink()
        elif tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
