"""The plugin contract's checks (:mod:`zoo.host.contract`) called directly: what each
accepts, and the one line each refusal gives."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from zoo.errors import ContractError, PluginError
from zoo.host.contract import call_plugin, check_dataset, check_model
from zoo.spec.architecture import ArchitectureSpec, HParams, ModelConfig
from zoo.spec.dataset import DatasetRequest, DatasetSpec, LoadedDataset, Split

HEAD = ("dataset 'toy' from an unregistered plugin breaks the loader contract")


def spec() -> DatasetSpec:
    return DatasetSpec(name="toy", summary="Toy.", loader="toy:load")


def split(images: Any = None, labels: Any = None) -> Split:
    return Split(np.zeros((4, 3, 8, 8), np.uint8) if images is None else images,
                 np.array([0, 1, 0, 1]) if labels is None else labels)


def loaded(**changes: Any) -> LoadedDataset:
    good = LoadedDataset(name="toy", train=split(), val=split(), classes=("a", "b"),
                         content_key="k", split_description="Fixed.")
    return replace(good, **changes)


def refused(data: LoadedDataset, why: str, request: DatasetRequest | None = None) -> None:
    with pytest.raises(ContractError) as caught:
        check_dataset(data, spec(), request or DatasetRequest())
    assert str(caught.value) == f"{HEAD}: {why}"


def test_a_good_dataset_is_returned_as_it_is() -> None:
    data = loaded()
    assert check_dataset(data, spec(), DatasetRequest(image_size=(8, 8))) is data


def test_classes_must_be_a_tuple_of_names() -> None:
    refused(loaded(classes=["a", "b"]), "classes must be a tuple of at least two distinct "
            "names; seen ['a', 'b']")
    refused(loaded(classes=("a", 2)), "classes must be a tuple of at least two distinct "
            "names; seen ('a', 2)")


@pytest.mark.parametrize("key", [42, "", None])
def test_the_content_key_must_be_a_non_empty_string(key: Any) -> None:
    refused(loaded(content_key=key), f"content_key must be a non-empty string; seen {key!r}")


def test_channels_first_images_with_the_wrong_channels_get_no_hint() -> None:
    images = np.zeros((4, 1, 8, 8), np.uint8)
    refused(loaded(train=split(images)), "train images must be uint8 (N, C, H, W) with C=3; "
            "seen uint8 (4, 1, 8, 8)")


def test_channels_last_images_get_the_hint_whatever_their_height_and_width() -> None:
    # height 5, width 3: only the channel axis may be compared with C
    images = np.zeros((4, 5, 3, 3), np.uint8)
    refused(loaded(val=split(images)), "val images must be uint8 (N, C, H, W) with C=3; "
            "seen uint8 (4, 5, 3, 3) (channels last: NHWC, not NCHW)")


def test_images_that_are_not_an_array_are_named_by_their_type() -> None:
    refused(loaded(train=split(torch.zeros(4, 8, 8, 3, dtype=torch.uint8))),
            "train images must be uint8 (N, C, H, W) with C=3; seen torch.uint8 (4, 8, 8, 3)")
    refused(loaded(train=split([[0]])), "train images must be uint8 (N, C, H, W) with C=3; "
            "seen list")


class ShapeOnly:
    shape = (4,)


class DtypeOnly:
    dtype = np.int64


@pytest.mark.parametrize(("labels", "seen"), [(ShapeOnly(), "ShapeOnly"),
                                              (DtypeOnly(), "DtypeOnly"),
                                              (np.zeros(4, np.int32), "int32 (4,)")])
def test_labels_of_the_wrong_kind_are_described(labels: Any, seen: str) -> None:
    refused(loaded(train=split(labels=labels)),
            f"train labels must be int64 (4,), one per image; seen {seen}")


def test_call_plugin_names_a_signature_it_cannot_read() -> None:
    with pytest.raises(PluginError) as caught:
        call_plugin("the builder 'm:f' of architecture 'X'", None, 42, 1)  # type: ignore[arg-type]
    assert str(caught.value).startswith("the builder 'm:f' of architecture 'X' from an "
                                        "unregistered plugin cannot be called as the zoo calls "
                                        "it (")
    assert str(caught.value).endswith("; its signature is (unknown)")


def test_call_plugin_names_the_signature_a_call_does_not_fit() -> None:
    def build(depth: int) -> None:
        return None

    with pytest.raises(PluginError, match=r"its signature is \(depth: 'int'\) -> 'None'$"):
        call_plugin("the builder", None, build, 1, 2)


ARCH = ArchitectureSpec(name="Probe", summary="Probe.", builder="probe:build", hparams=HParams,
                        source="tests")


class NoParameters(nn.Module):
    """Two logits from the channel means: a valid model without parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))[:, :2]


def test_a_model_without_parameters_is_probed_on_the_cpu() -> None:
    check_model(NoParameters(), ARCH, ModelConfig(architecture="Probe"))


def test_a_model_is_probed_on_its_own_device() -> None:
    with torch.device("meta"):
        model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 2))
    check_model(model, ARCH, ModelConfig(architecture="Probe"))
