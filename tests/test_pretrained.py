"""The shipped CIFAR-2 bundles in exports/ and the README table generated from them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from zoo.cli import main as cli_main
from zoo.deploy import OnnxClassifier
from zoo.manifest import MANIFEST_FILE, open_bundle
from zoo.modeltable import BOOK_VAL_ACC, main, render
from zoo.pretrained import exports_dir, pretrained_bundles, resolve_bundle

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BOOK = sorted(BOOK_VAL_ACC)


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
    total = sum(p.stat().st_size for p in exports_dir().rglob("*") if p.is_file())
    assert total < 10 * 1024 * 1024


def test_readme_table_is_generated_from_the_manifests() -> None:
    assert main(["--check", str(README)]) == 0
    table = render()
    for arch in BOOK:
        assert f"| {arch} | `{arch}-cifar2` |" in table


def test_table_check_fails_when_a_manifest_changes(tmp_path: Path) -> None:
    exports = tmp_path / "exports"
    shutil.copytree(exports_dir(), exports)
    path = exports / "Net-cifar2" / MANIFEST_FILE
    raw = json.loads(path.read_text())
    raw["training"]["best"]["val_acc"] = 0.5  # the manifest is not hashed: the table must notice
    path.write_text(json.dumps(raw))
    assert main(["--check", str(README), "--exports", str(exports)]) == 1


def test_short_names_find_the_shipped_bundle_and_predict(capsys: pytest.CaptureFixture[str],
                                                         tmp_path: Path) -> None:
    assert resolve_bundle("Net") == exports_dir() / "Net-cifar2"
    assert resolve_bundle("NetResDeep-cifar2") == exports_dir() / "NetResDeep-cifar2"
    sky = np.zeros((32, 32, 3), dtype=np.uint8)
    sky[...] = (110, 160, 225)  # a plain blue sky
    clf = OnnxClassifier("Net")
    [pred] = clf.predict([sky], top_k=2)
    assert {s.label for s in pred.top} == {"airplane", "bird"}
    assert abs(sum(s.probability for s in pred.top) - 1.0) < 1e-5


def test_zoo_list_marks_the_pretrained_architectures(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["list", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert {r["name"]: r["pretrained"] for r in records} == {a: "cifar2" for a in BOOK}
    net = next(r for r in records if r["name"] == "Net")
    [weights] = net["weights"]
    assert weights["location"] == "zoo_chapter8.weights:Net-cifar2"
    assert weights["metrics"] == {"val_acc": 0.906}
    assert cli_main(["list", "NetRes"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[-1] == "cifar2"
    assert cli_main(["show", "NetRes"]) == 0
    out = capsys.readouterr().out
    assert ("pretrained:   cifar2 (default): val accuracy 0.913 (10% of the training images, "
            "seed 0)") in out
    assert "zoo_chapter8.weights:NetRes-cifar2" in out
