"""Image decoding shared by the datasets and the deployed predictor (Pillow and numpy only).

One function decodes every image the zoo touches, so that training and
deployment see the same pixels: grayscale, RGBA and palette images are
converted, then resized with bilinear filtering to the model's input size.

A small file can decode to a huge image (a PNG of a few kilobytes to gigabytes
of pixels), so the size in its header is checked before decoding: at most
``$ZOO_MAX_IMAGE_PIXELS`` pixels (default 4096 x 4096).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

ENV_MAX_PIXELS = "ZOO_MAX_IMAGE_PIXELS"
#: The default decoded-pixel limit per image: 4096 x 4096.
DEFAULT_MAX_PIXELS = 4096 * 4096


class ImageDecodeError(ValueError):
    """A file that is not a readable image."""


def to_mode(image: Image.Image, channels: int) -> Image.Image:
    """Convert any Pillow image to RGB (3 channels) or L (1 channel); RGBA is put on white."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("L" if channels == 1 else "RGB")


def max_image_pixels() -> int:
    """The decoded-pixel limit per image: ``$ZOO_MAX_IMAGE_PIXELS``, else 4096 x 4096."""
    text = os.environ.get(ENV_MAX_PIXELS, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        limit = int(text)
    except ValueError:
        limit = 0
    if limit < 1:
        from zoo.errors import ZooError

        raise ZooError(f"${ENV_MAX_PIXELS} must be a positive number of pixels, got {text!r}")
    return limit


def decode_image(path: Path | str, channels: int = 3,
                 size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode ``path`` into uint8 ``(channels, height, width)``, resized to ``size`` (h, w).

    An image larger than :func:`max_image_pixels` is refused from its header,
    before any pixel is decoded (:class:`ImageDecodeError`).
    """
    limit = max_image_pixels()
    try:
        with Image.open(path) as img:
            width, height = img.size  # from the header: nothing is decoded yet
            if width * height > limit:
                raise ImageDecodeError(
                    f"{path}: {width}x{height} is {width * height} pixels, over the limit of "
                    f"{limit} per image (set ${ENV_MAX_PIXELS} to allow more)")
            img.load()
            converted = to_mode(img, channels)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError,
            ValueError) as exc:
        raise ImageDecodeError(f"{path}: not a readable image ({exc})") from None
    if size is not None and (converted.height, converted.width) != tuple(size):
        converted = converted.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    array = np.asarray(converted, dtype=np.uint8)
    array = array[None, :, :] if array.ndim == 2 else array.transpose(2, 0, 1)
    return np.ascontiguousarray(array)


def normalize(images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """uint8 ``(N, C, H, W)`` → float32 scaled to [0, 1], then standardized per channel."""
    x = images.astype(np.float32) / 255.0
    m = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    normalized: np.ndarray = (x - m) / s
    return normalized
