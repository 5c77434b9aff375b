"""Shared fixtures: fake installed distributions with real metadata and entry points."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
import textwrap
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from zoo.host.registry import reset_default_registry

MakeDist = Callable[..., Path]

# the session fails if it leaves a file in the checkout (tests/checkout_guard.py)
pytest_plugins = ["checkout_guard"]


@pytest.fixture(autouse=True)
def _fresh_default_registry() -> Iterator[None]:
    reset_default_registry()
    yield
    reset_default_registry()


#: The loggers ``zoo serve`` configures (zoo.serve.server.configure_logging).
SERVE_LOGGERS = ("zoo.serve", "uvicorn", "uvicorn.error", "uvicorn.access",
                 "python_multipart", "multipart")


@pytest.fixture(autouse=True)
def _logging_put_back() -> Iterator[None]:
    """``zoo serve`` run in-process (``main(["serve", ...])``) points process-wide loggers at
    the test's captured stderr, which is closed once the test ends: put them back, and
    ``warnings.showwarning``, so that no later test's server logs into a closed stream."""
    saved = [(logger, logger.handlers[:], logger.level, logger.propagate, logger.disabled)
             for logger in map(logging.getLogger, SERVE_LOGGERS)]
    showwarning = warnings.showwarning
    yield
    warnings.showwarning = showwarning
    for logger, handlers, level, propagate, disabled in saved:
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate, logger.disabled = propagate, disabled


def pytest_configure(config: pytest.Config) -> None:
    """No test, fixture or module-level code sees the developer's zoo settings: before
    collection every ``ZOO_*`` variable is cleared and the user folders (data: where zoo
    export writes; config; cache) are the session's own. The cache (compiled kernels,
    decoded datasets) is shared by the session's tests, never the user's. Ctrl-C is
    Python's own KeyboardInterrupt and the terminal 80 columns wide, whatever the
    parent process left them as."""
    session = Path(tempfile.mkdtemp(prefix="zoo-tests-"))
    config.stash[_SESSION_DIR] = session
    for name in [n for n in os.environ if n.startswith("ZOO_")]:
        del os.environ[name]
    os.environ["ZOO_CACHE_DIR"] = str(session / "cache")
    # A shell without job control starts background commands with Ctrl-C ignored, and
    # every process inherits that; the tests of Ctrl-C need the ordinary KeyboardInterrupt
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    for variable in ("XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME"):
        os.environ[variable] = str(session / variable.lower())
    # the terminal size a captured run falls back to: help text wraps the same everywhere
    os.environ["COLUMNS"], os.environ["LINES"] = "80", "24"


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(_SESSION_DIR, None)
    if session is not None:
        shutil.rmtree(session, ignore_errors=True)


_SESSION_DIR = pytest.StashKey[Path]()


@pytest.fixture(scope="session")
def _session_cache(pytestconfig: pytest.Config) -> Path:
    return pytestconfig.stash[_SESSION_DIR] / "cache"


@pytest.fixture(autouse=True)
def _hermetic_environment(tmp_path_factory: pytest.TempPathFactory,
                          monkeypatch: pytest.MonkeyPatch, _session_cache: Path) -> None:
    """Each test starts from the session's clean settings (whatever the test before it
    set) and has user folders of its own: what one test exports another cannot find."""
    for name in [n for n in os.environ if n.startswith("ZOO_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("ZOO_CACHE_DIR", str(_session_cache))
    for variable in ("XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME"):
        monkeypatch.setenv(variable, str(tmp_path_factory.mktemp(variable.lower())))


@pytest.fixture
def make_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MakeDist]:
    """Install a one-module distribution on sys.path: ``*.dist-info`` with entry points.

    ``importlib.metadata`` finds it exactly as it finds a pip-installed package.
    """
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    created: list[str] = []

    def make(dist: str, module: str, code: str, *, version: str = "1.0",
             entry_points: dict[str, str] | None = None) -> Path:
        (site / f"{module}.py").write_text(textwrap.dedent(code))
        info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        eps = entry_points if entry_points is not None else {module: module}
        (info / "entry_points.txt").write_text(
            "[zoo.plugins]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()))
        created.append(module)
        return site

    yield make
    for module in created:
        sys.modules.pop(module, None)


TINY_PLUGIN = '''
from pydantic import Field
import zoo


class TinyHParams(zoo.HParams):
    n_filters: int = Field(4, ge=1, le=64, description="Channels of the convolution.")


@zoo.hookimpl
def zoo_architectures():
    return [zoo.ArchitectureSpec(
        name="{name}", summary="A one-convolution test net.", tags=("tiny",),
        builder="{module}:build", hparams=TinyHParams, source="tests",
    )]


def build(hparams, *, input_shape, num_classes):
    from torch import nn
    return nn.Sequential(
        nn.Conv2d(input_shape.channels, hparams.n_filters, 3, padding=1),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(hparams.n_filters, num_classes),
    )
'''


def tiny_plugin(name: str, module: str) -> str:
    return TINY_PLUGIN.replace("{name}", name).replace("{module}", module)
