"""Every dataset's label ``i`` means its ``classes[i]``: checked on the pixels.

Each dataset here is built so that an image's content tells its class (a
colour per class folder, a colour per CIFAR class in a fake CIFAR-10 copy in
torchvision's on-disk format, a shape per synthetic class), so a reversed or
shifted label order fails.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zoo import DatasetRequest, Registry
from zoo.host.contract import load_dataset

CIFAR = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
         "truck")
#: One colour per CIFAR-10 class, every channel different, so grey conversion is exercised.
COLOURS = np.array([(20 * c + 13, 251 - 23 * c, (97 * c + 41) % 256) for c in range(10)],
                   dtype=np.uint8)


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry()


def _req(tmp_path: Path, **kw: object) -> DatasetRequest:
    kw.setdefault("cache_dir", tmp_path / "cache")
    return DatasetRequest.model_validate(kw)


def test_imagefolder_labels_follow_the_sorted_class_folders(registry: Registry,
                                                            tmp_path: Path) -> None:
    # created in an order that is not the sorted one
    colours = {"zebra": (250, 10, 10), "ant": (10, 250, 10), "moth": (10, 10, 250)}
    for name, colour in colours.items():
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (20 + i, 18), colour).save(tmp_path / "data" / name / f"{i}.png")
    data = load_dataset(registry.get_dataset("imagefolder"),
        _req(tmp_path, data_dir=tmp_path / "data", val_split=0.25, image_size=(8, 8)))
    assert data.classes == ("ant", "moth", "zebra")
    for split in (data.train, data.val):
        assert len(split) and set(split.labels.tolist()) == {0, 1, 2}
        for image, label in zip(split.images, split.labels, strict=True):
            assert tuple(image[:, 4, 4]) == colours[data.classes[label]]


def _write_fake_cifar(root: Path, per_class: int) -> None:
    """A CIFAR-10 copy in torchvision's format: pickled batches of (N, 3072) rows, R then G
    then B planes; image ``i`` of a batch has class ``i % 10`` (shuffled) and its colour."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for b, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        labels = rng.permutation(np.arange(10 * per_class) % 10)
        planes = COLOURS[labels][:, :, None].repeat(1024, axis=2)  # (N, 3, 1024)
        data = planes.reshape(len(labels), 3072)
        with (folder / name).open("wb") as fh:
            pickle.dump({"batch_label": name, "labels": labels.tolist(), "data": data,
                         "filenames": [f"{b}_{i}.png" for i in range(len(labels))]}, fh)
    with (folder / "batches.meta").open("wb") as fh:
        pickle.dump({"label_names": list(CIFAR), "num_cases_per_batch": 10 * per_class}, fh)


@pytest.fixture(scope="module")
def fake_cifar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    _write_fake_cifar(root, per_class=3)
    return root


@pytest.mark.parametrize(("dataset", "kept"), [("cifar10", CIFAR), ("cifar2",
                                                                   ("airplane", "bird"))])
def test_cifar_labels_follow_the_class_names(registry: Registry, fake_cifar: Path,
                                             tmp_path: Path, dataset: str,
                                             kept: tuple[str, ...]) -> None:
    data = load_dataset(registry.get_dataset(dataset),
        _req(tmp_path, data_dir=fake_cifar, download=False))
    assert data.classes == kept
    assert len(data.train) == 5 * 3 * len(kept) and len(data.val) == 3 * len(kept)
    for split in (data.train, data.val):
        for image, label in zip(split.images, split.labels, strict=True):
            colour = COLOURS[CIFAR.index(data.classes[label])]
            assert tuple(image[:, 16, 16]) == tuple(colour)


def test_grey_cifar_is_pillows_grey_of_the_same_image(registry: Registry, fake_cifar: Path,
                                                      tmp_path: Path) -> None:
    """Training on grey CIFAR sees what deployment sees after Pillow's ``L`` conversion."""
    data = load_dataset(registry.get_dataset("cifar10"),
        _req(tmp_path, data_dir=fake_cifar, download=False, channels=1))
    assert data.train.images.shape[1:] == (1, 32, 32)
    for image, label in zip(data.val.images, data.val.labels, strict=True):
        rgb = COLOURS[label].reshape(1, 1, 3).repeat(4, 0).repeat(4, 1)
        expected = np.asarray(Image.fromarray(rgb).convert("L"))[0, 0]
        assert int(image[0, 16, 16]) == int(expected), CIFAR[label]


def test_grey_conversion_matches_pillow_on_every_colour() -> None:
    from zoo_datasets.common import convert_channels

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (1, 3, 64, 64), dtype=np.uint8)
    ours = convert_channels(rgb, 1)[0, 0]
    pillow = np.asarray(Image.fromarray(rgb[0].transpose(1, 2, 0)).convert("L"))
    assert np.array_equal(ours, pillow)


def _fill_ratio(image: np.ndarray) -> float:
    """The share of the shape's bounding box that the shape covers (noise-free image)."""
    flat = image.reshape(image.shape[0], -1).T
    colours, counts = np.unique(flat, axis=0, return_counts=True)
    assert len(colours) == 2  # background and shape
    shape = np.all(image == colours[np.argmin(counts)].reshape(-1, 1, 1), axis=0)
    rows, cols = np.flatnonzero(shape.any(1)), np.flatnonzero(shape.any(0))
    box = (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)
    return float(shape.sum() / box)


def test_synthetic_labels_follow_the_shape_names(registry: Registry, tmp_path: Path) -> None:
    """A square fills its bounding box, a circle pi/4 of it, a cross about half."""
    data = load_dataset(registry.get_dataset("synthetic"),
        _req(tmp_path, image_size=(48, 48), val_split=0.25), size=120, num_classes=3, noise=0.0)
    assert data.classes == ("cross", "circle", "square")
    expected = {"square": 1.0, "circle": np.pi / 4, "cross": 0.51}
    for split in (data.train, data.val):
        for image, label in zip(split.images, split.labels, strict=True):
            ratio = _fill_ratio(image)
            assert abs(ratio - expected[data.classes[label]]) < 0.1, (data.classes[label], ratio)
