"""``zoo evaluate`` and ``zoo.evaluate``: accuracy, per-class accuracy and confusion matrix.

The labelled folders are generated here: sky-like and noisy images (so that the
shipped Net predicts both classes), in class folders with a nested subfolder.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from export_helpers import CLASSES, make_run
from PIL import Image

import zoo
from zoo.analysis.evaluation import CONFUSION_PNG, EVALUATION_JSON, evaluate, labelled_files
from zoo.cli import main
from zoo.deploy import OnnxClassifier
from zoo.errors import DataError


def write_class_images(folder: Path, n: int, seed: int, *, sky: bool) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        if sky:  # a blue gradient with a dark blob: what airplanes in CIFAR look like
            img = np.zeros((32, 32, 3), dtype=np.float64)
            img[...] = np.array([100.0, 150.0, 215.0]) + rng.normal(0, 12, 3)
            y, x = rng.integers(8, 24, 2)
            img[y - 3:y + 3, x - 6:x + 6] = rng.integers(40, 120)
        else:
            img = rng.normal(110, 45, (32, 32, 3)) + np.linspace(-30, 30, 32)[:, None, None]
        path = folder / f"img{i:03d}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("labelled") / "val"
    write_class_images(root / "airplane", 9, 1, sky=True)
    write_class_images(root / "airplane" / "more", 3, 2, sky=True)  # nested: found too
    write_class_images(root / "bird", 10, 3, sky=False)
    write_class_images(root / "bird", 4, 4, sky=True)  # overwrites img000-003: some are hard
    (root / "notes.txt").write_text("not a class folder, not an image")
    return root


def expected_confusion(root: Path, classes: tuple[str, ...]) -> np.ndarray:
    """What evaluate must find, computed through the torch-free predictor image by image."""
    clf = OnnxClassifier("Net")
    matrix = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for true, name in enumerate(classes):
        paths = sorted((root / name).rglob("*.*")) if (root / name).is_dir() else []
        for p in clf.predict(paths):
            matrix[true, p.index] += 1
    return matrix


def test_accuracy_per_class_and_confusion_match_the_predictor(labelled: Path) -> None:
    result = zoo.evaluate("Net", labelled)
    assert result.classes == ("airplane", "bird")
    expected = expected_confusion(labelled, result.classes)
    assert np.array_equal(np.asarray(result.confusion), expected)
    assert expected[0].sum() == 12 and expected[1].sum() == 10
    assert 0 < np.trace(expected) < 22  # right and wrong predictions both occur
    assert result.images == 22 and result.correct == int(np.trace(expected))
    assert result.accuracy == pytest.approx(np.trace(expected) / 22)
    assert [(c.name, c.images, c.correct) for c in result.per_class] == [
        ("airplane", 12, int(expected[0, 0])), ("bird", 10, int(expected[1, 1]))]
    assert result.per_class[0].accuracy == pytest.approx(expected[0, 0] / 12)
    assert (result.bundle, result.architecture, result.backend) == ("Net-cifar2", "Net",
                                                                    "onnxruntime")
    assert result.skipped == ()


def test_onnxruntime_and_torch_agree_and_batches_do_not_matter(labelled: Path) -> None:
    ort = evaluate("Net", labelled, batch_size=5)
    torch_result = evaluate("Net", labelled, backend="torch")
    assert torch_result.backend == "torch"
    assert torch_result.confusion == ort.confusion
    assert torch_result.per_class == ort.per_class
    assert evaluate("Net", labelled, batch_size=1).confusion == ort.confusion
    bundle = zoo.bundles.store.resolve_bundle("NetBatchNorm")
    assert (evaluate(bundle, labelled).confusion
            == evaluate(bundle, labelled, backend="torch", batch_size=7).confusion)


def test_class_folders_are_matched_by_name(labelled: Path, tmp_path: Path) -> None:
    only_birds = tmp_path / "birds"
    write_class_images(only_birds / "bird", 4, 5, sky=False)
    result = evaluate("Net", only_birds)  # a model class without a folder is fine
    assert [c.name for c in result.per_class] == ["bird"]
    assert result.confusion[0] == (0, 0) and sum(result.confusion[1]) == 4
    stranger = tmp_path / "zoo"
    write_class_images(stranger / "bird", 2, 6, sky=False)
    write_class_images(stranger / "cat", 2, 7, sky=False)
    with pytest.raises(DataError, match=r"class folder\(s\) 'cat' in .* are not classes of Net; "
                                        r"its classes: airplane, bird"):
        evaluate("Net", stranger)
    flat = tmp_path / "flat"
    write_class_images(flat, 2, 8, sky=False)
    with pytest.raises(DataError, match="holds no class folders"):
        evaluate("Net", flat)
    with pytest.raises(DataError, match="is not a directory"):
        evaluate("Net", tmp_path / "nowhere")
    folders, files, left_out = labelled_files(labelled, ("airplane", "bird"))
    assert folders == ["airplane", "bird"] and left_out == []
    assert (labelled / "airplane" / "more" / "img000.jpg", 0) in files


def test_memory_stays_flat_in_the_number_of_images(tmp_path: Path) -> None:
    def peak_bytes(n: int) -> int:
        root = tmp_path / f"n{n}"
        write_class_images(root / "airplane", n // 2, n, sky=True)
        write_class_images(root / "bird", n - n // 2, n + 1, sky=False)
        evaluate("Net", root, batch_size=4)  # warm: onnxruntime's session, imports
        tracemalloc.start()
        try:
            assert evaluate("Net", root, batch_size=4).images == n
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    few, many = peak_bytes(30), peak_bytes(300)
    # all 300 decoded float32 images at once would add 3.5 MiB; 4 at a time take 48 KiB
    assert many < few + 2**18, (few, many)


def test_run_directories_evaluate_on_torch(tmp_path: Path) -> None:
    make_run(tmp_path / "run", "Net")
    root = tmp_path / "data"
    write_class_images(root / "dog", 3, 11, sky=False)
    write_class_images(root / "bird", 3, 12, sky=True)
    result = evaluate(tmp_path / "run", root)
    assert result.backend == "torch" and result.classes == CLASSES and result.bundle is None
    assert result.images == 6 and [c.name for c in result.per_class] == ["bird", "dog"]
    with pytest.raises(zoo.ZooError, match="is a run directory, which has no ONNX graph"):
        evaluate(tmp_path / "run", root, backend="onnxruntime")


def test_cli_prints_text_json_and_writes_the_png(labelled: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "Net", str(labelled)]) == 0
    text = capsys.readouterr().out
    result = evaluate("Net", labelled)
    assert text.startswith(f"Net-cifar2 (Net) on {labelled}, onnxruntime: 22 images\n"
                           f"accuracy {result.accuracy:.4f} ({result.correct} of 22)\n")
    assert "confusion matrix (rows: true class, columns: predicted class)" in text
    airplane = result.confusion[0]
    assert f"airplane  {airplane[0]:>8}  {airplane[1]:>4}" in text
    out = tmp_path / "report"
    assert main(["evaluate", "Net", str(labelled), "--json", "--batch-size", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["correct"] == result.correct  # one at a time
    assert main(["evaluate", "Net", str(labelled), "--json", "--out", str(out),
                 "--backend", "torch"]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert f"zoo: wrote {out / EVALUATION_JSON} and {out / CONFUSION_PNG}" in captured.err
    assert printed["confusion"] == [list(r) for r in result.confusion]
    assert printed["backend"] == "torch" and printed["accuracy"] == result.accuracy
    saved = json.loads((out / EVALUATION_JSON).read_text())
    assert saved["confusion"] == printed["confusion"]
    png = (out / CONFUSION_PNG).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out / CONFUSION_PNG) as img:
        assert img.width > 200 and img.height > 200
    assert sorted(p.name for p in out.iterdir()) == [CONFUSION_PNG, EVALUATION_JSON]


def test_cli_reports_unreadable_files_and_errors(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "data"
    write_class_images(root / "bird", 3, 13, sky=False)
    (root / "bird" / "broken.jpg").write_bytes(b"not a jpeg")
    assert main(["evaluate", "Net", str(root), "--json"]) == 1
    captured = capsys.readouterr()
    assert "zoo: warning:" in captured.err and "broken.jpg: not a readable image" in captured.err
    printed = json.loads(captured.out)
    assert printed["images"] == 3 and printed["skipped"][0]["path"].endswith("broken.jpg")
    assert main(["evaluate", "Net", str(root), "--batch-size", "0"]) == 1
    assert "--batch-size must be at least 1" in capsys.readouterr().err
    assert main(["evaluate", "NoSuchNet", str(root)]) == 1
    assert "zoo: error: no bundle 'NoSuchNet'" in capsys.readouterr().err


def test_predict_and_evaluate_find_nested_and_linked_class_folders(
        labelled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    split = tmp_path / "split"
    split.mkdir()
    (split / "airplane").symlink_to(labelled / "airplane", target_is_directory=True)
    (split / "airplane" / "more" / "cycle").symlink_to(split, target_is_directory=True)
    (split / ".hidden").mkdir()
    write_class_images(split / ".hidden", 2, 14, sky=True)
    try:
        assert main(["predict", "Net", str(split), "--json"]) == 0
        predicted = json.loads(capsys.readouterr().out)["predictions"]
        assert len(predicted) == 12  # 9 + 3 nested, each once despite the cycle
        assert predicted[0]["path"] == str(split / "airplane" / "img000.jpg")
        assert evaluate("Net", split).per_class[0].images == 12
        assert main(["predict", "Net", str(labelled), "--json"]) == 0  # class folders
        assert len(json.loads(capsys.readouterr().out)["predictions"]) == 22
    finally:
        (split / "airplane" / "more" / "cycle").unlink()


def test_predict_and_evaluate_pick_a_weight_set(labelled: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    image = labelled / "bird" / "img004.jpg"
    assert main(["predict", "NetRes", str(image), "--weights", "cifar2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert Path(out["bundle"]).name == "NetRes-cifar2" and out["architecture"] == "NetRes"
    assert main(["predict", "NetRes", str(image), "--weights", "imagenet"]) == 1
    assert "NetRes has no weight set 'imagenet'; declared: cifar2" in capsys.readouterr().err
    assert evaluate("NetRes", labelled, weights="cifar2").bundle == "NetRes-cifar2"


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_evaluate_refuses_any_bundle_but_the_pinned_one(labelled: Path, backend: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from zoo.bundles.integrity import bundle_sha256
    from zoo.bundles.store import resolve_bundle

    digest = bundle_sha256(resolve_bundle("Net"))
    assert evaluate("Net", labelled, backend=backend, expect_sha256=digest).images > 0
    with pytest.raises(zoo.ZooError, match="is not the one expected"):
        evaluate("Net", labelled, backend=backend, expect_sha256="0" * 64)
    args = ["evaluate", "Net", str(labelled), "--backend", backend, "--expect-sha256"]
    assert main([*args, digest]) == 0
    capsys.readouterr()
    assert main([*args, "f" * 64]) == 1
    assert "is not the one expected" in capsys.readouterr().err


def test_a_run_directory_cannot_be_pinned(tmp_path: Path) -> None:
    make_run(tmp_path / "run", "Net")
    with pytest.raises(zoo.ZooError, match="--expect-sha256 pins a bundle"):
        evaluate(tmp_path / "run", tmp_path, expect_sha256="0" * 64)


def test_a_folder_of_one_image_is_scored_and_timed(tmp_path: Path) -> None:
    write_class_images(tmp_path / "val" / "bird", 1, 5, sky=False)
    (tmp_path / "val" / "airplane").mkdir()
    result = evaluate("Net", tmp_path / "val")
    assert (result.images, sum(result.confusion[1])) == (1, 1)
    assert result.accuracy == result.correct
    assert [(c.name, c.images, c.accuracy) for c in result.per_class] == \
        [("airplane", 0, None), ("bird", 1, float(result.correct))]
    assert 0 < result.seconds < 120


def test_each_backend_runs_on_its_own_runtime(labelled: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime never loads the PyTorch model, torch never opens an onnxruntime session."""
    import zoo.deploy
    import zoo.models.load

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the other backend's runtime was used")

    with monkeypatch.context() as patch:
        patch.setattr(zoo.models.load, "load_bundle", refuse)
        assert evaluate("Net", labelled, backend="onnxruntime").backend == "onnxruntime"
    with monkeypatch.context() as patch:
        patch.setattr(zoo.deploy, "OnnxClassifier", refuse)
        assert evaluate("Net", labelled, backend="torch").backend == "torch"
