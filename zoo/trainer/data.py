"""A training run's data: the dataset as its plugin promises it, and what runs record."""

from __future__ import annotations

from zoo.errors import DataError
from zoo.host.contract import load_dataset
from zoo.host.registry import Registry
from zoo.spec.architecture import ModelConfig
from zoo.spec.dataset import DatasetRequest, LoadedDataset
from zoo.spec.run import DataInfo
from zoo.spec.training import TrainConfig, check_cache_dir


def load_run_data(registry: Registry, config: TrainConfig, model_config: ModelConfig, *,
                  quiet: bool = False) -> LoadedDataset:
    spec = registry.get_dataset(config.dataset)
    check_cache_dir(config.cache_dir)
    shape = model_config.input_shape
    request = DatasetRequest(data_dir=config.data_dir, val_dir=config.val_dir,
                             val_split=config.val_split, seed=config.seed,
                             image_size=(shape.height, shape.width), channels=shape.channels,
                             strict=config.strict, download=config.download,
                             cache_dir=config.cache_dir, quiet=quiet)
    data = load_dataset(spec, request, **config.dataset_options)
    if len(data.train) == 0 or len(data.val) == 0:
        raise DataError(f"dataset {config.dataset!r} gave {len(data.train)} training and "
                        f"{len(data.val)} validation images; both must be non-empty")
    return data


def data_info(data: LoadedDataset, config: TrainConfig) -> DataInfo:
    """What run.json records of the data: source, content key, split, classes, sizes."""
    return DataInfo(
        dataset=data.name, source=str(config.data_dir) if config.data_dir else None,
        content_key=data.content_key, split=data.split_description, classes=data.classes,
        train_size=len(data.train), val_size=len(data.val))
