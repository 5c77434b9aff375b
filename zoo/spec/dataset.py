"""Dataset specifications and the data a dataset loader returns.

Datasets are plugins like architectures (the ``zoo_datasets`` hook). A loader
returns decoded uint8 images in one array, so that the trainer can keep them
on its device and take batches by index. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from zoo.errors import ZooError
from zoo.spec.architecture import IMPORT_PATTERN, NAME_PATTERN
from zoo.spec.numbers import NoBoolNumbers
from zoo.spec.provenance import Provenance

if TYPE_CHECKING:  # numpy stays out of the import path of `zoo list` (tests/test_layout.py)
    import numpy as np


class DatasetOptions(NoBoolNumbers):
    """Base class of a dataset's own options: frozen, unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class DatasetRequest(NoBoolNumbers):
    """What the trainer asks of a dataset loader; each field says what the loader must do."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    data_dir: Path | None = Field(None, description="Where the data lies (or is downloaded to); "
                                                    "None when the user gave no --data-dir.")
    val_dir: Path | None = Field(None, description="A separate validation directory, if any: "
                                                   "a loader that supports one takes its "
                                                   "validation split from it.")
    val_split: float = Field(0.1, ge=0.0, lt=1.0,
                             description="Fraction held out for validation when there is no "
                                         "val_dir and the data has no split of its own.")
    seed: int = Field(0, description="Seed of anything random in the loader (the held-out "
                                     "split, generated images): same seed, same dataset.")
    image_size: tuple[int, int] | None = Field(None, description="(height, width) every image "
                                                                 "must have (resize to it); "
                                                                 "None: the data's own size.")
    channels: int = Field(3, ge=1, description="Channels every image must have (1 grey, 3 RGB).")
    strict: bool = Field(False, description="Fail on an unreadable file instead of skipping it "
                                            "(and listing it in LoadedDataset.skipped).")
    download: bool = Field(True, description="Whether downloading is allowed when the data is "
                                             "not local.")
    cache_dir: Path | None = Field(None, description="Where decoded uint8 caches may be kept "
                                                     "(None: $ZOO_CACHE_DIR or ~/.cache/zoo).")
    quiet: bool = Field(False, description="Print no warnings (set on all but one of the "
                                           "processes of a distributed run).")


@dataclass(frozen=True)
class Split:
    """One split of a dataset.

    ``images``: a C-contiguous ``numpy.uint8`` array ``(N, C, H, W)`` (channels first),
    ``C`` and ``(H, W)`` as the request asked. ``labels``: ``numpy.int64`` ``(N,)``, each
    in ``0 .. len(classes) - 1``.
    """

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class LoadedDataset:
    """A dataset ready to train on: both splits, class names, and where it came from.

    ``name``: the dataset's name. ``train``, ``val``: the two splits (:class:`Split`), both
    non-empty. ``classes``: at least two distinct names, label ``i`` is ``classes[i]``.
    ``content_key``: a non-empty string that changes whenever the data would (a hash
    of the files, or of the generator's options and seed); runs record it and
    ``--resume`` refuses a run whose data changed. ``split_description``: one
    sentence saying how train and validation were separated. ``skipped``: files
    that could not be read (reported, not fatal unless ``request.strict``).
    """

    name: str
    train: Split
    val: Split
    classes: tuple[str, ...]
    content_key: str
    split_description: str
    skipped: tuple[str, ...] = field(default=())


#: The request fields a user sets on the command line, with their flags: a dataset that
#: declares ``uses`` is warned about those it is given but does not use.
USER_OPTIONS = {"data_dir": "--data-dir", "val_dir": "--val-dir", "val_split": "--val-split",
                "strict": "--strict", "download": "--no-download"}


class DatasetSpec(BaseModel):
    """A dataset, as a plugin declares it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, max_length=64, description="Unique name.")
    summary: str = Field(min_length=1, max_length=200, pattern=r"^[^\n]*$",
                         description="One line saying what it is.")
    loader: str = Field(pattern=IMPORT_PATTERN, description="`module:function` loading it.")
    options: type[DatasetOptions] = Field(DatasetOptions,
                                          description="Its own options' pydantic model "
                                                      "(`--option key=value`).")
    needs_data_dir: bool = Field(False, description="Whether --data-dir is required.")
    downloads: bool = Field(False, description="Whether it can download its data.")
    num_classes: int | None = Field(None, description="Fixed class count, if known up front.")
    uses: tuple[Literal["data_dir", "val_dir", "val_split", "strict", "download"], ...] | None = (
        Field(None, description="The request options its loader honours; any other one a user "
                                "sets is warned about as ignored (None: not declared)."))
    provenance: Provenance | None = Field(None, description="Set by the registry.")

    def validate_options(self, options: Mapping[str, Any]) -> DatasetOptions:
        """``options`` validated by the dataset's options model; one sentence if they are bad."""
        try:
            return self.options.model_validate(dict(options))
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            accepted = ", ".join(self.options.model_fields) or "none"
            raise ZooError(f"invalid option {field!r} for dataset {self.name!r}: "
                           f"{first['msg']}; accepted options: {accepted}") from None

    def unused_options(self, request: DatasetRequest) -> list[str]:
        """The flags of request options set away from their defaults that the loader ignores."""
        if self.uses is None:
            return []
        defaults = DatasetRequest()
        return [flag for name, flag in USER_OPTIONS.items()
                if name not in self.uses and getattr(request, name) != getattr(defaults, name)]


__all__ = ["USER_OPTIONS", "DatasetOptions", "DatasetRequest", "DatasetSpec", "LoadedDataset",
           "Split"]
