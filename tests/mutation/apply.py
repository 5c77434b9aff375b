"""Apply one mutant by hand and run tests against it: the triage of a survivor.

``python tests/mutation/apply.py MODULE OLD NEW [N] -- PYTEST ARGS...`` replaces the
N-th (default: first) occurrence of the text OLD in MODULE by NEW, runs pytest with
the arguments after ``--``, restores MODULE whatever happens, and prints KILLED (a
test failed), SURVIVED (all passed) or NOT JUDGED (pytest stopped otherwise: an
interruption, no tests found) with pytest's last line. The working tree's module is
changed while the tests run: do not edit it meanwhile. Not a test module.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    if "--" not in argv or len(argv[:argv.index("--")]) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    sep = argv.index("--")
    module, old, new = argv[:3]
    nth = int(argv[3]) if sep == 4 else 1
    path = Path(module)
    source = path.read_text()
    if source.count(old) < nth:
        print(f"{module} has fewer than {nth} occurrence(s) of {old!r}", file=sys.stderr)
        return 2
    at = -1
    for _ in range(nth):
        at = source.index(old, at + 1)
    path.write_text(source[:at] + new + source[at + len(old):])
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p",
                               "no:cacheprovider", *argv[sep + 1:]],
                              capture_output=True, text=True, check=False)
    finally:
        path.write_text(source)
    lines = done.stdout.strip().splitlines() or [done.stderr.strip()[-200:]]
    # exit status 1: a test failed; 2-5: interrupted, internal error, usage, no tests
    verdict = "KILLED" if done.returncode == 1 else (
        "SURVIVED" if done.returncode == 0 else f"NOT JUDGED (pytest exit {done.returncode})")
    print(f"{verdict} {old!r} -> {new!r}: {lines[-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
