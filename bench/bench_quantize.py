"""int8 against float32: the ``int8`` export format's accuracy and speed, per architecture.

    python bench/bench_quantize.py [--archs Net NetDepth] [--epochs 4] [--size 3000]
    python bench/bench_quantize.py --data-dir ../shared/data/cifar2/train

Each model is exported with ``zoo export --quantize int8`` (the library's own
``int8`` format: static QDQ quantization by onnxruntime, calibrated on
``--calibration`` training images, scored with the float32 graph on the run's
held-out split), with the accuracy limit lifted so that every model is measured;
then both graphs are timed side by side at batch 1 and 256. With ``--data-dir``
(the CIFAR-2 ImageFolder the shipped models trained on) the models are the shipped
bundles (``exports/ARCH-cifar2``) on their own held-out split, found by content key;
without it, each architecture is trained briefly on the offline ``synthetic``
dataset. The weights keep 7 bits (the format's default, ``reduce_range``) unless
``--full-range``. The verdict "keep" needs an accuracy drop of at most 0.5 points and a
faster int8 graph at both batch sizes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

import zoo
from zoo.bundles.integrity import read_manifest
from zoo.deploy.runtime import median_latency_ms, ort_session
from zoo.exporter.int8 import INT8_FILE
from zoo.spec.manifest import ONNX_FILE
from zoo.util.cpu import describe, native_int8

EXPORTS = Path(__file__).resolve().parents[1] / "exports"


def source(name: str, root: Path, args: argparse.Namespace) -> Path:
    """The shipped bundle (with ``--data-dir``), else a brief run on synthetic data."""
    if args.data_dir is not None:
        return EXPORTS / f"{name}-cifar2"
    run = zoo.train(name, dataset="synthetic", epochs=args.epochs, out=root / f"{name}-run",
                    dataset_options={"num_classes": args.classes, "size": args.size},
                    progress="none", seed=0)
    return run.run_dir


def bench(name: str, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    options = {"calibration_images": args.calibration, "activations": args.activations,
               "max_drop_points": 100.0, "reduce_range": not args.full_range}
    bundle = zoo.export(source(name, root, args), formats="int8", out=root / name,
                        data_dir=args.data_dir, options={"int8": options}).path
    assert zoo.verify(bundle).passed  # re-checked as a user would: the int8 graph included
    manifest = read_manifest(bundle)
    [check] = [c for c in manifest.formats["int8"].checks if c.accuracy is not None]
    assert check.accuracy is not None and check.reference_accuracy is not None
    row: dict[str, Any] = {
        "architecture": name, "acc_fp32": check.reference_accuracy, "acc_int8": check.accuracy,
        "agreement": check.top1_agreement, "val_images": check.batch_size,
        "drop_points": 100 * (check.reference_accuracy - check.accuracy),
        "size_kib": (bundle / ONNX_FILE).stat().st_size / 1024,
        "int8_size_kib": (bundle / INT8_FILE).stat().st_size / 1024,
    }
    fp = ort_session(bundle / ONNX_FILE, threads=args.threads)
    q = ort_session(bundle / INT8_FILE, threads=args.threads)
    shape = manifest.model.input_shape.as_tuple()
    rng = np.random.default_rng(0)
    for batch, runs in ((1, 300), (256, 10)):
        x = rng.standard_normal((batch, *shape)).astype(np.float32)
        row[f"fp32_ms_b{batch}"] = median_latency_ms(fp, x, runs, warmup=max(3, runs // 10))
        row[f"int8_ms_b{batch}"] = median_latency_ms(q, x, runs, warmup=max(3, runs // 10))
    faster = row["int8_ms_b1"] < row["fp32_ms_b1"] and row["int8_ms_b256"] < row["fp32_ms_b256"]
    row["verdict"] = "keep" if row["drop_points"] <= 0.5 and faster else "drop"
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="*", default=None)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--size", type=int, default=3000, help="synthetic images (train + val)")
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--calibration", type=int, default=512, help="training images")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--activations", choices=["int8", "uint8"], default="uint8",
                        help="activation type (uint8 activations x int8 weights: onnxruntime's "
                             "x86 path, VNNI's own product)")
    parser.add_argument("--full-range", action="store_true",
                        help="8-bit weights (reduce_range=false): exact only where the CPU "
                             "has VNNI, AMX or Arm's dot product")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="CIFAR-2 train ImageFolder: the shipped bundles on their held-out "
                             "split")
    args = parser.parse_args(argv)
    names = args.archs or zoo.list_models(tags=["chapter8"])
    print(describe(), "(int8 dot products in hardware)" if native_int8() else
          "(no int8 dot products in hardware)", file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            rows.append(bench(name, Path(tmp), args))
            print(f"  {name} done", file=sys.stderr)
    print("| architecture | val acc fp32 | val acc int8 | drop (points) | agreement | "
          "fp32 ms b1 | int8 ms b1 | fp32 ms b256 | int8 ms b256 | onnx KiB fp32/int8 | verdict |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['architecture']} | {r['acc_fp32']:.3f} | {r['acc_int8']:.3f} | "
              f"{r['drop_points']:.1f} | {r['agreement']:.3f} | {r['fp32_ms_b1']:.3f} | "
              f"{r['int8_ms_b1']:.3f} | {r['fp32_ms_b256']:.2f} | {r['int8_ms_b256']:.2f} | "
              f"{r['size_kib']:.0f}/{r['int8_size_kib']:.0f} | {r['verdict']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
