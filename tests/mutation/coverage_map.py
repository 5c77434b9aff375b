"""Which tests run each line: ``python coverage_map.py COVERAGE-DB ROOT OUT.json [JUNIT.xml]``.

Reads a coverage database recorded with per-test contexts (``pytest --cov-context=test``)
and writes, with paths relative to ROOT::

    {"tests": [pytest node id, ...], "seconds": [duration or null, ...],
     "lines": {path: {line: [index into tests, ...]}},
     "imported": {path: [line executed outside any test: at import or collection]},
     "dropped": [node id, ...]}

The durations and outcomes come from the same run's JUnit XML report. A test that failed,
errored or was skipped there is dropped: a test that fails unmutated would "kill" every
mutant it runs, and a skipped one kills none. The mutation session runs a mutant of
line L with the tests that ran line L (``mutmut_config.py``), fastest first, and stops at
the first failure, so the map decides how fast a mutant is judged and which tests may
judge it.
"""

from __future__ import annotations

import json
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from coverage import CoverageData


def read(db: str, root: Path) -> tuple[dict[str, dict[int, set[str]]], dict[str, set[int]]]:
    """Per file relative to ``root``: the tests of each line, and the lines run outside tests."""
    data = CoverageData(basename=db)
    data.read()
    tests: dict[str, dict[int, set[str]]] = {}
    imported: dict[str, set[int]] = {}
    for filename in sorted(data.measured_files()):
        try:
            rel = Path(filename).resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            continue
        for line, contexts in (data.contexts_by_lineno(filename) or {}).items():
            names = {c.rsplit("|", 1)[0] for c in contexts if c}
            if names:
                tests.setdefault(rel, {}).setdefault(line, set()).update(names)
            if "" in contexts or not contexts:
                imported.setdefault(rel, set()).add(line)
    return tests, imported


def outcomes(junit: Path, root: Path) -> tuple[dict[str, float], set[str]]:
    """Seconds per test node id (setup, call and teardown) from a JUnit XML report, and
    the node ids that failed, errored or were skipped."""
    seconds: dict[str, float] = {}
    bad: set[str] = set()
    for case in ET.parse(junit).iter("testcase"):
        parts = case.get("classname", "").split(".")
        # "tests.test_x" or "tests.test_x.TestClass": the longest prefix that is a file
        for cut in range(len(parts), 0, -1):
            path = "/".join(parts[:cut]) + ".py"
            if (root / path).is_file():
                node = "::".join([path, *parts[cut:], case.get("name", "")])
                seconds[node] = seconds.get(node, 0.0) + float(case.get("time", "0") or 0)
                if any(child.tag in ("failure", "error", "skipped") for child in case):
                    bad.add(node)
                break
    return seconds, bad


def build(db: str, root: Path, junit: Path | None) -> dict[str, Any]:
    by_line, imported = read(db, root)
    seconds, bad = outcomes(junit, root) if junit else ({}, set())
    names = sorted({t for lines in by_line.values() for ts in lines.values() for t in ts} - bad)
    index = {name: i for i, name in enumerate(names)}
    lines: dict[str, dict[str, list[int]]] = {}
    for rel, tests in by_line.items():
        kept = {str(line): sorted(index[t] for t in ts if t in index)
                for line, ts in sorted(tests.items())}
        lines[rel] = {line: ts for line, ts in kept.items() if ts}
    return {"tests": names, "seconds": [seconds.get(name) for name in names], "lines": lines,
            "imported": {rel: sorted(found) for rel, found in imported.items()},
            "dropped": sorted(bad)}


def main(argv: list[str]) -> int:
    db, root, target, *junit = argv
    built = build(db, Path(root), Path(junit[0]) if junit else None)
    part = Path(f"{target}.part")  # a shard that reads the map never sees half of it
    part.write_text(json.dumps(built, separators=(",", ":")))
    os.replace(part, target)
    lines = sum(len(v) for v in built["lines"].values())
    print(f"{target}: {lines} lines of {len(built['lines'])} files, {len(built['tests'])} tests"
          f" ({sum(s is not None for s in built['seconds'])} with durations)")
    if built["dropped"]:
        print(f"not used (failed, errored or skipped in the run): {len(built['dropped'])} tests: "
              + " ".join(built["dropped"][:20]) + (" ..." if len(built["dropped"]) > 20 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
