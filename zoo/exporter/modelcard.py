"""A bundle's model card (``README.md``) and its pictures, in the Hugging Face convention.

The card opens with YAML front matter (license, tags, datasets, metrics and a
``model-index`` naming the split each metric was measured on), then says what
the model is for, its architecture and parameters, its training recipe, its
evaluation results (with the split named), its limitations, and how to load
it with ``zoo`` and with onnxruntime alone. Every number comes from the
manifest the exporter writes beside it, and the validation confusion matrix
from the run (:attr:`zoo.spec.run.RunSummary.best_confusion`); the exporter writes
the card and the PNGs before hashing, so the manifest covers them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from zoo.spec.architecture import ArchitectureSpec
from zoo.spec.manifest import INPUT_NAME, ONNX_FILE, Manifest
from zoo.spec.run import LAST_CHECKPOINT, METRICS_JSONL, Confusion, EpochMetrics, RunSummary
from zoo.trainer.curves import draw_curves
from zoo.util.figures import new_figure, save_png
from zoo.util.fsutil import atomic_write_text

CARD_FILE = "README.md"
CONFUSION_PNG = "confusion.png"
CURVES_PNG = "curves.png"
#: The license of a bundle whose plugin's distribution declares none Hugging Face knows.
UNKNOWN_LICENSE = "other"


def exported_metrics(manifest: Manifest) -> EpochMetrics | None:
    """The metrics of the epoch whose weights the bundle holds (best or last checkpoint)."""
    training = manifest.training
    if training is None:
        return None
    return training.exported


def plugin_license(manifest: Manifest) -> str:
    """The SPDX id (lower case, as Hugging Face writes it) of the plugin's distribution."""
    prov = manifest.provenance
    if prov is None or prov.distribution is None:
        return UNKNOWN_LICENSE
    try:
        meta = metadata.metadata(prov.distribution)
    except metadata.PackageNotFoundError:
        return UNKNOWN_LICENSE
    text = (meta["License-Expression"] or meta["License"] or "").strip()
    if not text or "\n" in text or len(text) > 40 or " " in text:
        return UNKNOWN_LICENSE
    return text.lower()


def _yaml(value: Any) -> str:
    return json.dumps(value)  # a JSON scalar or flow list is valid YAML


def _front_matter(manifest: Manifest, name: str, spec: ArchitectureSpec | None) -> list[str]:
    training = manifest.training
    tags = ["image-classification", "onnx", "pytorch", "zoo", manifest.architecture,
            *(spec.tags if spec else ())]
    lines = ["---", f"license: {plugin_license(manifest)}", "library_name: zoo",
             "pipeline_tag: image-classification", f"tags: {_yaml(list(dict.fromkeys(tags)))}"]
    m = exported_metrics(manifest)
    if training is None or m is None:
        return [*lines, "---"]
    lines += [f"datasets: {_yaml([training.dataset])}", f"metrics: {_yaml(['accuracy'])}",
              "model-index:", f"- name: {_yaml(name)}", "  results:",
              "  - task:", "      type: image-classification",
              "      name: Image Classification", "    dataset:",
              f"      name: {_yaml(training.dataset)}", f"      type: {_yaml(training.dataset)}",
              "      split: validation", "    metrics:"]
    for key, value, what in (("accuracy", m.val_acc, "validation accuracy"),
                             ("loss", m.val_loss, "validation loss")):
        lines += [f"    - type: {key}", f"      value: {value!r}",
                  f"      name: {_yaml(f'{what} (epoch {m.epoch})')}"]
    return [*lines, "---"]


def _rounded(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4f}" for v in values) + ")"


def _confusion_table(confusion: Confusion, classes: Sequence[str]) -> list[str]:
    lines = ["| true \\ predicted | " + " | ".join(classes) + " |",
             "|---|" + "---:|" * len(classes)]
    for label, row in zip(classes, confusion, strict=True):
        lines.append(f"| {label} | " + " | ".join(str(v) for v in row) + " |")
    return lines


def _loading(manifest: Manifest, name: str) -> list[str]:
    shape = manifest.model.input_shape
    norm = manifest.normalization
    mode = "RGB" if shape.channels == 3 else "L"
    to_chw = ".transpose(2, 0, 1)" if shape.channels == 3 else "[None]"
    return [
        "## How to use", "",
        "With `zoo` (checks every file's SHA-256 first):", "",
        "```python", "import zoo", "from zoo.deploy import OnnxClassifier", "",
        f'model = zoo.load("exports/{name}")         # PyTorch, eval mode',
        f'clf = OnnxClassifier("exports/{name}")      # onnxruntime only, no torch',
        'print(clf.predict(["image.png"], top_k=2))', "```", "",
        f"or `zoo predict {name} image.png`. With onnxruntime alone, from this folder "
        f"({shape.channels}×{shape.height}×{shape.width} input, bilinear resize, scaled to "
        "[0, 1], normalized with the training split's mean and std):", "",
        "```python", "import numpy as np", "import onnxruntime as ort", "from PIL import Image",
        "",
        f"mean = np.array({list(norm.mean)!r}, dtype=np.float32).reshape(-1, 1, 1)",
        f"std = np.array({list(norm.std)!r}, dtype=np.float32).reshape(-1, 1, 1)",
        f'image = Image.open("image.png").convert("{mode}").resize(({shape.width}, '
        f"{shape.height}), Image.Resampling.BILINEAR)",
        f"x = ((np.asarray(image, dtype=np.float32){to_chw} / 255.0 - mean) / std)[None]",
        f'logits = ort.InferenceSession("{ONNX_FILE}").run(None, {{"{INPUT_NAME}": x}})[0]',
        f"classes = {list(manifest.classes)!r}",
        "print(classes[int(logits.argmax())])", "```"]


def _formats(manifest: Manifest) -> list[str]:
    """The bundle's other formats: files, accuracy measured on labelled images, latency."""
    if not manifest.formats:
        return []
    lines = ["## Other formats", ""]
    reference = manifest.verification.ort_latency_ms_batch1
    for name, record in manifest.formats.items():
        files = ", ".join(f"`{f}`" for f in record.files)
        line = f"- `{name}`: {files}, {'verified' if record.passed else 'FAILED'}"
        for c in record.checks:
            if c.accuracy is not None and c.reference_accuracy is not None:
                line += (f"; top-1 accuracy {c.accuracy!r} on the {c.name} ({c.batch_size} "
                         f"images; the float32 graph: {c.reference_accuracy!r})")
        if record.ort_latency_ms_batch1 is not None:
            line += (f"; onnxruntime CPU latency at batch 1 {record.ort_latency_ms_batch1:.3f} ms"
                     + ("" if reference is None else f" (float32 graph {reference:.3f} ms)"))
        lines.append(line)
    return [*lines, ""]


def render_card(manifest: Manifest, name: str, *, spec: ArchitectureSpec | None = None,
                confusion: Confusion | None = None, pictures: Sequence[str] = ()) -> str:
    """The model card of the bundle ``name`` described by ``manifest``, as Markdown."""
    training = manifest.training
    shape = manifest.model.input_shape
    classes = manifest.classes
    m = exported_metrics(manifest)
    prov = manifest.provenance
    lines = [*_front_matter(manifest, name, spec), "", f"# {name}", ""]
    if spec is not None:
        lines += [f"{spec.summary}", ""]
    dataset = training.dataset if training else "no data (untrained weights)"
    lines += [
        "## Intended use", "",
        f"Classifying {shape.channels}×{shape.height}×{shape.width} images into "
        f"{len(classes)} classes ({', '.join(classes)}), as in its training data ({dataset}). "
        "A small model for learning, experiments and baselines"
        + (f", built as in {spec.source}" if spec else "")
        + "; not for decisions about people, safety or anything where an error is costly.", "",
        "## Architecture and parameters", "",
        f"- architecture: `{manifest.architecture}`"
        + (f" from {prov.describe()}" if prov else ""),
        f"- hyperparameters: `{json.dumps(manifest.model.hparams, sort_keys=True)}`",
        f"- parameters: {manifest.num_parameters:,}",
        f"- input: {shape.channels}×{shape.height}×{shape.width}, normalized with mean "
        f"{_rounded(manifest.normalization.mean)} and std "
        f"{_rounded(manifest.normalization.std)}",
        f"- files: `model.pt` (state_dict), `{ONNX_FILE}` (opset {manifest.export.opset}, "
        f"{manifest.export.exporter} exporter, dynamic batch axis)",
        f"- verification: ONNX against PyTorch "
        f"{'passed' if manifest.verification.passed else 'FAILED'} (atol "
        f"{manifest.verification.atol:g}, rtol {manifest.verification.rtol:g})", ""]
    lines += ["## Training recipe", ""]
    if training is None or m is None:
        lines += ["Not trained: the weights are the architecture's seeded initialization.", ""]
    else:
        recipe = training.recipe
        keys = ("optimizer", "lr", "momentum", "nesterov", "weight_decay", "schedule",
                "warmup_fraction", "epochs", "batch_size", "label_smoothing", "grad_clip",
                "flip", "crop_padding", "seed")
        settings = ", ".join(f"{k} {recipe[k]}" for k in keys if k in recipe)
        lines += [
            f"- data: {training.dataset}, {training.train_size} training and "
            f"{training.val_size} validation images; split: {training.split}",
            f"- recipe: {settings}",
            f"- trained {training.epochs_completed} epochs in {training.train_seconds:.1f} s on "
            f"{training.device}; this bundle holds `{training.checkpoint}` (epoch {m.epoch})", ""]
        lines += ["## Evaluation results", "",
                  f"On the validation split ({training.val_size} images; {training.split}):", "",
                  "| split | epoch | accuracy | loss |", "|---|---:|---:|---:|",
                  f"| validation | {m.epoch} | {m.val_acc!r} | {m.val_loss!r} |",
                  f"| train (during the epoch, augmented) | {m.epoch} | {m.train_acc!r} | "
                  f"{m.train_loss!r} |"]
        last = training.last
        if last is not None and last.epoch != m.epoch:
            lines.append(f"| validation, last epoch | {last.epoch} | {last.val_acc!r} | "
                         f"{last.val_loss!r} |")
        lines.append("")
        if confusion is not None:
            lines += [f"Validation confusion matrix (epoch {m.epoch}; rows: true class):", "",
                      *_confusion_table(confusion, classes), ""]
        lines += [f"![{p.removesuffix('.png')}]({p})" for p in pictures]
        lines += [""] if pictures else []
    lines += _formats(manifest)
    lines += [
        "## Limitations", "",
        f"- It knows only {', '.join(classes)}: any other image is still given one of these "
        "classes, often with high confidence (the chapter's cat classified as a bird).",
        f"- It sees {shape.height}×{shape.width} pixels: larger images are shrunk, and it "
        "cannot find an object in a larger scene.",
        "- Its accuracy was measured on held-out images of the same source as its training "
        "data; other cameras, crops or styles may do worse.", "",
        *_loading(manifest, name), ""]
    return "\n".join(lines)


def draw_confusion(confusion: Confusion, classes: Sequence[str], path: Path, title: str) -> int:
    """The confusion matrix as a heat map with counts; return the number of cells."""
    counts = np.asarray(confusion, dtype=np.int64)
    k = len(classes)
    fig = new_figure(max(3.2, 0.45 * k + 2.0), max(3.0, 0.45 * k + 1.6))
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(counts, cmap="Blues")
    if k <= 20:
        high = counts.max() or 1
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if counts[i, j] > high / 2 else "black")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(classes, rotation=45 if k > 4 else 0, fontsize=8)
    ax.set_yticklabels(classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_png(fig, path)
    return k * k


def _run_metrics(summary: RunSummary | None, run_dir: Path | None) -> list[EpochMetrics]:
    """The run's epochs: from ``run.json`` (the trainer's record, whatever plugins ran), else
    from ``metrics.jsonl`` for a run of zoo 0.1."""
    if summary is not None and summary.history:
        return list(summary.history)
    path = run_dir / METRICS_JSONL if run_dir is not None else None
    if path is None or not path.is_file():
        return []
    return [EpochMetrics.model_validate_json(line)
            for line in path.read_text().splitlines() if line.strip()]


def write_card(bundle_dir: Path, manifest: Manifest, name: str, *,
               spec: ArchitectureSpec | None = None, summary: RunSummary | None = None,
               run_dir: Path | None = None) -> list[str]:
    """Write ``README.md`` (and ``confusion.png``, ``curves.png`` from a run) into a bundle.

    Returns the names of the files written, for the manifest to hash.
    """
    written: list[str] = []
    confusion = None
    if summary is not None and manifest.training is not None:
        last = manifest.training.checkpoint == LAST_CHECKPOINT
        confusion = summary.last_confusion if last else summary.best_confusion
        if confusion is not None and len(confusion) != len(manifest.classes):
            confusion = None
    m = exported_metrics(manifest)
    if confusion is not None and m is not None:
        draw_confusion(confusion, manifest.classes, bundle_dir / CONFUSION_PNG,
                       f"{name}: validation, epoch {m.epoch}")
        written.append(CONFUSION_PNG)
    metrics = _run_metrics(summary, run_dir)
    if metrics:
        draw_curves(metrics, bundle_dir / CURVES_PNG,
                    f"{run_dir.name if run_dir else name}: {manifest.architecture}")
        written.append(CURVES_PNG)
    text = render_card(manifest, name, spec=spec, confusion=confusion, pictures=written)
    atomic_write_text(bundle_dir / CARD_FILE, text)
    return [CARD_FILE, *written]


__all__ = ["CARD_FILE", "CONFUSION_PNG", "CURVES_PNG", "draw_confusion", "exported_metrics",
           "plugin_license", "render_card", "write_card"]
