"""A decoded-image cache on disk: uint8 arrays in ``.npz`` files, written atomically.

The cache directory is ``request.cache_dir``, else ``$ZOO_CACHE_DIR``, else
``~/.cache/zoo``. Entries are named by a key that hashes what the images were
decoded from (each file's content and its path within the dataset, plus the
decode size and channels), so a changed, added, removed or renamed file
invalidates it, whatever its modification time, and a copy of the dataset
elsewhere finds the same entry.

Each entry also stores its own key and the SHA-256 of its arrays
(:func:`arrays_digest`), checked on every read: a damaged entry, or a valid
one copied or written under another key, is rebuilt with one line on stderr.
This catches accidents and misplaced files, not someone who can write the
cache and recompute the digest. An entry is never unpickled (``allow_pickle=False``,
under :func:`zoo.util.pickleguard.strict_unpickling`): a planted pickle is a damaged entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import zipfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from zoo.util.fsutil import atomic_path, atomic_write_text
from zoo.util.paths import cache_dir
from zoo.util.pickleguard import strict_unpickling


def cache_root(explicit: Path | None) -> Path:
    return Path(explicit) if explicit is not None else cache_dir()


def hash_parts(parts: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:32]


def file_digest(path: Path) -> str:
    """A hash of the file's bytes; ``unreadable:ERRNO`` if it cannot be read.

    An unreadable file still gets a key (the decoder then reports or skips it).
    """
    digest = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        return f"unreadable:{exc.errno}"
    return digest.hexdigest()


def _stat_signature(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    # ctime changes on every write and cannot be set back, unlike mtime
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def io_workers() -> int:
    """Threads for reading or decoding many small files."""
    return min(8, (os.cpu_count() or 2) + 2)


def digest_index(cache_dir: Path | None, folder: Path) -> Path:
    """Where :func:`file_digests` remembers the digests of the files under ``folder``."""
    return cache_root(cache_dir) / "digests" / f"{hash_parts([str(folder.resolve())])}.json"


def file_digests(paths: Sequence[Path], index_file: Path | None = None, *,
                 on_progress: Callable[[int], None] | None = None) -> list[str]:
    """:func:`file_digest` of each path, read on a few threads.

    With ``index_file``, digests are remembered there with each file's size,
    modification and change times and inode, and only files whose signature
    changed are read again: a second load of 10,000 files costs their ``stat``
    calls, not 9 MB of reading. ``on_progress`` is called with the count of files
    read so far.
    """
    known: dict[str, list[object]] = {}
    if index_file is not None:
        try:
            loaded = json.loads(index_file.read_text())
            if isinstance(loaded, dict):
                known = loaded
        except (OSError, ValueError):
            pass
    signatures = [_stat_signature(p) for p in paths]
    digests: list[str | None] = []
    for p, sig in zip(paths, signatures, strict=True):
        entry = known.get(str(p))
        hit = sig is not None and isinstance(entry, list) and entry[:-1] == sig
        digests.append(str(entry[-1]) if hit and entry is not None else None)
    todo = [i for i, d in enumerate(digests) if d is None]
    if todo:
        fresh: list[str] = []
        with ThreadPoolExecutor(max_workers=io_workers()) as pool:
            results = (map(file_digest, (paths[i] for i in todo)) if len(todo) < 64
                       else pool.map(file_digest, [paths[i] for i in todo], chunksize=256))
            for digest in results:
                fresh.append(digest)
                if on_progress is not None:
                    on_progress(len(fresh))
        for i, d in zip(todo, fresh, strict=True):
            digests[i] = d
        if index_file is not None:
            table = {str(p): [*sig, d] for p, sig, d in zip(paths, signatures, digests,
                                                            strict=True)
                     if sig is not None and d is not None and not d.startswith("unreadable:")}
            try:
                index_file.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(index_file, json.dumps(table))
            except OSError:
                pass  # an unwritable cache only costs the reading next time
    return [str(d) for d in digests]


Arrays = dict[str, np.ndarray]

_KEY_FIELD = "__zoo_key__"
_DIGEST_FIELD = "__zoo_sha256__"


def arrays_digest(arrays: Arrays) -> str:
    """SHA-256 of named arrays: each name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _read_entry(path: Path, key: str) -> Arrays | None:
    """The entry's arrays if it is readable, holds ``key`` and matches its digest; else None."""
    try:
        with strict_unpickling(), np.load(path, allow_pickle=False) as npz:
            stored = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, AttributeError, TypeError):
        return None  # damaged, or not an .npz (an .npy or a pickle, never unpickled)
    meta_key, meta_digest = stored.pop(_KEY_FIELD, None), stored.pop(_DIGEST_FIELD, None)
    if meta_key is None or meta_digest is None or str(meta_key) != key:
        return None
    if arrays_digest(stored) != str(meta_digest):
        return None
    return stored


def cached(root: Path, key: str, build: Callable[[], Arrays], *, enabled: bool = True) -> Arrays:
    """Return the arrays stored under ``key``, building and storing them on a miss.

    An unreadable or unwritable cache is never an error: the arrays are rebuilt
    (and, if the directory cannot be written, simply not stored).
    """
    if not enabled:
        return build()
    path = root / f"{key}.npz"
    if path.is_file():
        found = _read_entry(path, key)
        if found is not None:
            return found
        print(f"zoo: cache entry {path} is damaged or is not what its name says; rebuilding it",
              file=sys.stderr)
    arrays = build()
    stored = {**arrays, _KEY_FIELD: np.array(key), _DIGEST_FIELD: np.array(arrays_digest(arrays))}
    try:
        with atomic_path(path) as tmp, tmp.open("wb") as fh:
            np.savez(fh, **stored)  # type: ignore[arg-type]
    except OSError:
        pass
    return arrays
