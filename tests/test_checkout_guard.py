"""tests/checkout_guard.py: a session that leaves a file in the checkout fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from checkout_guard import checkout_status

TESTS = Path(__file__).resolve().parent
GIT = ["git", "-c", "user.name=zoo", "-c", "user.email=zoo@example.invalid",
       "-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false"]

INNER = '''
from pathlib import Path


def test_writes_into_the_working_folder():
    Path("None").write_bytes(b"onnx")


def test_edits_a_tracked_file():
    Path("kept.txt").write_text("changed")


def test_writes_under_tmp_path(tmp_path):
    (tmp_path / "None").write_bytes(b"onnx")
'''


def _checkout(root: Path) -> Path:
    root.mkdir()
    (root / "pytest.ini").write_text("[pytest]\n")
    (root / ".gitignore").write_text("__pycache__/\n.pytest_cache/\n")
    (root / "kept.txt").write_text("kept")
    (root / "test_inner.py").write_text(INNER)
    subprocess.run([*GIT, "init", "-q", str(root)], check=True)
    subprocess.run([*GIT, "-C", str(root), "add", "-A"], check=True)
    subprocess.run([*GIT, "-C", str(root), "commit", "-q", "-m", "start"], check=True)
    return root


def _pytest(root: Path, *tests: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(TESTS), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    # a basetemp outside the inner checkout, of its own (no sweep of the user's old ones)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "checkout_guard",
                           f"--basetemp={root.parent / 'inner-tmp'}", *tests], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


def test_a_session_that_writes_into_the_checkout_or_edits_it_fails_and_names_the_paths(
        tmp_path: Path) -> None:
    root = _checkout(tmp_path / "repo")
    done = _pytest(root, "test_inner.py::test_writes_into_the_working_folder",
                   "test_inner.py::test_edits_a_tracked_file")
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, done.stdout
    assert "2 passed" in done.stdout
    assert "the tests changed the checkout" in done.stdout
    assert "2 path(s) of" in done.stdout
    assert "  ?? None\n" in done.stdout and "   M kept.txt\n" in done.stdout


def test_under_pytest_xdist_the_controlling_process_fails_the_session(tmp_path: Path) -> None:
    """The suite runs with ``-n auto``: a file a worker's test writes still fails it."""
    root = _checkout(tmp_path / "repo")
    done = _pytest(root, "-p", "xdist", "-n", "2",
                   "test_inner.py::test_writes_into_the_working_folder",
                   "test_inner.py::test_writes_under_tmp_path")
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, done.stdout
    assert "2 passed" in done.stdout
    assert done.stdout.count("the tests changed the checkout") == 1
    assert "1 path(s) of" in done.stdout and "  ?? None\n" in done.stdout


def test_files_under_tmp_path_and_changes_made_before_the_session_pass(
        tmp_path: Path) -> None:
    root = _checkout(tmp_path / "repo")
    (root / "draft.txt").write_text("the developer's own, from before")
    done = _pytest(root, "test_inner.py::test_writes_under_tmp_path")
    assert done.returncode == pytest.ExitCode.OK, done.stdout
    assert "changed the checkout" not in done.stdout


def test_outside_the_top_of_a_git_checkout_it_does_nothing(tmp_path: Path) -> None:
    plain = tmp_path / "plain"  # not a git checkout
    plain.mkdir()
    (plain / "test_inner.py").write_text(INNER)
    (plain / "pytest.ini").write_text("[pytest]\n")
    assert checkout_status(plain) is None
    done = _pytest(plain, "test_inner.py::test_writes_into_the_working_folder")
    assert done.returncode == pytest.ExitCode.OK, done.stdout
    # a folder inside a checkout (as a mutation run's copy under .nox) is not its top
    root = _checkout(tmp_path / "repo")
    (root / "sub").mkdir()
    assert checkout_status(root / "sub") is None
    assert checkout_status(root) == frozenset()
