"""Numbers that refuse booleans (:mod:`zoo.spec.numbers`): ``true`` is not 1, in a field,
in a list, and in each position of a tuple, named by the kind that position holds."""

from __future__ import annotations

import pytest
from pydantic import Field, ValidationError

from zoo.spec.numbers import NoBoolNumbers


class Example(NoBoolNumbers):
    count: int = 1
    rate: float = 0.5
    sizes: list[int] = Field(default_factory=list)
    pair: tuple[int, float, str] = (1, 0.5, "x")
    flag: bool = False


@pytest.mark.parametrize(("fields", "message"), [
    ({"count": True}, "count\n  Input should be an integer, not true"),
    ({"rate": False}, "rate\n  Input should be a number, not false"),
    ({"sizes": [1, True]}, "sizes\n  Input should be an integer, not true"),
    ({"pair": (1, True, "x")}, "pair\n  Input should be a number, not true"),
    ({"pair": (True, 0.5, "x")}, "pair\n  Input should be an integer, not true"),
])
def test_booleans_are_refused_where_numbers_are_expected(fields: dict[str, object],
                                                         message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Example(**fields)  # type: ignore[arg-type]


def test_booleans_stay_booleans_and_numbers_numbers() -> None:
    made = Example(count=2, rate=1, sizes=[3], pair=(2, 3, "y"), flag=True)
    assert (made.count, made.rate, made.sizes, made.pair, made.flag) == (2, 1.0, [3],
                                                                          (2, 3.0, "y"), True)
    # a position that holds no number: pydantic's own check, not a number's
    with pytest.raises(ValidationError, match=r"pair\.2\n  Input should be a valid string"):
        Example(pair=(1, 0.5, True))  # type: ignore[arg-type]
