"""``zoo evaluate MODEL DIR``: accuracy, per-class accuracy and confusion matrix on a folder.

Exit status: 0 when every image was read, 1 when any file could not be read
(the others are still scored and reported) or on any other error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from zoo.cli import completers
from zoo.cli.options import add_bundle_options
from zoo.errors import ZooError
from zoo.host.registry import Registry


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "evaluate", help="score a model on a folder of class folders",
        description="Accuracy, per-class accuracy and confusion matrix of a bundle, a shipped "
        "model or a run on DIR, a folder holding one folder of images per class (named after "
        "the model's classes; a folder of more classes, such as CIFAR-10's test set, is "
        "scored on the model's classes and the others are named as left out). Exit 0 if "
        "every image was read, 1 if any could not be.")
    completers.attach(p.add_argument(
        "model", metavar="MODEL",
        help="a bundle directory, a shipped name (e.g. Net or Net-cifar2) or a run directory"),
        completers.bundles)
    p.add_argument("data_dir", metavar="DIR", help="a folder of class folders")
    p.add_argument("--backend", choices=["onnxruntime", "torch"], default=None,
                   help="onnxruntime (default for bundles) or torch (the only one for a run)")
    p.add_argument("--batch-size", type=int, default=256, metavar="N",
                   help="images decoded and classified at a time")
    add_bundle_options(p, "MODEL")
    p.add_argument("--out", metavar="OUT",
                   help="write OUT/evaluation.json and OUT/confusion_matrix.png")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=evaluate_command)


def evaluate_command(args: argparse.Namespace, registry: Registry) -> int:
    from zoo.analysis.evaluation import CONFUSION_PNG, EVALUATION_JSON, evaluate, print_skip

    if args.batch_size < 1:
        raise ZooError(f"--batch-size must be at least 1, got {args.batch_size}")
    result = evaluate(args.model, args.data_dir, backend=args.backend, weights=args.weights,
                      batch_size=args.batch_size, threads=args.threads, out=args.out,
                      expect_sha256=args.expect_sha256,
                      registry=registry, on_skip=print_skip)
    print(result.model_dump_json(indent=2) if args.json else result.format())
    if args.out:
        out = Path(args.out)
        print(f"zoo: wrote {out / EVALUATION_JSON} and {out / CONFUSION_PNG}", file=sys.stderr)
    return 1 if result.skipped else 0
