"""Finding the image files under a folder, the same way for ``zoo predict`` and ``zoo evaluate``.

Folders are walked recursively, following symbolic links (a folder of links to
class folders is a common way to assemble a split) but never into a folder
twice, so a link cycle ends; hidden files and folders (``.name``) are skipped.
"""

from __future__ import annotations

import os
from pathlib import Path

from zoo.util.imaging import IMAGE_SUFFIXES


def find_images(root: Path | str, *, strict: bool = False) -> list[Path]:
    """The image files (by suffix) under ``root``, recursively, sorted by path.

    ``strict``: a folder that cannot be read is a :class:`~zoo.errors.DataError` naming
    it (by default it is passed over, as ``os.walk`` does).
    """
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()

    def unreadable(exc: OSError) -> None:
        if strict:
            from zoo.errors import DataError

            raise DataError(f"cannot read the folder {str(exc.filename or root)!r}: "
                            f"{exc.strerror or exc}") from None

    for folder, dirs, files in os.walk(root, followlinks=True, onerror=unreadable):
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            path = Path(folder, name)
            if (not name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES
                    and path.is_file()):
                found.append(path)
    return sorted(found)


__all__ = ["find_images"]
