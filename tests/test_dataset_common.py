"""The dataset loaders' shared helpers: stratified splits, resizing, channel conversion."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from zoo_datasets.common import convert_channels, resize_images, stratified_split


def _counts(labels: np.ndarray, index: np.ndarray) -> dict[int, int]:
    return {int(c): int((labels[index] == c).sum()) for c in np.unique(labels)}


# classes of 1, 2, 3 and 10 images, not in label order
LABELS = np.array([3, 1, 2, 3, 2, 2, 3, 3, 0, 3, 3, 3, 3, 3, 1, 3])


@pytest.mark.parametrize(("fraction", "val"), [
    (0.0, {0: 0, 1: 0, 2: 0, 3: 0}),  # no validation split: every image trains
    (0.05, {0: 0, 1: 1, 2: 1, 3: 1}),  # at least one of every class of two or more
    (0.5, {0: 0, 1: 1, 2: 2, 3: 5}),
    (0.95, {0: 1, 1: 1, 2: 2, 3: 9}),  # one left to train on (a single image: by rounding)
])
def test_stratified_split_keeps_every_class_in_both_parts(fraction: float,
                                                          val: dict[int, int]) -> None:
    train_idx, val_idx = stratified_split(LABELS, fraction, seed=0)
    assert _counts(LABELS, val_idx) == val
    assert _counts(LABELS, train_idx) == {c: n - val[c] for c, n in
                                          _counts(LABELS, np.arange(len(LABELS))).items()}
    assert sorted([*train_idx, *val_idx]) == list(range(len(LABELS)))  # a partition
    assert list(train_idx) == sorted(train_idx) and train_idx.dtype == np.int64
    assert val_idx.dtype == np.int64


def test_stratified_split_is_seeded() -> None:
    labels = np.repeat([0, 1], 50)
    same = [stratified_split(labels, 0.2, seed=s)[1] for s in (1, 1, 2)]
    assert np.array_equal(same[0], same[1]) and not np.array_equal(same[0], same[2])


def test_stratified_split_of_nothing_is_empty() -> None:
    train_idx, val_idx = stratified_split(np.zeros(0, np.int64), 0.2, seed=0)
    assert (train_idx.shape, val_idx.shape) == ((0,), (0,))


def test_resize_returns_the_same_array_when_the_size_is_right() -> None:
    images = np.random.default_rng(0).integers(0, 256, (2, 3, 8, 6), dtype=np.uint8)
    assert resize_images(images, (8, 6)) is images
    assert resize_images(images, None) is images
    resized = resize_images(images, (4, 3))
    assert resized.shape == (2, 3, 4, 3)
    expected = np.asarray(Image.fromarray(images[1].transpose(1, 2, 0)).resize(
        (3, 4), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    assert np.array_equal(resized[1], expected)


def test_channels_convert_as_pillow_does_both_ways() -> None:
    # (0, 62, 229) sits exactly on a rounding edge of Pillow's fixed-point luma
    rgb = np.array([[[0, 62, 229], [0, 183, 27], [255, 255, 255], [10, 200, 90]]],
                   dtype=np.uint8)  # (1, 4, 3): one row of four pixels
    grey = convert_channels(rgb.transpose(2, 0, 1)[None], 1)
    pillow = np.asarray(Image.fromarray(rgb).convert("L"))
    assert grey.shape == (1, 1, 1, 4) and np.array_equal(grey[0, 0], pillow)
    back = convert_channels(grey, 3)  # grey to RGB: the grey value in each channel
    assert back.shape == (1, 3, 1, 4)
    assert all(np.array_equal(back[0, c], grey[0, 0]) for c in range(3))
    assert convert_channels(grey, 1) is grey
    for channels in (1, 3):
        with pytest.raises(ValueError, match=f"cannot convert 2-channel images to {channels} "
                                             "channels"):
            convert_channels(np.zeros((1, 2, 2, 2), np.uint8), channels)
