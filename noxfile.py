"""Developer sessions: ``nox -s tests lint typecheck``, plus ``export`` and ``zoo``.

Sessions reuse their virtual environments (``-R`` skips reinstalling): torch is
large, and the pip on this machine takes it from the local disk.
"""

from __future__ import annotations

import os

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
    """Re-train, export and verify the shipped CIFAR-2 bundles, then regenerate the README table.

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
    session.run("python", "-m", "zoo.modeltable", "--write", "README.md")


#: mutmut 2.5.1: mutates a copy of the sources in place, one module at a time (3.x needs a
#: mutants/ tree the editable install does not see).
MUTMUT = "mutmut==2.5.1"
#: Not mutated: message and description strings (the tests match the parts that matter; every
#: literal would double the mutants) and decorators.
MUTMUT_SKIP = "string,fstring,decorator"
#: Per module, the tests that exercise it: one module's mutants run in minutes, not hours.
MUTATION_TESTS: dict[str, tuple[str, ...]] = {
    "zoo/spec.py": ("tests/test_spec.py", "tests/test_registry.py"),
    "zoo/registry.py": ("tests/test_registry.py", "tests/test_cli_catalog.py",
                        "tests/test_readme_plugin.py"),
    "zoo/imaging.py": ("tests/test_imaging.py",),
    "zoo/deploy.py": ("tests/test_deploy.py", "tests/test_crosscheck.py",
                      "tests/test_pretrained.py"),
    "zoo/exporter.py": ("tests/test_export.py", "tests/test_behaviour.py"),
    "zoo/bundle.py": ("tests/test_bundle.py",),
    "zoo/manifest.py": ("tests/test_bundle.py", "tests/test_export.py"),
    "zoo/pipeline.py": ("tests/test_crosscheck.py", "tests/test_recipe.py",
                        "tests/test_trainer.py"),
    "zoo/checkpoint.py": ("tests/test_behaviour.py", "tests/test_trainer.py"),
    "zoo/progress.py": ("tests/test_behaviour.py",),
    "zoo/config.py": ("tests/test_trainer.py", "tests/test_recipe.py"),
    "zoo/trainer.py": ("tests/test_recipe.py", "tests/test_behaviour.py",
                       "tests/test_trainer.py"),
    "plugins/zoo_chapter8/models.py": ("tests/test_reference.py",
                                       "tests/test_architectures.py"),
    "plugins/zoo_chapter8/specs.py": ("tests/test_architectures.py",),
    "plugins/zoo_datasets/common.py": ("tests/test_dataset_labels.py", "tests/test_datasets.py"),
    "plugins/zoo_datasets/cifar.py": ("tests/test_dataset_labels.py", "tests/test_datasets.py"),
    "plugins/zoo_datasets/imagefolder.py": ("tests/test_dataset_labels.py",
                                            "tests/test_datasets.py"),
    "plugins/zoo_datasets/synthetic.py": ("tests/test_dataset_labels.py",
                                          "tests/test_datasets.py"),
}


@nox.session(python=PYTHON)
def mutation(session: nox.Session) -> None:
    """Mutation testing (mutmut) of one module or more: ``nox -s mutation -- zoo/spec.py``.

    Without arguments, every module of ``MUTATION_TESTS``. Mutants are made in a
    copy of the sources (``.nox/mutation/tmp/src``, first on PYTHONPATH), never in
    the working tree; each module runs its own tests (``MUTATION_TESTS``, or the
    whole suite for a module not listed). Survivors: ``cd .nox/mutation/tmp/src &&
    mutmut show ID`` with the session's mutmut.
    """
    import shutil
    from pathlib import Path

    session.install("-e", ".[dev]")
    session.install(MUTMUT)
    modules = session.posargs or list(MUTATION_TESTS)
    src = Path(session.create_tmp()).resolve() / "src"
    for module in modules:
        if not Path(module).is_file():
            session.error(f"no module {module!r}; name a file such as zoo/spec.py")
        shutil.rmtree(src, ignore_errors=True)
        for part in ("zoo", "plugins", "tests", "bench"):
            shutil.copytree(part, src / part, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy("pyproject.toml", src / "pyproject.toml")
        tests = " ".join(MUTATION_TESTS.get(module, ("tests",)))
        env = {"PYTHONPATH": f"{src}{os.pathsep}{src / 'plugins'}",
               "ZOO_CACHE_DIR": str(src.parent / "zoo-cache")}
        session.log(f"mutating {module}; tests: {tests}")
        with session.chdir(src):
            # exit status: a bit mask of survived (2), timed out (4), suspicious (8); 1 is fatal
            # mutmut 2 counts only exit status 1 as a kill: a mutant that breaks an import
            # (pytest's status 2 or 4) would "survive" without the `|| exit 1`
            session.run("mutmut", "run", "--paths-to-mutate", module, "--tests-dir", "tests",
                        "--no-progress", "--simple-output", "--disable-mutation-types",
                        MUTMUT_SKIP, "--runner",
                        f"sh -c 'python -m pytest -x -q -p no:cacheprovider {tests} || exit 1'",
                        env=env, success_codes=[0, 2, 4, 6, 8, 10, 12, 14])
            session.run("mutmut", "results", env=env, success_codes=[0, 2, 4, 6, 8, 10, 12, 14])
