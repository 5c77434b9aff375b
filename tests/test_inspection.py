"""``zoo inspect`` and ``zoo filters demo``: the arrays are the model's own, the PNGs are drawn."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import MakeDist, tiny_plugin
from export_helpers import make_run
from PIL import Image

import zoo
from zoo.analysis.filters import KERNELS, MAX_SIDE, apply_kernel, filter_demo, render_demo
from zoo.analysis.inspection import InspectionError, inspect_model, write_inspection
from zoo.bundles.store import pretrained_bundles
from zoo.cli import main
from zoo.errors import BundleError
from zoo.host.registry import Registry


def _png_std(path: Path) -> float:
    assert path.read_bytes()[:4] == b"\x89PNG"
    return float(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32).std())


@pytest.fixture
def image_file(tmp_path: Path) -> Path:
    """A 40x36 RGB picture (resized to the model's 32x32 on the way in)."""
    yy, xx = np.mgrid[0:40, 0:36]
    rgb = np.stack([(xx * 7) % 256, (yy * 5) % 256, ((xx + yy) * 3) % 256], axis=-1)
    path = tmp_path / "picture.png"
    Image.fromarray(rgb.astype(np.uint8)).save(path)
    return path


def _normalized(run: Path, image: Path) -> torch.Tensor:
    from zoo.spec.run import read_summary
    from zoo.util.imaging import decode_image, normalize

    norm = read_summary(run).normalization
    pixels = decode_image(image, 3, (32, 32))
    return torch.from_numpy(normalize(pixels[None], norm.mean, norm.std))


def test_net_arrays_are_the_blocks_of_the_book(tmp_path: Path, image_file: Path) -> None:
    run = tmp_path / "run"
    make_run(run, "Net")
    result = inspect_model(run, image_file)
    assert result.architecture == "Net" and result.trained
    assert [fm.title for fm in result.feature_maps] == [
        "conv1 16×32×32 → pool 16×16×16", "conv2 8×16×16 → pool 8×8×8"]
    from zoo.models.statedict import load_state_dict

    net = zoo.create_model("Net", num_classes=3).eval()
    net.load_state_dict(load_state_dict(run / "checkpoints" / "best.pt"))
    x = _normalized(run, image_file)
    with torch.no_grad():
        block1 = torch.tanh(F.max_pool2d(net.conv1(x), 2))
        block2 = torch.tanh(F.max_pool2d(net.conv2(block1), 2))
        probs = torch.softmax(net(x).double(), 1)[0]
    np.testing.assert_allclose(result.feature_maps[0].maps, block1[0].numpy(), atol=1e-6)
    np.testing.assert_allclose(result.feature_maps[1].maps, block2[0].numpy(), atol=1e-6)
    np.testing.assert_allclose(result.filters, net.conv1.weight.detach().numpy())
    np.testing.assert_allclose(result.probabilities, probs.numpy(), atol=1e-6)
    top = result.top(2)
    assert [s.label for s in top] == [result.classes[i] for i in probs.argsort(descending=True)[:2]]
    assert top[0].probability >= top[1].probability

    report = write_inspection(result, tmp_path / "out", top_k=2)
    assert report.filters.tiles == 16
    assert [p.tiles for p in report.feature_maps] == [16, 8]
    for picture in (report.filters, *report.feature_maps):
        assert _png_std(Path(picture.path)) > 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "features-01-conv1.png", "features-02-conv2.png", "filters.png"]


def test_skip_connections_and_repeated_blocks_are_followed(image_file: Path) -> None:
    res = inspect_model(zoo.create_model("NetRes"), image_file, size=(32, 32))
    assert [fm.title for fm in res.feature_maps][2] == "conv3 16×8×8 → pool 16×4×4"
    assert [name for name, _ in res.feature_maps[2].steps] == ["relu", "add", "pool"]
    deep = inspect_model(zoo.create_model("NetResDeep", n_blocks=3, shared_block=True),
                         image_file, size=(32, 32))
    assert [fm.layer for fm in deep.feature_maps] == [
        "conv1", "resblocks.0.conv", "resblocks.0.conv#2", "resblocks.0.conv#3"]
    assert deep.feature_maps[-1].title == "resblocks.0.conv#3 32×16×16 → pool 32×8×8"


def test_a_third_party_net_by_name(make_dist: MakeDist, tmp_path: Path,
                                   image_file: Path) -> None:
    make_dist("zoo-tiny", "zoo_tiny_inspect", tiny_plugin("TinyInspect", "zoo_tiny_inspect"))
    registry = Registry()
    result = inspect_model("TinyInspect", image_file, registry=registry)
    assert not result.trained and result.classes == ("class0", "class1")
    # the global average pooling leaves no map to look at: the block ends before it
    assert [fm.title for fm in result.feature_maps] == ["0 4×32×32 → relu 4×32×32"]
    assert float(result.feature_maps[0].maps.min()) >= 0.0  # after the ReLU
    report = write_inspection(result, tmp_path / "tiny")
    assert report.filters.tiles == 4 and [p.tiles for p in report.feature_maps] == [4]
    assert all(_png_std(Path(p.path)) > 0 for p in (report.filters, *report.feature_maps))


def test_one_channel_filters_and_arrays(tmp_path: Path) -> None:
    model = zoo.create_model("Net", in_channels=1, in_height=20, in_width=20)
    image = (np.arange(400).reshape(20, 20) % 251).astype(np.uint8)
    result = inspect_model(model, image)
    assert result.image.shape == (1, 20, 20) and result.filters.shape == (16, 1, 3, 3)
    assert result.feature_maps[1].title == "conv2 8×10×10 → pool 8×5×5"
    report = write_inspection(result, tmp_path, layer="conv2")
    assert report.filters.tiles == 16 and [p.tiles for p in report.feature_maps] == [8]


def test_cli_inspect(tmp_path: Path, image_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    make_run(run, "NetDepth")
    out = tmp_path / "pictures"
    assert main(["inspect", str(run), str(image_file), "--out", str(out), "--layer", "conv3",
                 "--top-k", "2"]) == 0
    text = capsys.readouterr().out
    assert "conv3 16×8×8 → pool 16×4×4" in text and text.count("\n") == 5
    assert text.startswith(f"{run} on {image_file}:\n")  # trained: no "(untrained)"
    assert main(["inspect", "NetDepth", str(image_file), "--out", str(tmp_path / "one"),
                 "--top-k", "1"]) == 0  # one class is enough
    assert capsys.readouterr().out.count("\n  ") == 1
    assert sorted(p.name for p in out.iterdir()) == ["features-03-conv3.png", "filters.png"]
    assert main(["inspect", str(run), str(image_file), "--out", str(out),
                 "--layer", "conv9"]) == 1
    assert "no convolution 'conv9'; its convolutions: conv1, conv2, conv3" in (
        capsys.readouterr().err)
    assert main(["inspect", "NoSuchNet", str(image_file)]) == 1
    assert "no model 'NoSuchNet'" in capsys.readouterr().err


def test_a_tampered_shipped_bundle_is_refused(tmp_path: Path, image_file: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    exports = tmp_path / "exports"
    shutil.copytree(pretrained_bundles()["Net"], exports / "Net-mine")
    monkeypatch.setenv("ZOO_EXPORTS", str(exports))
    assert inspect_model("Net-mine", image_file).trained
    with (exports / "Net-mine" / "model.pt").open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BundleError, match="does not match its SHA-256"):
        inspect_model("Net-mine", image_file)  # not silently an untrained architecture
    with pytest.raises(InspectionError, match="neither a run directory"):
        inspect_model(tmp_path, image_file)


def test_errors(tmp_path: Path, image_file: Path) -> None:
    with pytest.raises(InspectionError, match="no convolution"):
        inspect_model(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3072, 2)),
                      image_file)
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(InspectionError, match="not a readable image"):
        inspect_model(zoo.create_model("Net"), bad)
    with pytest.raises(InspectionError, match="Net cannot take a 3×40×36 image: mat1 and mat2"):
        inspect_model(zoo.create_model("Net"), image_file)


# -- the hand-set kernels --------------------------------------------------------------------


def test_kernels_compute_what_a_conv2d_computes() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((3, 9, 11), dtype=np.float32)
    for kernel in KERNELS.values():
        conv = torch.nn.Conv2d(3, 1, 3, padding=1, bias=False)
        with torch.no_grad():
            conv.weight[:] = torch.from_numpy(kernel)
            expected = conv(torch.from_numpy(x)[None])[0, 0].numpy()
        np.testing.assert_allclose(apply_kernel(x, kernel), expected, atol=1e-5)


def test_filter_demo_finds_the_edges(tmp_path: Path) -> None:
    step = np.zeros((3, 8, 8), dtype=np.uint8)
    step[:, :, 4:] = 255  # a vertical edge between columns 3 and 4
    demo = filter_demo(step)
    vertical = demo.outputs["vertical edge"][1:-1, 1:-1]  # away from the zero padding
    horizontal = demo.outputs["horizontal edge"][1:-1, 1:-1]
    assert np.allclose(vertical[:, [2, 3]], 9.0) and np.allclose(np.delete(vertical, [2, 3], 1), 0)
    assert np.allclose(horizontal, 0.0)
    assert np.allclose(demo.outputs["average (blur)"][1:-1, 1:3], 0.0)
    assert render_demo(demo, tmp_path / "demo.png") == 4
    assert _png_std(tmp_path / "demo.png") > 0


def test_cli_filters_demo(tmp_path: Path, image_file: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["filters", "demo", str(image_file), "--out", str(tmp_path / "d")]) == 0
    assert _png_std(tmp_path / "d" / "filters-demo.png") > 0
    assert "average (blur), vertical edge, horizontal edge" in capsys.readouterr().out
    assert main(["filters", "demo", str(tmp_path / "missing.png")]) == 1
    big = tmp_path / "big.png"
    Image.new("RGB", (1200, 300), (200, 10, 10)).save(big)
    demo = filter_demo(big)
    assert demo.image.shape == (3, 128, MAX_SIDE)
    assert demo.outputs["average (blur)"].shape == (128, MAX_SIDE)


def test_readme_pictures_are_committed_and_small() -> None:
    root = Path(__file__).resolve().parents[1]
    pictures = re.findall(r"!\[[^\]]*\]\((docs/[^)]+\.png)\)", (root / "README.md").read_text())
    assert {"docs/filters-demo.png", "docs/inspect-filters.png", "docs/inspect-conv1.png",
            "docs/compare.png"} <= set(pictures)
    for name in pictures:
        path = root / name
        assert path.is_file() and path.stat().st_size < 200 * 1024, name
        assert _png_std(path) > 0


def test_shipped_weights_that_fail_their_pin_are_an_error_not_an_untrained_model(
        image_file: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import zoo.bundles.hub

    monkeypatch.setattr(zoo.bundles.hub, "bundle_sha256", lambda path: "0" * 64)
    for attempt in (lambda: zoo.load("Net"), lambda: inspect_model("Net", image_file)):
        with pytest.raises(BundleError, match=r"has SHA-256 0{64}, not the [0-9a-f]{64} its "
                                              r"spec declares"):
            attempt()
    assert main(["inspect", "Net", str(image_file), "--out", str(image_file.parent)]) == 1
    assert "its spec declares" in capsys.readouterr().err


def test_the_blur_averages_and_the_demo_decodes_rgb_at_any_shape(tmp_path: Path) -> None:
    white = filter_demo(np.full((3, 8, 8), 255, dtype=np.uint8)).outputs["average (blur)"]
    assert np.allclose(white[1:-1, 1:-1], 3.0)  # three channels of 1.0, averaged
    assert np.isclose(white[0, 0], 3.0 * 4 / 9)  # a corner sees four pixels and zeros
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (10, 6), (10, 20, 30, 40)).save(rgba)
    assert filter_demo(rgba).image.shape == (3, 6, 10)
    for size, shape in (((1200, 1), (3, 1, MAX_SIDE)), ((1, 1200), (3, MAX_SIDE, 1))):
        thin = tmp_path / f"thin-{size[0]}.png"
        Image.new("RGBA", size, (200, 10, 10, 255)).save(thin)  # shrunk, never to nothing
        assert filter_demo(thin).image.shape == shape


def test_the_demo_picture_shows_the_input_first_then_each_output(tmp_path: Path) -> None:
    red = np.zeros((3, 16, 16), dtype=np.uint8)
    red[0] = 255
    assert render_demo(filter_demo(red), tmp_path / "red.png") == 4
    pixels = np.asarray(Image.open(tmp_path / "red.png").convert("RGB")).astype(int)
    panel = pixels.shape[1] // 4
    redness = pixels[:, :, 0] - pixels[:, :, 1:].max(axis=2)
    counts = [int((redness[:, i * panel:(i + 1) * panel] > 100).sum()) for i in range(4)]
    assert counts[0] > 100 and counts[1:] == [0, 0, 0]  # in colour first; outputs are grey
    grey = np.full((1, 16, 16), 60, dtype=np.uint8)
    assert render_demo(filter_demo(grey), tmp_path / "grey.png") == 4
    first = np.asarray(Image.open(tmp_path / "grey.png").convert("RGB")).astype(int)[:, :panel]
    spread = first.max(axis=2) - first.min(axis=2)
    assert (spread == 0).all()  # a grey input is drawn grey


class _OutOfOrder(torch.nn.Module):
    """Convolutions registered in one order and called in the other; a block whose output
    is pooled twice; an interpolation."""

    def __init__(self) -> None:
        super().__init__()
        self.late = torch.nn.Conv2d(3, 2, 3, padding=1)
        self.early = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.fc = torch.nn.Linear(2 * 8 * 8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.max_pool2d(F.max_pool2d(self.early(x), 2), 2)
        b = F.interpolate(self.late(a), scale_factor=2.0)
        return self.fc(F.max_pool2d(b, 2).flatten(1))


def test_blocks_follow_the_call_order_and_end_at_a_second_change_of_shape(
        image_file: Path) -> None:
    model = _OutOfOrder()
    result = inspect_model(model, image_file, size=(32, 32))
    assert result.first_conv == "early"  # the filters applied to the image
    np.testing.assert_array_equal(result.filters, model.early.weight.detach().numpy())
    assert [fm.title for fm in result.feature_maps] == [
        "early 3×32×32 → pool 3×16×16", "late 2×8×8 → resize 2×16×16"]
    from zoo.util.imaging import normalize

    x = torch.from_numpy(normalize(result.image[None], (0.0,) * 3, (1.0,) * 3))
    with torch.no_grad():
        first = F.max_pool2d(model.early(x), 2)[0].numpy()
    np.testing.assert_allclose(result.feature_maps[0].maps, first, atol=1e-6)


def test_image_arrays_in_any_layout_are_the_same_pixels() -> None:
    rng = np.random.default_rng(3)
    hwc = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten(),
                                torch.nn.Linear(2 * 10 * 8, 2))
    reference = inspect_model(model, hwc)
    np.testing.assert_array_equal(reference.image, hwc.transpose(2, 0, 1))
    chw = inspect_model(model, np.ascontiguousarray(hwc.transpose(2, 0, 1)))
    np.testing.assert_array_equal(chw.image, reference.image)
    np.testing.assert_array_equal(chw.probabilities, reference.probabilities)
    grey = hwc[:, :, 0]
    grey_model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(),
                                     torch.nn.Linear(2 * 10 * 8, 2))
    for layout in (grey, grey[:, :, None], grey[None]):  # (H, W), (H, W, 1), (1, H, W)
        np.testing.assert_array_equal(inspect_model(grey_model, layout).image, grey[None])
    # a 4-row image whose last axis is 3 stays channels-last (4 is a channel count too)
    tall = rng.integers(0, 256, (4, 12, 3), dtype=np.uint8)
    model4 = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten(),
                                 torch.nn.Linear(2 * 2 * 10, 2))
    np.testing.assert_array_equal(inspect_model(model4, tall).image, tall.transpose(2, 0, 1))
    resized = inspect_model(model, hwc[:6, :5], size=(12, 10)).image
    expected = np.asarray(Image.fromarray(hwc[:6, :5]).resize((10, 12), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(resized, expected.transpose(2, 0, 1))
    with pytest.raises(InspectionError, match="2 or 3 dimensions, got \\(2, 3, 4, 5\\)"):
        inspect_model(model, np.zeros((2, 3, 4, 5), np.uint8))


def test_a_bare_module_sees_pixels_scaled_to_one_and_top_k(image_file: Path) -> None:
    net = zoo.create_model("Net").eval()
    result = inspect_model(net, image_file, size=(32, 32))
    x = torch.from_numpy(result.image[None].astype(np.float32) / 255.0)  # no normalization
    with torch.no_grad():
        block1 = torch.tanh(F.max_pool2d(net.conv1(x), 2))[0].numpy()
    np.testing.assert_allclose(result.feature_maps[0].maps, block1, atol=1e-6)
    order = np.argsort(-result.probabilities, kind="stable").tolist()
    assert [s.index for s in result.top()] == order and len(order) == 2  # five asked, two classes
    assert len(result.top(0)) == 1  # at least the most probable
    assert result.classes == ("class0", "class1")


def test_an_architecture_by_name_is_seeded_and_its_files_are_named_safely(
        make_dist: MakeDist, tmp_path: Path, image_file: Path) -> None:
    make_dist("zoo-tiny-seeded", "zoo_tiny_seeded", tiny_plugin("TinySeeded", "zoo_tiny_seeded"))
    registry = Registry()
    a = inspect_model("TinySeeded", image_file, registry=registry)
    torch.manual_seed(1)  # the caller's seed does not matter: seed 0 is used
    b = inspect_model("TinySeeded", image_file, registry=registry)
    np.testing.assert_array_equal(a.filters, b.filters)
    torch.manual_seed(0)
    seeded = registry.create_model("TinySeeded")
    np.testing.assert_array_equal(a.filters, seeded[0].weight.detach().numpy())
    assert a.source == "TinySeeded (untrained, seed 0)" and not a.trained
    deep = inspect_model(zoo.create_model("NetResDeep", n_blocks=2), image_file, size=(32, 32))
    report = write_inspection(deep, tmp_path / "deep")
    names = [Path(p.path).name for p in report.feature_maps]
    assert names == ["features-01-conv1.png", "features-02-resblocks-0-conv.png",
                     "features-03-resblocks-1-conv.png"]
    shared = inspect_model(zoo.create_model("NetResDeep", n_blocks=2, shared_block=True),
                           image_file, size=(32, 32))
    names = [Path(p.path).name for p in write_inspection(shared, tmp_path / "s").feature_maps]
    assert names[2] == "features-03-resblocks-0-conv_2.png"  # "#2": not a file name character
