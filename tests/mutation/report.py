"""The mutation scores as a markdown table, and the surviving mutants with their diffs.

    python tests/mutation/report.py [RESULTS.json ...] [--table | --survivors]

Merges the ``results.json`` files that ``nox -s mutation`` writes in its work folders
(by default every ``.nox/mutation/tmp/*/results.json``; a module in more than one keeps
the newest) and prints the table for docs/development.md, then every mutant that was
not killed, with its diff: first those that survived the tests they ran (to triage),
then those on lines no test executes in-process (nothing ran them), then the timed-out
and suspicious ones (counted as killed). Run from the checkout's root, it also names
the modules under zoo/ and plugins/ that no results cover. Survivors that
``rejudge.py`` killed later, against tests the run could not choose, count as killed
(the column "killed on re-judging") and leave the list. Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

COLUMNS = ("mutants", "killed", "rejudged", "timeout", "suspicious", "survived", "unreached")
DEFAULT = ".nox/mutation/tmp/*/results.json"
#: ``rejudge.py``'s verdicts: module -> the hash of a mutant's diff -> verdict.
REJUDGED = Path(".nox/mutation/tmp/rejudged.json")
ROOTS = ("zoo", "plugins")


def merge(files: list[Path]) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]], list[str]]:
    """Rows by module, the mutants not killed, and notes (modules found twice)."""
    rows: dict[str, dict[str, Any]] = {}
    finished: dict[str, str] = {}
    mutants: dict[str, list[dict[str, Any]]] = {}
    notes: list[str] = []
    for file in files:
        data = json.loads(file.read_text())
        for row in data["modules"]:
            module = row["module"]
            when = row.get("finished", data["finished"])
            if module in rows:
                notes.append(f"{module} is in more than one results file; the newest is kept")
                if when <= finished[module]:
                    continue
            rows[module] = row
            finished[module] = when
            mutants[module] = [{**m, "source": data.get("source", "")}
                               for m in data["not_killed"] if m["module"] == module]
    return rows, [m for module in sorted(mutants) for m in mutants[module]], notes


def _key(diff: str) -> str:
    return hashlib.sha256(diff.encode()).hexdigest()[:16]  # as rejudge.key


def rejudge(rows: dict[str, dict[str, Any]], mutants: list[dict[str, Any]],
            verdicts: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Count the survivors that ``rejudge.py`` killed as killed (``rejudged`` of each row,
    the score again) and return the mutants still not killed."""
    left = []
    for m in mutants:
        verdict = verdicts.get(m["module"], {}).get(_key(str(m["diff"])), {})
        if m["status"] == "survived" and verdict.get("verdict") == "killed":
            row = rows[m["module"]]
            row["rejudged"] = row.get("rejudged", 0) + 1
            row["survived"] -= 1
            if m.get("selection") in ("unreached", "none"):
                row["unreached"] -= 1
        else:
            left.append(m)
    for row in rows.values():
        row.setdefault("rejudged", 0)
        detected = row["killed"] + row["rejudged"] + row["suspicious"] + row["timeout"]
        judged = detected + row["survived"]
        row["score"] = round(100.0 * detected / judged, 1) if judged else None
    return left


def table(rows: dict[str, dict[str, Any]]) -> str:
    out = ["| module | mutants | killed | killed on re-judging | timed out | suspicious "
           "| survived | of them unreached | not run | score |", "|---|" + "---:|" * 9]
    total = dict.fromkeys((*COLUMNS, "not run"), 0)
    for module in sorted(rows):
        row = rows[module]
        not_run = row["skipped"] + row["untested"]
        for column in COLUMNS:
            total[column] += row[column]
        total["not run"] += not_run
        score = "-" if row["score"] is None else f"{row['score']:.1f}%"
        out.append(f"| `{module}` | " + " | ".join(str(row[c]) for c in COLUMNS)
                   + f" | {not_run} | {score} |")
    judged = (total["killed"] + total["rejudged"] + total["suspicious"] + total["timeout"]
              + total["survived"])
    score = f"{100.0 * (judged - total['survived']) / judged:.1f}%" if judged else "-"
    out.append(f"| all {len(rows)} modules | " + " | ".join(f"**{total[c]}**" for c in COLUMNS)
               + f" | **{total['not run']}** | **{score}** |")
    return "\n".join(out)


def _mutant(m: dict[str, Any]) -> str:
    where = f"`{m['module']}:{m['line']}`"
    how = (f"ran {m['tests']} tests ({m['selection']})" if m.get("selection") else "")
    show = f"mutant {m['id']}: `cd {m['source']} && mutmut show {m['id']}`" if m["id"] else ""
    head = f"- {where} " + "; ".join(part for part in (how, show) if part)
    return head + "\n\n```diff\n" + str(m["diff"]).rstrip() + "\n```\n"


def survivors(mutants: list[dict[str, Any]]) -> str:
    groups: tuple[tuple[str, Callable[[dict[str, Any]], bool]], ...] = (
        ("Survived the tests they ran", lambda m: m["status"] == "survived"
         and m.get("selection") not in ("unreached", "none")),
        ("Survived: no test executes the line in-process (none ran)",
         lambda m: m["status"] == "survived" and m.get("selection") in ("unreached", "none")),
        ("Timed out (counted as killed)", lambda m: m["status"] == "timeout"),
        ("Suspicious: killed, slowly (counted as killed)", lambda m: m["status"] == "suspicious"),
        ("Skipped", lambda m: m["status"] == "skipped"),
    )
    out = []
    for title, wanted in groups:
        chosen = [m for m in mutants if wanted(m)]
        if chosen:
            out.append(f"### {title} ({len(chosen)})\n")
            out.extend(_mutant(m) for m in chosen)
    return "\n".join(out) if out else "No mutant survived."


def missing(rows: dict[str, dict[str, Any]], root: Path) -> list[str]:
    """Modules under zoo/ and plugins/ of ``root`` that no results cover."""
    found = {p.relative_to(root).as_posix() for top in ROOTS if (root / top).is_dir()
             for p in (root / top).rglob("*.py") if "__pycache__" not in p.parts}
    return sorted(found - set(rows))


def main(argv: list[str]) -> int:
    flags = {a for a in argv if a.startswith("--")}
    unknown = flags - {"--table", "--survivors"}
    if unknown or flags == {"--table", "--survivors"}:
        print("usage: report.py [RESULTS.json ...] [--table | --survivors]", file=sys.stderr)
        return 2
    files = [Path(a) for a in argv if not a.startswith("--")] or sorted(Path().glob(DEFAULT))
    absent = [str(f) for f in files if not f.is_file()]
    if not files or absent:
        print(f"no results file {' '.join(absent) or DEFAULT}: run nox -s mutation first",
              file=sys.stderr)
        return 1
    rows, mutants, notes = merge(files)
    mutants = rejudge(rows, mutants, json.loads(REJUDGED.read_text()) if REJUDGED.is_file()
                      else {})
    for note in sorted(set(notes)):
        print(f"note: {note}", file=sys.stderr)
    left = missing(rows, Path())
    if left:
        print(f"note: {len(left)} modules have no results: {' '.join(left)}", file=sys.stderr)
    if "--survivors" not in flags:
        print(table(rows))
    if "--table" not in flags:
        print("" if "--survivors" in flags else "\n", end="")
        print(survivors(mutants))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
