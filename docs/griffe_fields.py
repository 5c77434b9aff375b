"""Griffe extension: a pydantic field's ``description`` as its docstring in the API reference.

The zoo's specs document each field with ``Field(..., description="...")`` (what
``zoo show`` and the JSON Schemas print); griffe reads docstrings only, so without
this the reference would list no field of ``ArchitectureSpec``, ``TrainConfig``...
Static: it reads the source's syntax tree and imports nothing. (``extensions:`` of
the mkdocstrings handler in mkdocs.yml; excluded from the pages by ``exclude_docs``.)
"""

from __future__ import annotations

import ast
from typing import Any

import griffe


class FieldDescriptions(griffe.Extension):
    def on_attribute_instance(self, *, node: ast.AST | griffe.ObjectNode,
                              attr: griffe.Attribute, **kwargs: Any) -> None:
        if attr.docstring is not None or not isinstance(node, ast.AnnAssign):
            return
        call = node.value
        if not isinstance(call, ast.Call):
            return
        name = call.func.id if isinstance(call.func, ast.Name) else getattr(call.func, "attr", "")
        if name != "Field":
            return
        for keyword in call.keywords:
            value = keyword.value
            if (keyword.arg == "description" and isinstance(value, ast.Constant)
                    and isinstance(value.value, str)):
                attr.docstring = griffe.Docstring(_plain(value.value), parent=attr)
                return


def _plain(text: str) -> str:
    """A description as Markdown: brackets outside code spans are text, not links."""
    parts = text.split("`")
    return "`".join(part if i % 2 else part.replace("[", "\\[").replace("]", "\\]")
                    for i, part in enumerate(parts))
