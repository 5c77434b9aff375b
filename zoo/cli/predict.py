"""``zoo predict``: classify image files with a bundle on onnxruntime (never imports torch).

Files given by name are all tried; directories contribute their image files
(by suffix, recursively through nested and linked folders such as class
folders, sorted). A file that is not a readable image is reported on stderr
and skipped; the others are still predicted. Exit status:
0 when every input was predicted, 1 when any input could not be read (the
readable ones are still printed), or on any other error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo.cli import completers
from zoo.cli.options import add_bundle_options
from zoo.errors import ZooError
from zoo.host.registry import Registry

if TYPE_CHECKING:
    from zoo.deploy import Prediction


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "predict", help="classify images with a bundle on onnxruntime (no torch)",
        description="Classify image files with a bundle's ONNX graph, using the preprocessing "
        "its manifest records. Exit 0 if every input was predicted, 1 if any could not be read.")
    completers.attach(p.add_argument(
        "bundle", metavar="BUNDLE",
        help="a bundle directory, or a shipped bundle name (e.g. Net or Net-cifar2)"),
        completers.bundles)
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or directories")
    p.add_argument("--top-k", type=int, default=1, metavar="K",
                   help="show the K most probable classes")
    p.add_argument("--batch-size", type=int, default=64, metavar="N",
                   help="images per onnxruntime call")
    add_bundle_options(p, "BUNDLE")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--graph", default="onnx", metavar="FORMAT",
                   help="which ONNX graph of the bundle runs: onnx (float32, default) or an "
                        "export format holding one, e.g. int8 (zoo export --quantize int8)")
    p.set_defaults(handler=predict_command)


def collect_inputs(paths: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files to classify, and (path, problem) for inputs that cannot be used."""
    from zoo.util.imagefiles import find_images

    files: list[Path] = []
    problems: list[tuple[str, str]] = []
    for arg in paths:
        path = Path(arg)
        if path.is_dir():
            found = find_images(path)  # recursive: class folders too, through links
            if not found:
                problems.append((arg, "directory holds no image files"))
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            problems.append((arg, "no such file or directory"))
    return files, problems


def predict_command(args: argparse.Namespace, registry: Registry) -> int:
    import numpy as np

    from zoo.deploy import OnnxClassifier
    from zoo.util.imaging import ImageDecodeError

    if args.top_k < 1:
        raise ZooError(f"--top-k must be at least 1, got {args.top_k}")
    if args.batch_size < 1:
        raise ZooError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.threads is not None:
        from zoo.util.threads import check_threads

        check_threads(args.threads, "--threads")

    classifier = OnnxClassifier(args.bundle, threads=args.threads, weights=args.weights,
                                expect_sha256=args.expect_sha256, registry=registry,
                                graph=args.graph)
    files, problems = collect_inputs(args.paths)
    for path_text, problem in problems:
        print(f"zoo: warning: {path_text}: {problem}", file=sys.stderr)
    predictions: list[Prediction] = []
    for start in range(0, len(files), args.batch_size):  # decode one batch at a time
        arrays, sources = [], []
        for path in files[start:start + args.batch_size]:
            try:
                arrays.append(classifier.to_uint8(path))
            except ImageDecodeError as exc:
                problem = str(exc).removeprefix(f"{path}: ")
                problems.append((str(path), problem))
                print(f"zoo: warning: {path}: {problem}", file=sys.stderr)
                continue
            sources.append(str(path))
        if not arrays:
            continue
        batch = classifier.predict(np.stack(arrays), top_k=args.top_k,
                                   batch_size=args.batch_size, sources=sources)
        if not args.json:
            for p in batch:
                scores = "  ".join(f"{s.label} {s.probability:.3f}" for s in p.top)
                print(f"{p.source}\t{scores}", flush=True)
        predictions.extend(batch)
    if args.json:
        out: dict[str, Any] = {
            "bundle": str(classifier.path),
            "architecture": classifier.manifest.architecture,
            "predictions": [{"path": p.source, "top": [s.model_dump() for s in p.top]}
                            for p in predictions],
            "errors": [{"path": path_text, "error": problem} for path_text, problem in problems],
        }
        print(json.dumps(out, indent=2))
    if not predictions:
        print("zoo: error: none of the inputs is a readable image", file=sys.stderr)
    return 1 if problems else 0
