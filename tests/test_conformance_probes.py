"""What the conformance kit (:mod:`zoo.testing`) probes an architecture with: the values
each hyperparameter must refuse (each bound's first value outside it, a string, a
boolean), and a second input shape and class count unlike the default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import Field

from zoo.spec.architecture import ArchitectureSpec, HParams, InputShape
from zoo.testing import _bad_values, other_shape


class Bounded(HParams):
    width: int = Field(32, ge=1, le=512)
    scale: float = Field(1.0, gt=0.0, lt=10.0)
    act: str = "relu"


def spec(**changes: Any) -> ArchitectureSpec:
    return ArchitectureSpec(**{"name": "Probe", "summary": "Probe.", "builder": "probe:build",
                               "hparams": Bounded, "source": "tests", **changes})


def test_each_bound_gives_its_first_value_outside() -> None:
    assert _bad_values(spec()) == {"width": [0, 513, "not a number", True],
                                   "scale": [0.0, 10.0, "not a number", True]}


@pytest.mark.parametrize(("shape", "classes", "other", "other_classes"), [
    ((3, 32, 32), 2, (1, 40, 36), 3),
    ((1, 28, 28), 10, (3, 36, 32), 11),
    ((4, 4090, 4093), 100_000, (1, 4096, 4096), 99_999),
])
def test_the_second_shape_differs_in_every_dimension_within_bounds(
        shape: tuple[int, int, int], classes: int, other: tuple[int, int, int],
        other_classes: int) -> None:
    c, h, w = shape
    made, count = other_shape(spec(input_shape=InputShape(channels=c, height=h, width=w),
                                   num_classes=classes))
    assert (made.channels, made.height, made.width, count) == (*other, other_classes)


def test_the_kit_can_run_twice_in_one_working_folder_it_makes(tmp_path: Path) -> None:
    from zoo.testing import check_architecture

    work = tmp_path / "a" / "b"  # made, with the folders above it
    first = check_architecture("Net", tmp_dir=work)
    again = check_architecture("Net", tmp_dir=work)  # its export replaces the first one's
    assert first.checks == again.checks
    assert any(c.startswith("exports a verified bundle (") for c in first.checks)
