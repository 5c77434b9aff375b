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
    _dev_run(session, "pytest", *_posargs(session))


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
                "from zoo_chapter8 import fused; print(fused.status()); "
                "sys.exit(fused.library() is None or "
                "b'__asan_report' not in Path(fused.status().split(': ', 1)[1]).read_bytes())",
                env=env)
    # --capture=sys: a sanitizer writes its report to fd 2 just before it aborts the process
    _dev_run(session, "python", "-m", "pytest", "-q", "--capture=sys", "-p", "no:cacheprovider",
                "tests/test_fused.py", "tests/test_fused_dispatch.py", "tests/test_kernel_cache.py",
                "tests/test_fused_backward.py",
                *_posargs(session), env=env)


#: mutmut 2.5.1: mutates a copy of the sources in place, one module at a time (3.x needs a
#: mutants/ tree the editable install does not see). pytest-cov records which test runs
#: which line, so each mutant runs the tests of its own line first.
MUTMUT = ("mutmut==2.5.1", "pytest-cov>=5")
#: Not mutated: message and description strings (the tests match the parts that matter; every
#: literal would double the mutants) and decorators.
MUTMUT_SKIP = "string,fstring,decorator"
#: Per module, the tests that run a mutant of a line the coverage map does not know.
MUTATION_TESTS: dict[str, tuple[str, ...]] = {
    "zoo/spec/architecture.py": ("tests/test_spec.py", "tests/test_registry.py"),
    "zoo/spec/provenance.py": ("tests/test_spec.py", "tests/test_registry.py"),
    "zoo/host/registry.py": ("tests/test_registry.py", "tests/test_cli_catalog.py",
                             "tests/test_readme_plugin.py", "tests/test_plugin_isolation.py",
                             "tests/test_contract.py", "tests/test_export_formats.py"),
    "zoo/host/plugins.py": ("tests/test_registry.py", "tests/test_hook_calls.py",
                            "tests/test_plugin_isolation.py", "tests/test_train_hooks.py"),
    "zoo/host/calls.py": ("tests/test_first_hour.py", "tests/test_plugin_isolation.py",
                          "tests/test_hook_calls.py"),
    "zoo/spec/numbers.py": ("tests/test_bad_input.py", "tests/test_spec.py"),
    "zoo/trainer/rundir.py": ("tests/test_run_start.py", "tests/test_run_integrity.py"),
    "zoo/util/imaging.py": ("tests/test_imaging.py", "tests/test_data_integrity.py"),
    "zoo/deploy/predictor.py": ("tests/test_deploy.py", "tests/test_crosscheck.py",
                                "tests/test_pretrained.py", "tests/test_bundle_pinning.py"),
    "zoo/deploy/runtime.py": ("tests/test_deploy.py", "tests/test_bundle_pinning.py"),
    "zoo/exporter/write.py": ("tests/test_export.py", "tests/test_behaviour.py",
                              "tests/test_export_formats.py", "tests/test_export_location.py"),
    "zoo/exporter/onnx.py": ("tests/test_export.py", "tests/test_export_formats.py"),
    "zoo/exporter/formats.py": ("tests/test_export_formats.py", "tests/test_export.py"),
    "zoo/exporter/verify.py": ("tests/test_bundle.py", "tests/test_export_formats.py"),
    "zoo/models/load.py": ("tests/test_bundle.py",),
    "zoo/models/statedict.py": ("tests/test_bundle.py",),
    "zoo/spec/manifest.py": ("tests/test_bundle.py", "tests/test_export.py"),
    "zoo/bundles/integrity.py": ("tests/test_bundle.py", "tests/test_bundle_pinning.py"),
    "zoo/trainer/pipeline.py": ("tests/test_pipeline.py", "tests/test_crosscheck.py",
                                "tests/test_recipe.py", "tests/test_trainer.py"),
    "zoo/trainer/checkpoint.py": ("tests/test_behaviour.py", "tests/test_trainer.py",
                                  "tests/test_run_integrity.py"),
    "zoo/trainer/progress.py": ("tests/test_behaviour.py", "tests/test_run_start.py"),
    "zoo/spec/training.py": ("tests/test_trainer.py", "tests/test_recipe.py"),
    "zoo/trainer/loop.py": ("tests/test_recipe.py", "tests/test_behaviour.py",
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


@nox.session(venv_backend="none")
def mutation(session: nox.Session) -> None:
    """Mutation testing (mutmut) of one module or more: ``nox -s mutation -- zoo/spec/run.py``.

    ``--budget=SECONDS``: the tests each mutant runs, fastest first (default 30; 0: all).

    Without arguments, every module of ``MUTATION_TESTS``. Mutants are made in a copy
    of the sources (``.nox/mutation/tmp/src``, first on PYTHONPATH), never in the
    working tree. Once per change of the sources or tests, the whole suite runs under
    coverage to map each line to the tests that execute it, with their durations
    (``tests/mutation/coverage_map.py``). Each mutant then runs every test that executes
    its line, fastest first, in a fork server that has torch imported already
    (``tests/mutation/forkserver.py``); a line the map does not know (one run at import)
    runs its module's selection (``MUTATION_TESTS``, or the suite). Survivors:
    ``cd .nox/mutation/tmp/src && mutmut show ID``, after the run.
    """
    import importlib.util
    import subprocess
    import time

    _dev(session)
    _dev_run(session, "python", "-m", "pip", "install", "--quiet", *MUTMUT)
    budgets = [a.partition("=")[2] for a in _posargs(session) if a.startswith("--budget=")]
    modules = [a for a in _posargs(session) if not a.startswith("--budget=")] \
        or list(MUTATION_TESTS)
    for module in modules:
        if not Path(module).is_file():
            session.error(f"no module {module!r}; name a file such as zoo/spec.py")
    work = Path(session.create_tmp()).resolve()
    src = work / "src"
    shutil.rmtree(src, ignore_errors=True)
    for part in ("zoo", "plugins", "tests", "bench", "exports", "docs"):
        shutil.copytree(part, src / part, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE", "mkdocs.yml"):  # the tests read them
        shutil.copy(name, src / name)
    for hook in ("mutmut_config.py", "sitecustomize.py"):
        shutil.copy(f"tests/mutation/{hook}", src / hook)
    env = {"PYTHONPATH": f"{src}{os.pathsep}{src / 'plugins'}",
           "ZOO_CACHE_DIR": str(work / "zoo-cache"), "PYTHONDONTWRITEBYTECODE": "1",
           "MPLBACKEND": "Agg"}

    digest = hashlib.sha256()
    for file in sorted(f for part in ("zoo", "plugins", "tests") for f in Path(part).rglob("*.py")):
        digest.update(file.as_posix().encode() + file.read_bytes())
    coverage_map, stamp = work / "coverage.json", work / "coverage.sha256"
    if not coverage_map.is_file() or not stamp.is_file() or stamp.read_text() != digest.hexdigest():
        session.log("mapping lines to tests: the suite under coverage (once per change)")
        with session.chdir(src):
            # not the tests that read the git checkout (the copy is none) or build a wheel
            _dev_run(session, "python", "-m", "pytest", "-q", "-p", "no:cacheprovider",
                     "--ignore=tests/test_wheel.py", "--ignore=tests/test_portable.py",
                     "--deselect=tests/test_inspection.py::"
                     "test_readme_pictures_are_committed_and_small",
                     "--cov=zoo", "--cov=zoo_chapter8",
                     "--cov=zoo_datasets", "--cov-context=test", "--cov-report=",
                     f"--junitxml={work / 'durations.xml'}",
                     env={**env, "COVERAGE_FILE": str(work / "coverage.db")})
            _dev_run(session, "python", "tests/mutation/coverage_map.py",
                     str(work / "coverage.db"), str(src), str(coverage_map),
                     str(work / "durations.xml"), env=env)
        stamp.write_text(digest.hexdigest())

    socket_path = str(work / "forkserver.sock")
    server = src / "tests" / "mutation" / "forkserver.py"
    (work / "args").mkdir(exist_ok=True)
    env.update(ZOO_MUTATION_PYTHON=str(_BIN / "python"), ZOO_MUTATION_SERVER=str(server),
               ZOO_MUTATION_SOCKET=socket_path, ZOO_MUTATION_MAP=str(coverage_map),
               ZOO_MUTATION_TMP=str(work / "args"))
    if budgets:  # seconds of tests per mutant, fastest first (0: every test of its line)
        env["ZOO_MUTATION_BUDGET"] = budgets[-1]
    spec = importlib.util.spec_from_file_location("mutmut_config", src / "mutmut_config.py")
    assert spec is not None and spec.loader is not None
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    if os.path.exists(socket_path):
        os.unlink(socket_path)
    process = subprocess.Popen([str(_BIN / "python"), str(server), "serve", socket_path],
                               env={**os.environ, **{k: v for k, v in session.env.items()
                                                     if v is not None}, **env}, cwd=src)
    try:
        deadline = time.monotonic() + 180
        while not os.path.exists(socket_path):
            if process.poll() is not None or time.monotonic() > deadline:
                session.error("the fork server did not start (its output is above)")
            time.sleep(0.2)
        for module in modules:
            tests = MUTATION_TESTS.get(module, ("tests",))
            session.log(f"mutating {module}; tests: {' '.join(tests)}")
            runner = hooks.command(list(tests), env)
            with session.chdir(src):
                # exit status: a bit mask of survived (2), timed out (4), suspicious (8)
                _dev_run(session, "mutmut", "run", "--paths-to-mutate", module,
                         "--tests-dir", "tests", "--no-progress",
                         "--simple-output", "--disable-mutation-types", MUTMUT_SKIP,
                         "--runner", runner, env=env,
                         success_codes=[0, 2, 4, 6, 8, 10, 12, 14])
        with session.chdir(src):
            _dev_run(session, "mutmut", "results", env=env,
                     success_codes=[0, 2, 4, 6, 8, 10, 12, 14])
    finally:
        process.terminate()
        process.wait()
