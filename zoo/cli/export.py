"""``zoo export`` and ``zoo verify``: verified ONNX bundles (torch is imported only when run)."""

from __future__ import annotations

import argparse
import json
import sys

from zoo.cli.options import parse_pairs
from zoo.manifest import DEFAULT_ATOL, DEFAULT_RTOL
from zoo.registry import Registry


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "export", help="export a run or an architecture to a verified ONNX bundle",
        description="Write a bundle (model.pt, model.onnx, manifest.json) after checking the "
        "ONNX graph against PyTorch with onnxruntime; a bundle that fails is never written.")
    p.add_argument("source", metavar="RUN_DIR|NAME",
                   help="a training run directory, or an architecture name")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="hyperparameter or shape override for an architecture name (repeatable)")
    p.add_argument("--out", metavar="DIR",
                   help="bundle directory (default: EXPORTS/<Arch>-<dataset> for a run, "
                   "EXPORTS/<Arch> for a name, where EXPORTS is $ZOO_EXPORTS, else "
                   "~/.local/share/zoo/exports: where zoo predict NAME looks)")
    p.add_argument("--force", action="store_true", help="replace an existing bundle atomically")
    p.add_argument("--opset", type=int, metavar="N", help="ONNX opset (default 17)")
    p.add_argument("--exporter", choices=("torchscript", "dynamo"), default="torchscript",
                   help="torch.onnx exporter (torchscript is 20-30x faster here)")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best",
                   help="which checkpoint of a run to export")
    p.add_argument("--atol", type=float, default=DEFAULT_ATOL,
                   help="absolute tolerance of ONNX vs PyTorch")
    p.add_argument("--rtol", type=float, default=DEFAULT_RTOL,
                   help="relative tolerance of ONNX vs PyTorch")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the initial weights when exporting a name")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.add_argument("--format", dest="formats", default="onnx", metavar="F[,F]",
                   help="export formats, comma-separated: onnx (always) and e.g. pt2 "
                        "(torch.export's ExportedProgram), each verified (default: onnx)")
    p.set_defaults(handler=export_command)

    p = subparsers.add_parser(
        "verify", help="re-check a bundle: checksums, manifest, ONNX vs PyTorch")
    p.add_argument("bundle", metavar="BUNDLE", help="a bundle directory or a shipped bundle name")
    p.add_argument("--atol", type=float, help="absolute tolerance (default: the manifest's)")
    p.add_argument("--rtol", type=float, help="relative tolerance (default: the manifest's)")
    p.add_argument("--expect-sha256", metavar="HEX",
                   help="refuse the bundle unless its manifest has this SHA-256")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=verify_command)


def export_command(args: argparse.Namespace, registry: Registry) -> int:
    from zoo.exporter import export
    from zoo.manifest import VerificationError

    try:
        result = export(args.source, overrides=parse_pairs(args.sets, "--set"), out=args.out,
                        force=args.force, opset=args.opset, exporter=args.exporter,
                        atol=args.atol, rtol=args.rtol, checkpoint=args.checkpoint,
                        seed=args.seed, registry=registry, formats=args.formats)
    except VerificationError as exc:
        print(exc.report.format(), file=sys.stderr)
        raise
    manifest = result.manifest
    if args.json:
        print(manifest.to_json(), end="")
        return 0
    print(manifest.verification.format())
    for name, record in manifest.formats.items():
        worst = max((c.max_abs_diff for c in record.checks), default=0.0)
        print(f"  {name}: {', '.join(record.files)} verified ({len(record.checks)} checks, "
              f"max abs {worst:.3g})")
    print(f"exported {manifest.architecture} ({manifest.export.exporter} exporter, opset "
          f"{manifest.export.opset}, {manifest.total_bytes / 1024:.1f} KiB) to {result.path}")
    print(f"bundle sha256 {result.sha256} (pin it: --expect-sha256)")
    return 0


def verify_command(args: argparse.Namespace, registry: Registry) -> int:
    from zoo.exporter import verify_bundle
    from zoo.exportformats import verify_formats
    from zoo.manifest import bundle_sha256
    from zoo.pretrained import resolve_bundle

    report = verify_bundle(args.bundle, atol=args.atol, rtol=args.rtol, registry=registry,
                           expect_sha256=args.expect_sha256)
    formats = verify_formats(args.bundle, registry=registry, expect_sha256=args.expect_sha256)
    digest = bundle_sha256(resolve_bundle(args.bundle))
    if args.json:
        extra = {"formats": {k: v.model_dump(mode="json") for k, v in formats.items()}} \
            if formats else {}
        print(json.dumps({"sha256": digest, **report.model_dump(mode="json"), **extra},
                         indent=2))
    else:
        print(f"bundle sha256 {digest}")
        print("SHA-256 sums, manifest and weights (weights_only): ok")
        print("graph input and output shapes agree with the manifest: ok")
        print(report.format())
        for name, record in formats.items():
            worst = max((c.max_abs_diff for c in record.checks), default=0.0)
            print(f"  {name}: {', '.join(record.files)} {'ok' if record.passed else 'FAILED'} "
                  f"({len(record.checks)} checks, max abs {worst:.3g})")
    return 0 if report.passed and all(r.passed for r in formats.values()) else 1
