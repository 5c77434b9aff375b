"""Finding the image files under a folder, the same way for ``zoo predict`` and ``zoo evaluate``.

Folders are walked recursively, following symbolic links (a folder of links to
class folders is a common way to assemble a split) but never into a folder
twice, so a link cycle ends; hidden files and folders (``.name``) are skipped.
"""

from __future__ import annotations

import os
from pathlib import Path

from zoo.util.imaging import IMAGE_SUFFIXES


def find_images(root: Path | str) -> list[Path]:
    """The image files (by suffix) under ``root``, recursively, sorted by path."""
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
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
