"""Throughput: the book's training loop against the zoo trainer, for every chapter-8 architecture.

The book's loop (chapter 8): a DataLoader over a list of (image, label)
tensors, batch 64, shuffled, SGD lr 1e-2 without momentum, NCHW,
``loss.item()`` every step. It runs twice: with the book's own model classes
(``bench/book_ch8.py``: the book's code as a reader runs it), and with zoo's
implementation of the same model (which pools before its activation; the
same function, cheaper), so that the loop's share of the speed-up shows on its
own. The trainer runs zoo's model with the same batch size and optimizer
(``TrainConfig.book()``: no augmentation, no schedule) with its in-memory
pipeline, channels_last, fused optimizer step and, on CPU, each batch in
parallel parts on the cores' threads where the model allows it, and the
chapter-8 models' fused convolution/pooling/activation kernels
(``zoo_chapter8.fused``; the book's NCHW loop does not use them).

All three train on the same images (a CIFAR-2-sized synthetic set, or
``--data-dir`` for an ImageFolder such as CIFAR-2). images/s counts training
steps only (no validation): the best timed epoch after a warm-up one. The CPU
may be shared, so the three run in turn, ``--rounds`` times, each keeping its
best round. The book's loops run in a child process of their own, with the C
allocator as a reader's process has it (the trainer tunes it: zoo.trainer.allocator);
``--tuned-book`` tunes it for them too, to show that share of the speed-up.

    python bench/bench_train_throughput.py [--arch Net ...] [--device cuda] [--rounds 3]
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

import zoo
from zoo.spec.dataset import DatasetRequest
from zoo.spec.training import TrainConfig
from zoo.trainer.allocator import retain_freed_memory
from zoo.trainer.loop import select_device
from zoo.trainer.pipeline import compute_normalization

sys.path.insert(0, str(Path(__file__).parent))
from book_ch8 import BOOK_MODELS

#: row name -> (architecture, zoo model overrides). The book's NetResDeep repeats one block
#: (shared weights); zoo's default gives each block its own, so a second row compares the
#: book's model exactly.
ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    **{arch: (arch, {}) for arch in BOOK_MODELS},
    "NetResDeep-shared": ("NetResDeep", {"shared_block": True}),
}


def book_loop(row: str, own_code: bool, images_u8: np.ndarray, labels: np.ndarray,
              device_name: str, epochs: int, tuned: bool) -> float:
    """images/s of the book's ``training_loop`` (best epoch after a warm-up one).

    ``own_code``: the book's model class, else zoo's implementation of it.
    Runs in the child process.
    """
    if tuned:
        retain_freed_memory()
    device = torch.device(device_name)
    torch.manual_seed(0)
    arch, overrides = ROWS[row]
    model = BOOK_MODELS[arch]() if own_code else zoo.create_model(arch, **overrides)
    norm = compute_normalization(images_u8)
    mean = torch.tensor(norm.mean).view(3, 1, 1)
    std = torch.tensor(norm.std).view(3, 1, 1)
    images = (torch.from_numpy(images_u8).float() / 255.0 - mean) / std
    dataset = [(img, int(label)) for img, label in zip(images, labels, strict=True)]
    loader = DataLoader(dataset, batch_size=64, shuffle=True)
    model = model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    loss_fn = nn.CrossEntropyLoss()
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


def trainer(row: str, fields: dict[str, Any], epochs: int) -> tuple[float, str]:
    """images/s of the zoo trainer (best epoch after a warm-up one), and how it split batches."""
    with tempfile.TemporaryDirectory() as tmp:
        arch, overrides = ROWS[row]
        cfg = TrainConfig.book(epochs=epochs + 1, progress="none", out=Path(tmp) / "run",
                               model=overrides, **fields)
        result = zoo.train(arch, cfg)
        state = torch.load(Path(tmp) / "run" / "checkpoints" / "last.pt", weights_only=True)
    parts = int(state.get("batch_split") or 1)
    return max(m.images_per_s for m in result.metrics[1:]), f"{parts}" if parts > 1 else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", action="append", choices=list(ROWS),
                        help="rows (default: all seven, then NetResDeep-shared)")
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs after a warm-up")
    parser.add_argument("--rounds", type=int, default=3, help="turns of the three, best kept")
    parser.add_argument("--data-dir", type=Path, help="an ImageFolder (e.g. CIFAR-2 train)")
    parser.add_argument("--size", type=int, default=10_000, help="synthetic images")
    parser.add_argument("--tuned-book", action="store_true",
                        help="tune the C allocator for the book's loops too")
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
          f"{len(data.train)} training images of {data.name}, batch 64, SGD lr 1e-2, "
          f"best of {args.rounds} rounds")
    rows = []
    child = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    book_args = (data.train.images, data.train.labels, str(device), args.epochs,
                 args.tuned_book)
    try:
        for arch in args.arch or list(ROWS):
            book = own = ours = 0.0
            parts = "-"
            for _ in range(args.rounds):
                book = max(book, child.submit(book_loop, arch, True, *book_args).result())
                own = max(own, child.submit(book_loop, arch, False, *book_args).result())
                speed, parts = trainer(arch, fields, args.epochs)
                ours = max(ours, speed)
            rows.append((arch, book, own, ours, parts))
            print(f"  {arch}: book's code {book:,.0f} img/s, book's loop on zoo's model "
                  f"{own:,.0f} img/s, trainer {ours:,.0f} img/s", flush=True)
    finally:
        child.shutdown()
    print()
    print(f"{'architecture':<18}{'book code':>11}{'book loop':>11}{'trainer':>9}"
          f"{'parts':>7}{'vs code':>9}{'vs loop':>9}")
    print(f"{'':<18}{'img/s':>11}{'zoo model':>11}{'img/s':>9}")
    for arch, book, own, ours, parts in rows:
        print(f"{arch:<18}{book:>11,.0f}{own:>11,.0f}{ours:>9,.0f}{parts:>7}"
              f"{ours / book:>8.2f}x{ours / own:>8.2f}x")


if __name__ == "__main__":
    main()
