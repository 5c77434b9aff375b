"""Data that checks itself: dataset-cache digests, the decoded-pixel limit, unreadable folders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zoo import DatasetRequest, Registry
from zoo.cli import main
from zoo.errors import DataError, ZooError
from zoo.host.contract import load_dataset
from zoo.util.imaging import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry()


def _folder(root: Path) -> Path:
    for i in range(4):
        for name, colour in (("cat", (200, 20 * i, 0)), ("dog", (0, 20 * i, 200))):
            (root / name).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (12, 10), colour).save(root / name / f"{i}.png")
    return root


def _req(tmp_path: Path, root: Path) -> DatasetRequest:
    return DatasetRequest(data_dir=root, image_size=(8, 8), val_split=0.25,
                          cache_dir=tmp_path / "cache")


def test_a_poisoned_or_misplaced_cache_entry_is_rebuilt(
        registry: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = registry.get_dataset("imagefolder")
    root = _folder(tmp_path / "data")
    genuine = load_dataset(spec, _req(tmp_path, root))
    (entry,) = (tmp_path / "cache" / "imagefolder").glob("*.npz")
    capsys.readouterr()
    with np.load(entry) as npz:
        stored = {name: npz[name] for name in npz.files}
    assert str(stored["__zoo_key__"]) == genuine.content_key
    # a valid file with zeroed images and swapped labels, stamped with the genuine key
    poisoned = dict(stored, images=np.zeros_like(stored["images"]),
                    labels=1 - stored["labels"])
    with entry.open("wb") as fh:
        np.savez(fh, **poisoned)
    again = load_dataset(spec, _req(tmp_path, root))
    assert np.array_equal(again.train.images, genuine.train.images)
    assert np.array_equal(again.train.labels, genuine.train.labels)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is damaged or is not what its name says; rebuilding" in err
    # a genuine entry of other data, copied under this key
    other = _folder(tmp_path / "other")
    Image.new("RGB", (12, 10), (1, 2, 3)).save(other / "cat" / "extra.png")
    load_dataset(spec, _req(tmp_path, other))
    (other_entry,) = [p for p in (tmp_path / "cache" / "imagefolder").glob("*.npz")
                      if p != entry]
    entry.write_bytes(other_entry.read_bytes())
    third = load_dataset(spec, _req(tmp_path, root))
    assert np.array_equal(third.train.images, genuine.train.images)
    assert "rebuilding" in capsys.readouterr().err
    load_dataset(spec, _req(tmp_path, root))  # the rebuilt entry is used quietly
    assert capsys.readouterr().err == ""


def _huge_png(path: Path, side: int = 4100) -> Path:
    Image.new("L", (side, side), 0).save(path)  # a few kB on disk
    return path


def test_an_image_over_the_pixel_limit_is_refused_before_decoding(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = _huge_png(tmp_path / "bomb.png")
    assert big.stat().st_size < 100_000 and DEFAULT_MAX_PIXELS < 4100 * 4100

    def no_decoding(self: Image.Image) -> None:
        raise AssertionError("decoded despite the limit")

    with monkeypatch.context() as m:
        m.setattr(Image.Image, "load", no_decoding)
        m.setattr("PIL.ImageFile.ImageFile.load", no_decoding)
        with pytest.raises(ImageDecodeError, match=r"4100x4100 is 16810000 pixels, over the "
                                                   r"limit of 16777216 per image"):
            decode_image(big, 3, (8, 8))
    monkeypatch.setenv("ZOO_MAX_IMAGE_PIXELS", str(4100 * 4100))
    assert decode_image(big, 3, (8, 8)).shape == (3, 8, 8)
    monkeypatch.setenv("ZOO_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ZooError, match=r"ZOO_MAX_IMAGE_PIXELS must be a positive number"):
        decode_image(big, 3, (8, 8))


def test_training_skips_and_predict_reports_an_oversized_image(
        registry: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOO_MAX_IMAGE_PIXELS", "10000")  # 100x100, to keep the test quick
    root = _folder(tmp_path / "data")
    _huge_png(root / "cat" / "bomb.png", side=101)
    data = load_dataset(registry.get_dataset("imagefolder"), _req(tmp_path, root))
    assert len(data.train) + len(data.val) == 8
    assert any("bomb.png" in s and "over the limit" in s for s in data.skipped)
    from zoo.exporter.write import export

    export("Net", out=tmp_path / "bundle")
    good = root / "dog" / "0.png"
    assert main(["predict", str(tmp_path / "bundle"), str(good),
                 str(root / "cat" / "bomb.png")]) == 1
    captured = capsys.readouterr()
    assert "over the limit" in captured.err and str(good) in captured.out


def test_an_unreadable_data_dir_is_a_clear_error(registry: Registry, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    root = _folder(tmp_path / "data")
    real_walk = os.walk

    def walk(top: object, *args: object, onerror: object = None, **kw: object) -> object:
        if Path(str(top)).name == "dog" and callable(onerror):
            onerror(PermissionError(13, "Permission denied", str(top)))
        return real_walk(top, *args, onerror=onerror, **kw)  # type: ignore[call-overload]

    monkeypatch.setattr(os, "walk", walk)
    with pytest.raises(DataError, match=r"--data-dir .* cannot be read: .*dog: Permission denied"):
        load_dataset(registry.get_dataset("imagefolder"), _req(tmp_path, root))


def test_the_pixel_limit_counts_every_pixel_down_to_one(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    one = tmp_path / "one.png"
    Image.new("RGB", (1, 1), (10, 20, 30)).save(one)
    two = tmp_path / "two.png"
    Image.new("RGB", (2, 1), (10, 20, 30)).save(two)
    monkeypatch.setenv("ZOO_MAX_IMAGE_PIXELS", "1")
    assert decode_image(one).tolist() == [[[10]], [[20]], [[30]]]  # RGB by default
    with pytest.raises(ImageDecodeError, match="2x1 is 2 pixels, over the limit of 1 per image"):
        decode_image(two)
    for bad in ("0", "-5"):
        monkeypatch.setenv("ZOO_MAX_IMAGE_PIXELS", bad)
        with pytest.raises(ZooError, match=rf"must be a positive number of pixels, got '{bad}'"):
            decode_image(one)
