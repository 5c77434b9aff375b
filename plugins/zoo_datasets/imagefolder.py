"""``imagefolder``: a directory of class folders (``DIR/CLASS/IMAGE``), decoded once and cached.

Images are decoded by :func:`zoo.util.imaging.decode_image` (the decoder deployment
uses too) at the requested size and channels. Unreadable files are reported
with their path and skipped, or are an error under ``strict``. The decoded
uint8 arrays are cached under a key hashing every file's content and its path
within the folder, so a changed file invalidates the cache.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from zoo.errors import DataError
from zoo.spec.dataset import DatasetRequest, LoadedDataset, Split
from zoo.spec.manifest import unprintable
from zoo.util.imaging import IMAGE_SUFFIXES, ImageDecodeError, decode_image
from zoo_datasets import ImageFolderOptions
from zoo_datasets.cache import (
    cache_root,
    cached,
    digest_index,
    file_digests,
    hash_parts,
    io_workers,
)
from zoo_datasets.common import stratified_split, take
from zoo_datasets.status import StatusLine

CACHE_VERSION = "imagefolder-v2"


def scan(root: Path, what: str = "--data-dir") -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names (sorted folder names) and ``(file, class index)`` pairs under ``root``."""
    if not root.exists():
        raise DataError(f"{what} {str(root)!r} does not exist")
    if not root.is_dir():
        raise DataError(f"{what} {str(root)!r} is not a directory of class folders")
    try:
        return _scan(root, what)
    except OSError as exc:
        raise DataError(f"{what} {str(root)!r} cannot be read: {exc.filename or root}: "
                        f"{exc.strerror or exc}") from None


def _raise(exc: OSError) -> None:
    raise exc


def _scan(root: Path, what: str) -> tuple[list[str], list[tuple[Path, int]]]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for index, name in enumerate(classes):  # class names are printed, and become a bundle's
        found = unprintable(name)
        if found is not None:
            raise DataError(f"{what} {str(root)!r} has class folder {index} {name!r}, which "
                            f"holds the control character {found!r}; accepted: printable names "
                            "(rename the folder)")
    files: list[tuple[Path, int]] = []
    for index, name in enumerate(classes):
        for dirpath, dirnames, filenames in os.walk(root / name, onerror=_raise):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fname in sorted(filenames):
                if fname.startswith(".") or Path(fname).suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                files.append((Path(dirpath) / fname, index))
    if not files:
        raise DataError(f"{what} {str(root)!r} holds no images: expected class folders of "
                        f"image files ({', '.join(sorted(IMAGE_SUFFIXES))}), as DIR/CLASS/IMAGE")
    return classes, files


def _decode_all(files: list[tuple[Path, int]], channels: int, size: tuple[int, int],
                status: StatusLine) -> dict[str, np.ndarray]:
    def one(item: tuple[Path, int]) -> np.ndarray | str:
        try:
            return decode_image(item[0], channels, size)
        except ImageDecodeError as exc:
            return str(exc)

    decoded: list[np.ndarray | str] = []
    with status, ThreadPoolExecutor(max_workers=io_workers()) as pool:
        for image in pool.map(one, files, chunksize=64):
            decoded.append(image)
            status.update(len(decoded))
    good = [i for i, d in enumerate(decoded) if not isinstance(d, str)]
    images = np.empty((len(good), channels, size[0], size[1]), dtype=np.uint8)
    for row, i in enumerate(good):
        images[row] = decoded[i]
    labels = np.array([files[i][1] for i in good], dtype=np.int64)
    errors = [d for d in decoded if isinstance(d, str)]
    return {"images": images, "labels": labels,
            "index": np.array(good, dtype=np.int64),
            "errors": np.array(errors, dtype=np.str_)}


def read_folder(root: Path, request: DatasetRequest, size: tuple[int, int], *, use_cache: bool,
                what: str = "--data-dir") -> tuple[list[str], np.ndarray, np.ndarray, list[str],
                                                  str, int]:
    """Classes, images, labels, unreadable-file messages, content key and file count."""
    classes, files = scan(root, what)
    index = digest_index(request.cache_dir, root) if use_cache else None
    show = not request.quiet
    with StatusLine("hashing", len(files), f"files of {str(root)!r}", enabled=show) as status:
        digests = file_digests([p for p, _ in files], index, on_progress=status.update)
    key = hash_parts([CACHE_VERSION, f"{size[0]}x{size[1]}x{request.channels}",
                      *(f"{p.relative_to(root).as_posix()}|{c}|{d}"
                        for (p, c), d in zip(files, digests, strict=True))])
    arrays = cached(cache_root(request.cache_dir) / "imagefolder", key,
                    lambda: _decode_all(files, request.channels, size, StatusLine(
                        "decoding", len(files), f"images of {str(root)!r}", enabled=show)),
                    enabled=use_cache)
    errors = [str(e) for e in arrays["errors"]]
    if errors and request.strict:
        raise DataError(f"{errors[0]} (strict mode: fix or remove the file, or train without "
                        f"--strict to skip unreadable files)")
    return classes, arrays["images"], arrays["labels"], errors, key, len(files)


def load(request: DatasetRequest, options: ImageFolderOptions) -> LoadedDataset:
    if request.data_dir is None:
        raise DataError("dataset 'imagefolder' needs --data-dir DIR (a folder of class folders)")
    size = request.image_size or (32, 32)
    root = Path(request.data_dir)
    classes, images, labels, errors, key, _ = read_folder(root, request, size,
                                                          use_cache=options.cache)
    present = sorted(set(labels.tolist()))
    if len(present) < 2:
        raise DataError(f"--data-dir {str(root)!r} has {len(present)} class folder(s) with "
                        f"readable images ({', '.join(classes) or 'none'}); at least 2 are needed")
    if len(present) != len(classes):
        empty = [c for i, c in enumerate(classes) if i not in set(present)]
        raise DataError(f"class folder(s) {', '.join(map(repr, empty))} in {str(root)!r} hold "
                        "no readable images; remove them or add images")
    skipped = list(errors)
    if request.val_dir is not None:
        vroot = Path(request.val_dir)
        vclasses, vimages, vlabels, verrors, vkey, _ = read_folder(
            vroot, request, size, use_cache=options.cache, what="--val-dir")
        unknown = sorted(set(vclasses) - set(classes))
        if unknown:
            raise DataError(f"--val-dir {str(vroot)!r} has class folders {unknown} that "
                            f"--data-dir lacks; its classes must be among: {', '.join(classes)}")
        remap = np.array([classes.index(c) for c in vclasses], dtype=np.int64)
        train = Split(images=images, labels=labels)
        val = Split(images=vimages, labels=remap[vlabels] if len(vlabels) else vlabels)
        if len(val) == 0:
            raise DataError(f"--val-dir {str(vroot)!r} holds no readable images")
        skipped += verrors
        key = hash_parts([key, vkey])
        description = f"separate validation directory {str(vroot)!r}"
    else:
        if request.val_split <= 0:
            raise DataError("imagefolder needs --val-dir DIR or a --val-split in (0, 1), "
                            f"got {request.val_split}")
        train_idx, val_idx = stratified_split(labels, request.val_split, request.seed)
        train, val = take(images, labels, train_idx), take(images, labels, val_idx)
        description = (f"seeded stratified split: {request.val_split:g} of each class held out "
                       f"(seed {request.seed})")
    if skipped and not request.quiet:
        print(f"zoo: warning: skipped {len(skipped)} unreadable file(s), e.g. {skipped[0]}",
              file=sys.stderr)
    return LoadedDataset(name="imagefolder", train=train, val=val, classes=tuple(classes),
                         content_key=key, split_description=description,
                         skipped=tuple(skipped))
