"""``synthetic``: coloured shapes at random positions, sizes and colours on noisy backgrounds.

The class is the shape (square, circle, triangle, cross, ring, diamond), so
that a model must recognise it wherever it lies. Deterministic for a seed,
offline, and vectorized with numpy (no torch).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from zoo.errors import DataError
from zoo.spec.dataset import DatasetRequest, LoadedDataset
from zoo_datasets import SHAPES, SyntheticOptions
from zoo_datasets.common import stratified_split, take


def _masks(kind: str, dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Boolean masks of one shape kind; ``dx``/``dy`` are offsets from centres, ``r`` radii."""
    mask: np.ndarray = _shape_mask(kind, dx, dy, r)
    return mask


def _shape_mask(kind: str, dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> Any:
    ax, ay = np.abs(dx), np.abs(dy)
    if kind == "square":
        return (ax <= r * 0.8) & (ay <= r * 0.8)
    if kind == "circle":
        return dx * dx + dy * dy <= r * r
    if kind == "triangle":  # apex up
        return (dy <= r * 0.8) & (dy >= -r) & (ax <= (dy + r) * 0.55)
    if kind == "cross":
        bar = r * 0.3
        return ((ax <= bar) & (ay <= r)) | ((ay <= bar) & (ax <= r))
    if kind == "ring":
        d2 = dx * dx + dy * dy
        return (d2 <= r * r) & (d2 >= (r * 0.55) ** 2)
    if kind == "diamond":
        return ax + ay <= r
    raise ValueError(kind)


def generate(n: int, num_classes: int, height: int, width: int, channels: int, seed: int,
             noise: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uint8 images ``(n, channels, height, width)`` and balanced int64 labels."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % num_classes).astype(np.int64)
    side = min(height, width)
    r = rng.uniform(0.22, 0.38, n) * side
    cx = rng.uniform(r, width - r)
    cy = rng.uniform(r, height - r)
    # a darker shape on a light background or a lighter one on a dark background, so that
    # every image is readable whatever its colours
    light = rng.random(n) < 0.5
    low = rng.uniform(0.0, 0.4, (n, channels))
    high = rng.uniform(0.6, 1.0, (n, channels))
    bg = np.where(light[:, None], high, low)
    fg = np.where(light[:, None], low, high)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    images = np.empty((n, channels, height, width), dtype=np.uint8)
    chunk = 1024
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        dx = xs[None] - cx[sl, None, None]
        dy = ys[None] - cy[sl, None, None]
        rr = r[sl, None, None]
        mask = np.zeros(dx.shape, dtype=bool)
        for k in range(num_classes):
            sel = labels[sl] == k
            if sel.any():
                mask[sel] = _masks(SHAPES[k], dx[sel], dy[sel], rr[sel])
        pix = np.where(mask[:, None], fg[sl, :, None, None], bg[sl, :, None, None])
        pix = pix + rng.normal(0.0, noise, pix.shape)
        images[sl] = np.clip(np.rint(pix * 255.0), 0, 255).astype(np.uint8)
    return images, labels


def load(request: DatasetRequest, options: SyntheticOptions) -> LoadedDataset:
    height, width = request.image_size or (32, 32)
    if min(height, width) < 8:
        raise DataError(f"synthetic images must be at least 8x8 pixels, got {height}x{width}")
    if request.val_split <= 0:
        raise DataError("the synthetic dataset needs a validation split: val_split must be "
                        f"in (0, 1), got {request.val_split}")
    images, labels = generate(options.size, options.num_classes, height, width,
                              request.channels, request.seed, options.noise)
    train_idx, val_idx = stratified_split(labels, request.val_split, request.seed)
    key = hashlib.sha256(
        f"synthetic|{options.model_dump_json()}|{height}x{width}x{request.channels}|"
        f"{request.seed}".encode()).hexdigest()[:32]
    return LoadedDataset(
        name="synthetic",
        train=take(images, labels, train_idx),
        val=take(images, labels, val_idx),
        classes=SHAPES[:options.num_classes],
        content_key=key,
        split_description=f"seeded stratified split: {request.val_split:g} held out "
                          f"(seed {request.seed})",
    )
