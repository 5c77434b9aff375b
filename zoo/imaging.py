"""Image decoding shared by the datasets and the deployed predictor (Pillow and numpy only).

One function decodes every image the zoo touches, so that training and
deployment see the same pixels: grayscale, RGBA and palette images are
converted, then resized with bilinear filtering to the model's input size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


class ImageDecodeError(ValueError):
    """A file that is not a readable image."""


def to_mode(image: Image.Image, channels: int) -> Image.Image:
    """Convert any Pillow image to RGB (3 channels) or L (1 channel); RGBA is put on white."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("L" if channels == 1 else "RGB")


def decode_image(path: Path | str, channels: int = 3,
                 size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode ``path`` into uint8 ``(channels, height, width)``, resized to ``size`` (h, w)."""
    try:
        with Image.open(path) as img:
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
