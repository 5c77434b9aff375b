"""``KEY=VALUE`` options shared by the commands (``--set``, ``--option``)."""

from __future__ import annotations

import json
from typing import Any

from zoo.errors import ZooError


def parse_value(text: str) -> Any:
    """``--set`` values: JSON where it parses (numbers, true/false, lists), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        lowered = text.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        return text


def parse_pairs(pairs: list[str], flag: str) -> dict[str, Any]:
    """``["n_blocks=4"]`` → ``{"n_blocks": 4}``; an error naming ``flag`` for a malformed pair."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ZooError(f"{flag} takes KEY=VALUE, got {pair!r}")
        out[key.strip()] = parse_value(value.strip())
    return out
