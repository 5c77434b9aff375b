"""Developer sessions: ``nox -s tests lint typecheck``, plus ``export``, ``bench`` and ``zoo``.

Sessions reuse their virtual environments (``-R`` skips reinstalling): torch is
large, and the pip on this machine takes it from the local disk.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the test suite (offline, under five minutes)."""
    session.install("-e", ".[dev]")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Ruff: lint and formatting of imports."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", "zoo", "plugins", "tests", "bench", "noxfile.py")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the library and the built-in plugins."""
    session.install("-e", ".[dev]")
    session.run("mypy")
