"""Options shared by the commands: ``KEY=VALUE`` pairs (``--set``, ``--option``) and the
bundle options of the commands that read a bundle (``zoo predict``, ``zoo evaluate``)."""

from __future__ import annotations

import argparse
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


def add_weights_option(p: argparse.ArgumentParser, model: str) -> None:
    """``--weights TAG``: a declared weight set of the architecture the argument names."""
    p.add_argument("--weights", metavar="TAG",
                   help=f"a declared weight set of the architecture {model} names (zoo show "
                        "ARCH lists them; default: its first)")


def add_bundle_options(p: argparse.ArgumentParser, model: str) -> None:
    """``--threads``, ``--weights`` and ``--expect-sha256`` of a command that reads ``model``."""
    p.add_argument("--threads", type=int, metavar="N",
                   help="onnxruntime intra-op threads (default: cores, at most 4)")
    add_weights_option(p, model)
    p.add_argument("--expect-sha256", metavar="HEX",
                   help="refuse the bundle unless its manifest has this SHA-256 (as printed by "
                        "zoo export and zoo verify)")
