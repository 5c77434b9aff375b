"""What a spec's fields accept, in words: the default, the range or choices, the meaning.

Help texts (``zoo export --help``'s format options) print these so that a user learns
the bounds before a value is refused, from the same declarations that refuse it.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined


def _number(value: Any) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"  # as typed: 0.5, 1e-05


def accepted(field: FieldInfo) -> str:
    """The values ``field`` accepts: ``1..100``, ``> 0``, ``uint8|int8``, ``true|false``,
    or its type's name; ``, or none`` where it may be unset."""
    annotation = field.annotation
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        annotation = args[0] if len(args) == 1 else annotation
    if typing.get_origin(annotation) is Literal:
        text = "|".join(str(choice) for choice in typing.get_args(annotation))
    elif annotation is bool:
        text = "true|false"
    else:
        ge = next((b.ge for b in field.metadata if isinstance(b, annotated_types.Ge)), None)
        gt = next((b.gt for b in field.metadata if isinstance(b, annotated_types.Gt)), None)
        le = next((b.le for b in field.metadata if isinstance(b, annotated_types.Le)), None)
        lt = next((b.lt for b in field.metadata if isinstance(b, annotated_types.Lt)), None)
        kind = getattr(annotation, "__name__", str(annotation))
        if ge is not None and le is not None:
            parts = [f"{_number(ge)}..{_number(le)}"]
        else:
            parts = [f"{symbol} {_number(value)}" for symbol, value in
                     ((">=", ge), (">", gt), ("<=", le), ("<", lt)) if value is not None]
        text = " ".join([kind, " and ".join(parts)]) if parts else kind
    return text + (", or none" if optional else "")


def default(field: FieldInfo) -> str:
    """``field``'s default as a user types it (``none``, ``true``), or ``required``."""
    if field.default is PydanticUndefined:
        return "required" if field.default_factory is None else "empty"
    value = field.default
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return _number(value) if isinstance(value, int | float) else str(value)


def describe(model: type[BaseModel]) -> list[str]:
    """One line per field of ``model``: ``NAME=DEFAULT (ACCEPTED) DESCRIPTION``."""
    return [f"{name}={default(field)} ({accepted(field)})"
            + (f" {field.description}" if field.description else "")
            for name, field in model.model_fields.items()]
