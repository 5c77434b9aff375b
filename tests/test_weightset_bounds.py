"""WeightSet's declared bounds at their edges: what a plugin's weight declaration may say."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from zoo.spec.weights import MAX_ARCHIVE_SIZE, WeightSet, parse_weights

VALID: dict[str, Any] = {
    "tag": "cifar2", "location": "zoo_chapter8.weights:Net-cifar2", "sha256": "0" * 64,
    "dataset": "cifar2", "split": "10% of the training images, seed 0",
    "classes": ("airplane", "bird"), "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}


@pytest.mark.parametrize(("field", "accepted", "refused"), [
    ("tag", "a" * 64, "a" * 65),
    ("tag", "a", "A"),
    ("location", "p:d", "p:"),
    ("dataset", "x", ""),
    ("split", "x", ""),
    ("classes", ("one",), ()),
    ("archive_size", 1, 0),
    ("archive_size", MAX_ARCHIVE_SIZE, MAX_ARCHIVE_SIZE + 1),
])
def test_each_bound_at_its_edge(field: str, accepted: Any, refused: Any) -> None:
    extra = {"location": "https://example.org/w.zip", "archive_sha256": "1" * 64} \
        if field == "archive_size" else {}
    assert getattr(WeightSet(**{**VALID, **extra, field: accepted}), field) == accepted
    with pytest.raises(ValidationError):
        WeightSet(**{**VALID, **extra, field: refused})


@pytest.mark.parametrize("field", ["tag", "location", "sha256", "dataset", "split", "classes",
                                   "mean", "std"])
def test_required_fields(field: str) -> None:
    with pytest.raises(ValidationError, match=f"{field}\n  Field required"):
        WeightSet(**{k: v for k, v in VALID.items() if k != field})


def test_optional_fields_default_to_nothing() -> None:
    weights = WeightSet(**VALID)
    assert (weights.archive_sha256, weights.archive_size, weights.metrics) == (None, None, {})


def test_a_weight_set_is_frozen_and_refuses_unknown_fields() -> None:
    weights = WeightSet(**VALID)
    with pytest.raises(ValidationError):
        weights.tag = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        WeightSet(**VALID, surprise=1)
    declared = parse_weights({"Net": [VALID]})
    with pytest.raises(ValidationError):
        declared["Net"][0].dataset = "x"  # type: ignore[misc]


def test_the_archive_limit_is_the_documented_64_gib() -> None:
    assert MAX_ARCHIVE_SIZE == 64 * 2**30


@pytest.mark.parametrize(("location", "accepted"), [
    ("http://localhost:8000/w.zip", True), ("http://127.0.0.1:8000/w.zip", True),
    ("http://[::1]:8000/w.zip", True), ("http://example.org/w.zip", False),
    ("https://example.org/w.zip", True)])
def test_plain_http_only_on_loopback(location: str, accepted: bool) -> None:
    fields = {**VALID, "location": location, "archive_sha256": "1" * 64, "archive_size": 10}
    if accepted:
        assert WeightSet(**fields).location == location
    else:
        with pytest.raises(ValidationError):
            WeightSet(**fields)
