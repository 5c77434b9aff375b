"""Write ``cifar2_val.npz``: the first 32 validation images of each class of the shipped runs.

The shipped bundles were trained on an ImageFolder copy of CIFAR-2 with
``--val-split 0.1 --seed 0``; this takes the same split (the dataset plugin's
scan order and seeded stratified split) and keeps 32 held-out images per class,
decoded as training decodes them::

    python tests/data/make_cifar2_val.py DATA_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from zoo_datasets.common import stratified_split
from zoo_datasets.imagefolder import scan

from zoo.util.imaging import decode_image

PER_CLASS = 32
OUT = Path(__file__).with_name("cifar2_val.npz")


def main(data_dir: str) -> None:
    classes, files = scan(Path(data_dir))
    labels = np.array([label for _, label in files], dtype=np.int64)
    _, val = stratified_split(labels, 0.1, 0)
    keep = np.concatenate([val[labels[val] == c][:PER_CLASS] for c in range(len(classes))])
    images = np.stack([decode_image(files[i][0], 3, (32, 32)) for i in keep])
    names = np.array([f"{classes[labels[i]]}/{files[i][0].name}" for i in keep])
    np.savez_compressed(OUT, images=images, labels=labels[keep], classes=np.array(classes),
                        files=names)
    print(f"wrote {OUT}: {len(keep)} images of {classes}")


if __name__ == "__main__":
    main(sys.argv[1])
