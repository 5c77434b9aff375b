"""mutmut's mutants, counted before a run and summed up after it (``nox -s mutation``).

``python mutants.py count SKIP MODULE...`` prints ``{module: mutants}`` as JSON: the
mutants mutmut 2.5.1 makes of each module with the mutation types SKIP (comma-separated)
disabled. ``estimate`` prints ``{module: [mutants, seconds]}``, the seconds estimated
from the coverage map (``ZOO_MUTATION_MAP``), by which ``--shard`` balances the shards.

``python mutants.py summary OUT.json SKIP MODULE...``, run in the mutated copy (where
``.mutmut-cache`` is), writes each module's counts (mutants, killed, timeout,
suspicious, survived, skipped, untested, score) and every mutant that was not killed,
with its diff and the tests it ran (the log ``ZOO_MUTATION_LOG`` that
``mutmut_config.py`` writes), for ``report.py`` to merge and print.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

#: Seconds a mutant costs besides its tests: mutmut writes it and starts the runner, the
#: fork server forks, pytest collects.
OVERHEAD = 1.5
#: For the estimate: the share of the mutants that survive their tests, which then all
#: run, taking SLOWER times their recorded seconds and COLLECTING seconds more (measured
#: on a sample of modules).
SURVIVING = 0.12
SLOWER = 1.5
COLLECTING = 3.0
#: mutmut's status names, as ``mutmut result-ids`` spells them.
STATUSES = {"ok_killed": "killed", "bad_timeout": "timeout", "ok_suspicious": "suspicious",
            "bad_survived": "survived", "skipped": "skipped", "untested": "untested"}


def _mutmut_config(skip: str) -> Any:
    from mutmut import mutations_by_type

    disabled = {t.strip() for t in skip.split(",") if t.strip()}
    return SimpleNamespace(mutation_types_to_apply=set(mutations_by_type) - disabled,
                           covered_lines_by_filename=None)


def mutation_ids(module: str, skip: str) -> list[Any]:
    """mutmut's mutants of ``module`` (RelativeMutationID: line, index, line_number)."""
    from mutmut import Context, list_mutations

    context = Context(source=Path(module).read_text(), filename=module,
                      config=_mutmut_config(skip))
    return list(list_mutations(context))


def count(skip: str, modules: list[str]) -> dict[str, int]:
    return {module: len(mutation_ids(module, skip)) for module in modules}


def estimate(skip: str, modules: list[str]) -> dict[str, tuple[int, float]]:
    """Per module: its mutants, and the seconds they may take by the coverage map
    ``ZOO_MUTATION_MAP``: each the overhead and its first test (most mutants die there),
    and a share :data:`SURVIVING` of what its whole selection costs (a survivor)."""
    import mutmut_config

    found: dict[str, tuple[int, float]] = {}
    for module in modules:
        source = Path(module).read_text()
        mutants = mutation_ids(module, skip)
        cost = 3.0  # mutmut starts, the results are written
        for mutant in mutants:
            _, tests = mutmut_config.select(module, mutant.line_number + 1, source)
            if tests:
                cost += OVERHEAD + mutmut_config.recorded_seconds(tests[:1]) + SURVIVING * (
                    SLOWER * mutmut_config.recorded_seconds(tests) + COLLECTING)
            else:
                cost += 0.2
        found[module] = (len(mutants), round(cost, 1))
    return found


def score(row: dict[str, Any]) -> float | None:
    """Detected (killed, suspicious or timed out) of the mutants judged, in percent."""
    detected = int(row["killed"]) + int(row["suspicious"]) + int(row["timeout"])
    judged = detected + int(row["survived"])
    return round(100.0 * detected / judged, 1) if judged else None


def _selections(log: Path | None) -> dict[tuple[str, int, int], dict[str, Any]]:
    """The last selection ``mutmut_config.pre_mutation`` logged for each mutant."""
    found: dict[tuple[str, int, int], dict[str, Any]] = {}
    if log is None or not log.is_file():
        return found
    for text in log.read_text().splitlines():
        try:
            entry = json.loads(text)
            found[(entry["file"], int(entry["line"]), int(entry["index"]))] = entry
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a killed run
    return found


def _diff(module: str, source: str, line: str, index: int, line_number: int) -> str:
    import difflib

    from mutmut import Context, RelativeMutationID, mutate

    mutation_id = RelativeMutationID(filename=module, line=line, index=index,
                                     line_number=line_number)
    context = Context(source=source, filename=module, mutation_id=mutation_id)
    mutated, performed = mutate(context)
    if not performed:
        return ""
    return "\n".join(difflib.unified_diff(source.split("\n"), mutated.split("\n"),
                                          fromfile=module, tofile=module, lineterm="", n=2))


def summary(out: Path, skip: str, modules: list[str], cache: Path = Path(".mutmut-cache"),
            log: Path | None = None) -> dict[str, Any]:
    """Per-module counts and the mutants not killed, from mutmut's cache in this directory."""
    rows: dict[tuple[str, str, int, int], tuple[str, int]] = {}
    if cache.is_file():
        with sqlite3.connect(f"file:{cache}?mode=ro", uri=True) as db:
            for pk, filename, line, line_number, index, status in db.execute(
                    "SELECT m.id, s.filename, l.line, l.line_number, m.\"index\", m.status "
                    "FROM Mutant m JOIN Line l ON m.line = l.id "
                    "JOIN SourceFile s ON l.sourcefile = s.id"):
                rows[(filename, line, int(line_number), int(index))] = (status, int(pk))
    selections = _selections(log)
    finished = time.strftime("%Y-%m-%dT%H:%M:%S")
    result: dict[str, Any] = {"modules": [], "not_killed": []}
    for module in modules:
        source = Path(module).read_text()
        row: dict[str, Any] = {"module": module, "finished": finished, "mutants": 0,
                               "unreached": 0,
                               **{name: 0 for name in STATUSES.values()}}
        for mutant in mutation_ids(module, skip):
            status, pk = rows.get((module, mutant.line, mutant.line_number, mutant.index),
                                  ("untested", 0))
            name = STATUSES.get(status, "untested")
            row["mutants"] += 1
            row[name] += 1
            if name in ("killed", "untested"):
                continue
            chosen = selections.get((module, mutant.line_number + 1, mutant.index), {})
            if name == "survived" and chosen.get("selection") in ("unreached", "none"):
                row["unreached"] += 1
            result["not_killed"].append({
                "module": module, "id": pk, "status": name, "line": mutant.line_number + 1,
                "selection": chosen.get("selection"), "tests": chosen.get("tests"),
                "diff": _diff(module, source, mutant.line, mutant.index, mutant.line_number),
            })
        row["score"] = score(row)
        result["modules"].append(row)
    try:  # the modules of earlier runs in this folder stay
        earlier = json.loads(out.read_text())
        result["modules"] += [r for r in earlier["modules"] if r["module"] not in modules]
        result["not_killed"] += [m for m in earlier["not_killed"] if m["module"] not in modules]
    except (OSError, ValueError, KeyError):
        pass  # none yet
    result["modules"].sort(key=lambda r: r["module"])
    result["finished"] = finished
    result["source"] = os.getcwd()
    part = out.with_name(out.name + ".part")  # never half a file, even if the run is killed
    part.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(part, out)
    return result


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] in ("count", "estimate"):
        print(json.dumps((count if argv[0] == "count" else estimate)(argv[1], argv[2:])))
        return 0
    if len(argv) >= 3 and argv[0] == "summary":
        log = os.environ.get("ZOO_MUTATION_LOG")
        summary(Path(argv[1]), argv[2], argv[3:], log=Path(log) if log else None)
        return 0
    print("usage: mutants.py count|estimate SKIP MODULE... | summary OUT.json SKIP MODULE...",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
