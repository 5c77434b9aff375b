"""``zoo inspect``, ``zoo filters demo`` and ``zoo compare``: pictures of what models learned."""

from __future__ import annotations

import argparse
from pathlib import Path

from zoo.cli import completers
from zoo.cli.options import add_weights_option
from zoo.errors import ZooError
from zoo.host.registry import Registry
from zoo.util.fsutil import check_output_file, check_output_folder, output_folder, write_error


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "inspect", help="draw a model's first filters and feature maps for an image",
        description="Run IMAGE through MODEL and draw the first convolution's filters "
        "(filters.png) and the feature maps after every convolution block "
        "(features-NN-LAYER.png); print the top-k probabilities.")
    completers.attach(p.add_argument(
        "model", metavar="MODEL",
        help="a shipped name (Net), a bundle directory, a run directory or an architecture "
             "name (untrained)"), completers.models)
    p.add_argument("image", metavar="IMAGE", type=Path, help="an image file")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="where the PNGs go (default ./inspect/MODEL)")
    p.add_argument("--layer", metavar="NAME", help="draw only this convolution's block, e.g. conv2")
    add_weights_option(p, "MODEL")
    p.add_argument("--top-k", type=int, default=5, metavar="K",
                   help="print the K most probable classes")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    p.set_defaults(handler=inspect_command)

    p = subparsers.add_parser("filters", help="the chapter's hand-set convolution kernels")
    sub = p.add_subparsers(dest="filters_command", metavar="SUBCOMMAND", required=True)
    d = sub.add_parser("demo", help="blur, vertical and horizontal edge kernels on an image",
                       description="Apply the chapter's hand-set 3x3 kernels (average, vertical "
                       "edge, horizontal edge) to IMAGE and draw them beside it in one PNG.")
    d.add_argument("image", metavar="IMAGE", type=Path, help="an image file")
    d.add_argument("--out", type=Path, metavar="DIR", default=Path("."),
                   help="where filters-demo.png goes (default: the current folder)")
    d.set_defaults(handler=filters_demo_command)

    p = subparsers.add_parser(
        "compare", help="compare runs and bundles: accuracy chart and Markdown table",
        description="Train and validation accuracy of runs, bundles or shipped models as a "
        "grouped bar chart, with the reference accuracy their plugin publishes marked, and "
        "a Markdown table on stdout.")
    completers.attach(p.add_argument("sources", nargs="+", metavar="RUN_OR_BUNDLE",
                                     help="run directories, bundle directories or shipped names"),
                      completers.bundles)
    p.add_argument("--out", type=Path, metavar="FILE", default=Path("compare.png"),
                   help="the chart")
    add_weights_option(p, "each RUN_OR_BUNDLE")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.set_defaults(handler=compare_command)


def inspect_command(args: argparse.Namespace, registry: Registry) -> int:
    from zoo.analysis.inspection import DEFAULT_OUT, inspect_model, write_inspection

    if args.top_k < 1:
        raise ZooError(f"--top-k must be at least 1, got {args.top_k}")
    if not args.image.is_file():
        raise ZooError(f"image {str(args.image)!r} does not exist")
    out = args.out or DEFAULT_OUT / Path(args.model).name
    check_output_folder(out, "inspection folder --out")
    result = inspect_model(args.model, args.image, registry=registry, weights=args.weights)
    report = write_inspection(result, out, layer=args.layer, top_k=args.top_k,
                              image_name=str(args.image))
    if args.json:
        print(report.model_dump_json(indent=2))
        return 0
    trained = "" if result.trained else " (untrained)"
    print(f"{args.model}{trained} on {args.image}:")
    for score in report.top:
        print(f"  {score.label:<16} {score.probability:.3f}")
    print(f"{report.filters.path}: {report.filters.title}, {report.filters.tiles} tiles")
    for picture in report.feature_maps:
        print(f"{picture.path}: {picture.title}")
    return 0


def filters_demo_command(args: argparse.Namespace, registry: Registry) -> int:
    from zoo.analysis.filters import DEMO_PNG, filter_demo, render_demo

    check_output_folder(args.out, "folder --out")
    demo = filter_demo(args.image)
    path = args.out / DEMO_PNG
    with output_folder(args.out, "folder --out"):
        render_demo(demo, path)
    print(f"{path}: input, {', '.join(demo.outputs)}")
    return 0


def compare_command(args: argparse.Namespace, registry: Registry) -> int:
    from zoo.analysis.compare import compare, render_comparison

    check_output_file(args.out, "chart --out")
    comparison = compare(args.sources, registry=registry, weights=args.weights)
    try:
        render_comparison(comparison, args.out)
    except OSError as exc:
        raise write_error(args.out, exc, "chart --out") from None
    if args.json:
        print(comparison.model_dump_json(indent=2))
    else:
        print(comparison.to_markdown())
        print(f"\nchart: {args.out}")
    return 0
