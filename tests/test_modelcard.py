"""Model cards: the run's confusion matrices, the card's numbers are the manifest's, all hashed."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from export_helpers import make_run
from PIL import Image

import zoo
from zoo.bundles.integrity import open_bundle
from zoo.bundles.store import pretrained_bundles
from zoo.deploy import OnnxClassifier
from zoo.errors import BundleError
from zoo.exporter.modelcard import (
    CARD_FILE,
    CONFUSION_PNG,
    CURVES_PNG,
    draw_confusion,
    exported_metrics,
    render_card,
)
from zoo.spec.manifest import MANIFEST_FILE, ONNX_FILE, WEIGHTS_FILE, Manifest
from zoo.spec.run import read_summary

FAST: dict[str, Any] = {
    "dataset_options": {"size": 240, "num_classes": 3},
    "model": {"in_height": 16, "in_width": 16},
    "batch_size": 32,
    "progress": "none",
    "num_threads": 1,
}


def card_numbers(text: str) -> dict[str, Any]:
    """The numbers a card states: front matter metrics, evaluation table, parameters."""
    front = text.split("---\n")[1]
    values = dict(re.findall(r"- type: (\w+)\n\s+value: (\S+)", front))
    row = re.search(r"^\| validation \| (\d+) \| (\S+) \| (\S+) \|$", text, re.M)
    train = re.search(r"^\| train \(during the epoch, augmented\) \| (\d+) \| (\S+) \| (\S+) \|$",
                      text, re.M)
    params = re.search(r"^- parameters: ([\d,]+)$", text, re.M)
    assert row and train and params
    return {"accuracy": float(values["accuracy"]), "loss": float(values["loss"]),
            "table": (int(row[1]), float(row[2]), float(row[3])),
            "train": (int(train[1]), float(train[2]), float(train[3])),
            "parameters": int(params[1].replace(",", "")),
            "license": re.search(r"^license: (\S+)$", front, re.M)[1],  # type: ignore[index]
            "split": re.search(r"^\s+split: (\S+)$", front, re.M)[1]}  # type: ignore[index]


def assert_card_matches(text: str, manifest: Manifest) -> None:
    m = exported_metrics(manifest)
    assert m is not None
    numbers = card_numbers(text)
    assert numbers["accuracy"] == m.val_acc and numbers["loss"] == m.val_loss
    assert numbers["table"] == (m.epoch, m.val_acc, m.val_loss)
    assert numbers["train"] == (m.epoch, m.train_acc, m.train_loss)
    assert numbers["parameters"] == manifest.num_parameters
    assert numbers["split"] == "validation" and numbers["license"] == "mit"
    assert manifest.training is not None and manifest.training.split in text


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("card") / "run"
    zoo.train("Net", epochs=2, out=run, cache_dir=run.parent / "cache", **FAST)
    return run


def test_the_run_records_its_validation_confusion(trained: Path) -> None:
    summary = read_summary(trained)
    for metrics, confusion in ((summary.best, summary.best_confusion),
                               (summary.last, summary.last_confusion)):
        assert metrics is not None and confusion is not None
        counts = np.asarray(confusion)
        assert counts.shape == (3, 3) and counts.sum() == summary.data.val_size
        assert np.trace(counts) / counts.sum() == pytest.approx(metrics.val_acc, abs=1e-12)


def test_exported_card_pictures_and_hashes(trained: Path, tmp_path: Path) -> None:
    bundle = zoo.export(trained, out=tmp_path / "Net-synthetic").path
    manifest = open_bundle(bundle)  # every listed file's SHA-256
    assert sorted(p.name for p in bundle.iterdir()) == sorted(
        [CARD_FILE, CONFUSION_PNG, CURVES_PNG, MANIFEST_FILE, ONNX_FILE, WEIGHTS_FILE])
    assert sorted(manifest.files) == sorted([CARD_FILE, CONFUSION_PNG, CURVES_PNG, ONNX_FILE,
                                             WEIGHTS_FILE])
    text = (bundle / CARD_FILE).read_text()
    assert_card_matches(text, manifest)
    best = read_summary(trained).best_confusion
    assert best is not None
    assert "| cross | " + " | ".join(str(v) for v in best[0]) + " |" in text
    for png in (CONFUSION_PNG, CURVES_PNG):
        assert f"]({png})" in text
        pixels = np.asarray(Image.open(bundle / png).convert("RGB"), dtype=np.float32)
        assert pixels.std() > 0
    (bundle / CARD_FILE).write_text(text.replace("0.", "1.", 1))
    with pytest.raises(BundleError, match=r"README\.md does not match its SHA-256"):
        open_bundle(bundle)


def test_the_cards_onnxruntime_snippet_predicts_as_the_zoo_does(trained: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    bundle = zoo.export(trained, out=tmp_path / "b").path
    code = (bundle / CARD_FILE).read_text().split("```python\n")[2].split("```")[0]
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(bundle / ONNX_FILE, work / ONNX_FILE)
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 256, (23, 29, 3), dtype=np.uint8)).save(work / "image.png")
    monkeypatch.chdir(work)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "card", "exec"), {})
    expected = OnnxClassifier(bundle).predict([work / "image.png"])[0].label
    assert printed.getvalue().strip() == expected


def test_cards_without_a_run(tmp_path: Path) -> None:
    untrained = open_bundle(zoo.export("Net", out=tmp_path / "u").path)
    text = (tmp_path / "u" / CARD_FILE).read_text()
    assert sorted(untrained.files) == sorted([CARD_FILE, ONNX_FILE, WEIGHTS_FILE])
    assert "Not trained" in text and "model-index" not in text
    old = tmp_path / "old-run"  # a run from before confusion matrices and without metrics
    make_run(old, "Net")
    manifest = open_bundle(zoo.export(old, out=tmp_path / "o").path)
    assert sorted(manifest.files) == sorted([CARD_FILE, ONNX_FILE, WEIGHTS_FILE])
    assert_card_matches((tmp_path / "o" / CARD_FILE).read_text(), manifest)


def test_confusion_picture(tmp_path: Path) -> None:
    path = tmp_path / "c.png"
    assert draw_confusion(((5, 1), (2, 7)), ("cat", "dog"), path, "t") == 4
    assert np.asarray(Image.open(path).convert("RGB"), dtype=np.float32).std() > 0


@pytest.mark.parametrize("arch", sorted(pretrained_bundles()))
def test_shipped_bundles_cards_state_their_manifests_numbers(arch: str) -> None:
    bundle = pretrained_bundles()[arch]
    manifest = open_bundle(bundle)
    assert_card_matches(render_card(manifest, bundle.name, spec=zoo.get_spec(arch)), manifest)
    assert CARD_FILE in manifest.files  # every shipped bundle carries its card, hashed
    assert_card_matches((bundle / CARD_FILE).read_text(), manifest)
    assert {"confusion.png", "curves.png"} <= set(manifest.files)


def test_the_curves_come_from_the_run_whatever_plugins_wrote(tmp_path: Path) -> None:
    """The trainer's own record (run.json) holds every epoch: a run trained without the
    metrics-files plugin still ships its curves, of the same epochs."""
    from zoo.host.registry import Registry

    run = tmp_path / "run"
    zoo.train("Net", epochs=3, out=run, cache_dir=tmp_path / "cache",
              registry=Registry(blocked=["metricsfiles"]), **FAST)
    assert not (run / "metrics.jsonl").exists()
    summary = read_summary(run)
    assert [m.epoch for m in summary.history] == [1, 2, 3]
    assert summary.history[-1] == summary.last and summary.best in summary.history
    manifest = zoo.export(run, out=tmp_path / "b").manifest
    assert CURVES_PNG in manifest.files
    assert f"]({CURVES_PNG})" in (tmp_path / "b" / CARD_FILE).read_text()
