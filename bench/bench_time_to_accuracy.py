"""Time to accuracy: the default recipe on CIFAR-2 (ImageFolder) with a held-out split, per arch.

Trains each chapter-8 architecture with ``TrainConfig()`` defaults and its spec's
recipe changes (NetResDeep: lr 0.05) (``--epochs``
overrides) on ``--data-dir`` with a seeded, stratified ``--val-split``, and
prints the training seconds (train steps plus per-epoch validation, without
data loading or file writing), the best and final validation accuracy, and the
book's numbers to beat. The CPU may be shared with other jobs: seconds are noisy.

    python bench/bench_time_to_accuracy.py --data-dir ../shared/data/cifar2/train [--arch Net]
    python bench/bench_time_to_accuracy.py --book --arch Net   # the book's recipe, 100 epochs
    python bench/bench_time_to_accuracy.py --amp off --amp bf16  # fp32 and bf16 side by side

With several ``--amp`` settings each architecture trains once per setting, in turn, and
the table adds the final accuracy's difference from the first setting (in points).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import torch
from zoo_chapter8.specs import BOOK_VAL_ACC

import zoo
from zoo.spec.training import TrainConfig

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar2" / "train"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--val-split", type=float, default=0.1)
    parser.add_argument("--arch", action="append", help="architectures (default: all seven)")
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--book", action="store_true", help="the book's recipe instead")
    parser.add_argument("--batch-split", type=int,
                        help="parts per batch on CPU (default: the trainer's auto)")
    parser.add_argument("--out", type=Path, help="keep the runs here (default: a temp dir)")
    parser.add_argument("--amp", action="append", choices=["auto", "off", "bf16", "fp16"],
                        help="mixed precision settings to compare (default: the recipe's)")
    args = parser.parse_args()
    if not args.data_dir.is_dir():
        raise SystemExit(f"no data at {args.data_dir}: pass --data-dir (CIFAR-2 ImageFolder)")
    fields: dict[str, Any] = {"dataset": "imagefolder", "data_dir": args.data_dir,
                              "val_split": args.val_split, "seed": args.seed,
                              "device": args.device, "progress": "none"}
    if args.epochs:
        fields["epochs"] = args.epochs
    if args.batch_split:
        fields["batch_split"] = args.batch_split
    base = TrainConfig.book(**fields) if args.book else TrainConfig(**fields)
    print(f"recipe: {'book' if args.book else 'default'} ({base.optimizer} lr {base.lr} "
          f"batch {base.batch_size}, {base.epochs} epochs, schedule {base.schedule}, "
          f"flip {base.flip}, crop padding {base.crop_padding}, label smoothing "
          f"{base.label_smoothing}, grad clip {base.grad_clip}); data {args.data_dir}, "
          f"val split {args.val_split}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    amps = args.amp or [base.amp]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        for arch in args.arch or list(BOOK_VAL_ACC):
            for amp in amps:
                result = zoo.train(arch, base, out=root / f"{arch}-{amp}-tta", amp=amp)
                best = result.summary.best
                assert best is not None
                final = result.metrics[-1]
                elapsed, reached = 0.0, None
                for m in result.metrics:  # seconds until the book's accuracy is first reached
                    elapsed += m.seconds
                    if reached is None and m.val_acc >= BOOK_VAL_ACC[arch]:
                        reached = elapsed
                rows.append((arch, amp, result.summary.train_seconds, best.val_acc, reached,
                             final.val_acc))
                own = zoo.get_spec(arch).recipe.model_dump(exclude_none=True)
                changes = "" if args.book or not own else \
                    f" (its recipe: {', '.join(f'{k} {v}' for k, v in own.items())})"
                print(f"  {arch} amp={amp}: {result.summary.train_seconds:.1f}s, best val acc "
                      f"{best.val_acc:.3f} (epoch {best.epoch}), final {final.val_acc:.3f}"
                      f"{changes}", flush=True)
    print()
    print(f"{'architecture':<14}{'amp':>5}{'train s':>9}{'s to book acc':>15}{'best val':>10}"
          f"{'final val':>11}{'book val':>10}  final beats book"
          + (f"  points vs amp={amps[0]}" if len(amps) > 1 else ""))
    first: dict[str, float] = {}
    for arch, amp, seconds, best_acc, reached, final_acc in rows:
        book = BOOK_VAL_ACC[arch]
        to_book = f"{reached:.1f}" if reached is not None else "-"
        first.setdefault(arch, final_acc)
        delta = f"  {100 * (final_acc - first[arch]):+.1f}" if len(amps) > 1 else ""
        print(f"{arch:<14}{amp:>5}{seconds:>9.1f}{to_book:>15}{best_acc:>10.3f}"
              f"{final_acc:>11.3f}{book:>10.2f}  {'yes' if final_acc >= book else 'NO '}"
              f"{delta}")

if __name__ == "__main__":
    main()
