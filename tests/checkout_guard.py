"""A pytest plugin: the test session leaves the checkout as it found it.

A test, or a mutant run by ``tests/mutation/apply.py``, that writes into the working
folder instead of its ``tmp_path`` leaves a file that the next ``git add -A`` commits:
that is how a 13 kB int8 ONNX graph named ``None`` (a mutated output path) once reached
the repository. At the start and at the end of the session this plugin takes ``git
status`` of the checkout the tests run from (untracked files one by one, ignored files
left out); whatever is new at the end (a file added, changed or deleted) fails the
session, one line per path.

It checks only where the rootdir is the top of a git working tree (not in the copies
a mutation run makes inside ``.nox``) and git answers; otherwise it does nothing.
Loaded by ``tests/conftest.py``; ``python -m pytest -p checkout_guard`` loads it
elsewhere.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

_BEFORE = pytest.StashKey[frozenset[str]]()
_LEFT = pytest.StashKey[list[str]]()


def _git(root: Path, *args: str) -> bytes | None:
    git = shutil.which("git")
    if git is None:
        return None
    try:
        done = subprocess.run([git, "-C", str(root), *args], capture_output=True,
                              timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def checkout_status(root: Path) -> frozenset[str] | None:
    """``git status`` of the working tree whose top is ``root``, one entry per path
    (``?? name`` for an untracked file, `` M name`` for a changed one...), or None where
    ``root`` is not the top of a git working tree or git does not answer."""
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None or Path(top.decode(errors="surrogateescape").strip()) != root.resolve():
        return None
    out = _git(root, "status", "--porcelain=v1", "-z", "--untracked-files=all",
               "--ignore-submodules")
    if out is None:
        return None
    return frozenset(e for e in out.decode(errors="surrogateescape").split("\0") if e)


def pytest_sessionstart(session: pytest.Session) -> None:
    if hasattr(session.config, "workerinput"):
        return  # a pytest-xdist worker: the controlling process checks the whole session
    before = checkout_status(session.config.rootpath)
    if before is not None:
        session.config.stash[_BEFORE] = before


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    before = session.config.stash.get(_BEFORE, None)
    if before is None:
        return
    after = checkout_status(session.config.rootpath)
    if after is None:
        return
    left = sorted(after - before)
    if left:
        session.config.stash[_LEFT] = left
        if session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter,
                            config: pytest.Config) -> None:
    left = config.stash.get(_LEFT, [])
    if left:
        terminalreporter.section("the tests changed the checkout", red=True)
        terminalreporter.write_line(
            f"{len(left)} path(s) of {config.rootpath} changed during the session "
            "(git status; a test must write under its tmp_path):")
        for entry in left:
            terminalreporter.write_line(f"  {entry}")
