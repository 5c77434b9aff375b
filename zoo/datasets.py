"""Dataset specifications and the data a dataset loader returns.

Datasets are plugins like architectures (the ``zoo_datasets`` hook). A loader
returns decoded uint8 images in one array, so that the trainer can keep them
on its device and take batches by index. Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from zoo.errors import ZooError
from zoo.spec import IMPORT_PATTERN, NAME_PATTERN, Provenance, load_callable

if TYPE_CHECKING:  # numpy stays out of the import path of `zoo list`
    import numpy as np


class DatasetOptions(BaseModel):
    """Base class of a dataset's own options: frozen, unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class DatasetRequest(BaseModel):
    """What the trainer asks of a dataset loader."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    data_dir: Path | None = Field(None, description="Where the data lies (or is downloaded to).")
    val_dir: Path | None = Field(None, description="A separate validation directory, if any.")
    val_split: float = Field(0.1, ge=0.0, lt=1.0,
                             description="Fraction held out for validation when no val_dir.")
    seed: int = Field(0, description="Seed of the held-out split.")
    image_size: tuple[int, int] | None = Field(None, description="Resize to (height, width).")
    channels: int = Field(3, ge=1, description="Channels to decode to (1 grey, 3 RGB).")
    strict: bool = Field(False, description="Fail on an unreadable file instead of skipping it.")
    download: bool = Field(True, description="Allow downloading when the data is not local.")
    cache_dir: Path | None = Field(None, description="Where decoded uint8 caches are kept.")
    quiet: bool = Field(False, description="Print no warnings (set on all but one of the "
                                           "processes of a distributed run).")


@dataclass(frozen=True)
class Split:
    """Images as uint8 ``(N, C, H, W)`` and int64 labels ``(N,)``."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class LoadedDataset:
    """A dataset ready to train on: both splits, class names, and where it came from.

    ``content_key`` hashes the source's content; ``split_description`` says how
    train and validation were separated; ``skipped`` lists unreadable files.
    """

    name: str
    train: Split
    val: Split
    classes: tuple[str, ...]
    content_key: str
    split_description: str
    skipped: tuple[str, ...] = field(default=())


class DatasetSpec(BaseModel):
    """A dataset, as a plugin declares it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, max_length=64)
    summary: str = Field(min_length=1, max_length=200, pattern=r"^[^\n]*$")
    loader: str = Field(pattern=IMPORT_PATTERN, description="`module:function` loading it.")
    options: type[DatasetOptions] = DatasetOptions
    needs_data_dir: bool = Field(False, description="Whether --data-dir is required.")
    downloads: bool = Field(False, description="Whether it can download its data.")
    num_classes: int | None = Field(None, description="Fixed class count, if known up front.")
    provenance: Provenance | None = None

    def load(self, request: DatasetRequest, **options: Any) -> LoadedDataset:
        """Validate ``options``, import the loader and load the dataset."""
        try:
            opts = self.options.model_validate(options)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            accepted = ", ".join(self.options.model_fields) or "none"
            raise ZooError(f"invalid option {field!r} for dataset {self.name!r}: "
                           f"{first['msg']}; accepted options: {accepted}") from None
        if self.needs_data_dir and request.data_dir is None:
            raise ZooError(f"dataset {self.name!r} needs --data-dir DIR")
        loader = load_callable(self.loader, f"loader of dataset {self.name!r}", self.provenance)
        loaded: LoadedDataset = loader(request, opts)
        return loaded
