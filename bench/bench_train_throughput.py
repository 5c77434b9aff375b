"""Throughput: the book's training loop against the zoo trainer, for every chapter-8 architecture.

The book's loop (chapter 8): a DataLoader over a list of (image, label)
tensors, batch 64, shuffled, SGD lr 1e-2 without momentum, NCHW,
``loss.item()`` every step. It runs twice: with the book's own model classes
(``bench/book_ch8.py``: the book's code as a reader runs it), and with zoo's
implementation of the same model (which pools before its activation; the
same function, cheaper), so that the loop's share of the speed-up shows on its
own. The trainer runs zoo's model with the same batch size and optimizer
(``TrainConfig.book()``: no augmentation, no schedule) with its in-memory
pipeline, channels_last, SGD's update without its Python overhead on the CPU
(``zoo.trainer.optim.LeanSGD``; PyTorch's fused step on CUDA) and, on CPU, each batch in
parallel parts on the cores' threads where the model allows it and does not ask
for whole batches (the chapter-8 models do while their kernels run), and the
chapter-8 models' fused convolution/pooling/activation kernels
(``zoo_chapter8.fused``; the book's NCHW loop does not use them), run back to back
without autograd's graph where the model is only those layers (``zoo_train_step``:
Net, NetWidth, NetDepth, NetRes).

All three train on the same images (a CIFAR-2-sized synthetic set, or
``--data-dir`` for an ImageFolder such as CIFAR-2). images/s counts training
steps only (no validation): the best timed epoch after a warm-up one. The CPU
may be shared, so the three run in turn, ``--rounds`` times, each keeping its
best round; the last two columns are the median over the rounds of each round's own
ratios (the trainer against the book's code and the best expert loop run minutes apart at
most, where the best rounds may come from different, quieter minutes). The book's loops
run in a child process of their own, with the C allocator as a reader's process has it
(the trainer tunes it: zoo.trainer.allocator); ``--tuned-book`` tunes it for them too, to
show that share of the speed-up.

Beside them, the loops an experienced PyTorch user writes in a few lines (``EXPERT_LOOPS``):
the book's model class and recipe on tensors held in memory, plain eager, channels-last,
channels-last with bfloat16 autocast (on a CPU with native bfloat16, or CUDA) and
``torch.compile`` (its warm-up epoch, compilation included, is printed). The trainer runs
with ``--amp off`` and, where bfloat16 is native, ``--amp bf16``; the last column is the
faster trainer over the best of those loops. The header names the CPU features found
(``zoo.util.cpu``), so that numbers from different machines can be read side by side.

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
from zoo.util.cpu import describe, native_bf16

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


#: The expert's plain loops: (label, channels-last, bf16 autocast, torch.compile).
EXPERT_LOOPS = (("eager", False, False, False), ("channels-last", True, False, False),
                ("channels-last + bf16", True, True, False), ("compile", False, False, True))


def expert_model(arch: str) -> nn.Module:
    """The book's model class as an expert runs it: ``view`` becomes ``reshape`` (through
    torch.fx, the class itself unchanged), so that channels-last activations flatten."""
    traced = torch.fx.symbolic_trace(BOOK_MODELS[arch]())
    for node in traced.graph.nodes:
        if node.op == "call_method" and node.target == "view":
            node.target = "reshape"
    traced.recompile()
    return traced


def expert_loop(row: str, variant: str, images_u8: np.ndarray, labels: np.ndarray,
                device_name: str, epochs: int) -> tuple[float, float]:
    """images/s of a plain loop an experienced user writes (best epoch after a warm-up one)
    and the warm-up epoch's seconds (which include torch.compile's compilation).

    The book's model class and recipe (SGD lr 1e-2, batch 64) on normalized tensors held in
    memory, shuffled by index each epoch: no DataLoader, no augmentation, so an upper bound
    for such a loop. Runs in the child process.
    """
    _, channels_last, bf16, compiled = next(v for v in EXPERT_LOOPS if v[0] == variant)
    device = torch.device(device_name)
    torch.manual_seed(0)
    arch, _ = ROWS[row]
    model: nn.Module = expert_model(arch).to(device)
    norm = compute_normalization(images_u8)
    mean = torch.tensor(norm.mean).view(1, 3, 1, 1)
    std = torch.tensor(norm.std).view(1, 3, 1, 1)
    images = ((torch.from_numpy(images_u8).float() / 255.0 - mean) / std).to(device)
    targets = torch.from_numpy(labels).long().to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    step_model = torch.compile(model) if compiled else model
    loss_fn = nn.CrossEntropyLoss()
    best, warm_up = 0.0, 0.0
    for epoch in range(epochs + 1):
        start, seen = time.perf_counter(), 0
        for index in torch.randperm(len(targets), device=device).split(64):
            xb, yb = images[index], targets[index]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = loss_fn(step_model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(yb)
        loss.item()  # waits for a GPU
        seconds = time.perf_counter() - start
        if epoch == 0:
            warm_up = seconds
        else:
            best = max(best, seen / seconds)
    return best, warm_up


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
    parser.add_argument("--rounds", type=int, default=3, help="turns of them all, best kept")
    parser.add_argument("--data-dir", type=Path, help="an ImageFolder (e.g. CIFAR-2 train)")
    parser.add_argument("--size", type=int, default=10_000, help="synthetic images")
    parser.add_argument("--tuned-book", action="store_true",
                        help="tune the C allocator for the book's loops too")
    parser.add_argument("--expert", action="append",
                        choices=[v[0] for v in EXPERT_LOOPS] + ["none"],
                        help="expert loops to run (default: all; bf16 only on a CPU with "
                             "native bfloat16 or on CUDA)")
    args = parser.parse_args()
    device = select_device(args.device)
    if args.data_dir is not None:
        fields: dict[str, Any] = {"dataset": "imagefolder", "data_dir": args.data_dir}
        dataset, options = "imagefolder", {}
    else:
        fields = {"dataset": "synthetic", "dataset_options": {"size": args.size,
                                                              "num_classes": 2}}
        dataset, options = "synthetic", fields["dataset_options"]
    fields.update(device=args.device, val_split=0.1)
    data = zoo.default_registry().load_dataset(
        dataset, DatasetRequest(data_dir=args.data_dir, val_split=0.1, image_size=(32, 32)),
        **options)
    bf16 = device.type == "cuda" or (device.type == "cpu" and native_bf16())
    experts = [v[0] for v in EXPERT_LOOPS if v[0] in (args.expert or [v[0]])
               and (bf16 or not v[2])]
    amps = ["off", "bf16"] if bf16 else ["off"]
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{len(data.train)} training images of {data.name}, batch 64, SGD lr 1e-2, "
          f"best of {args.rounds} rounds")
    print(describe() + ("" if bf16 else " (no native bfloat16: no bf16 rows)"))
    child = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    book_args = (data.train.images, data.train.labels, str(device), args.epochs,
                 args.tuned_book)
    expert_args = book_args[:-1]
    rows = []
    try:
        for arch in args.arch or list(ROWS):
            speeds: dict[str, float] = {}
            warm: dict[str, float] = {}
            parts = "-"
            rounds: list[dict[str, float]] = []

            def keep(name: str, value: float, speeds: dict[str, float] = speeds,
                     rounds: list[dict[str, float]] = rounds) -> None:
                speeds[name] = max(speeds.get(name, 0.0), value)
                rounds[-1][name] = value

            for _ in range(args.rounds):
                rounds.append({})
                keep("book code", child.submit(book_loop, arch, True, *book_args).result())
                keep("book loop", child.submit(book_loop, arch, False, *book_args).result())
                for variant in experts:
                    if arch.endswith("-shared"):
                        continue  # the expert runs the book's class: NetResDeep's row has it
                    speed, seconds = child.submit(expert_loop, arch, variant,
                                                  *expert_args).result()
                    keep(variant, speed)
                    warm[variant] = seconds
                for amp in amps:
                    speed, parts = trainer(arch, {**fields, "amp": amp}, args.epochs)
                    keep(f"trainer amp={amp}", speed)
            rows.append((arch, speeds, parts, rounds))
            shown = ", ".join(f"{k} {v:,.0f}" for k, v in speeds.items())
            print(f"  {arch} (img/s): {shown}"
                  + (f"; compile's warm-up epoch {warm['compile']:.1f} s"
                     if "compile" in warm else ""), flush=True)
    finally:
        child.shutdown()
    print()
    columns = ["book code", "book loop", *experts, *(f"trainer amp={a}" for a in amps)]
    print("img/s; 'best trainer' is the faster --amp setting; 'vs expert': best trainer over "
          "the best expert loop; 'paired': the median of each round's own ratios")
    print(f"{'architecture':<19}" + "".join(f"{c:>{max(11, len(c) + 2)}}" for c in columns)
          + f"{'parts':>7}{'vs code':>9}{'vs expert':>11}{'paired vs code':>16}"
          f"{'paired vs expert':>18}")
    for arch, speeds, parts, rounds in rows:
        best_trainer = max(v for k, v in speeds.items() if k.startswith("trainer"))
        expert = max((speeds[e] for e in experts if e in speeds), default=float("nan"))
        if arch.endswith("-shared"):
            parent = next((r[1] for r in rows if r[0] == arch.removesuffix("-shared")), {})
            expert = max((parent[e] for e in experts if e in parent), default=float("nan"))
        code, vs_expert = paired_ratios(rounds, experts)
        print(f"{arch:<19}" + "".join(f"{speeds.get(c, float('nan')):>{max(11, len(c) + 2)},.0f}"
                                      for c in columns)
              + f"{parts:>7}{best_trainer / speeds['book code']:>8.2f}x"
              f"{best_trainer / expert:>10.2f}x{code:>15.2f}x{vs_expert:>17.2f}x")


def paired_ratios(rounds: list[dict[str, float]], experts: list[str]) -> tuple[float, float]:
    """The median over rounds of the round's best trainer against the round's book code and
    against its best expert loop (NaN where a round ran no expert loop: the -shared rows)."""
    code, expert = [], []
    for speeds in rounds:
        trainer = max(v for k, v in speeds.items() if k.startswith("trainer"))
        code.append(trainer / speeds["book code"])
        loops = [speeds[e] for e in experts if e in speeds]
        expert.append(trainer / max(loops) if loops else float("nan"))
    return float(np.median(code)), float(np.median(expert))


if __name__ == "__main__":
    main()
