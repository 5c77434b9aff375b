"""In words, the images a bundle's validation accuracy was measured on
(``TrainingInfo.accuracy_split``), for bundles of every age."""

from __future__ import annotations

from typing import Any

import pytest

from zoo.bundles.integrity import open_bundle
from zoo.bundles.store import resolve_bundle

SEEDED = "seeded stratified split: 0.1 held out (seed 3)"


@pytest.mark.parametrize(("changes", "words"), [
    ({"val_images": "the 1,000 images of cifar2/val"}, "the 1,000 images of cifar2/val"),
    ({"val_images": None, "recipe": {"val_split": 0.1}, "split": SEEDED},
     "10% of the training images, seed 3"),
    ({"val_images": None, "recipe": {"val_split": 0.25}, "split": SEEDED},
     "25% of the training images, seed 3"),
    ({"val_images": None, "recipe": {"val_split": 0.1, "val_dir": "val"}, "split": SEEDED},
     SEEDED),
    ({"val_images": None, "recipe": {"val_split": 0}, "split": SEEDED}, SEEDED),
    ({"val_images": None, "recipe": {"val_split": 1}, "split": SEEDED}, SEEDED),
    ({"val_images": None, "recipe": {"val_split": "0.1"}, "split": SEEDED}, SEEDED),
    ({"val_images": None, "recipe": {}, "split": SEEDED}, SEEDED),
    ({"val_images": None, "recipe": {"val_split": 0.1}, "split": "a separate folder"},
     "a separate folder"),
])
def test_the_accuracy_split_in_words(changes: dict[str, Any], words: str) -> None:
    training = open_bundle(resolve_bundle("Net")).training
    assert training is not None
    assert training.model_copy(update={"seed": 3, **changes}).accuracy_split == words
