"""``cifar10`` and ``cifar2`` through torchvision's CIFAR10, with the official train/test split.

The data is looked for in ``--data-dir`` (the folder holding
``cifar-10-batches-py``, or that folder itself), else in the zoo cache
directory, and downloaded there by torchvision when downloading is allowed.
A local copy whose md5 sums torchvision rejects (a re-packed or test copy) is
read from its python-pickle batches directly, in the same format. The batches are
pickles: they are only ever unpickled accepting numpy arrays and plain data
(:mod:`zoo.util.pickleguard`), torchvision's reads included.
``cifar2`` keeps airplane and bird, relabelled 0 and 1, as the book does.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from zoo.errors import DataError
from zoo.spec.dataset import DatasetRequest, LoadedDataset, Split
from zoo.util.pickleguard import NUMPY_ARRAY_GLOBALS, load_restricted, strict_unpickling
from zoo_datasets import CifarOptions
from zoo_datasets.cache import cache_root, digest_index, file_digests, hash_parts
from zoo_datasets.common import convert_channels, resize_images
from zoo_datasets.status import StatusLine

BASE_FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
META_FILE = "batches.meta"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck")


def _root(request: DatasetRequest) -> Path:
    if request.data_dir is not None:
        root = Path(request.data_dir)
        return root.parent if root.name == BASE_FOLDER else root
    return cache_root(request.cache_dir) / "cifar10"


def _complete(root: Path) -> bool:
    folder = root / BASE_FOLDER
    return all((folder / f).is_file() for f in (*TRAIN_FILES, *TEST_FILES, META_FILE))


def _offline_error(root: Path, name: str, reason: str) -> DataError:
    return DataError(
        f"dataset {name!r}: no CIFAR-10 copy in {str(root)!r} ({reason}); point --data-dir at a "
        f"folder holding {BASE_FOLDER}, allow downloading on a machine with a network, or use "
        "'imagefolder' (--data-dir DIR of class folders) or 'synthetic' (no download)")


def _read_batches(folder: Path, files: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    data, labels = [], []
    for name in files:
        try:
            with (folder / name).open("rb") as fh:
                entry = load_restricted(fh, NUMPY_ARRAY_GLOBALS, encoding="latin1")
            data.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(entry["labels"] if "labels" in entry else entry["fine_labels"])
        except (OSError, pickle.UnpicklingError, KeyError, ValueError, EOFError,
                TypeError) as exc:
            raise DataError(f"{folder / name} is not a readable CIFAR-10 batch ({exc}); "
                            "delete the folder to download it again") from None
    return np.concatenate(data), np.asarray(labels, dtype=np.int64)


def _read(root: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    from torchvision.datasets import CIFAR10

    try:
        with strict_unpickling(NUMPY_ARRAY_GLOBALS):  # torchvision unpickles the batches
            ds = CIFAR10(str(root), train=train, download=False)
    except (RuntimeError, pickle.UnpicklingError):  # md5 mismatch: a copy torchvision rejects
        return _read_batches(root / BASE_FOLDER, TRAIN_FILES if train else TEST_FILES)
    images = np.ascontiguousarray(np.asarray(ds.data, dtype=np.uint8).transpose(0, 3, 1, 2))
    return images, np.asarray(ds.targets, dtype=np.int64)


def _load(request: DatasetRequest, name: str, keep: tuple[int, ...]) -> LoadedDataset:
    root = _root(request)
    if not _complete(root):
        if not request.download:
            raise _offline_error(root, name, "downloading is disabled")
        try:
            from torchvision.datasets import CIFAR10

            with strict_unpickling(NUMPY_ARRAY_GLOBALS):  # it reads what it downloaded
                CIFAR10(str(root), train=True, download=True)
        except Exception as exc:  # no network, proxy, disk full: all say the same to a user
            raise _offline_error(root, name, f"download failed: {exc}") from None
    parts: list[Split] = []
    folder = root / BASE_FOLDER
    show = not request.quiet
    with StatusLine("reading", 2, f"CIFAR-10 splits of {str(folder)!r}",
                    enabled=show) as status:
        for train in (True, False):
            images, labels = _read(root, train)
            mask = np.isin(labels, keep)
            images, labels = images[mask], labels[mask]
            remap = np.full(len(CLASSES), -1, dtype=np.int64)
            remap[list(keep)] = np.arange(len(keep))
            images = convert_channels(images, request.channels)
            images = resize_images(images, request.image_size)
            parts.append(Split(images=np.ascontiguousarray(images), labels=remap[labels]))
            status.update(len(parts))
    names = (*TRAIN_FILES, *TEST_FILES)
    with StatusLine("hashing", len(names), f"CIFAR-10 files of {str(folder)!r}",
                    enabled=show) as status:
        digests = file_digests([folder / f for f in names],
                               digest_index(request.cache_dir, folder), on_progress=status.update)
    key = hash_parts([name, *(f"{f}|{d}" for f, d in zip(names, digests, strict=True)),
                      f"{request.image_size}x{request.channels}"])
    return LoadedDataset(name=name, train=parts[0], val=parts[1],
                         classes=tuple(CLASSES[i] for i in keep), content_key=key,
                         split_description="official CIFAR-10 split: train batches for "
                                           "training, test batch for validation")


def load_cifar10(request: DatasetRequest, options: CifarOptions) -> LoadedDataset:
    return _load(request, "cifar10", tuple(range(10)))


def load_cifar2(request: DatasetRequest, options: CifarOptions) -> LoadedDataset:
    return _load(request, "cifar2", (0, 2))
