"""Which tests run each line: ``python coverage_map.py COVERAGE-DB ROOT OUT.json``.

Reads a coverage database recorded with per-test contexts (``pytest --cov-context=test``)
and writes ``{path relative to ROOT: {line: [pytest node id, ...]}}``. The mutation
session runs a mutant of line L with only the tests that ran line L first; a mutant they
do not kill is run again with the module's whole test selection (``mutmut --rerun-all``),
so the map decides how fast a mutant is judged, never how it is judged.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from coverage import CoverageData


def build(db: str, root: Path) -> dict[str, dict[str, list[str]]]:
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


def main(argv: list[str]) -> int:
    db, root, target = argv
    result = build(db, Path(root))
    Path(target).write_text(json.dumps(result))
    print(f"{target}: {sum(len(v) for v in result.values())} lines of {len(result)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
