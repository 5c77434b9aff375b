"""``zoo train``: train an architecture with the shared trainer (the handler imports torch)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from zoo.cli import completers
from zoo.cli.help import train_default
from zoo.cli.options import parse_pairs
from zoo.errors import ZooError
from zoo.host.registry import Registry

# flag name -> TrainConfig field, for the options with a plain value
_VALUE_FLAGS = ("dataset", "data_dir", "val_dir", "val_split", "epochs", "batch_size",
                "optimizer", "lr", "momentum", "weight_decay", "schedule", "label_smoothing",
                "crop_padding", "grad_clip", "seed", "device", "amp", "out", "resume", "cache_dir",
                "num_threads", "batch_split", "progress", "eval_batch_size", "early_stop_metric",
                "early_stop_patience", "init_from")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    d = train_default
    p = subparsers.add_parser(
        "train", help="train an architecture on a dataset",
        description="Train NAME with the shared trainer. Options come from --config FILE "
                    "(JSON or TOML), then flags; --set sets model hyperparameters. Defaults "
                    "shown are TrainConfig's; an architecture's recipe may change lr, epochs, "
                    "batch size, weight decay, gradient clipping and crop padding "
                    "(--print-config shows the result). Run under torchrun "
                    "--nproc_per_node=N -m zoo train ... for DDP.",
        epilog="examples:\n"
               "  zoo train Net --epochs 3\n"
               "  zoo train NetWidth --dataset imagefolder --data-dir data/cifar2/train\n"
               "  zoo train Net --print-config > net.toml && zoo train Net --config net.toml\n"
               "  zoo train --resume runs/Net-synthetic-20250101-120000")
    completers.attach(p.add_argument(
        "name", metavar="NAME", nargs="?",
        help="architecture, see 'zoo list' (optional with --resume)"), completers.architectures)
    g = p.add_argument_group("configuration")
    g.add_argument("--config", type=Path, metavar="FILE",
                   help="TrainConfig as JSON (.json) or TOML (any other suffix); flags override it")
    g.add_argument("--print-config", action="store_true",
                   help="print the fully resolved TrainConfig as TOML (what --config reads) "
                        "and exit without training")
    g.add_argument("--book", action="store_true",
                   help="the book's recipe: SGD lr 1e-2, batch 64, no momentum/augmentation, "
                        "100 epochs (flags still override)")
    g = p.add_argument_group("model")
    completers.attach(g.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
        help="model hyperparameter or shape key (in_channels, in_height, in_width, "
             "num_classes), e.g. n_chans1=16 (repeatable)"), completers.set_keys)
    g = p.add_argument_group("data")
    completers.attach(g.add_argument("--dataset", metavar="D",
                                     help=f"dataset name, see 'zoo datasets' {d('dataset')}"),
                      completers.datasets)
    completers.attach(g.add_argument("--option", dest="dataset_opts", action="append",
                                     default=[], metavar="KEY=VALUE",
                                     help="dataset option, e.g. size=500 (repeatable)"),
                      completers.dataset_options)
    g.add_argument("--data-dir", type=Path, metavar="DIR",
                   help="data directory: class folders for imagefolder, the download location "
                        f"for cifar {d('data_dir')}")
    g.add_argument("--val-dir", type=Path, metavar="DIR",
                   help=f"separate validation directory of class folders {d('val_dir')}")
    g.add_argument("--val-split", type=float, metavar="F",
                   help=f"held-out fraction of each class without --val-dir {d('val_split')}")
    g.add_argument("--strict", action="store_true", default=None,
                   help="fail on an unreadable image instead of skipping it")
    g.add_argument("--no-download", dest="download", action="store_false", default=None,
                   help="never download a dataset (fail if it is not on disk)")
    g.add_argument("--cache-dir", type=Path, metavar="DIR",
                   help="decoded-image cache (default: $ZOO_CACHE_DIR, else ~/.cache/zoo)")
    g = p.add_argument_group("recipe")
    g.add_argument("--epochs", type=int, metavar="N", help=f"training epochs {d('epochs')}")
    g.add_argument("--batch-size", type=int, metavar="N",
                   help=f"batch size per process {d('batch_size')}")
    g.add_argument("--optimizer", choices=["sgd", "adam", "adamw"],
                   help=f"optimizer {d('optimizer')}")
    g.add_argument("--lr", type=float, help=f"peak learning rate {d('lr')}")
    g.add_argument("--momentum", type=float, metavar="M", help=f"SGD momentum {d('momentum')}")
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None,
                   help=f"Nesterov momentum (SGD with momentum > 0) {d('nesterov')}")
    g.add_argument("--weight-decay", type=float, metavar="WD",
                   help=f"weight decay {d('weight_decay')}")
    g.add_argument("--schedule", choices=["none", "cosine", "onecycle"],
                   help=f"learning-rate schedule {d('schedule')}")
    g.add_argument("--label-smoothing", type=float, metavar="S",
                   help=f"label smoothing of the loss {d('label_smoothing')}")
    g.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help=f"random horizontal flips {d('flip')}")
    g.add_argument("--crop-padding", type=int, metavar="P",
                   help=f"random crop after zero padding, 0: off {d('crop_padding')}")
    g.add_argument("--grad-clip", type=float, metavar="NORM",
                   help=f"clip the gradient norm, 0: off {d('grad_clip')}")
    g.add_argument("--seed", type=int, metavar="N",
                   help=f"seed of the split, init, batches and augmentation {d('seed')}")
    g = p.add_argument_group("hardware")
    g.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"],
                   help=f"where to train {d('device')}")
    g.add_argument("--amp", choices=["auto", "off", "bf16", "fp16"],
                   help="mixed precision: on CUDA auto is bf16 where supported, else fp16; on "
                        f"CPU bf16 is bfloat16 autocast and auto is off {d('amp')}")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels-last memory format (default: on for CPU and CUDA)")
    g.add_argument("--num-threads", type=int, metavar="N",
                   help="torch threads on CPU, at most 4 per core (default: torch's choice)")
    g.add_argument("--tune-allocator", action=argparse.BooleanOptionalAction, default=None,
                   help="CPU on Linux: keep freed memory in the process (default: on)")
    g.add_argument("--batch-split", type=int, metavar="N",
                   help="CPU: train each batch as N parts on parallel threads (1: off; "
                        "default: the model's choice, else one per thread where it allows)")
    g.add_argument("--eval-batch-size", type=int, metavar="N",
                   help=f"validation batch size {d('eval_batch_size')}")
    g = p.add_argument_group("output")
    g.add_argument("--out", type=Path, metavar="DIR",
                   help="run directory (default: runs/NAME-DATASET-TIME)")
    g.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR where it stopped")
    g.add_argument("--init-from", type=Path, metavar="RUN_DIR",
                   help="a new run starting from RUN_DIR's best weights, with a fresh optimizer "
                        "and schedule (to train a finished run longer)")
    g.add_argument("--progress", choices=["auto", "bar", "log", "none"],
                   help="a bar on a terminal, log lines otherwise (auto), or none "
                        f"{d('progress')}")
    g.add_argument("--json", action="store_true", help="print the run summary as JSON")
    g.add_argument("--log", dest="loggers", action="append", default=None,
                   choices=["tensorboard"],
                   help="an extra logger: tensorboard writes event files to RUN/tensorboard "
                        "(needs pip install 'zoo[tensorboard]'; repeatable)")
    g = p.add_argument_group("early stopping")
    g.add_argument("--early-stop-metric", choices=["val_acc", "val_loss", "train_acc",
                                                   "train_loss"],
                   help="stop when this metric has not improved for --early-stop-patience "
                        "epochs (default: off)")
    g.add_argument("--early-stop-patience", type=int, metavar="N",
                   help=f"epochs without improvement before an early stop "
                        f"{d('early_stop_patience')}")
    p.set_defaults(handler=train_command)


def config_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields the command line sets (file first, then flags)."""
    from zoo.spec.training import TrainConfig, load_config_file

    fields: dict[str, Any] = {}
    if args.book:
        fields.update(TrainConfig.book().model_dump(exclude_unset=True))
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


def print_config(name: str, fields: dict[str, Any], registry: Registry) -> None:
    """Print the TrainConfig ``zoo train NAME`` would run with, as TOML for ``--config``."""
    from zoo.spec.training import apply_recipe, config_toml, validate_config

    config = validate_config(fields, "training config")
    registry.resolve(name, **config.model)
    config = apply_recipe(config, set(fields), registry.get_spec(name).recipe)
    print(config_toml(config, header=f"TrainConfig of 'zoo train {name}': use it with "
                                     f"--config FILE"), end="")


def _own_process() -> bool:
    """Whether this process is the ``zoo`` command (not an embedding program or a test)."""
    entry = Path(sys.argv[0]).name if sys.argv else ""
    return entry in ("zoo", "zoo.exe") or (
        entry == "__main__.py" and Path(sys.argv[0]).parent.name == "zoo")


def check_flags(args: argparse.Namespace, fields: dict[str, Any]) -> None:
    """Refuse flags that would be silently ignored or misused (no torch import)."""
    if args.early_stop_patience is not None and fields.get("early_stop_metric") is None \
            and args.resume is None:
        raise ZooError(f"--early-stop-patience {args.early_stop_patience} does nothing without "
                       "--early-stop-metric; add --early-stop-metric val_acc (or val_loss, "
                       "train_acc, train_loss), or drop it")
    from zoo.spec.training import check_cache_dir

    check_cache_dir(fields.get("cache_dir"))


def train_command(args: argparse.Namespace, registry: Registry) -> int:
    fields = config_fields(args)
    check_flags(args, fields)
    name = args.name
    if args.print_config:
        if name is None:
            raise ZooError("--print-config needs an architecture NAME (a run's own config is "
                           "in RUN_DIR/config.json)")
        print_config(name, fields, registry)
        return 0
    if name is None:
        if args.resume is None:
            raise ZooError("zoo train needs an architecture NAME (see 'zoo list'), "
                           "or --resume RUN_DIR")
        from zoo.spec.run import read_summary

        name = read_summary(args.resume).model.architecture
    elif args.resume is None:  # bad values fail here, before the trainer imports torch
        from zoo.spec.training import validate_config

        config = validate_config(fields, "training config")
        registry.resolve(name, **config.model)
        registry.get_dataset(config.dataset).validate_options(config.dataset_options)
    if ("torch" not in sys.modules and fields.get("progress") != "none"
            and os.environ.get("RANK", "0") == "0"):
        # importing torch takes seconds on a cold start: nothing may wait silently
        print("zoo: loading PyTorch…", file=sys.stderr, flush=True)
    from zoo.trainer.loop import train

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
