"""``zoo train``: train an architecture with the shared trainer (the handler imports torch)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from zoo.cli.options import parse_pairs
from zoo.errors import ZooError
from zoo.registry import Registry

# flag name -> TrainConfig field, for the options with a plain value
_VALUE_FLAGS = ("dataset", "data_dir", "val_dir", "val_split", "epochs", "batch_size",
                "optimizer", "lr", "momentum", "weight_decay", "schedule", "label_smoothing",
                "crop_padding", "grad_clip", "seed", "device", "amp", "out", "resume", "cache_dir",
                "num_threads", "batch_split", "progress", "eval_batch_size", "early_stop_metric",
                "early_stop_patience", "init_from")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "train", help="train an architecture on a dataset",
        description="Train NAME with the shared trainer. Options come from --config FILE "
                    "(JSON or TOML), then flags; --set sets model hyperparameters. Run under "
                    "torchrun --nproc_per_node=N -m zoo train ... for DDP.")
    p.add_argument("name", metavar="NAME", nargs="?",
                   help="architecture (optional with --resume)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="model hyperparameter or shape key (in_channels, in_height, in_width, "
                        "num_classes), e.g. n_chans1=16 (repeatable)")
    p.add_argument("--option", dest="dataset_opts", action="append", default=[],
                   metavar="KEY=VALUE", help="dataset option, e.g. size=500 (repeatable)")
    p.add_argument("--config", type=Path, metavar="FILE", help="TrainConfig as JSON or TOML")
    p.add_argument("--dataset", metavar="D", help="dataset name (default: synthetic)")
    p.add_argument("--data-dir", type=Path, metavar="DIR")
    p.add_argument("--val-dir", type=Path, metavar="DIR")
    p.add_argument("--val-split", type=float, metavar="F")
    p.add_argument("--epochs", type=int, metavar="N")
    p.add_argument("--batch-size", type=int, metavar="N", help="per process")
    p.add_argument("--optimizer", choices=["sgd", "adam", "adamw"])
    p.add_argument("--lr", type=float)
    p.add_argument("--momentum", type=float)
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--schedule", choices=["none", "cosine", "onecycle"])
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="random horizontal flips")
    p.add_argument("--crop-padding", type=int, metavar="P", help="random crop padding (0: off)")
    p.add_argument("--grad-clip", type=float, metavar="NORM", help="clip the gradient norm")
    p.add_argument("--book", action="store_true",
                   help="the book's recipe: SGD lr 1e-2, batch 64, no momentum/augmentation, "
                        "100 epochs (flags still override)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--amp", choices=["auto", "off", "bf16", "fp16"])
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--num-threads", type=int, metavar="N")
    p.add_argument("--tune-allocator", action=argparse.BooleanOptionalAction, default=None,
                   help="CPU on Linux: keep freed memory in the process (default: on)")
    p.add_argument("--batch-split", type=int, metavar="N",
                   help="CPU: train each batch as N parts on parallel threads (1: off; "
                        "default: one per thread where the model allows)")
    p.add_argument("--eval-batch-size", type=int, metavar="N")
    p.add_argument("--strict", action="store_true", default=None,
                   help="fail on an unreadable image instead of skipping it")
    p.add_argument("--no-download", dest="download", action="store_false", default=None)
    p.add_argument("--cache-dir", type=Path, metavar="DIR")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="run directory (default runs/NAME-DATASET-TIME)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a run")
    p.add_argument("--init-from", type=Path, metavar="RUN_DIR",
                   help="a new run starting from RUN_DIR's best weights, with a fresh optimizer "
                        "and schedule (to train a finished run longer; default: none)")
    p.add_argument("--progress", choices=["auto", "bar", "log", "none"])
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")
    p.add_argument("--log", dest="loggers", action="append", default=None,
                   choices=["tensorboard"],
                   help="an extra logger: tensorboard writes event files to RUN/tensorboard "
                        "(needs pip install 'zoo[tensorboard]'; repeatable; default: none)")
    p.add_argument("--early-stop-metric", choices=["val_acc", "val_loss", "train_acc",
                                                   "train_loss"],
                   help="stop when this metric has not improved for --early-stop-patience "
                        "epochs (default: off)")
    p.add_argument("--early-stop-patience", type=int, metavar="N",
                   help="epochs without improvement before an early stop (default: 3)")
    p.set_defaults(handler=train_command)


def config_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields the command line sets (file first, then flags)."""
    from zoo.config import TrainConfig, load_config_file

    fields: dict[str, Any] = {}
    if args.book:
        fields.update(TrainConfig.book().model_dump(exclude_defaults=True))
    if args.config is not None:
        fields.update(load_config_file(args.config))
    for name in _VALUE_FLAGS:
        value = getattr(args, name)
        if value is not None:
            fields[name] = value
    if args.loggers:
        fields["loggers"] = list(dict.fromkeys(args.loggers))
    for name in ("nesterov", "flip", "channels_last", "tune_allocator", "strict", "download"):
        value = getattr(args, name)
        if value is not None:
            fields[name] = value
    if args.sets:
        fields["model"] = {**dict(fields.get("model") or {}), **parse_pairs(args.sets, "--set")}
    if args.dataset_opts:
        fields["dataset_options"] = {**dict(fields.get("dataset_options") or {}),
                                     **parse_pairs(args.dataset_opts, "--option")}
    return fields


def _own_process() -> bool:
    """Whether this process is the ``zoo`` command (not an embedding program or a test)."""
    entry = Path(sys.argv[0]).name if sys.argv else ""
    return entry in ("zoo", "zoo.exe") or (
        entry == "__main__.py" and Path(sys.argv[0]).parent.name == "zoo")


def train_command(args: argparse.Namespace, registry: Registry) -> int:
    fields = config_fields(args)
    name = args.name
    if name is None:
        if args.resume is None:
            raise ZooError("zoo train needs an architecture NAME (see 'zoo list'), "
                           "or --resume RUN_DIR")
        from zoo.run import read_summary

        name = read_summary(args.resume).model.architecture
    elif args.resume is None:  # bad values fail here, before the trainer imports torch
        from zoo.config import validate_config

        config = validate_config(fields, "training config")
        registry.resolve(name, **config.model)
        registry.get_dataset(config.dataset).validate_options(config.dataset_options)
    from zoo.trainer import train

    try:
        result = train(name, registry=registry, **fields)
    except KeyboardInterrupt:
        if _own_process():
            # everything is saved and the run's lock released: skip the seconds the
            # interpreter takes to tear down torch
            print("zoo: interrupted", file=sys.stderr)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)
        raise
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports
        return 0
    summary = result.summary
    if args.json:
        print(summary.model_dump_json(indent=2))
    else:
        best = summary.best
        best_text = (f"best val acc {best.val_acc:.4f} (epoch {best.epoch})" if best else "")
        print(f"{result.run_dir}: {summary.epochs_completed} epoch(s), {best_text}, "
              f"{summary.train_seconds:.1f}s")
    return 0
