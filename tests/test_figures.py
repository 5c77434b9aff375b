"""The drawing helpers (:mod:`zoo.util.figures`) on arrays whose pictures are known:
scaling, grid shapes, mosaics tile by tile, and what a mosaic figure shows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from zoo.util.figures import (
    TILE_GAP,
    grid_shape,
    min_max,
    mosaic,
    new_figure,
    save_png,
    show_mosaic,
)


def test_min_max_scales_to_the_unit_range() -> None:
    np.testing.assert_allclose(min_max(np.array([2.0, 4.0, 3.0])), [0.0, 1.0, 0.5])
    np.testing.assert_allclose(min_max(np.array([-3.0, -1.0])), [0.0, 1.0])
    assert min_max(np.array([7.0, 7.0])).tolist() == [0.5, 0.5]  # constant: mid-grey
    assert min_max(np.array([1, 3], dtype=np.int64)).dtype == np.float32


@pytest.mark.parametrize(("count", "shape"), [(0, (1, 1)), (1, (1, 1)), (2, (1, 2)),
                                              (3, (2, 2)), (5, (2, 3)), (9, (3, 3)),
                                              (10, (3, 4)), (16, (4, 4))])
def test_grids_are_as_square_as_possible(count: int, shape: tuple[int, int]) -> None:
    assert grid_shape(count) == shape


def test_a_mosaic_places_each_tile_at_its_cell_with_gaps_of_background() -> None:
    tiles = [np.full((2, 3), v, dtype=np.float32) for v in (0.1, 0.2, 0.3)]
    out = mosaic(tiles, background=0.9)
    g = TILE_GAP
    assert g == 1 and out.shape == (2 * 2 + g, 2 * 3 + g)  # a 2x2 grid, one cell empty
    np.testing.assert_allclose(out[0:2, 0:3], 0.1)
    np.testing.assert_allclose(out[0:2, 4:7], 0.2)
    np.testing.assert_allclose(out[3:5, 0:3], 0.3)
    np.testing.assert_allclose(out[3:5, 4:7], 0.9)  # the empty cell
    np.testing.assert_allclose(out[2, :], 0.9)
    np.testing.assert_allclose(out[:, 3], 0.9)
    assert mosaic(tiles)[2, 0] == 1.0  # white gaps by default


def test_a_mosaic_enlarges_each_tile_by_its_scale() -> None:
    first = np.array([[0.0, 1.0]], dtype=np.float32)
    second = np.array([[0.5, 0.25]], dtype=np.float32)
    out = mosaic([first, second], scale=2)
    assert out.shape == (2, 2 * 2 + 1 + 2 * 2)
    np.testing.assert_allclose(out[:, :4], [[0, 0, 1, 1], [0, 0, 1, 1]])
    np.testing.assert_allclose(out[:, 5:], [[0.5, 0.5, 0.25, 0.25]] * 2)
    assert mosaic([first]).shape == (1, 2)  # scale 1 by default
    colour = mosaic([np.zeros((2, 2, 3)), np.ones((2, 2, 3))])
    assert colour.shape == (2, 5, 3)
    with pytest.raises(ValueError, match="at least one tile"):
        mosaic([])


def test_a_mosaic_figure_shows_the_image_in_one_axes(tmp_path: Path) -> None:
    grey = np.array([[0.0, np.nan], [1.0, 0.5]], dtype=np.float32)
    fig = new_figure(2.0, 2.0)
    show_mosaic(fig, grey, "filters")
    (ax,) = fig.axes
    shown = ax.images[0]
    assert ax.get_title() == "filters" and shown.get_clim() == (0.0, 1.0)
    assert shown.get_cmap().name == "gray"
    assert np.ma.is_masked(shown.get_array()) and shown.get_array().mask.tolist() == [
        [False, True], [False, False]]  # the gaps left blank
    colour = new_figure(2.0, 2.0)
    show_mosaic(colour, np.zeros((2, 2, 3), dtype=np.float32), "rgb", cmap="viridis")
    assert colour.axes[0].images[0].get_array().shape == (2, 2, 3)
    path = save_png(fig, tmp_path / "m.png")
    assert path.read_bytes().startswith(b"\x89PNG")
    assert list(tmp_path.iterdir()) == [path]  # written whole, no temporary left
    from PIL import Image

    assert Image.open(path).size == (200, 200)  # 2 inches at 100 dpi
