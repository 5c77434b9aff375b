"""``did you mean`` hints for names a user mistyped."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def suggest(name: str, candidates: Iterable[str]) -> str:
    """``", did you mean X?"`` for the closest candidates, or ``""``."""
    pool = list(candidates)
    folded = {c.lower(): c for c in pool}
    close = [folded[name.lower()]] if name.lower() in folded else []
    close += [c for c in difflib.get_close_matches(name, pool, n=3, cutoff=0.6) if c not in close]
    if not close:
        lowered = difflib.get_close_matches(name.lower(), list(folded), n=3, cutoff=0.6)
        close = [folded[c] for c in lowered]
    if not close:
        return ""
    return "; did you mean " + " or ".join(repr(c) for c in close[:3]) + "?"


__all__ = ["suggest"]
