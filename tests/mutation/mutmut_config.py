"""mutmut's hooks for ``nox -s mutation`` (copied beside the mutated sources).

A mutant of line L runs the tests that execute line L (the coverage map
``ZOO_MUTATION_MAP``, see ``coverage_map.py``), fastest first, in the fork server
(``forkserver.py``), stopping at the first failure: a test that never executes a line
cannot tell its mutants apart. "Its line" is every line of the statement (of a compound
statement, its header): coverage may see a continuation line only in the tests that get
that far, such as ``or`` when the left side is false, and mutmut may name any of them.

The tests taken are the fastest up to ``ZOO_MUTATION_BUDGET`` seconds of the map's
recorded durations (default ``BUDGET``; ``0``: all of them), so a line that every
training test runs does not cost every training test for each of its mutants. Where the
map has nothing for the statement (a line that runs at import, before any test), the
module's whole selection runs instead (mutmut's ``--runner``).

Tests beyond the budget, and tests that execute a line only in a subprocess (``zoo``
run as a command), do not run; a mutant only they would kill is reported as
surviving, so the score is a lower bound, never flattered.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import shlex
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: Seconds of (recorded) test time per mutant, fastest tests first.
BUDGET = 30.0
_MAP: dict[str, Any] | None = None


def command(tests: list[str], env: Mapping[str, str] = os.environ) -> str:
    """The shell command mutmut runs: pytest on ``tests`` in the fork server.

    Long selections go through a pytest ``@file`` argument file, one per process (mutmut
    runs one mutant at a time in it, so the file is rewritten, never piled up). pytest's
    statuses other than 0 and 1 (a mutant that breaks an import or collection) become 1,
    the only status mutmut 2 counts as a kill.
    """
    args = [shlex.quote(t) for t in tests]
    if len(tests) > 20:
        argfile = Path(env.get("ZOO_MUTATION_TMP") or tempfile.gettempdir(),
                       f"tests-{os.getpid()}.args")
        argfile.write_text("\n".join(tests) + "\n")
        args = [shlex.quote(f"@{argfile}")]
    inner = " ".join([
        shlex.quote(env["ZOO_MUTATION_PYTHON"]), shlex.quote(env["ZOO_MUTATION_SERVER"]),
        "run", shlex.quote(env["ZOO_MUTATION_SOCKET"]), "--",
        "-x", "-q", "-p", "no:cacheprovider", *args,
    ])
    return f"sh -c {shlex.quote(inner + ' || exit 1')}"


@functools.cache
def statement_lines(source: str) -> dict[int, range]:
    """For each line of ``source``, the lines of the innermost statement it belongs to
    (of a compound statement, its header: ``if a or\\n b:`` but not the block)."""
    spans: dict[int, range] = {}
    for node in ast.walk(ast.parse(source)):  # outer statements first, inner ones override
        if isinstance(node, ast.stmt):
            body = getattr(node, "body", None)
            end = body[0].lineno - 1 if isinstance(body, list) and body and \
                isinstance(body[0], ast.stmt) else (node.end_lineno or node.lineno)
            span = range(node.lineno, max(end, node.lineno) + 1)
            for line in span:
                if line not in spans or len(span) <= len(spans[line]):
                    spans[line] = span
    return spans


def covering(filename: str, line: int, source: str | None = None) -> list[str]:
    """The tests that execute the statement at ``line`` of ``filename`` (1-based), fastest
    first, in budget."""
    global _MAP
    if _MAP is None:
        path = os.environ.get("ZOO_MUTATION_MAP", "")
        _MAP = json.loads(Path(path).read_text()) if path and os.path.isfile(path) else {}
    lines = _MAP.get("lines", {}).get(filename.replace(os.sep, "/"), {})
    text = source if source is not None else Path(filename).read_text()
    span = statement_lines(text).get(line, range(line, line + 1))
    tests = sorted({t for candidate in span for t in lines.get(str(candidate), [])})
    seconds = _MAP.get("seconds", {})
    ordered = sorted(tests, key=lambda t: (seconds.get(t, 1e9), t))
    budget = float(os.environ.get("ZOO_MUTATION_BUDGET", BUDGET))
    taken: list[str] = []
    spent = 0.0
    for test in ordered:
        if taken and budget > 0 and spent + seconds.get(test, budget) > budget:
            break
        taken.append(test)
        spent += seconds.get(test, budget)
    return taken


def pre_mutation(context: Any) -> None:
    tests = covering(context.filename, context.current_line_index + 1, context.source)
    if tests:
        context.config.test_command = command(tests)
    # mutmut kills a run after 10x the baseline (the module's selection, maybe a second):
    # a budget's worth of tests must not count as a hang
    budget = float(os.environ.get("ZOO_MUTATION_BUDGET", BUDGET)) or 600.0
    context.config.baseline_time_elapsed = max(context.config.baseline_time_elapsed,
                                               budget / 2)
