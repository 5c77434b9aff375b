"""Drawing helpers shared by the zoo's pictures: tile mosaics and atomic PNG writes.

Figures are ``matplotlib.figure.Figure`` objects drawn on the Agg canvas, never
through ``pyplot``: no global state, no display, safe in threads and in tests.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from zoo.util.fsutil import atomic_path

#: Pixels between two tiles of a mosaic.
TILE_GAP = 1


def min_max(array: np.ndarray) -> np.ndarray:
    """``array`` scaled to [0, 1] (float32); a constant array becomes 0.5 everywhere."""
    a = np.asarray(array, dtype=np.float32)
    low, high = float(a.min()), float(a.max())
    if not high > low:
        return np.full_like(a, 0.5)
    scaled: np.ndarray = (a - low) / (high - low)
    return scaled


def grid_shape(count: int) -> tuple[int, int]:
    """(rows, columns) of the most nearly square grid holding ``count`` tiles."""
    cols = max(1, math.ceil(math.sqrt(count)))
    rows = max(1, math.ceil(count / cols))
    return rows, cols


def mosaic(tiles: list[np.ndarray], *, scale: int = 1, background: float = 1.0) -> np.ndarray:
    """Lay tiles of one shape, ``(H, W)`` or ``(H, W, 3)`` in [0, 1], out on a square grid.

    Each tile is enlarged ``scale`` times (nearest neighbour) and separated from
    its neighbours by :data:`TILE_GAP` pixels of ``background``.
    """
    if not tiles:
        raise ValueError("a mosaic needs at least one tile")
    first = np.repeat(np.repeat(tiles[0], scale, axis=0), scale, axis=1)
    h, w = first.shape[:2]
    rows, cols = grid_shape(len(tiles))
    g = TILE_GAP
    out = np.full((rows * (h + g) - g, cols * (w + g) - g, *first.shape[2:]), background,
                  dtype=np.float32)
    for i, tile in enumerate(tiles):
        big = np.repeat(np.repeat(tile, scale, axis=0), scale, axis=1)
        r, c = divmod(i, cols)
        out[r * (h + g):r * (h + g) + h, c * (w + g):c * (w + g) + w] = big
    return out


def new_figure(width: float, height: float) -> Any:
    """A matplotlib Figure of ``width`` × ``height`` inches on the Agg canvas."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def save_png(fig: Any, path: Path, *, dpi: int = 100) -> Path:
    """Write ``fig`` to ``path`` as a PNG, atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


def show_mosaic(fig: Any, image: np.ndarray, title: str, *, cmap: str = "gray") -> None:
    """Draw one mosaic image filling ``fig``, without axes, under ``title``."""
    ax = fig.add_subplot(1, 1, 1)
    if image.ndim == 2:  # the gaps (NaN) are left blank
        image = np.ma.masked_invalid(image)
    ax.imshow(image, cmap=None if image.ndim == 3 else cmap, vmin=0.0, vmax=1.0,
              interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    fig.tight_layout(pad=0.4)
