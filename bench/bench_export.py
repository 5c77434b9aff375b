"""Export + verification time per architecture, TorchScript exporter against dynamo.

    python bench/bench_export.py [--archs Net NetRes] [--no-dynamo] [--cold]

For each architecture at its defaults: the time of ``zoo.export`` (state_dict,
ONNX export, onnx.checker full check, onnxruntime against PyTorch at batch 1
and 7, the 100-run latency measurement, manifest), split into export and
verification, with each exporter. A warm-up export runs first so that the
one-off import of torch.onnx is not charged to the first architecture;
``--cold`` also times a whole ``python -m zoo export Net`` process.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zoo
from zoo.exporter.onnx import Exporter
from zoo.exporter.write import export


def time_export(name: str, out: Path, exporter: Exporter) -> tuple[float, float, float]:
    opset = 17 if exporter == "torchscript" else 18
    start = time.perf_counter()
    result = export(name, out=out, exporter=exporter, opset=opset, force=True)
    total = time.perf_counter() - start
    m = result.manifest
    return total, m.export.export_seconds, m.verification.seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="*", default=None, help="default: every built-in")
    parser.add_argument("--no-dynamo", action="store_true", help="skip the dynamo exporter")
    parser.add_argument("--cold", action="store_true",
                        help="also time a fresh `python -m zoo export Net` process")
    args = parser.parse_args(argv)
    names = args.archs or zoo.list_models(tags=["chapter8"])
    exporters: list[Exporter] = ["torchscript"] if args.no_dynamo else ["torchscript", "dynamo"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for exporter in exporters:  # warm-up: imports torch.onnx (and onnxscript for dynamo)
            time_export("Net", root / "warmup", exporter)
        for name in names:
            row = [name]
            for exporter in exporters:
                total, exp, ver = time_export(name, root / name, exporter)
                row += [f"{total:.2f}", f"{exp:.2f}", f"{ver:.2f}"]
            rows.append(row)
            print(f"  {name} done", file=sys.stderr)
        cold = None
        if args.cold:
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "zoo", "export", "Net", "--out",
                            str(root / "cold")], check=True, capture_output=True)
            cold = time.perf_counter() - start
    header = ["architecture"]
    for exporter in exporters:
        header += [f"{exporter} total s", f"{exporter} export s", f"{exporter} verify s"]
    print("| " + " | ".join(header) + " |")
    print("|---|" + "---:|" * (len(header) - 1))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if cold is not None:
        print(f"\ncold `python -m zoo export Net` process (imports included): {cold:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
