"""The two halves of the zoo agree: the trainer's data pipeline and the deployed predictor.

One small image-folder dataset of files in several formats and sizes is
trained on (NetBatchNorm, two epochs), exported, and loaded into the
torch-free :class:`~zoo.deploy.OnnxClassifier`. The predictor's preprocessing
of the files must equal the trainer's tensors for the same files, and the
run's recorded validation loss and accuracy must be what the predictor
computes on the validation folder.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zoo import DatasetRequest, default_registry
from zoo.deploy import OnnxClassifier
from zoo.exporter.write import export
from zoo.host.contract import load_dataset
from zoo.spec.dataset import LoadedDataset
from zoo.spec.run import RunSummary, read_summary
from zoo.trainer.loop import train
from zoo.trainer.pipeline import DeviceData, compute_normalization

CLASSES = ("plane", "sky")
#: name, PIL mode, (width, height): RGB, JPEG, grey, RGBA, palette, odd sizes
FORMATS = [("rgb.png", "RGB", (32, 32)), ("photo.jpg", "RGB", (45, 37)),
           ("grey.png", "L", (40, 28)), ("alpha.png", "RGBA", (32, 32)),
           ("palette.gif", "P", (31, 33)), ("small.bmp", "RGB", (16, 16))]


def _write(root: Path, per_class: int, seed: int) -> list[Path]:
    """Files in every format; class 0 has a bright left half, class 1 a bright right half."""
    rng = np.random.default_rng(seed)
    paths = []
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            fname, mode, (w, h) = FORMATS[i % len(FORMATS)]
            pixels = rng.normal(90, 40, (h, w, 4))
            half = slice(0, w // 2) if c == 0 else slice(w // 2, w)
            pixels[:, half, :3] += 100
            pixels[:, :, 3] = rng.uniform(120, 255, (h, w))
            data = np.clip(pixels, 0, 255).astype(np.uint8)
            channels = {"RGB": 3, "L": 1, "RGBA": 4, "P": 3}[mode]
            image = Image.fromarray(data[:, :, 0] if channels == 1 else data[:, :, :channels])
            if mode == "P":
                image = image.convert("P")
            path = root / name / f"{i:02d}-{fname}"
            image.save(path)
            paths.append(path)
    return sorted(paths, key=lambda p: (p.parent.name, p.name))  # the dataset's scan order


@dataclass
class Trained:
    run: Path
    summary: RunSummary
    data: LoadedDataset
    val_files: list[Path]
    classifier: OnnxClassifier


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    tmp = tmp_path_factory.mktemp("crosscheck")
    _write(tmp / "train", 18, seed=0)
    val_files = _write(tmp / "val", 9, seed=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ZOO_CACHE_DIR", str(tmp / "cache"))
        result = train("NetBatchNorm", dataset="imagefolder", data_dir=tmp / "train",
                       val_dir=tmp / "val", model={"n_chans1": 8}, epochs=2, batch_size=12,
                       lr=0.05, progress="none", num_threads=1, out=tmp / "run")
        export(result.run_dir, out=tmp / "bundle")
        request = DatasetRequest(data_dir=tmp / "train", val_dir=tmp / "val",
                                 image_size=(32, 32), channels=3, cache_dir=tmp / "cache")
        data = load_dataset(default_registry().get_dataset("imagefolder"), request)
    return Trained(result.run_dir, read_summary(result.run_dir), data, val_files,
                   OnnxClassifier(tmp / "bundle"))


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("prenormalize", [True, False])
def test_predictor_preprocessing_equals_the_trainers(trained: Trained, channels_last: bool,
                                                     prenormalize: bool) -> None:
    val = trained.data.val
    assert len(val) == len(trained.val_files)
    device_data = DeviceData(val.images, val.labels, torch.device("cpu"),
                             trained.summary.normalization, channels_last,
                             prenormalize_bytes=1 << 30 if prenormalize else 0)
    x, y = device_data.batch(torch.arange(len(val)))
    ours = trained.classifier.preprocess(trained.val_files)
    np.testing.assert_allclose(ours, x.numpy(), atol=1e-5, rtol=1e-6)
    labels = [CLASSES.index(p.parent.name) for p in trained.val_files]
    assert y.tolist() == labels
    # in-memory images (PIL) go through the predictor's other path: the same tensors
    opened = [Image.open(p) for p in trained.val_files]
    try:
        np.testing.assert_allclose(trained.classifier.preprocess(opened), ours, atol=1e-6)
    finally:
        for image in opened:
            image.close()


def test_trainer_normalization_standardizes_the_training_split(trained: Trained) -> None:
    train_split = trained.data.train
    device_data = DeviceData(train_split.images, train_split.labels, torch.device("cpu"),
                             trained.summary.normalization, channels_last=False)
    x, _ = device_data.batch(torch.arange(len(train_split)))
    per_channel = x.double().transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(per_channel.mean(1), torch.zeros(3, dtype=torch.float64),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(per_channel.std(1, unbiased=False),
                               torch.ones(3, dtype=torch.float64), atol=1e-5, rtol=0)


def test_recorded_validation_metrics_are_the_predictors(trained: Trained) -> None:
    """The exported (best) epoch's recorded val loss and accuracy, recomputed by onnxruntime
    from the image files."""
    best = trained.summary.best
    assert best is not None
    manifest_training = trained.classifier.manifest.training
    assert manifest_training is not None and manifest_training.best == best
    logits = trained.classifier.logits(trained.val_files).astype(np.float64)
    labels = np.array([CLASSES.index(p.parent.name) for p in trained.val_files])
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = float(-log_probs[np.arange(len(labels)), labels].mean())
    accuracy = float((logits.argmax(axis=1) == labels).mean())
    assert loss == pytest.approx(best.val_loss, rel=1e-4)
    assert accuracy == best.val_acc
    assert accuracy > 0.5  # the model learned something, so the labels are checked too
    predicted = [p.label for p in trained.classifier.predict(trained.val_files)]
    assert predicted == [CLASSES[i] for i in logits.argmax(axis=1)]


@pytest.mark.parametrize("n", [1, 4096, 4097, 10_000])
def test_normalization_statistics_are_exact_past_one_chunk(n: int) -> None:
    """Mean and std are accumulated 4,096 images at a time: every chunk counts."""
    rng = np.random.default_rng(n)
    images = rng.integers(0, 256, (n, 2, 2, 3), dtype=np.uint8)
    images[n // 2:, 1] //= 3  # the later images differ: a dropped chunk shows
    norm = compute_normalization(images)
    scaled = images.astype(np.float64) / 255.0
    np.testing.assert_allclose(norm.mean, scaled.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(norm.std, scaled.std(axis=(0, 2, 3)), rtol=1e-9)


def test_a_constant_channel_is_left_unscaled() -> None:
    images = np.zeros((5, 2, 4, 4), dtype=np.uint8)
    images[:, 0] = 200
    images[:, 1, 0, 0] = 255
    norm = compute_normalization(images)
    assert norm.std[0] == 1.0  # no division by zero: the channel is only centred
    assert norm.mean[0] == pytest.approx(200 / 255)
    assert 0 < norm.std[1] < 1


def test_a_tiny_but_real_spread_is_kept() -> None:
    """Only a constant channel is left unscaled: one pixel in 6.5 million that differs by
    one grey level is a std of about 1.5e-6, and it is used as it is."""
    images = np.zeros((1625, 1, 2000, 2), dtype=np.uint8)
    images[0, 0, 0, 0] = 1
    norm = compute_normalization(images)
    p = 1 / images.size
    assert norm.std[0] == pytest.approx(np.sqrt(p * (1 - p)) / 255, rel=1e-6)
    assert 1e-6 < norm.std[0] < 2e-6


def test_recorded_training_metrics_are_the_models_on_the_training_split(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An epoch's train loss and accuracy, recomputed from the training images by its
    weights: a learning rate of 1e-12 keeps them fixed through the epoch, and neither
    augmentation, label smoothing nor a layer that differs in training mode is used."""
    import torch.nn.functional as F

    from zoo.trainer.checkpoint import load_run_model

    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
    started = time.perf_counter()
    result = train("Net", dataset_options={"size": 150, "num_classes": 3},
                   model={"in_height": 16, "in_width": 16}, epochs=1, batch_size=32, lr=1e-12,
                   momentum=0.0, weight_decay=0.0, schedule="none", label_smoothing=0.0,
                   grad_clip=0.0, flip=False, crop_padding=0, amp="off", progress="none",
                   num_threads=1, out=tmp_path / "run")
    elapsed = time.perf_counter() - started
    model, summary, _ = load_run_model(result.run_dir, default_registry(), "last.pt",
                                       command="test")
    request = DatasetRequest(image_size=(16, 16), channels=3, val_split=0.1, seed=0,
                             cache_dir=tmp_path / "cache")
    data = load_dataset(default_registry().get_dataset("synthetic"), request, size=150,
                        num_classes=3)
    assert len(data.train) == summary.data.train_size == 135  # not a whole number of batches
    x, y = DeviceData(data.train.images, data.train.labels, torch.device("cpu"),
                      summary.normalization, channels_last=False).batch(
                          torch.arange(len(data.train)))
    with torch.no_grad():
        logits = model.eval()(x).double()
    metrics = result.metrics[0]
    assert metrics.train_loss == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    assert metrics.train_acc == pytest.approx((logits.argmax(1) == y).double().mean().item(),
                                              abs=1e-12)
    # its speed: the images over the seconds of the epoch's training, within the call
    assert len(data.train) / elapsed <= metrics.images_per_s
    assert 0 < metrics.seconds <= elapsed and 0 < summary.train_seconds <= elapsed
    assert summary.train_seconds == pytest.approx(metrics.seconds, abs=0.05)  # one epoch
    from zoo.trainer.checkpoint import load_checkpoint
    from zoo.trainer.rundir import RunLock

    assert load_checkpoint(result.run_dir / "checkpoints" / "last.pt")["format"] == 2
    with RunLock(result.run_dir, command="another reader", shared=True):  # readers share
        load_run_model(result.run_dir, default_registry(), "best.pt", command="test")
    # the validation confusion matrix: rows true classes, the diagonal the accuracy
    confusion = np.array(summary.last_confusion)
    xv, yv = DeviceData(data.val.images, data.val.labels, torch.device("cpu"),
                        summary.normalization, channels_last=False).batch(
                            torch.arange(len(data.val)))
    with torch.no_grad():
        predicted = model(xv).argmax(1)
    expected = np.zeros((3, 3), dtype=np.int64)
    np.add.at(expected, (yv.numpy(), predicted.numpy()), 1)
    np.testing.assert_array_equal(confusion, expected)
    assert confusion.trace() / confusion.sum() == metrics.val_acc


def test_a_tie_keeps_the_first_best_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
    result = train("Net", dataset_options={"size": 60, "num_classes": 2},
                   model={"in_height": 16, "in_width": 16}, epochs=2, batch_size=32, lr=1e-12,
                   schedule="none", flip=False, crop_padding=0, progress="none", num_threads=1,
                   out=tmp_path / "run")
    assert result.metrics[0].val_acc == result.metrics[1].val_acc  # the weights barely move
    assert result.summary.best is not None and result.summary.best.epoch == 1
    from zoo.trainer.checkpoint import load_checkpoint

    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")["epoch"] == 1


def test_a_diverging_run_stops_within_fifty_steps(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from zoo.errors import TrainingError

    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(TrainingError, match=r"non-finite in epoch 1 \(by step 50, lr 1e\+0?30\)"):
        train("Net", dataset_options={"size": 150, "num_classes": 2},
              model={"in_height": 8, "in_width": 8}, epochs=1, batch_size=1, lr=1e30,
              schedule="none", grad_clip=0.0, progress="none", num_threads=1,
              out=tmp_path / "run")
