"""``zoo new-plugin``: write a ready plugin distribution that passes the conformance kit.

The distribution holds a ``pyproject.toml`` with the ``zoo.plugins`` entry point,
a spec module (cheap: no torch import), a builder module, a test that runs
:func:`zoo.testing.check_architecture`, and a README. It is written into a
temporary folder beside its destination and renamed into place when complete.
"""

from __future__ import annotations

import re
from pathlib import Path

from zoo.errors import ZooError
from zoo.util.fsutil import atomic_directory
from zoo.util.version import __version__

#: A plugin name: lower-case letters, digits and single underscores between them, starting
#: with a letter (it becomes a package, an entry point and, with "-", a distribution name,
#: which may not end in "-").
PLUGIN_NAME = re.compile(r"[a-z](?:_?[a-z0-9]){0,39}")
#: Entry-point names of the zoo's own plugins, which no other distribution may take.
RESERVED = ("chapter8", "datasets")


class PluginNameError(ZooError, ValueError):
    """A ``zoo new-plugin`` name that cannot name a plugin."""


def names(plugin: str) -> dict[str, str]:
    """The names a plugin called ``plugin`` gets: distribution, package and architecture."""
    if not isinstance(plugin, str) or len(plugin) > 40 or not PLUGIN_NAME.fullmatch(plugin):
        raise PluginNameError(f"plugin name {plugin!r} is not valid; use up to 40 lower-case "
                              "letters and digits, starting with a letter, with single "
                              "underscores between them (e.g. tiny_vgg)")
    if plugin in RESERVED:
        raise PluginNameError(f"plugin name {plugin!r} is taken by the zoo's built-in plugin; "
                              f"choose another (reserved: {', '.join(RESERVED)})")
    package = plugin if plugin.startswith("zoo_") else f"zoo_{plugin}"
    return {
        "plugin": plugin,
        "package": package,
        "distribution": package.replace("_", "-"),
        "architecture": "".join(p.capitalize() for p in plugin.split("_") if p) + "Net",
        "zoo_version": __version__,
    }


PYPROJECT = '''[build-system]
requires = ["setuptools>=69"]
build-backend = "setuptools.build_meta"

[project]
name = "{distribution}"
version = "0.1.0"
description = "{architecture}: a plugin for the zoo."
requires-python = ">=3.10"
dependencies = ["zoo>={zoo_version}"]

[project.entry-points."zoo.plugins"]
{plugin} = "{package}"

[tool.setuptools]
packages = ["{package}"]

[tool.pytest.ini_options]
testpaths = ["tests"]
'''

SPEC = '''"""{architecture} for the zoo: the spec only (no torch import, `zoo list` stays fast)."""

from __future__ import annotations

from pydantic import Field

import zoo


class {architecture}HParams(zoo.HParams):
    width: int = Field(16, ge=1, le=1024, description="Channels of the first convolution.")
    n_hidden: int = Field(32, ge=1, le=4096, description="Width of the hidden linear layer.")


@zoo.hookimpl
def zoo_architectures() -> list[zoo.ArchitectureSpec]:
    return [
        zoo.ArchitectureSpec(
            name="{architecture}",
            summary="Two ReLU convolutions, global average pooling and two linear layers.",
            tags=("{plugin}",),
            builder="{package}.model:build",  # imported only when a model is built
            hparams={architecture}HParams,
            input_shape=zoo.InputShape(channels=3, height=32, width=32),
            num_classes=2,
            min_input_size=2,
            source="zoo new-plugin {plugin}",
        )
    ]
'''

MODEL = '''"""The torch module of {architecture} (imported only when a model is built)."""

from __future__ import annotations

from torch import nn

import zoo
from {package} import {architecture}HParams


def build(hparams: {architecture}HParams, *, input_shape: zoo.InputShape,
          num_classes: int) -> nn.Module:
    """Map (N, C, H, W) images to (N, num_classes) logits, for any C, H and W >= 2."""
    w = hparams.width
    return nn.Sequential(
        nn.Conv2d(input_shape.channels, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(2 * w, hparams.n_hidden), nn.ReLU(),
        nn.Linear(hparams.n_hidden, num_classes),
    )
'''

TEST = '''"""{architecture} keeps the zoo's contract (the zoo's conformance kit)."""

from pathlib import Path

import zoo
from zoo.testing import check_architecture


def test_{plugin}_is_installed() -> None:
    spec = zoo.get_spec("{architecture}")
    assert spec.provenance is not None and spec.provenance.distribution == "{distribution}"


def test_{plugin}_conforms(tmp_path: Path) -> None:
    check_architecture("{architecture}", hparams={{"width": 4, "n_hidden": 8}}, tmp_dir=tmp_path)
'''

README = '''# {distribution}

`{architecture}` for the zoo, a plugin written by
`zoo new-plugin {plugin}`.

```bash
pip install -e .           # the zoo finds it through the `zoo.plugins` entry point
zoo show {architecture}
zoo train {architecture} --set width=32
python -m pytest           # the zoo's conformance kit: build, contract, train, export
```

`{package}/__init__.py` declares the architecture (keep it free of torch imports);
`{package}/model.py` builds it. The builder must return a `torch.nn.Module` mapping
`(N, C, H, W)` images to `(N, num_classes)` logits, and must live in this package.
'''

FILES = {
    "pyproject.toml": PYPROJECT,
    "README.md": README,
    "{package}/__init__.py": SPEC,
    "{package}/model.py": MODEL,
    "tests/test_{plugin}.py": TEST,
}


def new_plugin(plugin: str, directory: str | Path | None = None) -> Path:
    """Write the plugin distribution ``plugin`` into ``directory`` (default ``./<distribution>``).

    Refuses an existing destination; returns the directory written.
    """
    values = names(plugin)
    dest = Path(directory) if directory is not None else Path(values["distribution"])
    if dest.exists():
        raise ZooError(f"{dest} already exists; choose another --dir")
    try:
        with atomic_directory(dest) as tmp:
            for rel, template in FILES.items():
                path = tmp / rel.format(**values)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(template.format(**values), encoding="utf-8")
    except FileExistsError:
        raise ZooError(f"{dest} appeared while writing; choose another --dir") from None
    except OSError as exc:
        raise ZooError(f"cannot write {dest}: {exc}") from None
    return dest


__all__ = ["PluginNameError", "names", "new_plugin"]
