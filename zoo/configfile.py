"""Writing a ``TrainConfig`` as the TOML file ``zoo train --config`` reads back (no torch).

``tomli-w`` writes the values; TOML has no null, so an unset (``None``) field is
written as a comment line, and ``grad_clip = None`` (off) as its equivalent ``0.0``.
"""

from __future__ import annotations

from typing import Any

import tomli_w

from zoo.config import TrainConfig, apply_recipe


def config_toml(config: TrainConfig, *, header: str = "") -> str:
    """``config`` as TOML, every field written: :func:`zoo.config.load_config_file` reads it
    back to an equal config (``grad_clip = None`` comes back as the equivalent ``0.0``)."""
    data: dict[str, Any] = config.model_dump(mode="json")
    if data.get("grad_clip") is None:
        data["grad_clip"] = 0.0  # off, as None; TOML cannot write None
    unset = [name for name, value in data.items() if value is None]
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    lines += [f"# {name}: unset ({_describe(name)})" for name in unset]
    scalars = {k: v for k, v in data.items() if v is not None and not isinstance(v, dict)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    body = tomli_w.dumps({**scalars, **tables})  # tables last, as TOML requires
    return "\n".join(lines) + ("\n" if lines else "") + body


def _describe(name: str) -> str:
    description = TrainConfig.model_fields[name].description or "no value"
    return description.rstrip(".")


__all__ = ["apply_recipe", "config_toml"]
