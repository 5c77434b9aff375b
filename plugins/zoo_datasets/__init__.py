"""The built-in datasets, as a zoo plugin: ``synthetic``, ``imagefolder``, ``cifar2``, ``cifar10``.

This module only declares them (no torch import); the loaders live in
submodules imported when a dataset is used. Every loader returns decoded
uint8 images, so the trainer keeps a whole split on its device.
"""

from __future__ import annotations

from pydantic import Field

from zoo import DatasetOptions, DatasetSpec, hookimpl

SHAPES = ("cross", "circle", "square", "triangle", "ring", "diamond")


class SyntheticOptions(DatasetOptions):
    size: int = Field(2000, ge=4, le=1_000_000, description="Number of images (train + val).")
    num_classes: int = Field(4, ge=2, le=len(SHAPES),
                             description=f"Number of shape classes, from: {', '.join(SHAPES)}.")
    noise: float = Field(0.1, ge=0.0, le=1.0, description="Background noise amplitude.")


class CifarOptions(DatasetOptions):
    pass


class ImageFolderOptions(DatasetOptions):
    cache: bool = Field(True, description="Keep decoded images in the uint8 cache.")


DATASETS: tuple[DatasetSpec, ...] = (
    DatasetSpec(
        name="synthetic",
        summary="Coloured shapes at random places on noisy backgrounds (offline, deterministic).",
        loader="zoo_datasets.synthetic:load",
        options=SyntheticOptions,
        uses=("val_split",),
    ),
    DatasetSpec(
        name="imagefolder",
        summary="Any directory of class folders of JPEG/PNG images (--data-dir, --val-dir).",
        loader="zoo_datasets.imagefolder:load",
        options=ImageFolderOptions,
        needs_data_dir=True,
        uses=("data_dir", "val_dir", "val_split", "strict"),
    ),
    DatasetSpec(
        name="cifar2",
        summary="CIFAR-10 restricted to airplane and bird, as in the book (official split).",
        loader="zoo_datasets.cifar:load_cifar2",
        options=CifarOptions,
        downloads=True,
        uses=("data_dir", "download"),
        num_classes=2,
    ),
    DatasetSpec(
        name="cifar10",
        summary="CIFAR-10 through torchvision, with its official train/test split.",
        loader="zoo_datasets.cifar:load_cifar10",
        options=CifarOptions,
        downloads=True,
        uses=("data_dir", "download"),
        num_classes=10,
    ),
)


@hookimpl
def zoo_datasets() -> list[DatasetSpec]:
    return list(DATASETS)
