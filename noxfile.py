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


@nox.session(python=PYTHON)
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
    session.install("-e", ".[dev]")
    env = {"CC": shlex.join([*cc, *flags]), "LD_PRELOAD": " ".join(preload),
           "ZOO_CACHE_DIR": session.create_tmp() + "/sanitize-cache",
           "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1:detect_odr_violation=0",
           "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}
    # the kernels in use are the sanitized build (a fallback to plain PyTorch would test nothing)
    session.run("python", "-c", "import sys; from pathlib import Path; "
                "from zoo_chapter8 import fused; print(fused.status()); "
                "sys.exit(fused.library() is None or "
                "b'__asan_report' not in Path(fused.status().split(': ', 1)[1]).read_bytes())",
                env=env)
    # --capture=sys: a sanitizer writes its report to fd 2 just before it aborts the process
    session.run("python", "-m", "pytest", "-q", "--capture=sys", "-p", "no:cacheprovider",
                "tests/test_fused.py", "tests/test_fused_dispatch.py", "tests/test_kernel_cache.py",
                *session.posargs, env=env)
