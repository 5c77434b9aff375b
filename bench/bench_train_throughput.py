"""Throughput: the book's training loop against the zoo trainer, for every chapter-8 architecture.

The book's loop (chapter 8): a DataLoader over a list of (image, label) tensors,
batch 64, shuffled, SGD lr 1e-2 without momentum, NCHW, ``loss.item()`` every
step. The trainer runs the same model, batch size and optimizer
(``TrainConfig.book()``: no augmentation, no schedule) with its in-memory
pipeline, channels_last and no per-step synchronisation. Both train on the same
images (a CIFAR-2-sized synthetic set, or ``--data-dir`` for an ImageFolder such
as CIFAR-2). images/s counts training steps only (no validation): the best
epoch after one warm-up epoch. The CPU may be shared: numbers are noisy.

    python bench/bench_train_throughput.py [--arch Net ...] [--device cuda] [--epochs 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

import zoo
from zoo.config import TrainConfig
from zoo.datasets import DatasetRequest, LoadedDataset
from zoo.pipeline import compute_normalization
from zoo.trainer import select_device

ARCHS = ["Net", "NetWidth", "NetDropout", "NetBatchNorm", "NetDepth", "NetRes", "NetResDeep"]


def book_loop(arch: str, data: LoadedDataset, device: torch.device, epochs: int) -> float:
    """images/s of the book's ``training_loop`` (best epoch after a warm-up one)."""
    norm = compute_normalization(data.train.images)
    mean = torch.tensor(norm.mean).view(3, 1, 1)
    std = torch.tensor(norm.std).view(3, 1, 1)
    images = (torch.from_numpy(data.train.images).float() / 255.0 - mean) / std
    dataset = [(img, int(label)) for img, label in zip(images, data.train.labels, strict=True)]
    loader = DataLoader(dataset, batch_size=64, shuffle=True)
    torch.manual_seed(0)
    model = zoo.create_model(arch).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    loss_fn = torch.nn.CrossEntropyLoss()
    best = 0.0
    for _ in range(epochs + 1):
        start, seen, loss_train = time.perf_counter(), 0, 0.0
        for imgs, labels in loader:
            imgs, labels = imgs.to(device), labels.to(device)
            outputs = model(imgs)
            loss = loss_fn(outputs, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_train += loss.item()
            seen += labels.shape[0]
        best = max(best, seen / (time.perf_counter() - start))
    return best


def trainer(arch: str, fields: dict[str, Any], epochs: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig.book(epochs=epochs + 1, progress="none", out=Path(tmp) / "run",
                               **fields)
        result = zoo.train(arch, cfg)
    return max(m.images_per_s for m in result.metrics[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", action="append", help="architectures (default: all seven)")
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs after a warm-up")
    parser.add_argument("--data-dir", type=Path, help="an ImageFolder (e.g. CIFAR-2 train)")
    parser.add_argument("--size", type=int, default=10_000, help="synthetic images")
    args = parser.parse_args()
    device = select_device(args.device)
    if args.data_dir is not None:
        fields: dict[str, Any] = {"dataset": "imagefolder", "data_dir": args.data_dir}
        spec, options = zoo.default_registry().get_dataset("imagefolder"), {}
    else:
        fields = {"dataset": "synthetic", "dataset_options": {"size": args.size,
                                                              "num_classes": 2}}
        spec, options = zoo.default_registry().get_dataset("synthetic"), fields["dataset_options"]
    fields.update(device=args.device, val_split=0.1)
    data = spec.load(DatasetRequest(data_dir=args.data_dir, val_split=0.1, image_size=(32, 32)),
                     **options)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{len(data.train)} training images of {data.name}, batch 64, SGD lr 1e-2")
    rows = []
    for arch in args.arch or ARCHS:
        book = book_loop(arch, data, device, args.epochs)
        ours = trainer(arch, fields, args.epochs)
        rows.append((arch, book, ours))
        print(f"  {arch}: book {book:,.0f} img/s, trainer {ours:,.0f} img/s", flush=True)
    print()
    print(f"{'architecture':<14}{'book img/s':>12}{'trainer img/s':>15}{'ratio':>8}")
    for arch, book, ours in rows:
        print(f"{arch:<14}{book:>12,.0f}{ours:>15,.0f}{ours / book:>7.2f}x")


if __name__ == "__main__":
    main()
