"""The built-in dataset plugin: synthetic, imagefolder, cifar2/cifar10 (all offline)."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zoo import DatasetRequest, Registry
from zoo.errors import DataError, UnknownDatasetError, ZooError
from zoo.host.contract import load_dataset


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry()


def _req(tmp_path: Path, **kw: object) -> DatasetRequest:
    kw.setdefault("cache_dir", tmp_path / "cache")
    return DatasetRequest.model_validate(kw)


def test_registered_and_torch_free() -> None:
    code = ("import sys, zoo; r = zoo.Registry(); print(r.list_datasets()); "
            "assert 'torch' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == "['cifar10', 'cifar2', 'imagefolder', 'synthetic']"


def test_unknown_dataset_suggests(registry: Registry) -> None:
    with pytest.raises(UnknownDatasetError, match="did you mean 'cifar2'"):
        registry.get_dataset("cifar3")


# -- synthetic ------------------------------------------------------------------------------


def test_synthetic_is_deterministic_and_balanced(registry: Registry, tmp_path: Path) -> None:
    spec = registry.get_dataset("synthetic")
    a = load_dataset(spec, _req(tmp_path, seed=3, image_size=(16, 20), val_split=0.25), size=120,
                  num_classes=3)
    b = load_dataset(spec, _req(tmp_path, seed=3, image_size=(16, 20), val_split=0.25), size=120,
                  num_classes=3)
    c = load_dataset(spec, _req(tmp_path, seed=4, image_size=(16, 20), val_split=0.25), size=120,
                  num_classes=3)
    assert a.train.images.shape == (90, 3, 16, 20) and a.train.images.dtype == np.uint8
    assert a.val.images.shape == (30, 3, 16, 20)
    assert np.array_equal(a.train.images, b.train.images)
    assert np.array_equal(a.val.labels, b.val.labels)
    assert a.content_key == b.content_key != c.content_key
    assert not np.array_equal(a.train.images, c.train.images)
    assert a.classes == ("cross", "circle", "square")
    assert np.bincount(a.val.labels).tolist() == [10, 10, 10]  # stratified
    grey = load_dataset(spec, _req(tmp_path, channels=1), size=20, num_classes=2)
    assert grey.train.images.shape[1] == 1


def test_synthetic_bad_options(registry: Registry, tmp_path: Path) -> None:
    spec = registry.get_dataset("synthetic")
    with pytest.raises(ZooError, match="num_classes"):
        load_dataset(spec, _req(tmp_path), num_classes=9)
    with pytest.raises(ZooError, match="accepted options"):
        load_dataset(spec, _req(tmp_path), colour="red")


def test_synthetic_defaults_and_bounds(registry: Registry, tmp_path: Path) -> None:
    spec = registry.get_dataset("synthetic")
    data = load_dataset(spec, _req(tmp_path, val_split=0.25))  # the declared defaults
    assert (len(data.train), len(data.val)) == (1500, 500)
    assert data.classes == ("cross", "circle", "square", "triangle")
    quiet = load_dataset(spec, _req(tmp_path), size=8, noise=0.0, num_classes=2)
    noisy = load_dataset(spec, _req(tmp_path), size=8, num_classes=2)  # default noise 0.1
    louder = load_dataset(spec, _req(tmp_path), size=8, noise=0.2, num_classes=2)

    def spread(d: object) -> float:  # the background's spread grows with the noise
        images = d.train.images.astype(np.float64)  # type: ignore[attr-defined]
        return float(np.median(np.abs(np.diff(images, axis=-1))))

    assert spread(quiet) < spread(noisy) < spread(louder)
    options = spec.options
    for field, good, bad in (("size", (4, 1_000_000), (3, 1_000_001)),
                             ("num_classes", (2, 6), (1, 7)),
                             ("noise", (0.0, 1.0), (-0.01, 1.01))):
        for value in good:
            assert getattr(options.model_validate({field: value}), field) == value
        for value in bad:
            with pytest.raises(ValueError, match=field):
                options.model_validate({field: value})


def test_cifar_datasets_declare_their_downloads_and_classes(registry: Registry) -> None:
    declared = {name: (registry.get_dataset(name).downloads, registry.get_dataset(name).num_classes)
                for name in registry.list_datasets()}
    assert declared == {"cifar2": (True, 2), "cifar10": (True, 10),
                        "imagefolder": (False, None), "synthetic": (False, None)}


# -- imagefolder ----------------------------------------------------------------------------


def _image(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (24, 20),
           mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, colour)
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path)


def _folder(root: Path, per_class: int = 5) -> Path:
    for i in range(per_class):
        _image(root / "cat" / f"{i}.png", (200, 10 * i, 0))
        _image(root / "dog" / f"{i}.jpg", (0, 10 * i, 200), size=(40, 30))
    _image(root / "dog" / "grey.png", (90, 90, 90), mode="L")
    _image(root / "cat" / "alpha.png", (0, 0, 0), mode="RGBA")
    (root / "cat" / "notes.txt").write_text("not an image, ignored by suffix")
    return root


def test_imagefolder_decodes_and_splits(registry: Registry, tmp_path: Path) -> None:
    root = _folder(tmp_path / "data")
    spec = registry.get_dataset("imagefolder")
    ds = load_dataset(spec, _req(tmp_path, data_dir=root, image_size=(8, 8), val_split=0.2, seed=1))
    assert ds.classes == ("cat", "dog")
    assert len(ds.train) + len(ds.val) == 12
    assert ds.train.images.shape[1:] == (3, 8, 8)
    assert sorted(np.bincount(ds.val.labels).tolist()) == [1, 1]
    again = load_dataset(spec, _req(tmp_path, data_dir=root, image_size=(8, 8), val_split=0.2,
                                    seed=1))
    assert np.array_equal(ds.train.images, again.train.images)
    other = load_dataset(spec, _req(tmp_path, data_dir=root, image_size=(8, 8), val_split=0.2,
                                    seed=2))
    assert not np.array_equal(ds.val.images, other.val.images)


def test_imagefolder_cache_is_used_and_invalidated(registry: Registry, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import zoo_datasets.cache as cache_module
    import zoo_datasets.imagefolder as imf

    root = _folder(tmp_path / "data")
    spec = registry.get_dataset("imagefolder")
    req = _req(tmp_path, data_dir=root, image_size=(8, 8))
    first = load_dataset(spec, req)
    assert list((tmp_path / "cache" / "imagefolder").glob("*.npz"))

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(imf, "decode_image", boom)
    digest = cache_module.file_digest
    monkeypatch.setattr(cache_module, "file_digest", boom)  # unchanged files are not re-read
    cached = load_dataset(spec, req)
    assert np.array_equal(first.train.images, cached.train.images)
    assert cached.content_key == first.content_key
    monkeypatch.setattr(cache_module, "file_digest", digest)
    # a copy elsewhere has the same content: the same key, and no decoding
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    moved = load_dataset(spec, _req(tmp_path, data_dir=copy, image_size=(8, 8)))
    assert moved.content_key == first.content_key
    monkeypatch.undo()
    # the same size and modification time, other pixels: still a new key, decoded again
    bmp = root / "cat" / "3.bmp"
    _image(bmp, (10, 20, 30))
    before = load_dataset(spec, req)
    stat = bmp.stat()
    _image(bmp, (200, 100, 0))
    os.utime(bmp, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert bmp.stat().st_size == stat.st_size and bmp.stat().st_mtime_ns == stat.st_mtime_ns
    changed = load_dataset(spec, req)
    assert changed.content_key not in (first.content_key, before.content_key)
    pixels = np.concatenate([changed.train.images, changed.val.images]).reshape(-1, 3, 64)
    assert any((p[:, 0] == (200, 100, 0)).all() for p in pixels)


def test_imagefolder_unreadable_file_is_reported_not_a_crash(registry: Registry,
                                                              tmp_path: Path) -> None:
    root = _folder(tmp_path / "data")
    (root / "dog" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    ds = load_dataset(registry.get_dataset("imagefolder"), _req(tmp_path, data_dir=root,
                                                       image_size=(8, 8)))
    assert len(ds.skipped) == 1 and "gone.png" in ds.skipped[0]
    digests = list((tmp_path / "cache" / "digests").glob("*.json"))
    assert len(digests) == 1  # remembered for the next load, the unreadable file excepted
    assert "gone.png" not in digests[0].read_text()


def test_imagefolder_corrupt_file_skipped_or_strict(registry: Registry, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    root = _folder(tmp_path / "data")
    bad = root / "dog" / "broken.jpg"
    bad.write_bytes(b"definitely not a jpeg")
    spec = registry.get_dataset("imagefolder")
    ds = load_dataset(spec, _req(tmp_path, data_dir=root, image_size=(8, 8)))
    assert len(ds.skipped) == 1 and str(bad) in ds.skipped[0]
    assert "skipped 1 unreadable" in capsys.readouterr().err
    with pytest.raises(DataError, match=r"broken\.jpg"):
        load_dataset(spec, _req(tmp_path, data_dir=root, image_size=(8, 8), strict=True))



def test_imagefolder_quiet_request_prints_nothing(registry: Registry, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    # what the trainer asks on every distributed rank but 0: only rank 0 warns
    root = _folder(tmp_path / "data")
    (root / "dog" / "broken.jpg").write_bytes(b"definitely not a jpeg")
    ds = load_dataset(registry.get_dataset("imagefolder"),
        _req(tmp_path, data_dir=root, image_size=(8, 8), quiet=True))
    assert len(ds.skipped) == 1
    assert capsys.readouterr().err == ""

def test_imagefolder_bad_directories(registry: Registry, tmp_path: Path) -> None:
    spec = registry.get_dataset("imagefolder")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(spec, _req(tmp_path, data_dir=tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        load_dataset(spec, _req(tmp_path, data_dir=tmp_path / "empty"))
    _image(tmp_path / "one" / "a" / "x.png", (1, 2, 3))
    _image(tmp_path / "one" / "a" / "y.png", (1, 2, 3))
    with pytest.raises(DataError, match="at least 2"):
        load_dataset(spec, _req(tmp_path, data_dir=tmp_path / "one"))
    with pytest.raises(ZooError, match="needs --data-dir"):
        load_dataset(spec, _req(tmp_path))


def test_imagefolder_val_dir(registry: Registry, tmp_path: Path) -> None:
    root = _folder(tmp_path / "train")
    val = tmp_path / "val"
    _image(val / "dog" / "v.png", (0, 0, 255))
    spec = registry.get_dataset("imagefolder")
    ds = load_dataset(spec, _req(tmp_path, data_dir=root, val_dir=val, image_size=(8, 8)))
    assert len(ds.train) == 12 and ds.val.labels.tolist() == [1]
    _image(tmp_path / "val2" / "horse" / "h.png", (0, 0, 0))
    with pytest.raises(DataError, match="horse"):
        load_dataset(spec, _req(tmp_path, data_dir=root, val_dir=tmp_path / "val2"))


# -- cifar ----------------------------------------------------------------------------------


def _fake_cifar(root: Path, per_batch: int = 20) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        labels = (np.arange(per_batch) % 10).tolist()
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        with (folder / name).open("wb") as fh:
            pickle.dump({"data": data, "labels": labels, "batch_label": name}, fh)
    with (folder / "batches.meta").open("wb") as fh:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog",
                                     "frog", "horse", "ship", "truck"]}, fh)
    return root


def test_cifar_reads_a_local_copy(registry: Registry, tmp_path: Path) -> None:
    root = _fake_cifar(tmp_path / "c")
    c10 = registry.load_dataset("cifar10", _req(tmp_path, data_dir=root, download=False))
    assert c10.train.images.shape == (100, 3, 32, 32) and len(c10.val) == 20
    assert len(c10.classes) == 10 and "official" in c10.split_description
    c2 = load_dataset(registry.get_dataset("cifar2"), _req(tmp_path, data_dir=root, download=False,
                                                  image_size=(16, 16)))
    assert c2.classes == ("airplane", "bird")
    assert set(c2.train.labels.tolist()) == {0, 1} and len(c2.train) == 20
    assert c2.train.images.shape[2:] == (16, 16)


def test_cifar_offline_without_copy_is_a_clear_error(registry: Registry, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"imagefolder.*synthetic"):
        load_dataset(registry.get_dataset("cifar2"), _req(tmp_path, data_dir=tmp_path / "empty",
                                                 download=False))
    from torchvision.datasets import CIFAR10

    def offline(self: object) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(CIFAR10, "download", offline)
    with pytest.raises(DataError, match="download failed: network is unreachable"):
        load_dataset(registry.get_dataset("cifar10"), _req(tmp_path, data_dir=tmp_path / "empty"))


# -- what the imagefolder scan keeps (hidden and plain files, nesting, sizes, errors) -----

def test_imagefolder_keeps_visible_class_folders_and_every_image_in_them(
        registry: Registry, tmp_path: Path) -> None:
    root = _folder(tmp_path / "data")
    (root / "README.txt").write_text("a file beside the class folders, not a class")
    _image(root / ".git" / "0.png", (1, 2, 3))  # a hidden folder: not a class
    for i in range(2):  # hidden inside a class: skipped (two, so no swap can look equal)
        _image(root / "cat" / ".thumbs" / f"{i}.png", (1, 2, 3))
    _image(root / "cat" / "more" / "0.png", (7, 7, 7))  # a visible subfolder: its images count
    (root / "cat" / "0-notes.txt").write_text("sorted before the images: skipped, not a stop")
    ds = load_dataset(registry.get_dataset("imagefolder"),
                      _req(tmp_path, data_dir=root, image_size=(8, 8), val_split=0.25))
    assert ds.classes == ("cat", "dog")
    assert len(ds.train) + len(ds.val) == 13  # cat 5 + alpha + more/0, dog 5 + grey
    assert np.bincount(np.concatenate([ds.train.labels, ds.val.labels])).tolist() == [7, 6]


def test_imagefolder_defaults_to_32_pixels_and_caches_each_size_apart(
        registry: Registry, tmp_path: Path) -> None:
    root = _folder(tmp_path / "data")
    spec = registry.get_dataset("imagefolder")
    assert load_dataset(spec, _req(tmp_path, data_dir=root)).train.images.shape[1:] == \
        (3, 32, 32)
    for size in ((8, 12), (12, 12), (12, 8)):  # one cache; sizes that share a side
        ds = load_dataset(spec, _req(tmp_path, data_dir=root, image_size=size))
        assert ds.train.images.shape[2:] == size


def test_imagefolder_errors_name_every_class_and_count_every_skipped_file(
        registry: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = registry.get_dataset("imagefolder")
    root = tmp_path / "one"
    _image(root / "apple" / "0.png", (1, 2, 3))
    (root / "pear").mkdir()
    (root / "pear" / "0.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"has 1 class folder\(s\) with readable images "
                                        r"\(apple, pear\); at least 2 are needed"):
        load_dataset(spec, _req(tmp_path, data_dir=root, image_size=(8, 8)))
    with pytest.raises(DataError, match=r"needs --val-dir DIR or a --val-split in \(0, 1\), "
                                        r"got 0"):
        load_dataset(spec, _req(tmp_path, data_dir=_folder(tmp_path / "data"),
                                image_size=(8, 8), val_split=0))
    train, val = _folder(tmp_path / "train"), _folder(tmp_path / "val", per_class=2)
    (train / "dog" / "bad.png").write_bytes(b"not a png")
    (val / "cat" / "bad.png").write_bytes(b"not a png")
    capsys.readouterr()
    ds = load_dataset(spec, _req(tmp_path, data_dir=train, val_dir=val, image_size=(8, 8)))
    assert len(ds.skipped) == 2
    assert "skipped 2 unreadable file(s)" in capsys.readouterr().err


# -- the digest index -------------------------------------------------------------------------


def test_file_digests_read_only_changed_files_and_keep_the_index_current(tmp_path: Path) -> None:
    from zoo_datasets.cache import file_digest, file_digests

    files = [tmp_path / "img" / f"{i}.png" for i in range(5)]
    for i, f in enumerate(files):
        f.parent.mkdir(exist_ok=True)
        f.write_bytes(bytes([i]) * (100 + i))
    index = tmp_path / "cache" / "digests" / "folder.json"

    def digests() -> tuple[list[str], int]:
        read: list[int] = []
        out = file_digests(files, index, on_progress=read.append)
        return out, (read[-1] if read else 0)

    first, read = digests()
    assert read == 5 and first == [file_digest(f) for f in files]
    assert len(set(first)) == 5
    assert digests() == (first, 0)  # nothing changed: nothing read
    files[2].write_bytes(b"changed")
    second, read = digests()
    assert read == 1 and second[2] == file_digest(files[2]) != first[2]
    assert digests() == (second, 0)  # the index was written again after the change


def test_a_read_error_is_never_remembered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from zoo_datasets import cache

    image = tmp_path / "a.png"
    image.write_bytes(b"pixels")
    index = tmp_path / "index.json"

    def failing(*args: object, **kwargs: object) -> object:
        raise OSError(5, "Input/output error")  # a transient fault of the disk

    monkeypatch.setattr(cache, "open", failing, raising=False)
    assert cache.file_digests([image], index) == ["unreadable:5"]
    monkeypatch.setattr(cache, "open", builtins.open, raising=False)
    assert cache.file_digests([image], index) == [cache.file_digest(image)]


def test_cifar_read_through_torchvision_equals_the_direct_read(
        registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from torchvision.datasets import cifar

    root = _fake_cifar(tmp_path / "c")
    request = _req(tmp_path, data_dir=root, download=False, quiet=True)
    direct = registry.load_dataset("cifar10", request)  # the copy fails torchvision's md5
    read: list[str] = []

    def intact(path: str, md5: str | None = None) -> bool:
        read.append(path)
        return True

    monkeypatch.setattr(cifar, "check_integrity", intact)
    through = registry.load_dataset("cifar10", request)  # as with the real files
    for a, b in ((direct.train, through.train), (direct.val, through.val)):
        assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert direct.content_key == through.content_key
    assert any(path.endswith("batches.meta") for path in read)  # torchvision read them
    assert capsys.readouterr().err == ""  # quiet: no status lines


def test_cifar_without_a_folder_looks_in_the_zoo_cache(registry: Registry,
                                                       tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        registry.load_dataset("cifar2", _req(tmp_path, download=False))
    assert f"no CIFAR-10 copy in {str(tmp_path / 'cache' / 'cifar10')!r}" in str(info.value)


def test_cifar_status_lines_unless_quiet(registry: Registry, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from zoo_datasets import status

    monkeypatch.setattr(status, "QUIET_S", 0.0)  # a long read: the lines a log shows
    root = _fake_cifar(tmp_path / "c")
    folder = repr(str(root / "cifar-10-batches-py"))
    registry.load_dataset("cifar2", _req(tmp_path, data_dir=root, download=False))
    err = capsys.readouterr().err
    assert f"zoo: reading 2 CIFAR-10 splits of {folder}...\n" in err
    assert f"zoo: read 2 CIFAR-10 splits of {folder} in " in err
    assert f"zoo: hashing 6 CIFAR-10 files of {folder}...\n" in err
    registry.load_dataset("cifar2", _req(tmp_path, data_dir=root, download=False, quiet=True))
    assert capsys.readouterr().err == ""
