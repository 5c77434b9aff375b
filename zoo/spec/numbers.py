"""Numbers are not booleans: a pydantic base whose int and float fields refuse ``True``/``False``.

Pydantic's lax mode takes ``True`` for ``1`` (``--set n_hidden=true``, TOML's
``epochs = true``), which silently trains something nobody asked for. Strict
mode would refuse that, but also JSON lists for tuple fields and strings for
paths; this base refuses booleans only, and only where the field is a number
(``int``, ``float``, optional ones, and the items of tuples and lists of them).
A field that accepts ``bool`` itself (``int | bool``) is left alone.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError


def number_kind(annotation: Any) -> str | None:
    """``"an integer"`` or ``"a number"`` for an annotation that must not take a bool."""
    if annotation is bool:
        return None
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a number"
    if typing.get_origin(annotation) is typing.Annotated:  # Optional[PositiveInt], say
        return number_kind(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        kinds = {number_kind(a) for a in args}
        if bool in args:
            return None
        return "a number" if "a number" in kinds else "an integer" if "an integer" in kinds \
            else None
    return None


def _item_kinds(annotation: Any) -> list[str | None]:
    """The number kind of each item of a tuple or list annotation (``[kind]`` for ``X[T, ...]``)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if typing.get_origin(arg) in (tuple, list):
                return _item_kinds(arg)
        return []
    if typing.get_origin(annotation) not in (tuple, list):
        return []
    args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
    return [number_kind(a) for a in args]


def _refuse(kind: str, value: bool) -> PydanticCustomError:
    return PydanticCustomError("bool_not_number", "Input should be {kind}, not {value}",
                               {"kind": kind, "value": str(value).lower()})


class NoBoolNumbers(BaseModel):
    """A pydantic model whose number fields refuse booleans (see the module's docstring)."""

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_not_booleans(cls, value: Any, info: ValidationInfo) -> Any:
        if info.field_name is None:
            return value
        field = cls.model_fields.get(info.field_name)
        if field is None:
            return value
        if isinstance(value, bool):
            kind = number_kind(field.annotation)
            if kind is not None:
                raise _refuse(kind, value)
        elif isinstance(value, (list, tuple)):
            kinds = _item_kinds(field.annotation)
            for i, item in enumerate(value):
                kind = kinds[min(i, len(kinds) - 1)] if kinds else None
                if isinstance(item, bool) and kind is not None:
                    raise _refuse(kind, item)
        return value


__all__ = ["NoBoolNumbers", "number_kind"]
