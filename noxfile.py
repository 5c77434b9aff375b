"""Developer sessions: ``nox -s tests lint typecheck``, plus ``export`` and ``zoo``.

``tests``, ``typecheck``, ``export`` and ``zoo`` share one virtual environment,
``.nox/dev``: torch is installed once (about 5.5 GB), not once per session. It is
created on first use and ``pip install -e .[dev]`` runs again only when
pyproject.toml changes (``--reinstall-dev`` forces it). ``lint`` needs only ruff and
keeps a small environment of its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
from collections.abc import Iterator
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
#: Optional, per module: the test files (or node ids) that mutants of its import-time lines
#: draw on, instead of every test that executes the module's functions (the default, from
#: the coverage map); fastest first within the budget as well.
MUTATION_TESTS: dict[str, tuple[str, ...]] = {
    # declarations the registry reads when a test first loads the plugins: the map knows
    # only that test, not those that check the bounds declared
    "plugins/zoo_chapter8/specs.py": ("tests/test_architectures.py", "tests/test_conformance.py"),
}
#: What ``--all`` mutates: every module under these folders.
MUTATION_ROOTS = ("zoo", "plugins")


def _mutation_args(session: nox.Session) -> dict[str, Any]:
    """The mutation session's arguments, checked: one clear line for a bad one."""
    options: dict[str, Any] = {"modules": [], "all": False, "map_only": False, "fresh": False,
                               "budget": None, "shard": None}
    for arg in _posargs(session):
        name, _, value = arg.partition("=")
        if arg in ("--all", "--map-only", "--fresh"):
            options[arg[2:].replace("-", "_")] = True
        elif name == "--budget":
            try:
                budget = float(value)
            except ValueError:
                budget = -1.0
            if not budget >= 0:
                session.error(f"--budget={value}: give the seconds of tests per mutant, "
                              "such as --budget=30 (0: no limit)")
            options["budget"] = value
        elif name == "--shard":
            k, _, n = value.partition("/")
            if not (k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n)):
                session.error(f"--shard={value}: give K/N with 1 <= K <= N, such as --shard=1/2")
            options["shard"] = (int(k), int(n))
        elif arg.startswith("-"):
            session.error(f"unknown option {arg!r}; the options are --all, --shard=K/N, "
                          "--budget=SECONDS, --map-only, --fresh")
        elif not (arg.endswith(".py") and Path(arg).is_file()):
            session.error(f"no module {arg!r}; name a file such as zoo/spec/numbers.py")
        else:
            options["modules"].append(Path(arg).as_posix())
    if options["all"] and options["modules"]:
        session.error("name modules or give --all, not both")
    if options["all"]:
        options["modules"] = sorted(p.as_posix() for root in MUTATION_ROOTS
                                    for p in Path(root).rglob("*.py")
                                    if "__pycache__" not in p.parts)
    if not options["modules"] and not options["map_only"]:
        session.error("name the modules to mutate (zoo/spec/numbers.py ...), or give --all")
    return options


def _copy_sources(src: Path) -> None:
    """The sources, tests and what the tests read, into ``src``; its mutmut cache is kept."""
    src.mkdir(parents=True, exist_ok=True)
    for part in ("zoo", "plugins", "tests", "bench", "exports", "docs"):
        shutil.rmtree(src / part, ignore_errors=True)
        shutil.copytree(part, src / part, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE", "mkdocs.yml"):  # the tests read them
        shutil.copy(name, src / name)
    for hook in ("mutmut_config.py", "sitecustomize.py"):
        shutil.copy(f"tests/mutation/{hook}", src / hook)


def _mutation_env(src: Path, work: Path) -> dict[str, str]:
    return {"PYTHONPATH": f"{src}{os.pathsep}{src / 'plugins'}",
            "ZOO_CACHE_DIR": str(work / "zoo-cache"), "PYTHONDONTWRITEBYTECODE": "1",
            "MPLBACKEND": "Agg"}


def _coverage_map(session: nox.Session, where: Path) -> Path:
    """The suite under coverage, one context per test: the map of the tests that run each
    line, with their durations; made again only when the sources or tests change."""
    digest = hashlib.sha256()
    for file in sorted(f for part in ("zoo", "plugins", "tests") for f in Path(part).rglob("*.py")
                       if f.parent != Path("tests/mutation") or f.name == "coverage_map.py"):
        digest.update(file.as_posix().encode() + file.read_bytes())
    coverage_map, stamp = where / "coverage.json", where / "coverage.sha256"
    if coverage_map.is_file() and stamp.is_file() and stamp.read_text() == digest.hexdigest():
        return coverage_map
    session.log("mapping lines to tests: the suite under coverage (once per change)")
    src = where / "src"
    shutil.rmtree(src, ignore_errors=True)
    _copy_sources(src)
    # zoo's pytest plugin (the pytest11 entry point) would import the zoo before coverage
    # starts, and so hide the lines run at import: the copy's root conftest loads it after
    (src / "conftest.py").write_text('"""Loaded after coverage started."""\n\n'
                                     'pytest_plugins = ["zoo.testing"]\n')
    env = _mutation_env(src, where)
    with session.chdir(src):
        # not the tests that read the git checkout (the copy is none) or build a wheel; a
        # test that fails here is left out of the map (coverage_map.py)
        _dev_run(session, "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:zoo",
                 "--ignore=tests/test_wheel.py", "--ignore=tests/test_serve_wheel.py",
                 "--ignore=tests/test_portable.py",
                 "--deselect=tests/test_inspection.py::"
                 "test_readme_pictures_are_committed_and_small",
                 "--cov=zoo", "--cov=zoo_chapter8",
                 "--cov=zoo_datasets", "--cov-context=test", "--cov-report=",
                 f"--junitxml={where / 'durations.xml'}",
                 env={**env, "COVERAGE_FILE": str(where / "coverage.db")}, success_codes=[0, 1])
        _dev_run(session, "python", "tests/mutation/coverage_map.py", str(where / "coverage.db"),
                 str(src), str(coverage_map), str(where / "durations.xml"), env=env)
    stamp.write_text(digest.hexdigest())
    return coverage_map


def _shard(weights: dict[str, float], k: int, n: int) -> list[str]:
    """Shard ``k`` of ``n``: consecutive modules (by path) of about a share of the weight
    each, so that a small change moves few modules from one shard to another."""
    total = sum(weights.values()) or 1.0
    mine: list[str] = []
    done = 0.0
    for module in sorted(weights):
        middle = done + weights[module] / 2
        done += weights[module]
        if min(int(middle * n / total), n - 1) == k - 1:
            mine.append(module)
    return mine


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
    import subprocess
    import time

    options = _mutation_args(session)
    tmp = Path(session.create_tmp()).resolve()
    with _mutation_lock(session, tmp / "setup.lock"):  # shards starting at once make it once
        _dev(session)
        _dev_run(session, "python", "-m", "pip", "install", "--quiet", *MUTMUT)
        coverage_map = _coverage_map(session, tmp / "map")
    if options["map_only"]:
        return

    shard = options["shard"]
    work = tmp / (f"shard-{shard[0]}-of-{shard[1]}" if shard else "run")
    src = work / "src"
    if options["fresh"]:
        shutil.rmtree(work, ignore_errors=True)
    _copy_sources(src)
    python = str(_BIN / "python")
    env = _mutation_env(src, work)
    server = src / "tests" / "mutation" / "forkserver.py"
    socket_path = str(work / "forkserver.sock")
    for folder in ("args", "pytest", "logs", "kills"):
        (work / folder).mkdir(exist_ok=True)
    env.update(ZOO_MUTATION_PYTHON=python, ZOO_MUTATION_SERVER=str(server),
               ZOO_MUTATION_SOCKET=socket_path, ZOO_MUTATION_MAP=str(coverage_map),
               ZOO_MUTATION_TMP=str(work / "args"), ZOO_MUTATION_BASETEMP=str(work / "pytest"),
               ZOO_MUTATION_LOG=str(work / "mutants.jsonl"))
    if options["budget"] is not None:  # seconds of tests per mutant (0: every test of its line)
        env["ZOO_MUTATION_BUDGET"] = options["budget"]
    full_env = {**os.environ, **{k: v for k, v in session.env.items() if v is not None}, **env}
    modules: list[str] = options["modules"]
    if shard:
        import json

        estimate = subprocess.run([python, "tests/mutation/mutants.py", "estimate", MUTMUT_SKIP,
                                   *modules], cwd=src, env=full_env, check=True,
                                  capture_output=True, text=True).stdout
        weights = {m: float(cost) for m, (_, cost) in json.loads(estimate).items()}
        modules = _shard(weights, *shard)
        session.log(f"shard {shard[0]}/{shard[1]}: {len(modules)} of {len(weights)} modules, "
                    f"about {sum(weights[m] for m in modules) / 60:.0f} of "
                    f"{sum(weights.values()) / 60:.0f} minutes: {' '.join(modules)}")

    spec = importlib.util.spec_from_file_location("mutmut_config", src / "mutmut_config.py")
    assert spec is not None and spec.loader is not None
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    hooks.load_map(str(coverage_map))
    if os.path.exists(socket_path):
        os.unlink(socket_path)
    process = subprocess.Popen([python, str(server), "serve", socket_path], env=full_env, cwd=src)
    failed: list[str] = []
    try:
        deadline = time.monotonic() + 180
        while not os.path.exists(socket_path):
            if process.poll() is not None or time.monotonic() > deadline:
                session.error("the fork server did not start (its output is above)")
            time.sleep(0.2)
        for number, module in enumerate(modules, 1):
            override = os.pathsep.join(MUTATION_TESTS.get(module, ()))
            name = module.replace("/", ".")
            module_env = {**full_env, "ZOO_MUTATION_OVERRIDE": override,
                          "ZOO_MUTATION_KILLS": str(work / "kills" / f"{name}.txt")}
            runner = hooks.command(hooks.select(module, 0, (src / module).read_text(),
                                                module_env)[1], module_env)
            log = work / "logs" / f"{name}.log"
            started = time.monotonic()
            with open(log, "w") as out:
                # exit status: a bit mask of fatal (1), survived (2), timed out (4), suspicious (8)
                status = subprocess.run(
                    [str(_BIN / "mutmut"), "run", "--paths-to-mutate", module, "--tests-dir",
                     "tests", "--no-progress", "--simple-output", "--disable-mutation-types",
                     MUTMUT_SKIP, "--runner", runner], cwd=src, env=module_env, stdout=out,
                    stderr=subprocess.STDOUT, check=False).returncode
            if status & 1 or status < 0:
                failed.append(module)
                session.warn(f"mutmut failed on {module} ({log}):\n"
                             + "\n".join(log.read_text().splitlines()[-15:]))
            subprocess.run([python, "tests/mutation/mutants.py", "summary",  # results so far
                            str(work / "results.json"), MUTMUT_SKIP, module],
                           cwd=src, env=module_env, check=True)
            session.log(f"[{number}/{len(modules)}] {_mutation_row(work, module)} "
                        f"in {time.monotonic() - started:.0f} s")
    finally:
        process.terminate()
        process.wait()
    session.log(f"results: {work / 'results.json'}; the table and the survivors: "
                f"python tests/mutation/report.py {work / 'results.json'}")
    if failed:
        session.error(f"mutmut failed on {len(failed)} modules: {' '.join(failed)}")


def _mutation_row(work: Path, module: str) -> str:
    import json

    for row in json.loads((work / "results.json").read_text())["modules"]:
        if row["module"] == module:
            score = "-" if row["score"] is None else f"{row['score']}%"
            return (f"{module}: {row['mutants']} mutants, {row['killed']} killed, "
                    f"{row['timeout']} timed out, {row['suspicious']} suspicious, "
                    f"{row['survived']} survived ({row['unreached']} unreached), "
                    f"{row['skipped'] + row['untested']} not run; score {score}")
    return module


@contextlib.contextmanager
def _mutation_lock(session: nox.Session, path: Path) -> Iterator[None]:
    """An exclusive lock on a file (POSIX ``flock``), waiting for it, saying so."""
    import fcntl

    with open(path, "w") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            session.log(f"waiting for another mutation session ({path})")
            fcntl.flock(file, fcntl.LOCK_EX)
        yield
