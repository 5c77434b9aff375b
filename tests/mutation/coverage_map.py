"""Which tests run each line: ``python coverage_map.py COVERAGE-DB ROOT OUT.json [JUNIT.xml]``.

Reads a coverage database recorded with per-test contexts (``pytest --cov-context=test``)
and writes ``{"lines": {path relative to ROOT: {line: [pytest node id, ...]}},
"seconds": {node id: duration}}``, the durations read from the same run's JUnit XML
report. The mutation session runs a mutant of line L with the tests that ran line L,
fastest first, and stops at the first failure; a mutant they do not kill is run again
with the module's whole test selection (``mutmut --rerun-all``), so the map decides
how fast a mutant is judged, never how it is judged.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from coverage import CoverageData


def lines_to_tests(db: str, root: Path) -> dict[str, dict[str, list[str]]]:
    data = CoverageData(basename=db)
    data.read()
    out: dict[str, dict[str, list[str]]] = {}
    for filename in sorted(data.measured_files()):
        try:
            rel = Path(filename).resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            continue
        lines: dict[str, set[str]] = {}
        for line, contexts in (data.contexts_by_lineno(filename) or {}).items():
            tests = {c.rsplit("|", 1)[0] for c in contexts if c}
            if tests:
                lines.setdefault(str(line), set()).update(tests)
        out[rel] = {line: sorted(tests) for line, tests in lines.items()}
    return out


def durations(junit: Path, root: Path) -> dict[str, float]:
    """Seconds per test node id (setup, call and teardown) from a JUnit XML report."""
    seconds: dict[str, float] = {}
    for case in ET.parse(junit).iter("testcase"):
        parts = case.get("classname", "").split(".")
        # "tests.test_x" or "tests.test_x.TestClass": the longest prefix that is a file
        for cut in range(len(parts), 0, -1):
            path = "/".join(parts[:cut]) + ".py"
            if (root / path).is_file():
                node = "::".join([path, *parts[cut:], case.get("name", "")])
                seconds[node] = float(case.get("time", "0") or 0)
                break
    return seconds


def main(argv: list[str]) -> int:
    db, root, target, *junit = argv
    lines = lines_to_tests(db, Path(root))
    seconds = durations(Path(junit[0]), Path(root)) if junit else {}
    Path(target).write_text(json.dumps({"lines": lines, "seconds": seconds}))
    print(f"{target}: {sum(len(v) for v in lines.values())} lines of {len(lines)} files, "
          f"{len(seconds)} test durations")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
