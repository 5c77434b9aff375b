"""mutmut's hooks for ``nox -s mutation`` (copied beside the mutated sources).

Each mutant runs first with only the tests that execute its line (the coverage map
``ZOO_MUTATION_MAP``), in the fork server (``forkserver.py``), fastest-to-fail first: the
module's own test files, then the rest. A mutant those tests let live is run again
with the module's whole selection (mutmut's ``--rerun-all``), so only a mutant that
survives every test of its module is reported as surviving.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

#: At most this many covering tests in the first, narrow run (the rerun has them all).
NARROW_LIMIT = 40
_MAP: dict[str, dict[str, list[str]]] | None = None


def command(tests: list[str]) -> str:
    """The shell command mutmut runs: pytest on ``tests`` in the fork server.

    pytest's statuses other than 0 and 1 (a mutant that breaks an import or
    collection) become 1, the only status mutmut 2 counts as a kill.
    """
    inner = " ".join([
        shlex.quote(os.environ["ZOO_MUTATION_PYTHON"]),
        shlex.quote(os.environ["ZOO_MUTATION_SERVER"]), "run",
        shlex.quote(os.environ["ZOO_MUTATION_SOCKET"]), "--",
        "-x", "-q", "-p", "no:cacheprovider",
        *(shlex.quote(t) for t in tests),
    ])
    return f"sh -c {shlex.quote(inner + ' || exit 1')}"


def _covering(filename: str, line: int) -> list[str]:
    global _MAP
    if _MAP is None:
        path = os.environ.get("ZOO_MUTATION_MAP", "")
        _MAP = json.loads(Path(path).read_text()) if path and os.path.isfile(path) else {}
    tests = _MAP.get(filename.replace(os.sep, "/"), {}).get(str(line), [])
    own = tuple(os.environ.get("ZOO_MUTATION_TESTS", "").split())
    return sorted(tests, key=lambda t: (not t.startswith(own), t))[:NARROW_LIMIT]


def pre_mutation(context: Any) -> None:
    tests = _covering(context.filename, context.current_line_index + 1)
    if tests:
        context.config.test_command = command(tests)
