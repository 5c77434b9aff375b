"""The machinery of ``nox -s mutation`` (its options: the session's docstring in noxfile.py).

Loaded by the noxfile's ``mutation`` session, which passes what this module needs of the
shared environment (its ``bin`` folder, the function that prepares it and the one that
runs its commands), so that nothing here imports the noxfile. Run from the checkout's
root, as nox runs its sessions; not a test module (pytest collects nothing here).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import nox

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
    # declarations whose bounds tests/test_spec.py checks (the map knows only their users)
    "zoo/spec/reference.py": ("tests/test_spec.py", "tests/test_compare.py"),
    "zoo/host/events.py": ("tests/test_spec.py", "tests/test_train_hooks.py"),
    # the built-in datasets' declarations (options, downloads, classes)
    "plugins/zoo_datasets/__init__.py": ("tests/test_datasets.py",),
    # report models whose declarations the read-back tests check without calling them
    "zoo/analysis/evaluation.py": ("tests/test_evaluation_report.py", "tests/test_evaluate.py"),
    "zoo/analysis/compare.py": ("tests/test_compare_chart.py", "tests/test_compare.py"),
    # the built-in formats' options: their defaults and bounds, as zoo export --help shows them
    "zoo/builtin/formats.py": ("tests/test_first_hour.py", "tests/test_export.py"),
}
#: What ``--all`` mutates: every module under these folders.
MUTATION_ROOTS = ("zoo", "plugins")


def _mutation_args(session: nox.Session, args: list[str]) -> dict[str, Any]:
    """The mutation session's arguments, checked: one clear line for a bad one."""
    options: dict[str, Any] = {"modules": [], "all": False, "map_only": False, "fresh": False,
                               "budget": None, "shard": None}
    for arg in args:
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


def _coverage_map(session: nox.Session, where: Path, dev_run: Callable[..., Any]) -> Path:
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
        dev_run(session, "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:zoo",
                "--ignore=tests/test_wheel.py", "--ignore=tests/test_serve_wheel.py",
                "--ignore=tests/test_portable.py",
                "--deselect=tests/test_inspection.py::"
                "test_readme_pictures_are_committed_and_small",
                "--cov=zoo", "--cov=zoo_chapter8",
                "--cov=zoo_datasets", "--cov-context=test", "--cov-report=",
                f"--junitxml={where / 'durations.xml'}",
                env={**env, "COVERAGE_FILE": str(where / "coverage.db")}, success_codes=[0, 1])
        dev_run(session, "python", "tests/mutation/coverage_map.py", str(where / "coverage.db"),
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


def mutation(session: nox.Session, args: list[str], *, bin_dir: Path,
             setup: Callable[[nox.Session], None], dev_run: Callable[..., Any]) -> None:
    """The ``mutation`` session with its arguments ``args``: ``bin_dir`` is the shared
    environment's, ``setup(session)`` creates or updates it and ``dev_run(session, NAME,
    *ARGS, **KWARGS)`` runs its command NAME."""
    options = _mutation_args(session, args)
    tmp = Path(session.create_tmp()).resolve()
    with _mutation_lock(session, tmp / "setup.lock"):  # shards starting at once make it once
        setup(session)
        dev_run(session, "python", "-m", "pip", "install", "--quiet", *MUTMUT)
        coverage_map = _coverage_map(session, tmp / "map", dev_run)
    if options["map_only"]:
        return

    shard = options["shard"]
    work = tmp / (f"shard-{shard[0]}-of-{shard[1]}" if shard else "run")
    src = work / "src"
    if options["fresh"]:
        shutil.rmtree(work, ignore_errors=True)
    _copy_sources(src)
    python = str(bin_dir / "python")
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
                    [str(bin_dir / "mutmut"), "run", "--paths-to-mutate", module, "--tests-dir",
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
