"""``zoo serve``'s ``[NAME=]BUNDLE`` arguments and ``--expect-sha256`` pins, parsed
(``zoo.serve.repository``): which name each bundle is served under."""

from __future__ import annotations

import dataclasses

import pytest

from zoo.errors import ZooError
from zoo.serve.repository import ModelSource, parse_pins, parse_sources


@pytest.mark.parametrize(("arg", "source"), [
    ("Net", ModelSource("Net", "Net")),
    ("fast=exports/NetRes-cifar2", ModelSource("fast", "exports/NetRes-cifar2")),
    ("exports/NetRes-cifar2", ModelSource("NetRes-cifar2", "exports/NetRes-cifar2")),
    ("exports/a=b", ModelSource("a=b", "exports/a=b")),  # a path with "=" in its last name
    ("x=", ModelSource("x=", "x=")),  # no bundle after "=": a name
    ("=Net", ModelSource("=Net", "=Net")),
    ("..=Net", ModelSource("..=Net", "..=Net")),
    ("a\\b=Net", ModelSource("a\\b=Net", "a\\b=Net")),
    ("big=/srv/bundles/NetWidth", ModelSource("big", "/srv/bundles/NetWidth")),
])
def test_each_argument_is_served_under_its_name(arg: str, source: ModelSource) -> None:
    assert parse_sources([arg]) == [source]


def test_sources_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        parse_sources(["Net"])[0].name = "Other"  # type: ignore[misc]


def test_pins_by_name_or_alone() -> None:
    digest = "ab" * 32
    assert parse_pins([f"fast={digest}"], ["fast", "Net"]) == {"fast": digest}
    assert parse_pins([digest], ["Net"]) == {"Net": digest}
    with pytest.raises(ZooError, match=r"names no model, and 2 bundles are served"):
        parse_pins([digest], ["fast", "Net"])
    with pytest.raises(ZooError, match=r"pins 'slow', which is not served"):
        parse_pins([f"slow={digest}"], ["fast", "Net"])
