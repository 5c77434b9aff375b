"""Score a model on a folder of class folders (``zoo evaluate MODEL DIR``, ``zoo.evaluate``).

Named ``evaluation`` so that the module does not shadow the function ``zoo.evaluate``.

The model is a bundle directory, a shipped name (``Net``, ``Net-cifar2``: see
:func:`zoo.bundles.store.resolve_bundle`) or a run directory. ``DIR`` holds one folder
per class (``DIR/airplane/*.jpg``, images found recursively); folder names are
matched to the model's class names, and a model class without a folder is fine.
A folder naming a class the model does not know is an error, unless there is a
folder for every class of the model (a larger labelled set, such as the CIFAR-10
test folders for a model of two of its classes): the others are then left out,
and named. Images are decoded and classified one batch at a time, so memory
stays flat in the number of images.

A bundle runs on onnxruntime by default (torch-free) or on PyTorch
(``backend="torch"``); both see the same preprocessed pixels. A run directory has
no ONNX graph and runs on PyTorch, from its best checkpoint.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from zoo.errors import DataError, ZooError
from zoo.util.fsutil import atomic_path, atomic_write_text, check_output_folder, output_folder
from zoo.util.imagefiles import find_images
from zoo.util.imaging import ImageDecodeError, decode_image, normalize

if TYPE_CHECKING:
    from zoo.host.registry import Registry

Backend = Literal["onnxruntime", "torch"]
BACKENDS: tuple[Backend, ...] = ("onnxruntime", "torch")
DEFAULT_BATCH_SIZE = 256
CONFUSION_PNG = "confusion_matrix.png"
EVALUATION_JSON = "evaluation.json"
#: The text confusion matrix shows every model class up to this many, else only those seen.
TEXT_MATRIX_CLASSES = 20


class ClassAccuracy(BaseModel):
    """Accuracy on the images of one class folder."""

    model_config = ConfigDict(frozen=True)

    name: str
    images: int
    correct: int
    accuracy: float | None = Field(description="correct / images; None for an empty folder.")


class SkippedFile(BaseModel):
    """A file in a class folder that is not a readable image."""

    model_config = ConfigDict(frozen=True)

    path: str
    error: str


class Evaluation(BaseModel):
    """Accuracy, per-class accuracy and confusion matrix of a model on a labelled folder."""

    model_config = ConfigDict(frozen=True)

    model: str = Field(description="The model as given: a bundle, a shipped name or a run.")
    bundle: str | None = Field(description="The bundle directory's name (None for a run).")
    architecture: str
    backend: Backend
    data_dir: str = Field(description="The labelled folder, as given.")
    classes: tuple[str, ...] = Field(description="The model's classes: the confusion order.")
    images: int
    correct: int
    accuracy: float
    per_class: tuple[ClassAccuracy, ...] = Field(description="Each class folder of data_dir.")
    confusion: tuple[tuple[int, ...], ...] = Field(
        description="confusion[true][predicted]: image counts, in the order of classes.")
    skipped: tuple[SkippedFile, ...] = ()
    left_out: tuple[str, ...] = Field(
        (), description="Folders of data_dir that are not classes of the model: not scored.")
    seconds: float

    def format(self) -> str:
        """The report as text: accuracy, per-class table and confusion matrix."""
        name = f"{self.bundle} ({self.architecture})" if self.bundle else self.model
        lines = [f"{name} on {self.data_dir}, {self.backend}: {self.images} images",
                 f"accuracy {self.accuracy:.4f} ({self.correct} of {self.images})"]
        if self.left_out:
            lines.append(f"left out {len(self.left_out)} folder(s) that are not classes of "
                         f"{self.architecture}: {', '.join(self.left_out)}")
        lines.append("")
        rows = [[c.name, str(c.images), str(c.correct),
                 "-" if c.accuracy is None else f"{c.accuracy:.4f}"] for c in self.per_class]
        lines += _table(["class", "images", "correct", "accuracy"], rows)
        present = {c.name for c in self.per_class}
        shown = [i for i, c in enumerate(self.classes)
                 if len(self.classes) <= TEXT_MATRIX_CLASSES or c in present
                 or any(row[i] for row in self.confusion)]
        true_rows = [i for i, c in enumerate(self.classes) if c in present]
        lines += ["", "confusion matrix (rows: true class, columns: predicted class)"]
        lines += _table(["", *(self.classes[i] for i in shown)],
                        [[self.classes[t], *(str(self.confusion[t][p]) for p in shown)]
                         for t in true_rows])
        return "\n".join(lines)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                      for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
            for row in [header, *rows]]


class LabelledFiles(NamedTuple):
    """The class folders of a labelled folder that are scored, their images, and the rest."""

    folders: list[str]
    files: list[tuple[Path, int]]
    left_out: list[str]


def labelled_files(data_dir: Path, classes: Sequence[str],
                   architecture: str = "the model") -> LabelledFiles:
    """The class folders of ``data_dir``, its images as (path, index into ``classes``), and
    the folders left out.

    Folders are matched to ``classes`` by name; a class without a folder is fine. A
    folder that is not one of ``classes`` is a :class:`DataError` naming it and them,
    unless every class has its folder: then ``data_dir`` is a larger labelled set (the
    CIFAR-10 test folders for a model of two of its classes), whose other folders are
    left out.
    """
    if not data_dir.is_dir():
        raise DataError(f"{str(data_dir)!r} is not a directory; zoo evaluate needs a folder of "
                        "class folders (DIR/CLASS/image.jpg)")
    try:
        found = sorted(p for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as exc:
        raise DataError(f"cannot read {str(data_dir)!r}: {exc.strerror or exc}; zoo evaluate "
                        "needs a readable folder of class folders") from None
    if not found:
        raise DataError(f"{str(data_dir)!r} holds no class folders; zoo evaluate needs a folder "
                        f"of class folders named after the classes ({', '.join(classes)})")
    index = {name: i for i, name in enumerate(classes)}
    folders = [p for p in found if p.name in index]
    left_out = [p.name for p in found if p.name not in index]
    missing = sorted(set(classes) - {p.name for p in folders}, key=index.__getitem__)
    if left_out and (missing or not folders):
        names = ", ".join(map(repr, left_out[:10])) + (", ..." if len(left_out) > 10 else "")
        hint = (f"; a folder of more classes is scored on the model's classes only when it "
                f"has a folder for each (missing: {', '.join(missing)})" if folders else "")
        raise DataError(f"class folder(s) {names} in {str(data_dir)!r} are not classes of "
                        f"{architecture}; its classes: {', '.join(classes)}{hint}")
    files: list[tuple[Path, int]] = []
    for folder in folders:
        files += [(p, index[folder.name]) for p in find_images(folder, strict=True)]
    if not files:
        raise DataError(f"the class folders of {str(data_dir)!r} hold no image files")
    return LabelledFiles([p.name for p in folders], files, left_out)


@dataclass
class _Model:
    """What evaluation needs of a model: its preprocessing and a batch → logits function."""

    architecture: str
    bundle: str | None
    classes: tuple[str, ...]
    channels: int
    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    logits: Callable[[np.ndarray], np.ndarray]


def _torch_logits(module: Any) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    module.eval()

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(batch)).float().numpy()  # type: ignore[no-any-return]

    return run


def load_model(model: str | os.PathLike[str], backend: Backend | None = None, *,
               weights: str | None = None, threads: int | None = None,
               registry: Registry | None = None,
               expect_sha256: str | None = None) -> tuple[_Model, Backend]:
    """The model to evaluate, on ``backend`` (default: onnxruntime, PyTorch for a run);
    ``expect_sha256`` pins a bundle (a run directory has no such digest)."""
    from zoo.spec.run import SUMMARY_FILE

    if backend is not None and backend not in BACKENDS:
        raise ZooError(f"unknown backend {backend!r}; accepted: {', '.join(BACKENDS)}")
    path = Path(model)
    if weights is None and (path / SUMMARY_FILE).is_file():
        if expect_sha256 is not None:
            raise ZooError(f"{str(model)!r} is a run directory: --expect-sha256 pins a bundle "
                           f"(export it with zoo export {model}, then pin what it prints)")
        if backend == "onnxruntime":
            raise ZooError(f"{str(model)!r} is a run directory, which has no ONNX graph; export "
                           f"it (zoo export {model}) or evaluate it with --backend torch")
        return _run_model(path, registry), "torch"
    from zoo.bundles.store import resolve_bundle

    bundle = resolve_bundle(model, weights=weights, registry=registry)
    backend = backend or "onnxruntime"
    if backend == "onnxruntime":
        from zoo.deploy import OnnxClassifier

        clf = OnnxClassifier(bundle, threads=threads, expect_sha256=expect_sha256)
        manifest = clf.manifest
        run: Callable[[np.ndarray], np.ndarray] = clf.run
    else:
        from zoo.models.load import load_bundle

        loaded = load_bundle(bundle, registry=registry, expect_sha256=expect_sha256)
        manifest = loaded.manifest
        run = _torch_logits(loaded.model)
    shape = manifest.model.input_shape
    return _Model(manifest.architecture, bundle.name, tuple(manifest.classes), shape.channels,
                  (shape.height, shape.width), manifest.normalization.mean,
                  manifest.normalization.std, run), backend


def _run_model(run_dir: Path, registry: Registry | None) -> _Model:
    from zoo.host.registry import default_registry
    from zoo.trainer.checkpoint import load_run_model

    module, summary, _ = load_run_model(run_dir, registry or default_registry(),
                                        command="zoo evaluate")
    shape = summary.model.input_shape
    return _Model(summary.model.architecture, None, tuple(summary.data.classes), shape.channels,
                  (shape.height, shape.width), summary.normalization.mean,
                  summary.normalization.std, _torch_logits(module))


def evaluate(
    model: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    *,
    backend: Backend | None = None,
    weights: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    threads: int | None = None,
    out: str | os.PathLike[str] | None = None,
    registry: Registry | None = None,
    on_skip: Callable[[SkippedFile], None] | None = None,
    expect_sha256: str | None = None,
) -> Evaluation:
    """Accuracy, per-class accuracy and confusion matrix of ``model`` on ``data_dir``.

    ``model``: a bundle directory, a shipped name (``weights`` picks a weight set)
    or a run directory. ``backend``: ``"onnxruntime"`` (default for bundles) or
    ``"torch"``. Unreadable files are skipped and listed in the result (``on_skip``
    is told of each as it happens). With ``out``, ``evaluation.json`` and a
    confusion-matrix PNG (``confusion_matrix.png``) are written there. ``expect_sha256``
    refuses any bundle but the one whose manifest has that SHA-256.
    """
    if batch_size < 1:
        raise ZooError(f"batch size must be at least 1, got {batch_size}")
    if out is not None:
        check_output_folder(out, "evaluation folder --out")
    start = time.perf_counter()
    loaded, used = load_model(model, backend, weights=weights, threads=threads,
                              registry=registry, expect_sha256=expect_sha256)
    folders, files, left_out = labelled_files(Path(data_dir), loaded.classes,
                                              loaded.architecture)
    n = len(loaded.classes)
    confusion = np.zeros((n, n), dtype=np.int64)
    skipped: list[SkippedFile] = []
    for first in range(0, len(files), batch_size):  # decode one batch at a time
        arrays, labels = [], []
        for path, label in files[first:first + batch_size]:
            try:
                arrays.append(decode_image(path, loaded.channels, loaded.size))
            except ImageDecodeError as exc:
                skip = SkippedFile(path=str(path), error=str(exc).removeprefix(f"{path}: "))
                skipped.append(skip)
                if on_skip is not None:
                    on_skip(skip)
                continue
            labels.append(label)
        if not arrays:
            continue
        batch = np.ascontiguousarray(normalize(np.stack(arrays), loaded.mean, loaded.std),
                                     dtype=np.float32)
        predicted = loaded.logits(batch).argmax(axis=1)
        np.add.at(confusion, (np.asarray(labels), predicted), 1)
    total = int(confusion.sum())
    if total == 0:
        raise DataError(f"none of the {len(files)} image files in {str(data_dir)!r} is readable")
    correct = int(np.trace(confusion))
    per_class = []
    for name in folders:
        i = loaded.classes.index(name)
        images, hits = int(confusion[i].sum()), int(confusion[i, i])
        per_class.append(ClassAccuracy(name=name, images=images, correct=hits,
                                       accuracy=hits / images if images else None))
    result = Evaluation(
        model=os.fspath(model), bundle=loaded.bundle, architecture=loaded.architecture,
        backend=used, data_dir=os.fspath(data_dir), classes=loaded.classes, images=total,
        correct=correct, accuracy=correct / total, per_class=tuple(per_class),
        confusion=tuple(tuple(int(v) for v in row) for row in confusion),
        skipped=tuple(skipped), left_out=tuple(left_out),
        seconds=round(time.perf_counter() - start, 3))
    if out is not None:
        write_outputs(result, Path(out))
    return result


def write_outputs(result: Evaluation, out: Path) -> None:
    """``evaluation.json`` and ``confusion_matrix.png`` in ``out``, each written atomically."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ZooError("writing the confusion-matrix PNG needs matplotlib "
                       "(pip install matplotlib)") from None
    with output_folder(out, "evaluation folder --out"):
        _write_outputs(result, out, plt)


def _write_outputs(result: Evaluation, out: Path, plt: Any) -> None:
    atomic_write_text(out / EVALUATION_JSON, result.model_dump_json(indent=2) + "\n")
    matrix = np.asarray(result.confusion, dtype=np.float64)
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    n = len(result.classes)
    size = min(4.0 + 0.5 * n, 20.0)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="share of the true class")
    ax.set_xticks(range(n), result.classes, rotation=45 if n > 4 else 0, ha="right"
                  if n > 4 else "center")
    ax.set_yticks(range(n), result.classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if n <= 30:
        for t in range(n):
            for p in range(n):
                ax.text(p, t, f"{int(matrix[t, p])}", ha="center", va="center",
                        color="white" if share[t, p] > 0.5 else "black")
    name = result.bundle or result.model
    ax.set_title(f"{name} on {Path(result.data_dir).name}: accuracy {result.accuracy:.4f} "
                 f"({result.backend})")
    try:
        fig.tight_layout()
        with atomic_path(out / CONFUSION_PNG) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)


def print_skip(skip: SkippedFile) -> None:
    """Report an unreadable file on stderr (the CLI's ``on_skip``)."""
    print(f"zoo: warning: {skip.path}: {skip.error}", file=sys.stderr)


__all__ = ["BACKENDS", "ClassAccuracy", "Evaluation", "SkippedFile", "evaluate",
           "labelled_files", "load_model", "write_outputs"]
