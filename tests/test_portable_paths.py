"""Machine paths reduced to what means the same everywhere (:mod:`zoo.util.portable`),
case by case (the shipped bundles and the checkout: ``test_portable.py``)."""

from __future__ import annotations

from typing import Any

import pytest

from zoo.util.portable import (
    is_machine_path,
    last_component,
    portable_recipe,
    portable_source,
)


@pytest.mark.parametrize(("text", "machine"), [
    ("/data/cifar2", True), ("C:\\data", True), ("c:/data", True), ("\\\\server\\share", True),
    ("~/data", True), ("~", True), ("../data", True), ("data/../x", True),
    ("data", False), ("data/train", False), ("./data", False), ("..data", False),
    ("synthetic", False), ("", False)])
def test_machine_paths(text: str, machine: bool) -> None:
    assert is_machine_path(text) is machine


@pytest.mark.parametrize(("text", "last"), [
    ("/data/cifar2/train", "train"), ("/data/cifar2/train/", "train"),
    ("C:\\data\\train", "train"), ("C:/data/train", "train"), ("data\\train", "train"),
    ("data/train\\x", "train\\x"),  # a POSIX path whose last name holds a backslash
    ("train", "train"), ("/", "/"), ("", "")])
def test_last_components(text: str, last: str) -> None:
    assert last_component(text) == last


@pytest.mark.parametrize(("source", "kept"), [
    (None, None), ("https://example.org/cifar2.zip", "https://example.org/cifar2.zip"),
    ("/srv/me/data/cifar2", "cifar2"), ("cifar2", "cifar2")])
def test_sources(source: str | None, kept: str | None) -> None:
    assert portable_source(source) == kept


def test_a_recipe_keeps_no_path_of_this_machine() -> None:
    recipe: dict[str, Any] = {
        "data_dir": "relative/cifar2/train",  # a data location: always its last name
        "val_dir": None, "cache_dir": "/var/cache/zoo",
        "out": "/srv/me/runs/net", "resume": "runs/net", "note": "../elsewhere/x",
        "dataset": "imagefolder", "lr": 0.01,
        "dataset_options": {"root": "/srv/data", "name": "cifar2"},
        "extra": ["/abs/one", "kept", 3]}
    assert portable_recipe(recipe) == {
        "data_dir": "train", "val_dir": None, "cache_dir": "zoo", "out": "net",
        "resume": "runs/net", "note": "x", "dataset": "imagefolder", "lr": 0.01,
        "dataset_options": {"root": "data", "name": "cifar2"},
        "extra": ["one", "kept", 3]}
