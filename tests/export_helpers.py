"""Helpers of the export, bundle and deploy tests: run directories and image files.

``make_run`` writes a run directory exactly as :mod:`zoo.spec.run` defines it
(run.json, checkpoints/best.pt and last.pt, val_samples.npy), with weights that
are not the architecture's seeded initialization, so the tests do not depend
on the trainer being installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import zoo
from zoo.spec.run import (
    BEST_CHECKPOINT,
    CHECKPOINT_DIR,
    LAST_CHECKPOINT,
    SUMMARY_FILE,
    VAL_SAMPLES,
    DataInfo,
    EpochMetrics,
    Normalization,
    RunSummary,
)

CLASSES = ("cat", "dog", "bird")
MEAN = (0.49, 0.48, 0.45)
STD = (0.25, 0.24, 0.26)


def make_run(run_dir: Path, architecture: str = "Net", *, seed: int = 7,
             checkpoints: tuple[str, ...] = (BEST_CHECKPOINT, LAST_CHECKPOINT),
             **overrides: Any) -> RunSummary:
    import torch

    overrides.setdefault("num_classes", len(CLASSES))
    config = zoo.resolve(architecture, **overrides)
    torch.manual_seed(seed)
    model = zoo.default_registry().build(config)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5).add_(0.01)
    run_dir.mkdir(parents=True)
    (run_dir / CHECKPOINT_DIR).mkdir()
    for name in checkpoints:
        torch.save({"model": model.state_dict(), "epoch": 2}, run_dir / CHECKPOINT_DIR / name)
    rng = np.random.default_rng(seed)
    shape = config.input_shape.as_tuple()
    np.save(run_dir / VAL_SAMPLES, rng.integers(0, 256, (16, *shape), dtype=np.uint8))
    channels = config.input_shape.channels
    metrics = EpochMetrics(epoch=2, train_loss=0.9, train_acc=0.61, val_loss=1.0, val_acc=0.57,
                           images_per_s=5000.0, lr=0.01, seconds=1.5)
    summary = RunSummary(
        model=config,
        train_config={"epochs": 2, "lr": 0.01, "batch_size": 64, "optimizer": "sgd"},
        data=DataInfo(dataset="synthetic", source=None, content_key="abc123",
                      split="seeded 10% hold-out", classes=CLASSES[: config.num_classes],
                      train_size=180, val_size=20),
        normalization=Normalization(mean=MEAN[:channels] if channels <= 3 else (0.5,) * channels,
                                    std=STD[:channels] if channels <= 3 else (0.25,) * channels),
        seed=seed, device="cpu", epochs_completed=2, train_seconds=3.0,
        best=metrics, last=metrics, zoo_version=zoo.__version__, torch_version=torch.__version__,
    )
    (run_dir / SUMMARY_FILE).write_text(summary.model_dump_json(indent=2))
    return summary


def write_images(folder: Path) -> list[Path]:
    """RGB, grayscale, RGBA, palette and odd-sized images, in several formats."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    paths = []
    specs = [("rgb.png", "RGB", (32, 32)), ("big.jpg", "RGB", (61, 47)),
             ("grey.png", "L", (28, 40)), ("alpha.png", "RGBA", (32, 32)),
             ("palette.gif", "P", (33, 31)), ("tiny.bmp", "RGB", (8, 8))]
    for name, mode, (h, w) in specs:
        channels = {"RGB": 3, "L": 1, "RGBA": 4, "P": 1}[mode]
        data = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
        image = Image.fromarray(data[:, :, 0] if channels == 1 else data)
        if mode == "P":
            image = image.convert("P")
        paths.append(folder / name)
        image.save(paths[-1])
    return paths
