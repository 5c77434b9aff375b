"""Where a registered spec comes from, and how its ``"module:function"`` references load.

A plugin names its code by strings (``"my_nets.models:build"``), imported only when
used, so that listing never imports torch. The registry fills in each spec's
:class:`Provenance`; :func:`load_callable` imports a reference and names the plugin
in the error when it cannot.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from zoo.errors import PluginError, reason


class Provenance(BaseModel):
    """Where a registered spec comes from: filled in by the registry, never by the plugin."""

    model_config = ConfigDict(frozen=True)

    plugin: str = Field(description="The plugin's name (its entry-point name).")
    distribution: str | None = Field(None, description="The installed distribution providing it.")
    version: str | None = Field(None, description="That distribution's version.")

    def describe(self) -> str:
        if self.distribution is None:
            return f"plugin {self.plugin!r}"
        return f"{self.distribution} {self.version} (plugin {self.plugin!r})"


def import_object(reference: str) -> Any:
    """Import ``"package.module:attr.sub"`` and return the object it names."""
    module_name, _, attr_path = reference.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr_path.split("."):
        obj = getattr(obj, part)
    return obj


def load_callable(reference: str, what: str, provenance: Provenance | None) -> Callable[..., Any]:
    """Import a plugin's ``"module:function"`` reference; a :class:`PluginError` naming it."""
    where = provenance.describe() if provenance else "its plugin"
    try:
        obj = import_object(reference)
    except Exception as exc:  # the plugin's module may raise anything while importing
        kind = "" if isinstance(exc, (ImportError, AttributeError)) else f"{type(exc).__name__}: "
        detail = reason(exc) if str(exc).strip() else "(no message)"
        raise PluginError(f"cannot import the {what} ({reference!r}) from {where}: "
                          f"{kind}{detail}") from exc
    if not callable(obj):
        raise PluginError(f"the {what} ({reference!r}) from {where} is not callable")
    return obj  # type: ignore[no-any-return]


__all__ = ["Provenance", "import_object", "load_callable"]
