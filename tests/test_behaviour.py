"""What a run records is what its files compute: validation mode, best.pt, export, resume.

The recorded validation metrics are recomputed here from the checkpoints, in
eval mode, on the validation split loaded through the dataset plugin; the
runs use the architectures' default 32x32 input.
"""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from export_helpers import make_run

import zoo
from zoo import DatasetRequest
from zoo.bundles.integrity import file_entry
from zoo.errors import BundleError, ExportError, TrainingError, ZooError
from zoo.exporter.write import export
from zoo.host.contract import load_dataset
from zoo.models.load import load_bundle
from zoo.spec.run import EpochMetrics, RunSummary, read_summary
from zoo.trainer.loop import select_device, train
from zoo.trainer.progress import Progress
from zoo.util.imaging import normalize

FAST: dict[str, Any] = {
    "dataset_options": {"size": 200, "num_classes": 2},  # 180 train, 20 val
    "batch_size": 32, "progress": "none", "num_threads": 1, "schedule": "none",
}


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))


def _val_split(summary: RunSummary, tmp_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's validation images (normalized as the run records) and labels."""
    cfg = summary.train_config
    spec = zoo.default_registry().get_dataset(summary.data.dataset)
    shape = summary.model.input_shape
    request = DatasetRequest(data_dir=cfg["data_dir"], val_dir=cfg["val_dir"],
                             val_split=cfg["val_split"], seed=summary.seed,
                             image_size=(shape.height, shape.width), channels=shape.channels,
                             cache_dir=tmp_path / "cache")
    data = load_dataset(spec, request, **cfg["dataset_options"])
    x = normalize(data.val.images, summary.normalization.mean, summary.normalization.std)
    return torch.from_numpy(x), torch.from_numpy(data.val.labels)


def _recompute(run_dir: Path, checkpoint: str, tmp_path: Path) -> tuple[float, float]:
    """Validation loss and accuracy of a checkpoint's weights, in eval mode."""
    summary = read_summary(run_dir)
    model = zoo.default_registry().build(summary.model)
    state = torch.load(run_dir / "checkpoints" / checkpoint, weights_only=True)
    model.load_state_dict(state["model"], strict=True)
    x, y = _val_split(summary, tmp_path)
    model.eval()
    with torch.no_grad():
        logits = model(x)
    loss = float(F.cross_entropy(logits.double(), y))
    acc = float((logits.argmax(1) == y).double().mean())
    return loss, acc


@pytest.mark.parametrize("architecture", ["NetBatchNorm", "NetDropout"])
def test_validation_runs_in_eval_mode(architecture: str, tmp_path: Path) -> None:
    """Recorded val metrics are the eval-mode metrics of the saved weights: no dropout, and
    BatchNorm normalizes with its running statistics, which validation leaves unchanged."""
    result = train(architecture, epochs=1, out=tmp_path / "run", **FAST)
    m = result.metrics[0]
    loss, acc = _recompute(result.run_dir, "last.pt", tmp_path)
    assert m.val_loss == pytest.approx(loss, rel=1e-5, abs=1e-6)
    assert m.val_acc == acc
    if architecture == "NetBatchNorm":
        state = torch.load(result.run_dir / "checkpoints" / "last.pt", weights_only=True)
        steps = -(-result.summary.data.train_size // FAST["batch_size"])
        # each BatchNorm counted one update per training step, none for validation batches
        assert int(state["model"]["conv1_batchnorm.num_batches_tracked"]) == steps


def _colour_folder(root: Path, colours: dict[str, tuple[int, int, int]], n: int,
                   seed: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name, colour in colours.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            pixels = np.clip(rng.normal(colour, 40.0, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:03d}.png")


@pytest.fixture(scope="module")
def peaked_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run whose best epoch is not its last: the validation folders swap the classes'
    colours, so the better the model learns the training set, the worse it validates."""
    tmp = tmp_path_factory.mktemp("peaked")
    red, blue = (200, 60, 60), (60, 60, 200)
    _colour_folder(tmp / "train", {"a": red, "b": blue}, 40, seed=0)
    _colour_folder(tmp / "val", {"a": blue, "b": red}, 10, seed=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ZOO_CACHE_DIR", str(tmp / "cache"))
        run = tmp / "run"
        train("Net", dataset="imagefolder", data_dir=tmp / "train", val_dir=tmp / "val",
              epochs=3, lr=0.02, out=run,
              **{k: v for k, v in FAST.items() if k != "dataset_options"})
    return run


def test_best_checkpoint_holds_the_best_epoch(peaked_run: Path, tmp_path: Path) -> None:
    run = peaked_run
    summary = read_summary(run)
    assert summary.best is not None and summary.last is not None
    assert summary.best.epoch < summary.last.epoch == 3, "the run must peak before its end"
    assert summary.best.val_loss != summary.last.val_loss
    best_loss, best_acc = _recompute(run, "best.pt", tmp_path)
    assert (best_loss, best_acc) == pytest.approx((summary.best.val_loss, summary.best.val_acc),
                                                  rel=1e-5)
    last_loss, last_acc = _recompute(run, "last.pt", tmp_path)
    assert (last_loss, last_acc) == pytest.approx((summary.last.val_loss, summary.last.val_acc),
                                                  rel=1e-5)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    recorded = [EpochMetrics.model_validate_json(line) for line in lines]
    assert max(recorded, key=lambda m: m.val_acc) == summary.best


@pytest.mark.parametrize("which", ["best", "last"])
def test_export_takes_the_checkpoint_the_manifest_names(peaked_run: Path,
                                                        tmp_path: Path, which: str) -> None:
    result = export(peaked_run, out=tmp_path / "bundle", checkpoint=which)
    training = result.manifest.training
    assert training is not None and training.checkpoint == f"{which}.pt"
    exported = torch.load(tmp_path / "bundle" / "model.pt", weights_only=True)
    saved = torch.load(peaked_run / "checkpoints" / f"{which}.pt",
                       weights_only=True)["model"]
    assert exported.keys() == saved.keys()
    assert all(torch.equal(exported[k], saved[k]) for k in saved)


def _tamper(weights: dict[str, torch.Tensor], change: str) -> None:
    if change == "missing":
        del weights["fc2.bias"]
    else:
        weights["fc3.weight"] = torch.zeros(2, 2)


def _tamper_checkpoint(path: Path, change: str) -> None:
    """A checkpoint whose weights miss or add a key, re-saved with a valid digest: only the
    strict loading can catch it."""
    from zoo.trainer.checkpoint import DIGEST_KEY, save_checkpoint

    state = torch.load(path, weights_only=True)
    state.pop(DIGEST_KEY, None)
    _tamper(state["model"], change)
    save_checkpoint(path, state)


@pytest.mark.parametrize("change", ["missing", "unexpected"])
def test_weights_load_strictly_on_export_and_resume(tmp_path: Path, change: str) -> None:
    run = tmp_path / "run"
    train("Net", epochs=1, out=run, **FAST)
    _tamper_checkpoint(run / "checkpoints" / "best.pt", change)
    with pytest.raises(ExportError, match=r"does not fit Net"):
        export(run, out=tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()
    _tamper_checkpoint(run / "checkpoints" / "last.pt", change)
    with pytest.raises((ZooError, RuntimeError), match=r"fc2.bias|fc3.weight"):
        train("Net", epochs=2, resume=run)
    assert read_summary(run).epochs_completed == 1


@pytest.mark.parametrize("change", ["missing", "unexpected"])
def test_bundle_weights_load_strictly(tmp_path: Path, change: str) -> None:
    """A bundle whose model.pt lacks a key or has one too many is refused, even when the
    manifest's checksums were updated to match it."""
    bundle = export(_make_run(tmp_path), out=tmp_path / "bundle").path
    weights = bundle / "model.pt"
    state = torch.load(weights, weights_only=True)
    _tamper(state, change)
    torch.save(state, weights)
    raw = json.loads((bundle / "manifest.json").read_text())
    raw["files"]["model.pt"] = file_entry(weights).model_dump()
    (bundle / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match=r"model.pt does not fit Net"):
        load_bundle(bundle)


def test_resume_refuses_changed_data_or_steps_per_epoch(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train("Net", epochs=1, out=run, **FAST)
    with pytest.raises(ZooError, match=r"cannot resume .* with dataset_options=.*the run "
                                        r"started with dataset_options="):
        train("Net", epochs=2, resume=run,
              dataset_options={**FAST["dataset_options"], "size": 240})
    with pytest.raises(TrainingError, match=r"steps per epoch"):
        train("Net", epochs=2, resume=run, batch_size=64)
    assert read_summary(run).epochs_completed == 1
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04truncated"])
def test_a_corrupt_checkpoint_on_resume_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    run = tmp_path / "run"
    train("Net", epochs=1, out=run, **FAST)
    (run / "checkpoints" / "last.pt").write_bytes(content)
    with pytest.raises(TrainingError, match=r"cannot read checkpoint .*last\.pt"):
        train("Net", epochs=2, resume=run)
    torch.save({"epoch": 1}, run / "checkpoints" / "last.pt")
    with pytest.raises(TrainingError, match=r"not a zoo training checkpoint"):
        train("Net", epochs=2, resume=run)


def test_curves_are_drawn(tmp_path: Path) -> None:
    import matplotlib  # noqa: F401  (a dev dependency: never skipped)
    from PIL import Image

    run = train("Net", epochs=2, out=tmp_path / "run", **FAST).run_dir
    with Image.open(run / "curves.png") as png:
        assert png.format == "PNG" and png.size[0] > png.size[1] > 200
        colours = np.asarray(png.convert("RGB")).reshape(-1, 3)
    assert len(np.unique(colours, axis=0)) > 10  # lines and text, not a blank canvas


# -- device and progress -------------------------------------------------------------------


def test_device_selection() -> None:
    cuda = torch.cuda.is_available()
    mps = torch.backends.mps.is_available()
    expected = "cuda" if cuda else "mps" if mps else "cpu"
    assert select_device("auto").type == expected
    assert select_device("cpu") == torch.device("cpu")
    if not cuda:
        with pytest.raises(TrainingError, match=r"--device cuda was requested but CUDA is not"):
            select_device("cuda")
    else:
        assert select_device("cuda", local_rank=0) == torch.device("cuda", 0)
    if not mps:
        with pytest.raises(TrainingError, match=r"--device mps was requested but MPS"):
            select_device("mps")
    with pytest.raises(TrainingError, match=r"unknown device 'tpu'; accepted: auto, cpu"):
        select_device("tpu")


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


METRICS = EpochMetrics(epoch=2, train_loss=0.51234, train_acc=0.75, val_loss=0.6, val_acc=0.7,
                       images_per_s=12345.6, lr=0.0123, seconds=3.21)
EPOCH_LINE = ("epoch 2/5  train loss 0.5123 acc 0.7500  val loss 0.6000 acc 0.7000  "
              "12,346 img/s  lr 0.0123  3.2s\n")


def _progress(monkeypatch: pytest.MonkeyPatch, mode: str, tty: bool,
              enabled: bool = True) -> tuple[Progress, _Stream]:
    stream = _Stream(tty)
    monkeypatch.setattr(sys, "stderr", stream)
    return Progress(mode, enabled), stream


def test_progress_log_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    progress, stream = _progress(monkeypatch, "auto", tty=False)  # not a terminal: log lines
    progress.message("zoo: training")
    progress.step(1, 5, 3, 10)  # no bar in a log
    progress.epoch(METRICS, 5)
    assert stream.getvalue() == "zoo: training\n" + EPOCH_LINE


def test_progress_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    progress, stream = _progress(monkeypatch, "auto", tty=True)  # a terminal: a bar
    progress.step(1, 5, 1, 10)  # the first step (one-time work) is not timed
    progress.step(1, 5, 2, 10)  # within 0.2 s of the last draw: skipped
    time.sleep(0.25)
    progress.step(1, 5, 5, 10)  # 0.2 s later: drawn, timed from the end of the first step
    progress.step(1, 5, 10, 10)  # the last step is always drawn
    progress.epoch(METRICS, 5)
    draws = stream.getvalue().split("\r")[1:]
    assert len(draws) == 4
    assert draws[0] == "\033[Kepoch 1/5 [###" + "." * 27 + "] 1/10 warming up"
    bars = [re.fullmatch(r"\033\[Kepoch 1/5 \[([#.]{30})\] (\d+)/10 +([\d.]+)ms/step "
                         r"eta +([\d.]+)s", d) for d in draws[1:3]]
    assert all(bars), draws
    parsed = [(b[1].count("#"), int(b[2]), float(b[3]), float(b[4])) for b in bars if b]
    assert [(filled, step) for filled, step, _, _ in parsed] == [(15, 5), (30, 10)]
    (_, _, ms5, eta5), (_, _, _, eta10) = parsed
    assert 250 / 4 <= ms5 < 1000  # four steps timed over at least 0.25 s
    assert eta5 == pytest.approx(5 * ms5 / 1000, abs=0.1) and eta10 == 0.0
    assert draws[3] == "\033[K" + EPOCH_LINE


@pytest.mark.parametrize(("mode", "enabled"), [("none", True), ("bar", False), ("log", False)])
def test_progress_off_prints_nothing(monkeypatch: pytest.MonkeyPatch, mode: str,
                                     enabled: bool) -> None:
    progress, stream = _progress(monkeypatch, mode, tty=True, enabled=enabled)
    progress.message("x")
    progress.step(1, 1, 1, 1)
    progress.epoch(METRICS, 1)
    assert stream.getvalue() == ""


# -- the exporter's consistency checks -------------------------------------------------------


def _make_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    make_run(run, "Net")  # 3 classes, 3 channels
    return run


def _edit_summary(run: Path, edit: dict[str, Any]) -> None:
    raw = json.loads((run / "run.json").read_text())
    for dotted, value in edit.items():
        *parents, key = dotted.split(".")
        node = raw
        for p in parents:
            node = node[p]
        node[key] = value
    (run / "run.json").write_text(json.dumps(raw))


@pytest.mark.parametrize(("edit", "message"), [
    ({"data.classes": ["cat", "dog"]}, r"the run names 2 classes but its model has 3 outputs"),
    ({"normalization.mean": [0.5, 0.5], "normalization.std": [0.2, 0.2]},
     r"normalization has 2 channels but the model takes 3"),
])
def test_export_refuses_a_run_that_contradicts_its_model(tmp_path: Path, edit: dict[str, Any],
                                                         message: str) -> None:
    run = _make_run(tmp_path)
    _edit_summary(run, edit)
    with pytest.raises(ExportError, match=message):
        export(run, out=tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


@pytest.mark.parametrize("samples", [np.zeros((4, 3, 16, 16), np.uint8),
                                     np.zeros((4, 1, 32, 32), np.uint8),
                                     np.zeros((4, 3, 32, 32), np.float32),
                                     np.zeros((3, 32, 32), np.uint8)])
def test_export_refuses_validation_samples_of_another_shape(tmp_path: Path,
                                                            samples: np.ndarray) -> None:
    run = _make_run(tmp_path)
    np.save(run / "val_samples.npy", samples)
    with pytest.raises(ExportError, match=r"val_samples.npy holds .*expected uint8 \(N, 3, 32, "
                                          r"32\)"):
        export(run, out=tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()
