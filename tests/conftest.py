"""Shared fixtures: fake installed distributions with real metadata and entry points."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from zoo.host.registry import reset_default_registry

MakeDist = Callable[..., Path]


@pytest.fixture(autouse=True)
def _fresh_default_registry() -> Iterator[None]:
    reset_default_registry()
    yield
    reset_default_registry()


@pytest.fixture(autouse=True)
def _private_user_data(tmp_path_factory: pytest.TempPathFactory,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's user data folder (where zoo export writes by default) is its own."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("user-data")))


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
