"""Developer sessions: ``nox -s tests lint typecheck``, plus ``export`` and ``zoo``.

``tests``, ``typecheck``, ``export`` and ``zoo`` share one virtual environment,
``.nox/dev``: torch is installed once (about 5.5 GB), not once per session. It is
created on first use and ``pip install -e .[dev]`` runs again only when
pyproject.toml changes (``--reinstall-dev`` forces it). ``lint`` needs only ruff and
keeps a small environment of its own.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"
#: The environment the torch sessions share.
DEV_ENV = Path(__file__).resolve().parent / ".nox" / "dev"
_BIN = DEV_ENV / ("Scripts" if os.name == "nt" else "bin")


def _dev(session: nox.Session) -> None:
    """Create or update the shared environment and put it first on the session's PATH."""
    python = _BIN / "python"
    stamp = DEV_ENV / "installed-pyproject.sha256"
    digest = hashlib.sha256(Path("pyproject.toml").read_bytes()).hexdigest()
    if not python.exists():
        base = shutil.which(f"python{PYTHON}") or sys.executable
        session.run(base, "-m", "venv", str(DEV_ENV), external=True)
    forced = "--reinstall-dev" in session.posargs
    if forced or not stamp.is_file() or stamp.read_text() != digest:
        session.run(str(python), "-m", "pip", "install", "-e", ".[dev]", external=True)
        stamp.write_text(digest)
    session.env["VIRTUAL_ENV"] = str(DEV_ENV)
    session.env["PATH"] = f"{_BIN}{os.pathsep}{os.environ.get('PATH', '')}"


def _posargs(session: nox.Session) -> list[str]:
    return [arg for arg in session.posargs if arg != "--reinstall-dev"]


def _dev_run(session: nox.Session, *args: str, **kwargs: Any) -> Any:
    """Run a command of the shared environment (``zoo``, ``pytest``, ``python``, ...)."""
    return session.run(str(_BIN / args[0]), *args[1:], external=True, **kwargs)


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """Run the test suite (offline, under five minutes), the documentation's examples and
    the layering contracts (import-linter, tests/test_layout.py) included."""
    _dev(session)
    # one process per core unless the arguments choose (-n 0: one process)
    args = _posargs(session)
    parallel = [] if any(a.startswith(("-n", "--numprocesses")) for a in args) else ["-n", "auto"]
    _dev_run(session, "pytest", *parallel, *args)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Ruff (lint, import order) and import-linter (the layering contracts in pyproject.toml)."""
    session.install("ruff>=0.6", "import-linter>=2.1")
    session.run("ruff", "check", "zoo", "plugins", "tests", "bench", "noxfile.py")
    # grimp reads the sources; it finds the package in the working directory
    session.run("lint-imports", env={"PYTHONPATH": str(Path(__file__).resolve().parent)})


@nox.session(venv_backend="none")
def docs(session: nox.Session) -> None:
    """Build the documentation site into .nox/site: mkdocs-material, the API reference from
    the docstrings (mkdocstrings), warnings as errors (``mkdocs build --strict``)."""
    _dev(session)
    _dev_run(session, "mkdocs", "build", "--strict", "--site-dir",
             str(DEV_ENV.parent / "site"), *_posargs(session),
             env={"NO_MKDOCS_2_WARNING": "1"})  # no banner about a future MkDocs 2


@nox.session(venv_backend="none")
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the library and the built-in plugins."""
    _dev(session)
    _dev_run(session, "mypy")


def _architectures(session: nox.Session, *, tag: str = "chapter8") -> list[str]:
    import json

    out = _dev_run(session, "zoo", "list", "--tag", tag, "--json", silent=True)
    return [record["name"] for record in json.loads(str(out))]


@nox.session(venv_backend="none")
def export(session: nox.Session) -> None:
    """Export every built-in architecture to an ONNX bundle and verify it (into .nox/exports)."""
    _dev(session)
    out = DEV_ENV.parent / "exports"
    for name in _architectures(session):
        bundle = str(out / name)
        _dev_run(session, "zoo", "export", name, "--out", bundle, "--force")
        _dev_run(session, "zoo", "verify", bundle)


@nox.session(venv_backend="none")
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
    args = parser.parse_args(_posargs(session))
    _dev(session)
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
        _dev_run(session, *train)
        # the last epoch: the accuracy shipped is then not one chosen on the held-out images
        _dev_run(session, "zoo", "export", run_dir, "--out", f"exports/{name}-cifar2", "--force",
                 "--checkpoint", "last")
    # the specs pin each bundle's manifest digest: declare the new bundles
    _dev_run(session, "python", "-m", "zoo.bundles.weightsync", "--write",
             "plugins/zoo_chapter8/weights.json", "--package", "zoo_chapter8.weights")
    _dev_run(session, "python", "-m", "zoo.bundles.modeltable", "--write", "README.md")
    _dev_run(session, "zoo", "compare", *_architectures(session), "--out", "docs/compare.png")


@nox.session(venv_backend="none")
def sanitize(session: nox.Session) -> None:
    """The chapter-8 kernel tests with the kernels built under AddressSanitizer and UBSan.

    nox -s sanitize [-- PYTEST_ARGS]

    The kernels are compiled with ``-fsanitize=address,undefined`` (any finding
    aborts the run) into a cache of the session's own; libasan is preloaded into
    the Python host. Skipped, saying why, where the compiler ($CC, else cc) has no
    sanitizer runtime.
    """
    import os
    import shlex
    import subprocess

    cc = shlex.split(os.environ.get("CC", "cc"))
    flags = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all",
             "-fno-omit-frame-pointer", "-g"]
    try:
        found = subprocess.run([*cc, "-print-file-name=libasan.so"], capture_output=True,
                               text=True, check=False).stdout.strip()
    except OSError as exc:
        session.skip(f"no C compiler to build the kernels with ({exc})")
    if not os.path.isabs(found) or not os.path.exists(found):
        session.skip(f"{shlex.join(cc)} has no AddressSanitizer runtime (libasan.so not found)")
    # PyTorch throws C++ exceptions: ASan's __cxa_throw interceptor needs libstdc++ loaded
    # at startup, which the Python executable itself does not link
    preload = [found]
    cxx = subprocess.run([*cc, "-print-file-name=libstdc++.so.6"], capture_output=True,
                         text=True, check=False).stdout.strip()
    if os.path.isabs(cxx) and os.path.exists(cxx):
        preload.append(cxx)
    probe = session.create_tmp() + "/probe"
    with open(probe + ".c", "w") as f:
        f.write("int zoo_probe(int x) { return x + 1; }\n")
    built = subprocess.run([*cc, *flags, "-shared", "-fPIC", "-o", probe + ".so", probe + ".c"],
                           capture_output=True, text=True, check=False)
    if built.returncode != 0:
        session.skip(f"{shlex.join(cc)} cannot build with {' '.join(flags[:1])}: "
                     f"{built.stderr.strip().splitlines()[-1:]}")
    _dev(session)
    env = {"CC": shlex.join([*cc, *flags]), "LD_PRELOAD": " ".join(preload),
           "ZOO_CACHE_DIR": session.create_tmp() + "/sanitize-cache",
           "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1:detect_odr_violation=0",
           "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}
    # the kernels in use are the sanitized build (a fallback to plain PyTorch would test nothing)
    _dev_run(session, "python", "-c", "import sys; from pathlib import Path; "
                "from zoo_chapter8 import kernels; print(kernels.status()); "
                "sys.exit(kernels.library() is None or "
                "b'__asan_report' not in Path(kernels.status().split(': ', 1)[1]).read_bytes())",
                env=env)
    # --capture=sys: a sanitizer writes its report to fd 2 just before it aborts the process
    _dev_run(session, "python", "-m", "pytest", "-q", "--capture=sys", "-p", "no:cacheprovider",
                "tests/test_fused.py", "tests/test_fused_dispatch.py", "tests/test_kernel_cache.py",
                "tests/test_fused_backward.py", "tests/test_fused_bn.py",
                "tests/test_fused_head.py", "tests/test_fused_step.py", *_posargs(session),
                env=env)


@nox.session(venv_backend="none")
def mutation(session: nox.Session) -> None:
    """Mutation testing (mutmut) of modules: ``nox -s mutation -- zoo/spec/numbers.py ...``.

    ``--all``: every module under zoo/ and plugins/. ``--shard=K/N``: the K-th of N
    shares of the modules (balanced by estimated cost, consecutive by path), in a work
    folder of its own, so that N sessions can run at once. ``--budget=SECONDS``: the
    tests each mutant runs, fastest first (default 30; 0: all). ``--map-only``: make the
    coverage map and stop. ``--fresh``: forget the results of earlier runs.

    Once per change of the sources or tests, the whole suite runs under coverage to map
    each line to the tests that execute it (``tests/mutation/coverage_map.py``), in
    ``.nox/mutation/tmp/map``, shared by every run (one makes it, the others wait).
    Mutants are made in a copy of the sources (``.nox/mutation/tmp/run/src``, or
    ``shard-K-of-N/src``), never in the working tree; each runs the tests the map
    chooses for its line (``tests/mutation/mutmut_config.py``) in a fork server that has
    torch imported already (``tests/mutation/forkserver.py``). mutmut's cache is kept in
    the copy, so a run that was stopped goes on where it was. After each module the
    work folder's ``results.json`` has every module's counts and the diffs of the
    mutants not killed; ``python tests/mutation/report.py`` merges them into the table.
    """
    import importlib.util

    # the machinery: tests/mutation/session.py, given what it needs of the shared environment
    path = Path(__file__).resolve().parent / "tests" / "mutation" / "session.py"
    spec = importlib.util.spec_from_file_location("zoo_mutation_session", path)
    assert spec is not None and spec.loader is not None
    machinery = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(machinery)
    machinery.mutation(session, _posargs(session), bin_dir=_BIN, setup=_dev, dev_run=_dev_run)
