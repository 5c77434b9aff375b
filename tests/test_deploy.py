"""The torch-free predictor: OnnxClassifier, zoo predict, agreement with PyTorch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from export_helpers import CLASSES, make_run, write_images
from PIL import Image
from pydantic import ValidationError

import zoo
from zoo.bundles.store import pretrained_bundles
from zoo.cli import main
from zoo.deploy import OnnxClassifier, Prediction, softmax
from zoo.errors import BundleError, ZooError
from zoo.spec.manifest import MANIFEST_FILE, ONNX_FILE
from zoo.util.imaging import decode_image, normalize
from zoo.util.threads import check_threads, default_threads

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained-looking bundle (3 classes, real normalization) and a folder of images."""
    from zoo.exporter.write import export

    root = tmp_path_factory.mktemp("deploy")
    make_run(root / "run", "NetDepth")
    export(root / "run", out=root / "exports" / "NetDepth-synthetic")
    write_images(root / "images")
    (root / "images" / "notes.txt").write_text("not an image")
    (root / "images" / "broken.png").write_bytes(b"\x89PNG but not really")
    return root


@pytest.fixture
def bundle(workspace: Path) -> Path:
    return workspace / "exports" / "NetDepth-synthetic"


@pytest.fixture
def images(workspace: Path) -> list[Path]:
    return sorted(p for p in (workspace / "images").iterdir()
                  if p.suffix in {".png", ".jpg", ".gif", ".bmp"} and p.name != "broken.png")


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env


def test_top1_agrees_with_the_pytorch_model(bundle: Path, images: list[Path]) -> None:
    import torch

    clf = OnnxClassifier(bundle)
    predictions = clf.predict(images, top_k=3)
    model = zoo.load(bundle)
    m = clf.manifest
    batch = np.stack([decode_image(p, 3, (32, 32)) for p in images])
    with torch.no_grad():
        logits = model(torch.from_numpy(normalize(batch, m.normalization.mean,
                                                  m.normalization.std))).numpy()
    assert [p.index for p in predictions] == logits.argmax(axis=1).tolist()
    assert [p.label for p in predictions] == [CLASSES[i] for i in logits.argmax(axis=1)]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    for p, row in zip(predictions, probs, strict=True):
        assert [s.probability for s in p.top] == pytest.approx(sorted(row, reverse=True),
                                                              abs=1e-4)
        assert sum(s.probability for s in p.top) == pytest.approx(1.0, abs=1e-5)


def test_predict_accepts_paths_pil_images_and_arrays(bundle: Path, images: list[Path]) -> None:
    clf = OnnxClassifier(bundle)
    path = next(p for p in images if p.name == "big.jpg")  # RGB, resized on the way
    expected = clf.probabilities([path])
    pil = Image.open(path)
    hwc = np.asarray(pil.convert("RGB"))
    chw = np.ascontiguousarray(hwc.transpose(2, 0, 1))
    for item in (str(path), pil, hwc, chw):
        np.testing.assert_allclose(clf.probabilities([item]), expected, atol=1e-6)
    np.testing.assert_allclose(clf.probabilities(chw[None]), expected, atol=1e-6)
    single = clf.predict(pil)
    assert len(single) == 1 and isinstance(single[0], Prediction)
    assert single[0].source == "<image 0>" and clf.predict(path)[0].source == str(path)
    grey = np.asarray(Image.open(path).convert("L"))
    assert clf.probabilities([grey]).shape == (1, 3)
    rgba = next(p for p in images if p.name == "alpha.png")
    np.testing.assert_allclose(clf.probabilities([Image.open(rgba)]),
                               clf.probabilities([rgba]), atol=1e-6)
    with pytest.raises(ZooError, match="must be uint8"):
        clf.predict(hwc.astype(np.float32))
    with pytest.raises(ZooError, match=r"cannot classify \{'not': 'an image'\} \(a dict\)"):
        clf.predict([{"not": "an image"}])  # type: ignore[list-item]


def test_batching_gives_the_same_results(bundle: Path, images: list[Path]) -> None:
    clf = OnnxClassifier(bundle)
    whole = clf.probabilities(images, batch_size=64)
    np.testing.assert_allclose(clf.probabilities(images, batch_size=1), whole, atol=1e-6)
    np.testing.assert_allclose(clf.probabilities(images, batch_size=4), whole, atol=1e-6)
    top = clf.predict(images, top_k=10)
    assert all(len(p.top) == 3 for p in top)  # at most the number of classes
    assert clf.predict([]) == []
    with pytest.raises(ZooError, match="top-k must be at least 1"):
        clf.predict(images, top_k=0)
    with pytest.raises(ZooError, match="batch size must be at least 1"):
        clf.predict(images, batch_size=0)


def test_hashes_are_checked_before_loading(bundle: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(bundle, tmp_path / "b"))
    with open(copy / ONNX_FILE, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BundleError, match=r"model\.onnx does not match its SHA-256"):
        OnnxClassifier(copy)


def test_missing_bundle_and_unknown_version(bundle: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOO_EXPORTS", str(tmp_path / "nothing"))
    with pytest.raises(BundleError, match="no bundle 'NetX'"):
        OnnxClassifier("NetX")
    copy = Path(shutil.copytree(bundle, tmp_path / "b"))
    raw = json.loads((copy / MANIFEST_FILE).read_text())
    raw["format_version"] = 99
    (copy / MANIFEST_FILE).write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="format_version 99, which this zoo cannot read"):
        OnnxClassifier(copy)


def test_cli_predict_files_and_directories(workspace: Path, bundle: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    folder = workspace / "images"
    code = main(["predict", str(bundle), str(folder), str(folder / "notes.txt"),
                 "--json", "--top-k", "2", "--batch-size", "2"])
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    # the directory gives its image files (broken.png included); notes.txt is named explicitly
    predicted = sorted(Path(p["path"]).name for p in out["predictions"])
    assert predicted == ["alpha.png", "big.jpg", "grey.png", "palette.gif", "rgb.png", "tiny.bmp"]
    assert all(len(p["top"]) == 2 and p["top"][0]["label"] in CLASSES
               for p in out["predictions"])
    assert sorted(Path(e["path"]).name for e in out["errors"]) == ["broken.png", "notes.txt"]
    assert "broken.png: not a readable image" in captured.err
    assert "notes.txt: not a readable image" in captured.err
    assert code == 1  # some input could not be read: documented non-zero exit
    clf = OnnxClassifier(bundle)
    by_path = {p["path"]: p["top"][0]["label"] for p in out["predictions"]}
    for p in clf.predict(sorted(by_path)):
        assert by_path[p.source] == p.label


def test_cli_predict_text_output_and_exit_codes(workspace: Path, bundle: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    image = workspace / "images" / "rgb.png"
    assert main(["predict", str(bundle), str(image)]) == 0
    line = capsys.readouterr().out.strip()
    label = OnnxClassifier(bundle).predict([image])[0].label
    assert line.startswith(f"{image}\t{label} 0.")
    assert main(["predict", str(bundle), str(workspace / "nope.png")]) == 1
    err = capsys.readouterr().err
    assert "nope.png: no such file or directory" in err and "none of the inputs" in err
    assert main(["predict", str(workspace / "nobundle"), str(image)]) == 1
    assert "zoo: error: bundle" in capsys.readouterr().err
    assert main(["predict", str(bundle), str(image), "--top-k", "0"]) == 1
    assert "--top-k must be at least 1" in capsys.readouterr().err


def test_predict_by_short_name(workspace: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ZOO_EXPORTS", str(workspace / "exports"))
    image = workspace / "images" / "rgb.png"
    # a user's bundle by its own name; the architecture's name means its declared weights
    for name, bundle in (("NetDepth-synthetic", workspace / "exports" / "NetDepth-synthetic"),
                         ("NetDepth", pretrained_bundles()["NetDepth"])):
        assert main(["predict", name, str(image), "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["bundle"] == str(bundle)
        assert out["architecture"] == "NetDepth"


def test_importing_and_predicting_never_imports_torch(bundle: Path, images: list[Path]) -> None:
    code = textwrap.dedent(f"""
        import sys
        from zoo.deploy import OnnxClassifier
        clf = OnnxClassifier({str(bundle)!r})
        preds = clf.predict({[str(p) for p in images]!r}, top_k=2)
        assert len(preds) == {len(images)}
        import zoo.cli.predict, zoo.cli.export, zoo.bundles.store, zoo.spec.manifest
        roots = ("torch", "torchvision", "onnx")
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in roots)
        print("heavy:", heavy)
        assert not heavy, heavy
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=_env(), cwd=REPO, timeout=120, check=False)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "heavy: []" in result.stdout


def test_zoo_predict_works_where_import_torch_fails(workspace: Path, bundle: Path,
                                                    tmp_path: Path) -> None:
    fake = tmp_path / "fake"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text(
        "raise ImportError('torch is not installed on this machine')\n")
    env = _env(PYTHONPATH=str(fake) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               ZOO_EXPORTS=str(workspace / "exports"))
    probe = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True,
                           text=True, env=env, check=False)
    assert probe.returncode != 0 and "torch is not installed" in probe.stderr
    image = workspace / "images" / "alpha.png"
    result = subprocess.run(
        [sys.executable, "-m", "zoo", "predict", "NetDepth-synthetic", str(image), "--json"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["predictions"][0]["top"][0]["label"] == \
        OnnxClassifier(bundle).predict([image])[0].label


@pytest.mark.parametrize(("cores", "expected"), [(1, 1), (2, 2), (4, 4), (16, 4), (None, 1)])
def test_default_threads_are_the_cores_up_to_four(monkeypatch: pytest.MonkeyPatch,
                                                  cores: int | None, expected: int) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    assert default_threads() == expected
    assert check_threads(None) == expected


@pytest.mark.parametrize("bad", ["2", 2.0, True, int])
def test_a_thread_count_must_be_an_int(bad: object) -> None:
    with pytest.raises(ZooError, match=r"threads must be an integer from 1 to \d+ .*, got "):
        check_threads(bad)  # type: ignore[arg-type]


def test_the_session_is_tuned_for_latency_on_the_cpu(bundle: Path) -> None:
    """What ort_session promises: all graph optimizations, the requested intra-op threads,
    one inter-op thread, sequential execution, warnings off, the CPU provider."""
    import onnxruntime as ort

    session = OnnxClassifier(bundle, threads=1).session
    options = session.get_session_options()
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.intra_op_num_threads == 1
    assert options.inter_op_num_threads == 1
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.log_severity_level == 3
    assert session.get_providers() == ["CPUExecutionProvider"]


def test_images_go_through_the_graph_64_at_a_time(bundle: Path, images: list[Path],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    clf = OnnxClassifier(bundle)
    sizes: list[int] = []
    real = clf.run
    monkeypatch.setattr(clf, "run", lambda batch: (sizes.append(len(batch)), real(batch))[1])
    many = (images * (130 // len(images) + 1))[:130]
    assert clf.logits(many).shape == (130, len(clf.classes))
    assert sizes == [64, 64, 2]  # the memory of 64 images, however many there are


def test_softmax_of_huge_logits_does_not_overflow() -> None:
    probs = softmax(np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]], dtype=np.float32))
    np.testing.assert_allclose(probs, [[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]], rtol=1e-6)
    assert probs.dtype == np.float32


def test_predictions_are_read_only_values_naming_their_source(bundle: Path,
                                                              images: list[Path]) -> None:
    clf = OnnxClassifier(bundle)
    pred = clf.predict(images[0], top_k=2)[0]
    assert pred.source == str(images[0])
    assert (pred.label, pred.index, pred.probability) == (
        pred.top[0].label, pred.top[0].index, pred.top[0].probability)
    assert pred.top[0].probability >= pred.top[1].probability
    with pytest.raises(ValidationError):
        pred.source = "elsewhere"
    with pytest.raises(ValidationError):
        pred.top[0].probability = 1.0
    with pytest.raises(ValidationError):
        Prediction(top=pred.top)  # type: ignore[call-arg]


def test_a_bad_thread_count_is_refused_before_any_file_is_read(tmp_path: Path) -> None:
    with pytest.raises(ZooError, match="threads must be an integer"):
        OnnxClassifier(tmp_path / "no-such-bundle", threads=0)


def test_arrays_in_every_layout_preprocess_like_the_same_image(bundle: Path,
                                                               tmp_path: Path) -> None:
    """HWC and CHW, grey with and without a channel axis, RGBA either way, and images one
    pixel wide or high: each is the image a file of the same pixels decodes to."""
    clf = OnnxClassifier(bundle)
    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 256, (20, 12, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, rng.integers(0, 256, (20, 12, 1), dtype=np.uint8)], axis=2)
    grey = rgb[:, :, 0]

    def as_file(array: np.ndarray, name: str) -> np.ndarray:
        Image.fromarray(array).save(tmp_path / name)
        return clf.to_uint8(tmp_path / name)

    for array, layouts in [(rgb, [rgb, rgb.transpose(2, 0, 1)]),
                           (rgba, [rgba, rgba.transpose(2, 0, 1)]),
                           (grey, [grey, grey[:, :, None], grey[None, :, :]])]:
        expected = as_file(array, "ref.png")
        for layout in layouts:
            np.testing.assert_array_equal(clf.to_uint8(layout), expected, err_msg=str(layout.shape))
    for thin in (rgb[:, :1], rgb[:1, :]):  # 20x1 and 1x12
        np.testing.assert_array_equal(clf.to_uint8(thin), as_file(thin, "thin.png"))
    # a (C, H, W) array of exactly the input shape is taken as it is
    exact = rng.integers(0, 256, (3, 32, 32), dtype=np.uint8)
    np.testing.assert_array_equal(clf.to_uint8(exact), exact)
    assert clf.preprocess([rgb, grey]).shape == (2, 3, 32, 32)
    assert clf.preprocess([]).shape == (0, 3, 32, 32)
    # ambiguous shapes are (H, W, C) when the last axis could be channels: 3x20 grey, 3x20 RGBA
    for hwc in (rgb[:3, :, :1], rgba[:3]):
        expected = as_file(hwc[:, :, 0] if hwc.shape[2] == 1 else hwc, "hwc.png")
        np.testing.assert_array_equal(clf.to_uint8(hwc), expected, err_msg=str(hwc.shape))
    for empty in (Image.new("RGB", (0, 5)), Image.new("RGB", (5, 0))):
        with pytest.raises(ZooError, match=r"an image is empty \(\dx\d\); accepted: at least one"):
            clf.to_uint8(empty)


def test_a_non_square_input_and_the_defaults(tmp_path: Path, images: list[Path]) -> None:
    """Images are resized to (height, width) as the manifest says, not to a square; a
    prediction is the top class alone unless more are asked for; floats are refused."""
    from zoo.exporter.write import export

    result = export("Net", overrides={"in_height": 16, "in_width": 24}, out=tmp_path / "wide")
    clf = OnnxClassifier(result.path)
    for image in images:
        x = clf.to_uint8(image)
        assert x.shape == (3, 16, 24)
        np.testing.assert_array_equal(x, decode_image(image, 3, (16, 24)))
        with Image.open(image) as opened:  # an image in memory goes the same way
            np.testing.assert_array_equal(clf.to_uint8(opened), x)
    [pred] = clf.predict(images[0])
    assert len(pred.top) == 1
    with pytest.raises(ZooError, match="image arrays must be uint8, got dtype float32"):
        clf.preprocess(np.zeros((2, 3, 16, 24), dtype=np.float32))


def test_any_iterable_of_images_is_predicted(bundle: Path, images: list[Path]) -> None:
    clf = OnnxClassifier(bundle)
    expected = clf.predict(images)
    assert clf.predict(p for p in images) == expected  # a generator
    assert clf.predict(tuple(images)) == expected
