"""Optional int8: static QDQ quantization with onnxruntime, calibrated on training images.

    python bench/bench_quantize.py [--archs Net NetDepth] [--epochs 4] [--size 3000]
    python bench/bench_quantize.py --data-dir ../shared/data/cifar2/train

With ``--data-dir`` (the CIFAR-2 ImageFolder the shipped models trained on), each shipped
bundle (``exports/ARCH-cifar2``) is quantized and compared on its own held-out split (the
seeded 10 % its manifest records, checked by content key), calibrated on training images
only. Without it, for each architecture: train on the offline ``synthetic`` dataset, export
the run, quantize the bundle's graph (``quantize_static``, QDQ format, per-channel
int8 weights and uint8 activations (``--activations``, ``--format``), calibrated on
``--calibration`` training images), then compare float32 and int8 on the run's
whole validation split (accuracy, agreement) and in speed (batch 1 and 256). The
verdict "keep" needs an accuracy drop of at most 0.5 points and a faster int8
graph at both batch sizes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

import zoo
from zoo.bundles.integrity import read_manifest
from zoo.deploy.runtime import ort_session
from zoo.exporter.write import export
from zoo.spec.dataset import DatasetRequest
from zoo.spec.manifest import INPUT_NAME, ONNX_FILE
from zoo.util.cpu import describe, native_int8
from zoo.util.imaging import normalize


class Reader(CalibrationDataReader):  # type: ignore[misc]
    def __init__(self, images: np.ndarray, batch: int = 32) -> None:
        self.batches = iter([images[i:i + batch] for i in range(0, len(images), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self.batches, None)
        return None if x is None else {INPUT_NAME: x}


def latency_ms(session: Any, x: np.ndarray, runs: int) -> float:
    for _ in range(max(3, runs // 10)):
        session.run(None, {INPUT_NAME: x})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {INPUT_NAME: x})
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def predict(session: Any, x: np.ndarray) -> np.ndarray:
    logits = np.concatenate([session.run(None, {INPUT_NAME: x[i:i + 256]})[0]
                             for i in range(0, len(x), 256)])
    return np.asarray(logits.argmax(1))


def shipped(name: str, args: argparse.Namespace) -> tuple[Path, np.ndarray, np.ndarray,
                                                           np.ndarray]:
    """The shipped bundle of ``name``, calibration images and its held-out split (normalized)."""
    bundle = Path(__file__).resolve().parents[1] / "exports" / f"{name}-cifar2"
    manifest = read_manifest(bundle)
    training = manifest.training
    assert training is not None
    recipe = training.recipe
    shape = zoo.get_spec(name).input_shape
    data = zoo.default_registry().load_dataset(
        "imagefolder", DatasetRequest(data_dir=args.data_dir, val_split=recipe["val_split"],
                                      seed=training.seed, image_size=(shape.height, shape.width),
                                      channels=shape.channels))
    assert data.content_key == training.content_key, f"not {bundle.name}'s training data"
    norm = manifest.normalization
    rng = np.random.default_rng(0)
    pick = rng.choice(len(data.train.images), args.calibration, replace=False)
    return (bundle, normalize(data.train.images[pick], norm.mean, norm.std),
            normalize(data.val.images, norm.mean, norm.std), data.val.labels)


def bench(name: str, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    if args.data_dir is not None:
        bundle, calib, val, labels = shipped(name, args)
        return compare(name, root, bundle, calib, val, labels, args)
    options = {"num_classes": args.classes, "size": args.size}
    run = zoo.train(name, dataset="synthetic", dataset_options=options, epochs=args.epochs,
                    out=root / f"{name}-run", progress="none", seed=0)
    bundle = export(run.run_dir, out=root / f"{name}-bundle").path
    summary = run.summary
    shape = summary.model.input_shape
    data = zoo.default_registry().load_dataset(
        "synthetic", DatasetRequest(val_split=summary.train_config["val_split"],
                                    seed=summary.seed, image_size=(shape.height, shape.width),
                                    channels=shape.channels),
        **options)
    assert data.content_key == summary.data.content_key, "not the run's data"
    norm = summary.normalization
    calib = normalize(data.train.images[: args.calibration], norm.mean, norm.std)
    val = normalize(data.val.images, norm.mean, norm.std)
    return compare(name, root, bundle, calib, val, data.val.labels, args)


def compare(name: str, root: Path, bundle: Path, calib: np.ndarray, val: np.ndarray,
            labels: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """Quantize ``bundle``'s graph on ``calib`` and compare it with float32 on ``val``."""
    pre = root / f"{name}-pre.onnx"
    int8 = root / f"{name}-int8.onnx"
    quant_pre_process(str(bundle / ONNX_FILE), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(int8), Reader(calib),
                    quant_format=QuantFormat.QDQ if args.format == "qdq"
                    else QuantFormat.QOperator,
                    activation_type=QuantType.QUInt8 if args.activations == "uint8"
                    else QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True)
    fp = ort_session(bundle / ONNX_FILE, threads=args.threads)
    q = ort_session(int8, threads=args.threads)
    p_fp, p_q = predict(fp, val), predict(q, val)
    row: dict[str, Any] = {
        "architecture": name,
        "acc_fp32": float((p_fp == labels).mean()), "acc_int8": float((p_q == labels).mean()),
        "agreement": float((p_fp == p_q).mean()), "val_images": len(labels),
    }
    for batch, runs in ((1, 300), (256, 10)):
        x = val[:batch] if len(val) >= batch else np.resize(val, (batch, *val.shape[1:]))
        row[f"fp32_ms_b{batch}"] = latency_ms(fp, x, runs)
        row[f"int8_ms_b{batch}"] = latency_ms(q, x, runs)
    row["drop_points"] = 100 * (row["acc_fp32"] - row["acc_int8"])
    faster = row["int8_ms_b1"] < row["fp32_ms_b1"] and row["int8_ms_b256"] < row["fp32_ms_b256"]
    row["verdict"] = "keep" if row["drop_points"] <= 0.5 and faster else "drop"
    row["size_kib"] = (bundle / ONNX_FILE).stat().st_size / 1024
    row["int8_size_kib"] = int8.stat().st_size / 1024
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
    parser.add_argument("--format", choices=["qdq", "qoperator"], default="qdq",
                        help="QDQ nodes (onnxruntime fuses them) or QLinear operators")
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
