"""``zoo.analysis.filters`` against PyTorch and at its edges: any odd kernel as
``Conv2d(padding=k//2)`` computes it, the largest side kept as it is, panel titles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from zoo.analysis import filters
from zoo.analysis.filters import KERNELS, MAX_SIDE, apply_kernel, filter_demo, render_demo


@pytest.mark.parametrize("shape", [(3, 3), (5, 5), (1, 5), (7, 3)])
def test_any_odd_kernel_is_a_zero_padded_convolution_as_pytorch_computes_it(
        shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    image = rng.random((3, 9, 11)).astype(np.float32)
    kernel = rng.standard_normal(shape).astype(np.float32)
    weight = torch.from_numpy(np.broadcast_to(kernel, (1, 3, *shape)).copy())
    expected = F.conv2d(torch.from_numpy(image)[None], weight,
                        padding=(shape[0] // 2, shape[1] // 2))[0, 0].numpy()
    out = apply_kernel(image, kernel)
    assert out.shape == (9, 11) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("side", "kept"), [(MAX_SIDE, MAX_SIDE), (MAX_SIDE + 1, MAX_SIDE)])
def test_a_file_is_kept_at_the_largest_side_and_shrunk_past_it(tmp_path: Path, side: int,
                                                               kept: int) -> None:
    path = tmp_path / "wide.png"
    pixels = np.random.default_rng(0).integers(0, 256, (4, side, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    demo = filter_demo(path)
    assert demo.image.shape[2] == kept
    if side == kept:  # not resampled: the very pixels
        np.testing.assert_array_equal(demo.image, pixels.transpose(2, 0, 1))


def _figure(monkeypatch: pytest.MonkeyPatch, image: np.ndarray, tmp_path: Path) -> Any:
    figures: list[Any] = []
    monkeypatch.setattr(filters, "save_png", lambda fig, path: figures.append(fig))
    assert render_demo(filter_demo(image), tmp_path / "demo.png") == 1 + len(KERNELS)
    return figures[0]


@pytest.mark.parametrize("channels", [3, 1])
def test_each_panel_is_titled_with_what_it_shows(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path, channels: int) -> None:
    image = np.full((channels, 16, 16), 90, dtype=np.uint8)
    fig = _figure(monkeypatch, image, tmp_path)
    assert [ax.get_title() for ax in fig.axes] == ["input", *KERNELS]
    shown = fig.axes[0].images[0].get_array()
    assert shown.shape == ((16, 16) if channels == 1 else (16, 16, 3))
