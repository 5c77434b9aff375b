"""The shipped CIFAR-2 bundles in exports/ and the README table generated from them."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from zoo_chapter8.specs import BOOK_VAL_ACC

from zoo.bundles.integrity import open_bundle
from zoo.bundles.modeltable import main, render
from zoo.bundles.store import pretrained_bundles, resolve_bundle, source_exports_dir
from zoo.cli import main as cli_main
from zoo.deploy import OnnxClassifier
from zoo.exporter.checks import verification_inputs
from zoo.exporter.onnx import verify_onnx
from zoo.models.load import load_bundle
from zoo.spec.manifest import MANIFEST_FILE, ONNX_FILE
from zoo.util.imaging import normalize

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BOOK = sorted(BOOK_VAL_ACC)
FIXTURE = Path(__file__).parent / "data" / "cifar2_val.npz"
CLASSES = ("airplane", "bird")


def test_every_builtin_ships_a_trained_verified_cifar2_bundle() -> None:
    bundles = pretrained_bundles()
    assert sorted(bundles) == BOOK
    for arch, bundle in bundles.items():
        manifest = open_bundle(bundle)  # checks every SHA-256
        assert bundle.name == f"{arch}-cifar2"
        assert manifest.classes == ("airplane", "bird")
        assert manifest.verification.passed
        assert manifest.training is not None and manifest.training.best is not None
        assert manifest.training.content_key and manifest.training.split
        assert manifest.training.val_images == "10% of the training images, seed 0"
        assert manifest.training.source == "train"  # no path of the machine that trained it
        assert manifest.training.recipe["epochs"] == manifest.training.epochs_completed


@pytest.mark.parametrize("arch", BOOK)
def test_shipped_model_beats_the_books_validation_accuracy(arch: str) -> None:
    manifest = open_bundle(pretrained_bundles()[arch])
    assert manifest.training is not None and manifest.training.best is not None
    assert manifest.training.best.val_acc >= BOOK_VAL_ACC[arch]


def test_exports_stay_under_ten_megabytes() -> None:
    total = sum(p.stat().st_size for p in source_exports_dir().rglob("*") if p.is_file())
    assert total < 10 * 1024 * 1024


def test_readme_table_is_generated_from_the_manifests() -> None:
    assert main(["--check", str(README)]) == 0
    table = render()
    for arch in BOOK:
        assert f"| {arch} | `{arch}-cifar2` |" in table


def test_table_check_fails_when_a_manifest_changes(tmp_path: Path) -> None:
    exports = tmp_path / "exports"
    shutil.copytree(source_exports_dir(), exports)
    path = exports / "Net-cifar2" / MANIFEST_FILE
    raw = json.loads(path.read_text())
    # an edited accuracy of the exported epoch: the table must notice
    raw["training"]["best"]["val_acc"] = raw["training"]["last"]["val_acc"] = 0.5
    path.write_text(json.dumps(raw))
    assert main(["--check", str(README), "--exports", str(exports)]) == 1


def test_short_names_find_the_shipped_bundle_and_predict(tmp_path: Path) -> None:
    assert resolve_bundle("Net") == source_exports_dir() / "Net-cifar2"
    assert resolve_bundle("NetResDeep-cifar2") == source_exports_dir() / "NetResDeep-cifar2"
    images, labels = _fixture()
    clf = OnnxClassifier("Net")
    predictions = clf.predict(images, top_k=2)
    # the probabilities are the PyTorch model's softmax, most probable first
    model = load_bundle("Net").model
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(clf.preprocess(images))), 1).numpy()
    for pred, probs in zip(predictions, expected, strict=True):
        assert [s.index for s in pred.top] == list(np.argsort(-probs))
        np.testing.assert_allclose([s.probability for s in pred.top], np.sort(probs)[::-1],
                                   atol=1e-5)
        assert pred.label == clf.classes[pred.index]
    # most held-out airplanes and birds are recognised (the recorded accuracy is 0.906)
    correct = [p.label == CLASSES[y] for p, y in zip(predictions, labels, strict=True)]
    assert sum(correct) / len(correct) > 0.75
    # a file on disk gives the prediction of its decoded pixels
    path = tmp_path / "plane.png"
    Image.fromarray(images[0].transpose(1, 2, 0)).save(path)
    [from_file] = clf.predict(path, top_k=2)
    assert from_file.top == predictions[0].top


def _fixture() -> tuple[np.ndarray, np.ndarray]:
    """32 held-out images of each class of the shipped runs' validation split (uint8 NCHW);
    see tests/data/make_cifar2_val.py."""
    with np.load(FIXTURE) as data:
        assert tuple(data["classes"]) == CLASSES
        return data["images"], data["labels"]


@pytest.mark.parametrize("arch", BOOK)
def test_shipped_accuracy_is_recomputed_on_held_out_images(arch: str) -> None:
    """The recorded validation accuracy, against onnxruntime on 64 images of that split."""
    manifest = open_bundle(pretrained_bundles()[arch])
    assert manifest.training is not None and manifest.training.best is not None
    assert manifest.training.split.startswith("seeded stratified split: 0.1 ")
    assert manifest.training.seed == 0
    images, labels = _fixture()
    predicted = OnnxClassifier(arch).logits(images).argmax(axis=1)
    accuracy = float((predicted == labels).mean())
    # 64 images: a binomial standard error of about 0.04 around the recorded accuracy
    assert abs(accuracy - manifest.training.best.val_acc) < 0.13, accuracy


@pytest.mark.parametrize("arch", BOOK)
def test_shipped_verification_is_recomputed(arch: str) -> None:
    """The manifest says the graph matches its weights: check it again, on the recorded
    random inputs and on held-out images, instead of trusting the report."""
    loaded = load_bundle(pretrained_bundles()[arch])
    manifest = loaded.manifest
    recorded = manifest.verification
    images, _ = _fixture()
    samples = normalize(images, manifest.normalization.mean, manifest.normalization.std)
    report = verify_onnx(loaded.model, loaded.path / ONNX_FILE, manifest.model,
                         verification_inputs(manifest.model, samples), atol=recorded.atol,
                         rtol=recorded.rtol, latency_runs=0)
    assert report.passed, report
    names = [c.name for c in report.checks]
    assert names == [c.name for c in recorded.checks[:2]] + ["val samples (64)"]
    for check in report.checks:
        assert check.max_abs_diff <= recorded.atol and check.top1_agreement == 1.0


def test_zoo_list_marks_the_pretrained_architectures(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["list", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert {r["name"]: r["pretrained"] for r in records} == {a: "cifar2" for a in BOOK}
    net = next(r for r in records if r["name"] == "Net")
    [weights] = net["weights"]
    assert weights["location"] == "zoo_chapter8.weights:Net-cifar2"
    shipped = {a: open_bundle(b).training for a, b in pretrained_bundles().items()}
    assert weights["metrics"] == {"val_acc": shipped["Net"].exported.val_acc}
    assert cli_main(["list", "NetRes"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[-1] == "cifar2"
    assert cli_main(["show", "NetRes"]) == 0
    out = capsys.readouterr().out
    assert (f"pretrained:   cifar2 (default): val accuracy "
            f"{shipped['NetRes'].exported.val_acc:.3f} (10% of the training images, seed 0)") in out
    assert "zoo_chapter8.weights:NetRes-cifar2" in out


def test_table_write_then_check_and_cells_name_their_own_split(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from zoo.bundles.modeltable import END, START

    exports = tmp_path / "exports"
    shutil.copytree(source_exports_dir(), exports)
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{START}\nold table\n{END}\n\nafter\n")
    assert main(["--check", str(readme), "--exports", str(exports)]) == 1
    assert "differs from the manifests" in capsys.readouterr().err
    assert main(["--write", str(readme), "--exports", str(exports)]) == 0
    assert capsys.readouterr().out == (f"model table of {readme} generated from {exports}\n")
    text = readme.read_text()
    assert text.startswith(f"# title\n\n{START}\n| architecture |") and text.endswith(
        f"\n{END}\n\nafter\n")
    assert main(["--check", str(readme), "--exports", str(exports)]) == 0
    written = readme.stat().st_mtime_ns
    assert main(["--write", str(readme), "--exports", str(exports)]) == 0  # unchanged: kept
    assert readme.stat().st_mtime_ns == written
    # one bundle measured on another split: every accuracy cell names its own
    path = exports / "Net-cifar2" / MANIFEST_FILE
    raw = json.loads(path.read_text())
    split = raw["training"]["val_images"]
    rows = [line.split(" | ") for line in render(exports).splitlines() if line.startswith("| Net")]
    assert rows and all("(" not in row[3] for row in rows)  # one split: named in the header
    raw["training"]["val_images"] = "another split"
    path.write_text(json.dumps(raw))
    table = render(exports)
    assert "| val accuracy |" in table
    assert re.search(r"\| `Net-cifar2` \| [^|]+ \| 0\.\d+ \(another split\) \|", table)
    assert f" ({split}) |" in table
    with pytest.raises(SystemExit) as info:
        main([])  # --check or --write is required
    assert info.value.code == 2
    readme.write_text("no markers here\n")
    assert main(["--check", str(readme), "--exports", str(exports)]) == 1
    assert "has no model-table markers" in capsys.readouterr().err
