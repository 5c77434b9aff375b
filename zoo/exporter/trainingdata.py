"""The data an export's weights were trained on, for formats that need it (``data=``).

A format whose writer or verifier names a ``data`` keyword (the ``int8`` format:
calibration, and accuracy on the held-out split) gets a :class:`TrainingData`. It
loads nothing until asked: the dataset is loaded again through its plugin with the
run's recorded request (dataset, options, held-out fraction, seed, input size), and
its content key must equal the one the run recorded, so that the held-out split is
the very split the run never trained on. A run directory knows where its data lay;
a bundle records only the folder's last component (bundles are shared), so for a
bundle the folder is given (``zoo export --data-dir``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zoo.errors import ExportError
from zoo.host.registry import Registry
from zoo.spec.architecture import ModelConfig
from zoo.spec.dataset import DatasetRequest, LoadedDataset
from zoo.spec.manifest import TrainingInfo
from zoo.spec.run import Normalization
from zoo.util.imaging import normalize

#: Seed of the choice of calibration images among the training images.
CALIBRATION_SEED = 0


@dataclass(frozen=True)
class HeldOut:
    """The run's held-out images, normalized as the graph takes them, with their labels."""

    images: np.ndarray  # float32 (N, C, H, W)
    labels: np.ndarray  # int64 (N,)
    description: str  # in words, e.g. "held-out split (10% of the training images, seed 0)"


class TrainingData:
    """The training data of the weights being exported, loaded on first use.

    ``training`` is what the bundle records of the run (None: weights that were never
    trained, which have no data); ``recipe`` the run's configuration (a run's own, with
    its paths, or a bundle's portable one); ``data_dir`` the folder that replaces the
    recipe's. ``what`` names the source in errors.
    """

    def __init__(self, registry: Registry, config: ModelConfig, normalization: Normalization,
                 training: TrainingInfo | None, recipe: Mapping[str, Any] | None, *,
                 data_dir: Path | None, what: str, local_paths: bool) -> None:
        self._registry = registry
        self._config = config
        self._norm = normalization
        self._training = training
        self._recipe = dict(recipe or {})
        self._data_dir = data_dir
        self._what = what
        self._local_paths = local_paths
        self._loaded: LoadedDataset | None = None

    def _load(self) -> LoadedDataset:
        if self._loaded is not None:
            return self._loaded
        training = self._training
        if training is None:
            raise ExportError(f"{self._what} records no training data (its weights were not "
                              "trained by a zoo run); this format needs the data to calibrate "
                              "and to measure accuracy: export a run directory or a bundle "
                              "exported from one")
        recipe = self._recipe
        data_dir = self._data_dir
        if data_dir is None and recipe.get("data_dir") and self._local_paths:
            data_dir = Path(recipe["data_dir"])
        if data_dir is None and recipe.get("data_dir"):
            raise ExportError(f"{self._what} was trained on the folder "
                              f"{str(recipe['data_dir'])!r}, which a bundle does not locate; "
                              "give its path with --data-dir (data_dir=)")
        val_dir = recipe.get("val_dir")
        if val_dir and not self._local_paths:
            raise ExportError(f"{self._what} was validated on a separate folder "
                              f"{str(val_dir)!r}; export its run directory instead")
        shape = self._config.input_shape
        request = DatasetRequest(
            data_dir=data_dir, val_dir=Path(val_dir) if val_dir else None,
            val_split=float(recipe.get("val_split", 0.1)), seed=training.seed,
            image_size=(shape.height, shape.width), channels=shape.channels,
            download=bool(recipe.get("download", True)), quiet=True)
        data = self._registry.load_dataset(training.dataset, request,
                                           **dict(recipe.get("dataset_options") or {}))
        if data.content_key != training.content_key:
            where = f"at {data_dir}" if data_dir is not None else f"of {training.dataset!r}"
            raise ExportError(f"the data {where} is not the data {self._what} was trained on "
                              f"(content key {data.content_key}, recorded "
                              f"{training.content_key}); give --data-dir the folder it "
                              "trained on")
        self._loaded = data
        return data

    def calibration(self, count: int) -> np.ndarray:
        """``count`` training images (all, if there are fewer) chosen with a fixed seed,
        normalized: float32 ``(N, C, H, W)``. Never held-out images."""
        train = self._load().train
        rng = np.random.default_rng(CALIBRATION_SEED)
        pick = np.sort(rng.choice(len(train), min(count, len(train)), replace=False))
        return normalize(train.images[pick], self._norm.mean, self._norm.std)

    def held_out(self) -> HeldOut:
        """The held-out split the run measured its validation accuracy on."""
        data = self._load()
        assert self._training is not None
        return HeldOut(images=normalize(data.val.images, self._norm.mean, self._norm.std),
                       labels=data.val.labels,
                       description=f"held-out split ({self._training.accuracy_split})")


__all__ = ["CALIBRATION_SEED", "HeldOut", "TrainingData"]
