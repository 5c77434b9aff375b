"""Helpers shared by the loaders: seeded stratified splits and resizing (numpy and Pillow)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from zoo.spec.dataset import Split


def stratified_split(labels: np.ndarray, fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): ``fraction`` of every class, chosen by a generator seeded ``seed``.

    Every class with at least two images keeps one in each part.
    """
    rng = np.random.default_rng(seed)
    train_idx: list[np.ndarray] = []
    val_idx: list[np.ndarray] = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        members = members[rng.permutation(len(members))]
        n_val = round(len(members) * fraction)
        if fraction > 0 and len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        val_idx.append(members[:n_val])
        train_idx.append(members[n_val:])
    train = np.sort(np.concatenate(train_idx)) if train_idx else np.zeros(0, np.int64)
    val = np.sort(np.concatenate(val_idx)) if val_idx else np.zeros(0, np.int64)
    return train.astype(np.int64), val.astype(np.int64)


def take(images: np.ndarray, labels: np.ndarray, index: np.ndarray) -> Split:
    return Split(images=np.ascontiguousarray(images[index]),
                 labels=np.ascontiguousarray(labels[index].astype(np.int64)))


def resize_images(images: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Resize uint8 ``(N, C, H, W)`` to ``size`` (h, w) with Pillow's bilinear filter."""
    if size is None or images.shape[2:] == tuple(size):
        return images
    out = np.empty((images.shape[0], images.shape[1], size[0], size[1]), dtype=np.uint8)
    for i, img in enumerate(images):
        hwc = img.transpose(1, 2, 0)
        pil = Image.fromarray(hwc[:, :, 0] if hwc.shape[2] == 1 else hwc)
        resized = np.asarray(pil.resize((size[1], size[0]), Image.Resampling.BILINEAR))
        out[i] = resized[None] if resized.ndim == 2 else resized.transpose(2, 0, 1)
    return out


def convert_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """RGB ``(N, 3, H, W)`` to grey (ITU-R 601 luma, as Pillow's ``L``) or the reverse."""
    have = images.shape[1]
    if have == channels:
        return images
    if have == 3 and channels == 1:
        # Pillow's fixed-point weights and rounding, so that deployment's convert("L") of
        # the same image gives the same pixels (x/1000 weights differ by 1 on ~0.05% of them)
        weights = np.array([19595, 38470, 7471], dtype=np.uint32).reshape(1, 3, 1, 1)
        grey = (images.astype(np.uint32) * weights).sum(axis=1, keepdims=True) + 0x8000
        converted: np.ndarray = (grey >> 16).astype(np.uint8)
        return converted
    if have == 1:
        return np.repeat(images, channels, axis=1)
    raise ValueError(f"cannot convert {have}-channel images to {channels} channels")
