"""Peak memory (RSS) of training Net on CIFAR-2 with the default recipe, measured in a subprocess.

The child process trains (data loading from the decoded cache included) and
reports ``resource.getrusage(RUSAGE_SELF).ru_maxrss``. Goal: at most 1.5 GiB.

    python bench/bench_memory.py [--data-dir ../shared/data/cifar2/train] [--arch Net]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar2" / "train"

CHILD = """
import json, resource, sys, tempfile
from pathlib import Path
import zoo
arch, data_dir, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
fields = dict(dataset="imagefolder", data_dir=data_dir) if data_dir else dict(
    dataset="synthetic", dataset_options={"size": 10000, "num_classes": 2})
with tempfile.TemporaryDirectory() as tmp:
    zoo.train(arch, epochs=epochs, out=Path(tmp) / "run", progress="none", **fields)
peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_mib": peak_kib / 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--arch", default="Net")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    data_dir = str(args.data_dir) if args.data_dir.is_dir() else ""
    proc = subprocess.run([sys.executable, "-c", CHILD, args.arch, data_dir, str(args.epochs)],
                          capture_output=True, text=True, check=True)
    peak = json.loads(proc.stdout.strip().splitlines()[-1])["peak_mib"]
    source = data_dir or "synthetic (10,000 images; no --data-dir found)"
    print(f"{'architecture':<14}{'data':<50}{'peak RSS MiB':>14}{'goal MiB':>10}")
    print(f"{args.arch:<14}{source[-48:]:<50}{peak:>14.0f}{1536:>10}  "
          f"{'ok' if peak <= 1536 else 'OVER'}")


if __name__ == "__main__":
    main()
