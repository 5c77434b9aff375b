"""Model cards rendered from manifests that differ where cards differ: untrained weights,
grey inputs, a best epoch before the last, other formats, licenses, and the confusion
picture's labels (``zoo.exporter.modelcard``; cards of real runs: ``test_modelcard.py``)."""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Any

import pytest

from zoo.bundles.integrity import open_bundle
from zoo.bundles.store import resolve_bundle
from zoo.exporter import modelcard
from zoo.exporter.modelcard import draw_confusion, plugin_license, render_card, write_card
from zoo.spec.manifest import CheckResult, FormatRecord, Manifest
from zoo.spec.run import EpochMetrics


@pytest.fixture(scope="module")
def shipped() -> Manifest:
    return open_bundle(resolve_bundle("Net"))


def epoch(n: int, val_acc: float) -> EpochMetrics:
    return EpochMetrics(epoch=n, train_loss=0.3, train_acc=0.9, val_loss=0.31, val_acc=val_acc,
                        images_per_s=1000.0, lr=0.01, seconds=2.0)


def with_training(manifest: Manifest, **changes: Any) -> Manifest:
    assert manifest.training is not None
    return manifest.model_copy(update={"training": manifest.training.model_copy(update=changes)})


def test_an_untrained_card_says_so_and_keeps_the_rest(shipped: Manifest) -> None:
    untrained = shipped.model_copy(update={"training": None})
    text = render_card(untrained, "Net-init")
    assert "Not trained: the weights are the architecture's seeded initialization." in text
    assert "## Architecture and parameters" in text and "## Intended use" in text
    assert "as in its training data (no data (untrained weights))" in text
    front = text.split("---")[1]
    assert "model-index" not in front and "datasets:" not in front
    assert "## Evaluation results" not in text


def test_the_last_epoch_is_shown_when_it_is_not_the_exported_one(shipped: Manifest) -> None:
    best, last = epoch(7, 0.91), epoch(10, 0.88)
    text = render_card(with_training(shipped, best=best, last=last, checkpoint="best.pt"), "N")
    assert "| validation | 7 | 0.91 | 0.31 |" in text
    assert "| validation, last epoch | 10 | 0.88 | 0.31 |" in text
    same = render_card(with_training(shipped, best=last, last=last, checkpoint="best.pt"), "N")
    assert "last epoch" not in same and "| validation | 10 | 0.88 | 0.31 |" in same
    exported_last = render_card(with_training(shipped, best=best, last=last,
                                              checkpoint="last.pt"), "N")
    assert "| validation | 10 | 0.88 |" in exported_last and "last epoch |" not in exported_last


def test_hyperparameters_are_listed_in_sorted_order(shipped: Manifest) -> None:
    model = shipped.model.model_copy(update={"hparams": {"width": 32, "depth": 3, "act": "relu"}})
    text = render_card(shipped.model_copy(update={"model": model}), "N")
    assert '- hyperparameters: `{"act": "relu", "depth": 3, "width": 32}`' in text


def test_the_card_names_the_plugin_that_provides_the_architecture(shipped: Manifest) -> None:
    assert shipped.provenance is not None
    text = render_card(shipped, "Net-cifar2")
    assert f"- architecture: `Net` from {shipped.provenance.describe()}" in text
    anonymous = render_card(shipped.model_copy(update={"provenance": None}), "Net-cifar2")
    assert "- architecture: `Net`\n" in anonymous


@pytest.mark.parametrize(("channels", "mode", "to_chw"), [(3, "RGB", ".transpose(2, 0, 1)"),
                                                          (1, "L", "[None]")])
def test_the_onnxruntime_snippet_reads_images_as_the_model_sees_them(
        shipped: Manifest, channels: int, mode: str, to_chw: str) -> None:
    shape = shipped.model.input_shape.model_copy(update={"channels": channels})
    model = shipped.model.model_copy(update={"input_shape": shape})
    text = render_card(shipped.model_copy(update={"model": model}), "N")
    assert f'.convert("{mode}").resize((32, 32), Image.Resampling.BILINEAR)' in text
    assert f"x = ((np.asarray(image, dtype=np.float32){to_chw} / 255.0 - mean) / std)[None]" \
        in text


def _record(*checks: CheckResult, latency: float | None = None) -> FormatRecord:
    return FormatRecord(files=("model.int8.onnx",), passed=True, atol=0.1, rtol=0.1,
                        checks=checks, ort_latency_ms_batch1=latency)


def _check(name: str, accuracy: float | None = None,
           reference: float | None = None) -> CheckResult:
    return CheckResult(name=name, batch_size=500, max_abs_diff=0.01, max_rel_diff=0.01,
                       top1_agreement=0.99, passed=True, accuracy=accuracy,
                       reference_accuracy=reference)


def test_other_formats_show_their_accuracy_and_latency(shipped: Manifest) -> None:
    assert "## Other formats" not in render_card(shipped, "N")
    record = _record(_check("random batch 7"), _check("first", 0.5),
                     _check("held-out split", 0.875, 0.88), _check("second", None, 0.9),
                     latency=0.25)
    text = render_card(shipped.model_copy(update={"formats": {"int8": record}}), "N")
    reference = shipped.verification.ort_latency_ms_batch1
    line = next(x for x in text.splitlines() if x.startswith("- `int8`"))
    assert line == ("- `int8`: `model.int8.onnx`, verified; top-1 accuracy 0.875 on the "
                    "held-out split (500 images; the float32 graph: 0.88); onnxruntime CPU "
                    f"latency at batch 1 0.250 ms (float32 graph {reference:.3f} ms)")
    no_reference = shipped.model_copy(update={
        "formats": {"int8": record},
        "verification": shipped.verification.model_copy(update={"ort_latency_ms_batch1": None})})
    line = next(x for x in render_card(no_reference, "N").splitlines()
                if x.startswith("- `int8`"))
    assert line.endswith("; onnxruntime CPU latency at batch 1 0.250 ms")


class _Meta(collections.UserDict):  # type: ignore[type-arg]
    def __getitem__(self, key: str) -> Any:
        return self.data.get(key)


@pytest.mark.parametrize(("fields", "expected"), [
    ({"License-Expression": "Apache-2.0"}, "apache-2.0"),
    ({"License": "MIT"}, "mit"),
    ({"License-Expression": "x" * 40}, "x" * 40),
    ({"License-Expression": "x" * 41}, "other"),
    ({"License": "BSD 3-Clause"}, "other"),
    ({"License": "MIT\nfull text"}, "other"),
    ({}, "other"),
])
def test_the_license_comes_from_the_plugin_distribution(
        shipped: Manifest, monkeypatch: pytest.MonkeyPatch, fields: dict[str, str],
        expected: str) -> None:
    monkeypatch.setattr(modelcard.metadata, "metadata", lambda name: _Meta(fields))
    assert plugin_license(shipped) == expected


def test_no_distribution_no_license(shipped: Manifest) -> None:
    assert shipped.provenance is not None
    no_dist = shipped.provenance.model_copy(update={"distribution": None})
    assert plugin_license(shipped.model_copy(update={"provenance": no_dist})) == "other"
    assert plugin_license(shipped.model_copy(update={"provenance": None})) == "other"


def _drawn(monkeypatch: pytest.MonkeyPatch, counts: list[list[int]], tmp_path: Path) -> Any:
    figures: list[Any] = []
    monkeypatch.setattr(modelcard, "save_png", lambda fig, path: figures.append(fig))
    classes = [f"c{i}" for i in range(len(counts))]
    assert draw_confusion(counts, classes, tmp_path / "c.png", "title") == len(counts) ** 2
    (ax,) = figures[0].axes
    return ax


def test_the_confusion_picture_writes_each_count_readably(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    ax = _drawn(monkeypatch, [[90, 10], [45, 46]], tmp_path)
    cells = {(t.get_position(), t.get_text()): t.get_color() for t in ax.texts}
    # white on the cells darker than half the largest count, black elsewhere
    assert cells == {((0, 0), "90"): "white", ((1, 0), "10"): "black",
                     ((0, 1), "45"): "black", ((1, 1), "46"): "white"}
    assert [t.get_rotation() for t in ax.get_xticklabels()] == [0.0, 0.0]
    assert ax.get_title() == "title" and ax.get_xlabel() == "predicted"


def test_an_empty_confusion_picture_is_drawn(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    ax = _drawn(monkeypatch, [[0, 0], [0, 0]], tmp_path)
    assert [t.get_color() for t in ax.texts] == ["black"] * 4


@pytest.mark.parametrize(("k", "texts", "rotation"), [(4, 16, 0.0), (5, 25, 45.0),
                                                      (20, 400, 45.0), (21, 0, 45.0)])
def test_many_classes_rotate_their_names_and_drop_the_counts(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, k: int, texts: int,
        rotation: float) -> None:
    ax = _drawn(monkeypatch, [[1] * k for _ in range(k)], tmp_path)
    assert len(ax.texts) == texts
    assert {t.get_rotation() for t in ax.get_xticklabels()} == {rotation}


def test_a_card_without_a_run_uses_metrics_jsonl_of_an_old_run(shipped: Manifest,
                                                                tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(epoch(n, 0.8).model_dump_json() + "\n"
                                               for n in (1, 2)))
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    assert write_card(bundle, shipped, "Net", run_dir=run) == ["README.md", "curves.png"]
    assert (bundle / "curves.png").read_bytes().startswith(b"\x89PNG")
    assert "![curves](curves.png)" in (bundle / "README.md").read_text()
    bare = tmp_path / "bare"
    bare.mkdir()
    assert write_card(bare, shipped, "Net") == ["README.md"]


def test_the_front_matter_is_yaml_of_the_exported_epoch(shipped: Manifest) -> None:
    best = epoch(7, 0.91)
    text = render_card(with_training(shipped, best=best, checkpoint="best.pt"), "Net-x")
    front = text.split("---")[1]
    assert '- name: "Net-x"' in front and "      value: 0.91" in front
    assert '      name: "validation accuracy (epoch 7)"' in front
    assert json.loads(front.split("tags: ")[1].splitlines()[0])[:4] == [
        "image-classification", "onnx", "pytorch", "zoo"]


def test_a_run_that_recorded_no_epoch_is_carded_as_untrained(shipped: Manifest) -> None:
    text = render_card(with_training(shipped, best=None, last=None, checkpoint="best.pt"), "N")
    assert "Not trained: the weights are the architecture's seeded initialization." in text
    assert "model-index" not in text.split("---")[1]


def test_the_recipe_line_lists_the_run_settings(shipped: Manifest) -> None:
    recipe = {"optimizer": "sgd", "lr": 0.01, "epochs": 3, "batch_size": 64, "other": 1}
    text = render_card(with_training(shipped, recipe=recipe), "N")
    assert "- recipe: optimizer sgd, lr 0.01, epochs 3, batch_size 64\n" in text


@pytest.mark.parametrize(("checkpoint", "row"), [("best.pt", "| a | 5 | 1 |"),
                                                 ("last.pt", "| a | 3 | 3 |")])
def test_the_confusion_matrix_is_that_of_the_exported_epoch(
        shipped: Manifest, tmp_path: Path, checkpoint: str, row: str) -> None:
    from zoo.spec.run import RunSummary

    manifest = with_training(shipped, best=epoch(7, 0.9), last=epoch(9, 0.8),
                             checkpoint=checkpoint)
    manifest = manifest.model_copy(update={"classes": ("a", "b")})
    summary = RunSummary.model_construct(history=[epoch(7, 0.9), epoch(9, 0.8)],
                                         best_confusion=[[5, 1], [2, 4]],
                                         last_confusion=[[3, 3], [1, 5]])
    written = write_card(tmp_path, manifest, "N", summary=summary)
    assert written == ["README.md", "confusion.png", "curves.png"]
    assert row in (tmp_path / "README.md").read_text()
