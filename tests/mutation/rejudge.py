"""Judge a module's surviving mutants again, against tests named by hand.

    python tests/mutation/rejudge.py MODULE [--deadline=SECONDS] [--lines=N,M,...] -- PYTEST ARGS...

The coverage map (``coverage_map.py``) is made once per change of the tests and takes
most of an hour, so a mutation run often uses a map older than the newest tests: their
mutants survive only because the map cannot choose those tests, and mutants of
declarations (a default, a bound) run only the tests that happen to execute the
module's functions. This tool takes every survivor of MODULE from the results of
``nox -s mutation`` (``report.py``'s merge), writes each into the working tree's MODULE
in turn, runs pytest with the given arguments in a fork server (``forkserver.py``:
torch imported once), and restores MODULE whatever happens (a copy waits in
``.nox/mutation/tmp/rejudge-backup`` until then, and a later run puts it back first if
this one was killed). ``--lines`` judges only the survivors of those lines (slow tests,
spent on the lines they are about). Only a test failure (pytest status 1) kills; each verdict, with
the tests that gave it, goes to ``.nox/mutation/tmp/rejudged.json``, which
``report.py`` reads: a survivor killed here counts as killed, in a column of its own.
The working tree's MODULE is changed while the tests run: do not edit it meanwhile. Not
a test module.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORK = Path(".nox/mutation/tmp")
VERDICTS = WORK / "rejudged.json"
BACKUP = WORK / "rejudge-backup"


def key(diff: str) -> str:
    """A mutant's identity across work folders: the hash of its diff (ids are per folder)."""
    return hashlib.sha256(diff.encode()).hexdigest()[:16]


def apply(source: str, diff: str) -> str:
    """``source`` with the one-hunk unified ``diff`` (mutmut's) applied; ValueError if its
    context is not found exactly once."""
    old: list[str] = []
    new: list[str] = []
    lines = diff.splitlines()
    if lines[:1] and lines[0].startswith("--- "):  # the header: file names, then the hunk's
        lines = lines[2:]
    for line in lines:
        if line.startswith("@@"):
            continue
        if line.startswith("-"):
            old.append(line[1:])
        elif line.startswith("+"):
            new.append(line[1:])
        else:
            text = line[1:] if line.startswith(" ") else line
            old.append(text)
            new.append(text)
    while old and new and old[-1] == new[-1] == "":  # the file's end, as difflib shows it
        old.pop()
        new.pop()
    before, after = "\n".join(old) + "\n", "\n".join(new) + "\n"
    if source.count(before) != 1:  # the context changed since the run: the changed lines alone
        removed = [ln[1:] for ln in lines if ln.startswith("-")]
        added = [ln[1:] for ln in lines if ln.startswith("+")]
        while removed and added and removed[-1] == added[-1] == "":  # the file's last line
            removed.pop()
            added.pop()
        before, after = "\n".join(removed) + "\n", "\n".join(added) + "\n"
        if not removed or source.count(before) != 1:
            raise ValueError(f"the mutant's lines are in the module {source.count(before)} "
                             "times")
    return source.replace(before, after)


def _restore_left_backups() -> None:
    for saved in BACKUP.rglob("*.py") if BACKUP.is_dir() else ():
        target = Path(saved.relative_to(BACKUP))
        shutil.copyfile(saved, target)
        saved.unlink()
        print(f"restored {target} from a killed earlier run", file=sys.stderr)


def _survivors(module: str) -> list[dict[str, Any]]:
    sys.path.insert(0, str(HERE))
    from report import DEFAULT, merge

    _, mutants, _ = merge(sorted(Path().glob(DEFAULT)))
    return [m for m in mutants if m["module"] == module and m["status"] == "survived"]


def _load_verdicts() -> dict[str, dict[str, Any]]:
    return json.loads(VERDICTS.read_text()) if VERDICTS.is_file() else {}


def _save_verdicts(verdicts: dict[str, dict[str, Any]]) -> None:
    tmp = VERDICTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(verdicts, indent=1, sort_keys=True))
    os.replace(tmp, VERDICTS)


def main(argv: list[str]) -> int:
    if "--" not in argv:
        print(__doc__, file=sys.stderr)
        return 2
    sep = argv.index("--")
    head, tests = argv[:sep], argv[sep + 1:]
    deadline = next((float(a.split("=", 1)[1]) for a in head if a.startswith("--deadline=")),
                    120.0)
    lines = next(({int(n) for n in a.split("=", 1)[1].split(",")} for a in head
                  if a.startswith("--lines=")), None)
    names = [a for a in head if not a.startswith("--")]
    if len(names) != 1 or not Path(names[0]).is_file() or not tests:
        print(__doc__, file=sys.stderr)
        return 2
    module = Path(names[0]).as_posix()
    _restore_left_backups()
    verdicts = _load_verdicts()
    done = verdicts.get(module, {})
    mutants = [m for m in _survivors(module)  # those killed already stay killed
               if done.get(key(m["diff"]), {}).get("verdict") != "killed"
               and (lines is None or m["line"] in lines)]
    path = Path(module)
    source = path.read_text()
    backup = BACKUP / module
    backup.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, backup)
    sock = os.path.join(tempfile.mkdtemp(prefix="rejudge-"), "server.sock")
    server = subprocess.Popen([sys.executable, str(HERE / "forkserver.py"), "serve", sock],
                              stdout=subprocess.DEVNULL)
    # a mutant may signal a process it should only probe (the tests' parent among them)
    for number in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, signal.default_int_handler)
    counts = {"killed": 0, "survived": 0, "not judged": 0}
    try:
        while not os.path.exists(sock):
            if server.poll() is not None:
                print("the fork server did not start", file=sys.stderr)
                return 1
            time.sleep(0.2)
        for m in mutants:
            try:
                mutated = apply(source, m["diff"])
            except ValueError as exc:
                print(f"NOT APPLIED {module}:{m['line']}: {exc}")
                counts["not judged"] += 1
                continue
            try:
                compile(mutated, module, "exec")
            except SyntaxError:  # mutmut can write one (``{/x}``): no import of it succeeds
                counts["killed"] += 1
                print(f"KILLED {module}:{m['line']}: the mutant does not compile", flush=True)
                verdicts.setdefault(module, {})[key(m["diff"])] = {
                    "verdict": "killed", "line": m["line"], "tests": ["(does not compile)"]}
                _save_verdicts(verdicts)
                continue
            path.write_text(mutated)
            try:
                done = subprocess.run(
                    [sys.executable, str(HERE / "forkserver.py"), "run", sock, "--", "-x", "-q",
                     "-p", "no:cacheprovider", *tests], capture_output=True, text=True,
                    env={**os.environ, "ZOO_MUTATION_DEADLINE": str(deadline)}, check=False)
            finally:
                path.write_text(source)
            verdict = {1: "killed", 0: "survived"}.get(done.returncode, "not judged")
            counts[verdict] += 1
            last = (done.stdout.strip().splitlines() or [""])[-1]
            changed = [ln for ln in m["diff"].splitlines()
                       if ln.startswith("+") and not ln.startswith("+++")]
            print(f"{verdict.upper()} {module}:{m['line']} {changed[0][1:].strip()[:70]!r}: "
                  f"{last[:80]}", flush=True)
            if verdict != "not judged":
                verdicts.setdefault(module, {})[key(m["diff"])] = {
                    "verdict": verdict, "line": m["line"], "tests": tests}
                _save_verdicts(verdicts)
    finally:
        path.write_text(source)
        backup.unlink(missing_ok=True)
        server.terminate()
        server.wait()
    print(f"{module}: {len(mutants)} survivors judged again: {counts['killed']} killed, "
          f"{counts['survived']} survived, {counts['not judged']} not judged")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
