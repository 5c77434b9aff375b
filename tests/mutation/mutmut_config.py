"""mutmut's hooks for ``nox -s mutation`` (copied beside the mutated sources).

Each mutant runs the tests that can see it, chosen from the coverage map
``ZOO_MUTATION_MAP`` (``coverage_map.py``), fastest first, in the fork server
(``forkserver.py``), stopping at the first failure. :func:`select` names the choice:

``line``
    A statement in a function body that tests execute: the tests that execute it. "The
    statement" is all of its lines (of a compound statement, its header): coverage may
    see a continuation line only in the tests that get that far, such as ``or`` when the
    left side is false, and mutmut may name any of them.
``scope``
    A statement run at import (a ``def`` line and its default values, a class attribute,
    the body of a function called at import): the tests that execute the body of the
    innermost enclosing function or class. In a module imported during a test rather
    than at collection, a body line that only the tests that imported the module
    executed counts as run at import.
``module``
    The same at module level, or where no enclosing body runs in a test: the tests that
    execute the module's function bodies; where none does (a module of declarations),
    the tests in the test files that name the module or something it defines.
    ``ZOO_MUTATION_OVERRIDE`` (``MUTATION_TESTS`` of ``session.py``: test files or node ids,
    ``os.pathsep``-separated) replaces the scope and module choices with the map's tests
    of those files.
``unreached``
    A statement in a function body that no test executes in-process (a branch no test
    takes, or code only a subprocess runs): no test can kill it here, so it survives at
    once, without running anything.
``none``
    A module no test imports in-process: the same.

The tests of a choice cover its lines greedily (most new lines per recorded second first),
then the fastest others are added, up to ``ZOO_MUTATION_BUDGET`` seconds of the map's
recorded durations (default ``BUDGET``; ``0``: no limit; always one test at least), so a
line that every training test runs does not cost every training test for each mutant.
They run fastest first, except that the tests that killed earlier mutants of the module
(``ZOO_MUTATION_KILLS``) go first, the most frequent killers first: the next mutant of
the same code usually dies in the same test, and in the first few tests (``FIRST``),
before the rest of the selection is collected.

Tests beyond the budget, and tests that execute a line only in a subprocess (``zoo`` run
as a command), do not run; a mutant only they would kill is reported as surviving, so
the score is a lower bound, never flattered. Each choice is appended to
``ZOO_MUTATION_LOG`` (JSON lines) for the results (``mutants.py summary``).
"""

from __future__ import annotations

import ast
import functools
import json
import os
import re
import shlex
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

#: Seconds of (recorded) test time per mutant, fastest tests first.
BUDGET = 30.0
#: The tests a mutant runs first, on their own (see :func:`command`).
FIRST = 4
#: The runner of a mutant no test can see: it survives without running anything.
SURVIVE = "sh -c 'exit 0'"
_MAP: dict[str, Any] | None = None


def command(tests: list[str], env: Mapping[str, str] = os.environ) -> str:
    """The shell command mutmut runs: pytest on ``tests`` in the fork server.

    The first :data:`FIRST` tests run on their own first: most mutants die there, and a
    run of a few tests collects a few test files, not the dozens a long selection spans
    (seconds of imports). Long selections go through a pytest ``@file`` argument file, one
    per process and stage (mutmut runs one mutant at a time in it, so the file is
    rewritten, never piled up). pytest's statuses other than 0 and 1 (a mutant that breaks
    an import or collection) become 1, the only status mutmut 2 counts as a kill. No
    tests: :data:`SURVIVE`.
    """
    if not tests:
        return SURVIVE
    basetemp = env.get("ZOO_MUTATION_BASETEMP")
    runs = []
    for stage, chosen in enumerate((tests[:FIRST], tests[FIRST:])):
        if not chosen:
            continue
        args = [shlex.quote(t) for t in chosen]
        if len(chosen) > 20:
            argfile = Path(env.get("ZOO_MUTATION_TMP") or tempfile.gettempdir(),
                           f"tests-{os.getpid()}-{stage}.args")
            argfile.write_text("\n".join(chosen) + "\n")
            args = [shlex.quote(f"@{argfile}")]
        # a stage that takes 20 times what the map recorded for it (at least a minute) hangs
        deadline = max(60.0, 20 * recorded_seconds(chosen))
        runs.append(" ".join([
            f"ZOO_MUTATION_DEADLINE={deadline:.0f}", shlex.quote(env["ZOO_MUTATION_PYTHON"]),
            shlex.quote(env["ZOO_MUTATION_SERVER"]),
            "run", shlex.quote(env["ZOO_MUTATION_SOCKET"]), "--",
            "-x", "-q", "-p", "no:cacheprovider",
            *([shlex.quote(f"--basetemp={basetemp}")] if basetemp else []), *args,
        ]) + " || exit 1")
    return f"sh -c {shlex.quote('; '.join(runs))}"


def load_map(path: str | None = None) -> dict[str, Any]:
    """The coverage map (``coverage_map.py``), read once per process."""
    global _MAP
    if _MAP is None:
        path = path or os.environ.get("ZOO_MUTATION_MAP", "")
        _MAP = json.loads(Path(path).read_text()) if path and os.path.isfile(path) else {}
    return _MAP


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


@functools.cache
def _structure(source: str) -> tuple[frozenset[int], tuple[tuple[int, int], ...]]:
    """The lines of function bodies (what runs when a function is called, not at import),
    and every function or class as (first line, last line), decorators included."""
    body_lines: set[int] = set()
    scopes: list[tuple[int, int]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            last = node.end_lineno or node.lineno
            scopes.append((first, last))
            if not isinstance(node, ast.ClassDef):
                body_lines.update(range(node.body[0].lineno, last + 1))
    return frozenset(body_lines), tuple(scopes)


def choose(lines: Iterable[int], by_line: Mapping[str, list[int]], seconds: list[float | None],
           budget: float) -> list[int]:
    """Tests (indices into the map) that execute ``lines``: a greedy cover of the lines,
    most new lines per second first, then the fastest others, in ``budget`` seconds (``0``:
    all), fastest first."""
    covers: dict[int, set[int]] = {}
    for line in lines:
        for test in by_line.get(str(line), ()):
            covers.setdefault(test, set()).add(line)
    if not covers:
        return []
    limit = budget if budget > 0 else float("inf")

    def cost(test: int) -> float:
        known = seconds[test] if test < len(seconds) else None
        return known if known is not None else (budget or 60.0)

    taken: list[int] = []
    spent = 0.0
    uncovered = set().union(*covers.values())
    candidates = dict(covers)
    while uncovered and candidates:
        best = max(candidates, key=lambda t: (len(candidates[t] & uncovered) / max(cost(t), 1e-3),
                                               -cost(t), -t))
        if not candidates[best] & uncovered:
            break
        del candidates[best]
        if taken and spent + cost(best) > limit:
            continue
        taken.append(best)
        spent += cost(best)
        uncovered -= covers[best]
    for test in sorted(candidates, key=lambda t: (cost(t), t)):
        if spent + cost(test) > limit:
            break
        taken.append(test)
        spent += cost(test)
    return sorted(taken, key=lambda t: (cost(t), t))


@functools.cache
def _cover(filename: str, lines: frozenset[int], budget: float) -> tuple[int, ...]:
    coverage_map = load_map()
    by_line = coverage_map.get("lines", {}).get(filename, {})
    return tuple(choose(sorted(lines), by_line, coverage_map.get("seconds", []), budget))


@functools.cache
def _override(override: str, budget: float) -> tuple[int, ...]:
    """The map's tests in the test files (or node ids) ``override`` names (os.pathsep),
    fastest first, in budget."""
    prefixes = tuple(p for p in override.split(os.pathsep) if p)
    tests = load_map().get("tests", [])
    named = {i for i, test in enumerate(tests)
             if test in prefixes or test.startswith(tuple(f"{p}::" for p in prefixes))}
    return tuple(choose([0], {"0": sorted(named)}, load_map().get("seconds", []), budget))


@functools.cache
def _select(filename: str, line: int, source: str, budget: float,
            override: str) -> tuple[str, tuple[int, ...]]:
    coverage_map = load_map()
    by_line: dict[str, list[int]] = coverage_map.get("lines", {}).get(filename, {})
    imported = set(coverage_map.get("imported", {}).get(filename, ()))
    if not by_line and not imported:
        return "none", ()
    body_lines, scopes = _structure(source)
    # a module imported during a test, not at collection: the tests that ran its module-level
    # lines imported it, and so ran every function it calls at import
    importers = {t for n, ts in by_line.items() if int(n) not in body_lines for t in ts}
    span = statement_lines(source).get(line, range(line, line + 1))
    if any(n in body_lines for n in span):
        tests = {t for n in span for t in by_line.get(str(n), ())}
        if tests and not tests <= importers:
            return "line", _cover(filename, frozenset(span), budget)
        if not tests and not any(n in imported for n in span):
            return "unreached", ()
    # a statement run at import
    if override:
        return "module", _override(override, budget)
    run_time = frozenset(int(n) for n in by_line) & body_lines
    for first, last in sorted((s for s in scopes if s[0] <= line <= s[1]),
                              key=lambda s: s[1] - s[0]):  # the innermost first
        inside = frozenset(n for n in run_time if first <= n <= last)
        if inside:
            return "scope", _cover(filename, inside, budget)
    target = run_time or frozenset(int(n) for n in by_line)
    if target:
        return "module", _cover(filename, target, budget)
    named = _naming(filename, source)  # declarations only: the tests that name them
    return "module", tuple(choose([0], {"0": sorted(named)}, coverage_map.get("seconds", []),
                                  budget)) if named else ()


@functools.cache
def _naming(filename: str, source: str) -> frozenset[int]:
    """The map's tests in the test files that name the module (dotted) or what it defines."""
    parts = filename.removesuffix(".py").removesuffix("/__init__").split("/")
    dotted = ".".join(parts[1:] if parts[0] == "plugins" else parts)
    names = {dotted}
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    names = {n for n in names if len(n) > 3 and not n.startswith("__")}
    if not names:
        return frozenset()
    pattern = re.compile(r"\b(?:" + "|".join(sorted(map(re.escape, names))) + r")\b")
    tests: list[str] = load_map().get("tests", [])
    files = {test.split("::")[0] for test in tests}
    naming = {f for f in files if os.path.isfile(f) and pattern.search(Path(f).read_text())}
    return frozenset(i for i, test in enumerate(tests) if test.split("::")[0] in naming)


@functools.cache
def _index() -> dict[str, int]:
    return {name: i for i, name in enumerate(load_map().get("tests", []))}


def select(filename: str, line: int, source: str | None = None,
           env: Mapping[str, str] = os.environ) -> tuple[str, list[str]]:
    """How the tests of a mutant of ``line`` (1-based) of ``filename`` were chosen (see
    the module's docstring), and the pytest node ids, fastest first."""
    text = source if source is not None else Path(filename).read_text()
    budget = float(env.get("ZOO_MUTATION_BUDGET") or BUDGET)
    override = env.get("ZOO_MUTATION_OVERRIDE", "")
    kind, tests = _select(filename.replace(os.sep, "/"), line, text, budget, override)
    if kind == "module" and not tests and override:
        return kind, override.split(os.pathsep)  # files the map does not know: all of them
    names: list[str] = load_map().get("tests", [])
    chosen = [names[t] for t in tests]
    killers = _killers(env.get("ZOO_MUTATION_KILLS", ""))
    if killers:  # the tests that killed the module's mutants so far first, the most often first
        chosen.sort(key=lambda t: -killers.get(t, 0))  # stable: otherwise fastest first
    return kind, chosen


def _killers(path: str) -> dict[str, int]:
    """How often each test killed a mutant of the module (``forkserver.py`` writes them)."""
    try:
        text = Path(path).read_text() if path else ""
    except OSError:
        return {}
    found: dict[str, int] = {}
    for name in text.splitlines():
        found[name] = found.get(name, 0) + 1
    return found


def module_tests(filename: str, env: Mapping[str, str] = os.environ) -> list[str]:
    """The tests of a mutant at module level of ``filename``: mutmut's ``--runner``."""
    return select(filename, 0, None, env)[1]


def recorded_seconds(tests: list[str]) -> float:
    """The seconds ``tests`` took in the coverage map's run."""
    index, recorded = _index(), load_map().get("seconds", [])
    return sum(recorded[index[t]] or 0.0 for t in tests if t in index)


def pre_mutation(context: Any) -> None:
    line = context.current_line_index + 1
    kind, tests = select(context.filename, line, context.source)
    context.config.test_command = command(tests)
    log = os.environ.get("ZOO_MUTATION_LOG")
    if log:
        entry = {"file": context.filename.replace(os.sep, "/"), "line": line,
                 "index": context.mutation_id.index, "selection": kind, "tests": len(tests),
                 "seconds": round(recorded_seconds(tests), 2), "at": round(time.time(), 2)}
        with open(log, "a") as out:
            out.write(json.dumps(entry) + "\n")
    # mutmut kills a run after 10x the baseline (the module's selection, maybe a second):
    # a budget's worth of tests must not count as a hang
    budget = float(os.environ.get("ZOO_MUTATION_BUDGET") or BUDGET) or 600.0
    context.config.baseline_time_elapsed = max(context.config.baseline_time_elapsed,
                                               budget / 2)
