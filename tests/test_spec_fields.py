"""zoo.spec.fields: a field's default and accepted values in words, as help texts print them."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from zoo.spec.fields import accepted, default, describe


class Example(BaseModel):
    count: int = Field(3, ge=1, le=10, description="How many.")
    rate: float = Field(0.5, gt=0.0, lt=1.0)
    floor: float = Field(1e-5, ge=0.0)
    ceiling: int = Field(7, le=9)
    above: int = Field(2, gt=1)
    mode: Literal["fast", "exact"] = "exact"
    flag: bool = False
    maybe: int | None = Field(None, ge=0, le=4)
    where: Path | None = None
    names: list[str] = Field(default_factory=list)
    either: int | str = 1
    needed: str


def test_each_kind_of_field_in_words() -> None:
    fields = Example.model_fields
    assert {name: (default(f), accepted(f)) for name, f in fields.items()} == {
        "count": ("3", "int 1..10"),
        "rate": ("0.5", "float > 0 and < 1"),
        "floor": ("1e-05", "float >= 0"),
        "ceiling": ("7", "int <= 9"),
        "above": ("2", "int > 1"),
        "mode": ("exact", "fast|exact"),
        "flag": ("false", "true|false"),
        "maybe": ("none", "int 0..4, or none"),
        "where": ("none", "Path, or none"),
        "names": ("empty", "list"),
        "either": ("1", "int | str"),
        "needed": ("required", "str"),
    }


def test_describe_gives_one_line_per_field_with_its_description() -> None:
    lines = describe(Example)
    assert lines[0] == "count=3 (int 1..10) How many."
    assert lines[1] == "rate=0.5 (float > 0 and < 1)"
    assert len(lines) == len(Example.model_fields)
