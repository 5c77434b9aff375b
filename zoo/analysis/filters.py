"""The chapter's hand-set kernels, applied to an image (``zoo filters demo``).

Chapter 8 of *Deep Learning with PyTorch* sets a convolution's weights by hand
before letting a network learn them: a 3×3 average (a blur) and an edge
detector. As in the book, each kernel is one ``Conv2d(3, 1, 3, padding=1)``
with no bias whose weight holds the kernel for every input channel, applied
to the image scaled to [0, 1]; the output is one grey map of the input's size.
numpy only: the demo needs no torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zoo.errors import ZooError
from zoo.util.figures import new_figure, save_png
from zoo.util.imaging import ImageDecodeError, decode_image

#: The hand-set kernels, by name, in the order they are drawn.
KERNELS: dict[str, np.ndarray] = {
    "average (blur)": np.full((3, 3), 1.0 / 9.0, dtype=np.float32),
    "vertical edge": np.array([[-1.0, 0.0, 1.0]] * 3, dtype=np.float32),
    "horizontal edge": np.array([[-1.0, 0.0, 1.0]] * 3, dtype=np.float32).T.copy(),
}
DEMO_PNG = "filters-demo.png"
#: Larger images are shrunk to this longest side first (the chapter's images are 32×32).
MAX_SIDE = 512


def apply_kernel(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``Conv2d(C, 1, k, padding=k//2, bias=False)`` with ``kernel`` on every channel.

    ``image`` is float ``(C, H, W)``; the result is float32 ``(H, W)`` (a
    cross-correlation, as PyTorch's convolutions compute, zero-padded).
    """
    kh, kw = kernel.shape
    padded = np.pad(image.astype(np.float32), ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (kh, kw), axis=(1, 2))
    out: np.ndarray = np.einsum("chwij,ij->hw", windows, kernel, dtype=np.float32)
    return out


@dataclass(frozen=True)
class FilterDemo:
    """The input and each kernel's output map."""

    image: np.ndarray  # uint8 (C, H, W)
    outputs: dict[str, np.ndarray]  # kernel name -> float32 (H, W)


def filter_demo(image: str | os.PathLike[str] | np.ndarray) -> FilterDemo:
    """Apply every kernel of :data:`KERNELS` to ``image`` (a file or a uint8 (C, H, W) array).

    A file is decoded as RGB, shrunk to :data:`MAX_SIDE` pixels on its longer side.
    """
    if isinstance(image, np.ndarray):
        pixels = image
    else:
        try:
            pixels = decode_image(os.fspath(image), 3)
            h, w = pixels.shape[1:]
            if max(h, w) > MAX_SIDE:
                scale = MAX_SIDE / max(h, w)
                size = (max(1, round(h * scale)), max(1, round(w * scale)))
                pixels = decode_image(os.fspath(image), 3, size)
        except ImageDecodeError as exc:
            raise ZooError(str(exc)) from None
    x = pixels.astype(np.float32) / 255.0
    return FilterDemo(pixels, {name: apply_kernel(x, k) for name, k in KERNELS.items()})


def render_demo(demo: FilterDemo, path: Path) -> int:
    """The input beside each kernel's output, in one row; return the number of panels."""
    panels = 1 + len(demo.outputs)
    fig = new_figure(2.3 * panels, 2.7)
    axes = fig.subplots(1, panels)
    rgb = demo.image.transpose(1, 2, 0)
    axes[0].imshow(rgb[:, :, 0] if rgb.shape[2] == 1 else rgb, cmap="gray",
                   interpolation="nearest")
    axes[0].set_title("input", fontsize=9)
    for ax, (name, out) in zip(axes[1:], demo.outputs.items(), strict=True):
        ax.imshow(out, cmap="gray", interpolation="nearest")
        ax.set_title(name, fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    fig.tight_layout(pad=0.4)
    save_png(fig, path)
    return panels


__all__ = ["DEMO_PNG", "KERNELS", "MAX_SIDE", "FilterDemo", "apply_kernel", "filter_demo",
           "render_demo"]
