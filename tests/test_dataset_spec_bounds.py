"""The dataset declarations (:mod:`zoo.spec.dataset`) at their edges: a spec's bounds and
required fields, a request's defaults, frozen models, options refused in one line."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from pydantic import Field, ValidationError

from zoo.errors import ZooError
from zoo.spec.dataset import DatasetOptions, DatasetRequest, DatasetSpec, LoadedDataset, Split

GOOD: dict[str, Any] = {"name": "toy", "summary": "Toy images.", "loader": "toy.data:load"}


def spec(**changes: Any) -> DatasetSpec:
    return DatasetSpec(**{**GOOD, **changes})


@pytest.mark.parametrize(("field", "accepted", "refused"), [
    ("name", "n" * 64, "n" * 65),
    ("summary", "x", ""),
    ("summary", "s" * 200, "s" * 201),
    ("summary", "one line", "two\nlines"),
    ("loader", "pkg.mod:fn", "pkg.mod.fn"),
])
def test_spec_bounds(field: str, accepted: Any, refused: Any) -> None:
    assert getattr(spec(**{field: accepted}), field) == accepted
    with pytest.raises(ValidationError, match=field):
        spec(**{field: refused})


@pytest.mark.parametrize("field", ["name", "summary", "loader"])
def test_spec_required_fields(field: str) -> None:
    with pytest.raises(ValidationError, match=rf"{field}\n  Field required"):
        DatasetSpec(**{k: v for k, v in GOOD.items() if k != field})


def test_spec_defaults_and_freezing() -> None:
    made = spec()
    assert (made.options, made.needs_data_dir, made.downloads, made.num_classes, made.uses,
            made.provenance) == (DatasetOptions, False, False, None, None, None)
    with pytest.raises(ValidationError, match="frozen"):
        made.name = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        spec(extra=1)


def test_request_defaults_and_freezing() -> None:
    request = DatasetRequest()
    assert request.model_dump() == {
        "data_dir": None, "val_dir": None, "val_split": 0.1, "seed": 0, "image_size": None,
        "channels": 3, "strict": False, "download": True, "cache_dir": None, "quiet": False}
    with pytest.raises(ValidationError, match="frozen"):
        request.seed = 1  # type: ignore[misc]
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        DatasetRequest(surprise=1)  # type: ignore[call-arg]
    assert DatasetRequest(val_split=0.0).val_split == 0.0
    assert DatasetRequest(val_split=0.999).val_split == 0.999
    for bad in (1.0, -0.1):
        with pytest.raises(ValidationError, match="val_split"):
            DatasetRequest(val_split=bad)


@pytest.mark.parametrize("model", [DatasetSpec, DatasetRequest])
def test_every_field_is_described(model: type[DatasetSpec]) -> None:
    assert [n for n, f in model.model_fields.items() if not f.description] == []


def test_options_are_frozen_closed_and_refused_in_one_line() -> None:
    class Options(DatasetOptions):
        size: int = Field(100, ge=1)

    with_options = spec(options=Options)
    assert with_options.validate_options({"size": 5}) == Options(size=5)
    with pytest.raises(ZooError, match=r"^invalid option 'size' for dataset 'toy': .*; "
                                       r"accepted options: size$"):
        with_options.validate_options({"size": 0})
    with pytest.raises(ZooError, match=r"^invalid option 'colour' for dataset 'toy': .*; "
                                       r"accepted options: none$"):
        spec().validate_options({"colour": "red"})
    with pytest.raises(ValidationError, match="frozen"):
        Options().size = 3  # type: ignore[misc]


def test_loaded_data_and_splits_are_frozen() -> None:
    split = Split(np.zeros((1, 3, 2, 2), np.uint8), np.zeros(1, np.int64))
    data = LoadedDataset(name="toy", train=split, val=split, classes=("a", "b"),
                         content_key="k", split_description="fixed")
    with pytest.raises(dataclasses.FrozenInstanceError):
        data.name = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        split.images = split.images  # type: ignore[misc]
    assert data.skipped == () and len(split) == 1
