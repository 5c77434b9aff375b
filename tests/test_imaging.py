"""zoo.util.imaging, the decoder training and deployment share: modes, alpha, sizes, scaling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zoo.util.imaging import IMAGE_SUFFIXES, ImageDecodeError, decode_image, normalize, to_mode


def _save(path: Path, image: Image.Image) -> Path:
    image.save(path)
    return path


def test_rgb_file_decodes_channels_first_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = _save(tmp_path / "a.png", Image.fromarray(hwc))
    out = decode_image(path)
    assert out.dtype == np.uint8 and out.shape == (3, 5, 7) and out.flags.c_contiguous
    assert np.array_equal(out, hwc.transpose(2, 0, 1))
    assert np.array_equal(decode_image(str(path), 3, (5, 7)), out)  # no resize at its size


def test_grey_and_rgb_conversions(tmp_path: Path) -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    path = _save(tmp_path / "g.png", Image.fromarray(grey))
    assert np.array_equal(decode_image(path, 1), grey[None])
    assert np.array_equal(decode_image(path, 3), np.stack([grey] * 3))
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    path = _save(tmp_path / "c.png", Image.fromarray(rgb))
    expected = (200 * 19595 + 100 * 38470 + 50 * 7471 + 0x8000) >> 16  # Pillow's L
    assert np.all(decode_image(path, 1) == expected)


def test_transparency_is_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[0, 0] = (0, 0, 0, 0)  # transparent black: white
    rgba[0, 1] = (0, 0, 0, 255)  # opaque black: black
    rgba[0, 2] = (0, 0, 0, 128)  # half-transparent black: mid grey
    rgba[1] = (10, 20, 30, 255)
    path = _save(tmp_path / "a.png", Image.fromarray(rgba, "RGBA"))
    out = decode_image(path)
    assert out[:, 0, 0].tolist() == [255, 255, 255]
    assert out[:, 0, 1].tolist() == [0, 0, 0]
    assert all(125 <= v <= 128 for v in out[:, 0, 2])
    assert out[:, 1, 0].tolist() == [10, 20, 30]
    la = Image.fromarray(np.array([[[0, 0], [40, 255]]], dtype=np.uint8), "LA")
    assert to_mode(la, 1).getpixel((0, 0)) == 255 and to_mode(la, 1).getpixel((1, 0)) == 40
    palette = Image.fromarray(np.array([[0, 1]], dtype=np.uint8), "P")
    palette.putpalette([0, 0, 0, 9, 9, 9] + [0] * 762)
    palette.info["transparency"] = 0
    assert [to_mode(palette, 3).getpixel((x, 0)) for x in (0, 1)] == [(255, 255, 255), (9, 9, 9)]
    opaque = Image.fromarray(np.array([[0, 1]], dtype=np.uint8), "P")
    opaque.putpalette([0, 0, 0, 9, 9, 9] + [0] * 762)
    assert [to_mode(opaque, 3).getpixel((x, 0)) for x in (0, 1)] == [(0, 0, 0), (9, 9, 9)]


def test_only_palette_images_take_their_transparency_key(tmp_path: Path) -> None:
    """A grey or RGB image's transparency key is no alpha channel: its pixels stay as they are."""
    grey = Image.fromarray(np.array([[10, 20]], dtype=np.uint8), "L")
    path = tmp_path / "keyed.png"
    grey.save(path, transparency=10)
    with Image.open(path) as reopened:
        assert reopened.info.get("transparency") == 10
    assert decode_image(path, 1).tolist() == [[[10, 20]]]


def test_resize_is_bilinear_to_height_by_width(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    hwc = rng.integers(0, 256, (9, 13, 3), dtype=np.uint8)
    image = Image.fromarray(hwc)
    path = _save(tmp_path / "r.png", image)
    out = decode_image(path, 3, (4, 6))
    assert out.shape == (3, 4, 6)
    bilinear = np.asarray(image.resize((6, 4), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    assert np.array_equal(out, bilinear)
    nearest = np.asarray(image.resize((6, 4), Image.Resampling.NEAREST)).transpose(2, 0, 1)
    assert not np.array_equal(out, nearest)


@pytest.mark.parametrize("content", [b"", b"not an image", b"\x89PNG\r\n\x1a\ntruncated"])
def test_unreadable_files_raise_naming_the_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageDecodeError, match=r"bad\.png: not a readable image"):
        decode_image(path)
    with pytest.raises(ImageDecodeError, match=r"missing\.png: not a readable image"):
        decode_image(tmp_path / "missing.png")
    assert issubclass(ImageDecodeError, ValueError)


def test_normalize_scales_then_standardizes_per_channel() -> None:
    images = np.array([[[[0, 255]], [[51, 102]]]], dtype=np.uint8)  # (1, 2, 1, 2)
    out = normalize(images, (0.5, 0.2), (0.25, 0.1))
    assert out.dtype == np.float32 and out.shape == images.shape
    expected = np.array([[[[-2.0, 2.0]], [[0.0, 2.0]]]], dtype=np.float32)
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_suffixes_cover_the_usual_formats() -> None:
    assert {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"} <= IMAGE_SUFFIXES
    assert all(s == s.lower() and s.startswith(".") for s in IMAGE_SUFFIXES)
