"""Developer sessions: ``nox -s tests lint typecheck``, plus ``export`` and ``zoo``.

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


def _architectures(session: nox.Session, *, tag: str = "chapter8") -> list[str]:
    import json

    out = session.run("zoo", "list", "--tag", tag, "--json", silent=True, external=False)
    return [record["name"] for record in json.loads(str(out))]


@nox.session(python=PYTHON)
def export(session: nox.Session) -> None:
    """Export every built-in architecture to an ONNX bundle and verify it (into .nox/exports)."""
    session.install("-e", ".[dev]")
    out = session.create_tmp() + "/exports"
    for name in _architectures(session):
        bundle = f"{out}/{name}"
        session.run("zoo", "export", name, "--out", bundle, "--force")
        session.run("zoo", "verify", bundle)


@nox.session(python=PYTHON)
def zoo(session: nox.Session) -> None:
    """Re-train, export and verify the shipped bundles; regenerate their declarations and table.

    nox -s zoo -- --data-dir DIR [--dataset imagefolder|cifar2] [--epochs N] [--only NAME ...]

    DIR is an ImageFolder directory holding airplane/ and bird/ (held-out split
    --val-split, default 0.1, seed 0) or a CIFAR-10 copy (--dataset cifar2).
    """
    import argparse
    import shutil

    parser = argparse.ArgumentParser(prog="nox -s zoo --")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--dataset", default="imagefolder", choices=["imagefolder", "cifar2"])
    parser.add_argument("--val-split", default="0.1")
    parser.add_argument("--seed", default="0")
    parser.add_argument("--epochs", default=None)
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args(session.posargs)
    session.install("-e", ".[dev]")
    names = args.only or _architectures(session)
    for name in names:
        run_dir = f"runs/zoo/{name}"
        shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run, not a resume
        train = ["zoo", "train", name, "--dataset", args.dataset, "--data-dir", args.data_dir,
                 "--seed", args.seed, "--out", run_dir, "--progress", "log"]
        if args.dataset == "imagefolder":
            train += ["--val-split", args.val_split]
        if args.epochs:
            train += ["--epochs", args.epochs]
        session.run(*train)
        session.run("zoo", "export", run_dir, "--out", f"exports/{name}-cifar2", "--force")
    # the specs pin each bundle's manifest digest: declare the new bundles
    session.run("python", "-m", "zoo.weightsync", "--write", "plugins/zoo_chapter8/weights.json",
                "--package", "zoo_chapter8.weights")
    session.run("python", "-m", "zoo.modeltable", "--write", "README.md")
    session.run("zoo", "compare", *_architectures(session), "--out", "docs/compare.png")
