"""The informative part of a library's exception (:func:`zoo.errors.reason`), as the
zoo's one-line errors quote it."""

from __future__ import annotations

import pytest

from zoo.errors import reason


def test_the_first_useful_line_by_default_and_every_line_when_asked() -> None:
    exc = RuntimeError("Weights only load failed. Blah\nWeightsUnpickler error: Unsupported "
                       "global: os.system\n\nPlease file an issue\nsecond useful")
    assert reason(exc) == "Unsupported global: os.system"
    assert reason(exc, every_line=True) == "Unsupported global: os.system; second useful"


def test_only_boilerplate_gives_its_first_line_and_no_message_the_type() -> None:
    only = RuntimeError("Please file an issue\nCheck the documentation")
    assert reason(only) == reason(only, every_line=True) == "Please file an issue"
    assert reason(ValueError("")) == "ValueError"
    assert reason(KeyError()) == "KeyError"


@pytest.mark.parametrize(("length", "expected"), [(300, "x" * 300), (301, "x" * 299 + "…")])
def test_long_reasons_end_with_an_ellipsis_at_300_characters(length: int, expected: str) -> None:
    assert reason(OSError("x" * length)) == expected
    assert len(reason(OSError("x" * length))) == 300
    assert reason(OSError("y" * 20), limit=10) == "y" * 9 + "…"
