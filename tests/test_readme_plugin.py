"""The documentation's example plugins really work: built, pip-installed, listed, used.

The files are taken from the pages themselves (``<!-- file: PATH -->`` before a
fence, in README.md and docs/: the LeNet-5 architecture, the stripes dataset and
the npz export format, plus the conformance tests), installed with pip into a
folder (real distribution metadata and entry points, no direct ``register``
call), and used with that folder on the path: by fresh interpreters, and by the
console blocks the pages mark for this module, run in this process.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_readme_console import (
    BLOCKS,
    Block,
    doc_files,
    example_files,
    in_process,
    isolate,
    matches,
    shell,
)

from zoo.host.registry import reset_default_registry

#: The example distributions installed here (zoo-epochlog: tests/test_readme_trainer_plugin.py).
DISTRIBUTIONS = ("zoo-lenet", "zoo-stripes", "zoo-npz")
#: Their top-level packages, forgotten after each test that imports them in this process.
PACKAGES = ("zoo_lenet", "zoo_stripes", "zoo_npz")
#: The console blocks run here: those whose skip marker names this module.
PLUGIN_BLOCKS = [b for b in BLOCKS if b.skip and "test_readme_plugin.py" in b.skip]


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("examples")
    files = example_files()
    assert {"zoo-lenet/pyproject.toml", "zoo-lenet/zoo_lenet/__init__.py",
            "zoo-lenet/zoo_lenet/model.py", "zoo-stripes/pyproject.toml",
            "zoo-stripes/zoo_stripes/__init__.py", "zoo-stripes/zoo_stripes/data.py",
            "zoo-npz/pyproject.toml", "zoo-npz/zoo_npz/__init__.py",
            "zoo-npz/zoo_npz/archive.py", "plugin-tests/test_conformance.py"} <= set(files)
    for rel, body in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(body)
    site = root / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(site), *(str(root / d) for d in DISTRIBUTIONS)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    for dist in DISTRIBUTIONS:
        assert list(site.glob(f"{dist.replace('-', '_')}-1.0.0.dist-info/entry_points.txt"))
    return site


@pytest.fixture
def on_path(installed_example: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The installed examples on this process's path, for the default registry."""
    monkeypatch.syspath_prepend(str(installed_example))
    reset_default_registry()
    try:
        yield installed_example
    finally:
        reset_default_registry()
        for module in [m for m in sys.modules if m.startswith(PACKAGES)]:
            del sys.modules[module]


def page_console(command: str) -> str:
    """The output a page shows for ``$ command`` (up to the next ``$`` line)."""
    for page in doc_files():
        text = page.read_text(encoding="utf-8")
        if f"$ {command}\n" not in text:
            continue
        start = text.index(f"$ {command}\n") + len(command) + 3
        lines = []
        for line in text[start:].splitlines():
            if line.startswith(("$ ", "```")):
                break
            lines.append(line)
        return "\n".join(lines) + "\n"
    raise AssertionError(f"no page shows '$ {command}'")


def run(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_installed_plugin_appears_in_zoo_list(installed_example: Path) -> None:
    proc = run(installed_example, "-m", "zoo", "list", "LeNet*", "--json")
    assert proc.returncode == 0, proc.stderr
    [record] = json.loads(proc.stdout)
    assert record["name"] == "LeNet5"
    assert (record["distribution"], record["version"], record["plugin"]) == (
        "zoo-lenet", "1.0.0", "lenet")
    assert record["input_shape"] == [1, 32, 32]


def test_installed_plugin_builds_through_create_model(installed_example: Path) -> None:
    code = (
        "import torch, zoo\n"
        "m = zoo.create_model('LeNet5', activation='relu', num_classes=7).eval()\n"
        "print(tuple(m(torch.randn(2, 1, 32, 32)).shape))\n"
        "try:\n"
        "    zoo.create_model('LeNet5', activation='sigmoid')\n"
        "except zoo.ZooError as e:\n"
        "    print('ERROR', e)\n"
    )
    proc = run(installed_example, "-c", code)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "(2, 7)"
    assert lines[1].startswith("ERROR invalid value 'sigmoid' for LeNet5 hyperparameter "
                               "'activation'")


def test_dataset_plugin_output_is_what_the_docs_show(installed_example: Path) -> None:
    for command in ("zoo datasets", "zoo datasets show stripes"):
        proc = run(installed_example, "-m", "zoo", *command.split()[1:])
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == page_console(command)


def test_dataset_plugin_keeps_the_loader_contract(installed_example: Path) -> None:
    code = (
        "import zoo\n"
        "registry = zoo.default_registry()\n"
        "req = zoo.DatasetRequest(image_size=(12, 20), channels=3, val_split=0.25, seed=4)\n"
        "d = registry.load_dataset('stripes', req, size=40)\n"
        "print(d.train.images.shape, d.val.images.shape, d.classes, d.train.labels.dtype)\n"
        "again = registry.load_dataset('stripes', req, size=40)\n"
        "print(again.content_key == d.content_key, (d.train.images[0] ==\n"
        "      again.train.images[0]).all())\n"
        "registry.load_dataset('stripes', zoo.DatasetRequest(data_dir='x'), size=8)\n"
    )
    proc = run(installed_example, "-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "(30, 3, 12, 20) (10, 3, 12, 20) ('horizontal', 'vertical') int64", "True True"]
    assert proc.stderr == "zoo: warning: dataset 'stripes' does not use --data-dir; ignored\n"


def test_the_docs_conformance_tests_pass_on_both_plugins(on_path: Path, tmp_path: Path) -> None:
    # in this process (torch is imported already), the installed site on the path
    tests = on_path.parent / "plugin-tests" / "test_conformance.py"
    namespace: dict[str, Any] = {}
    exec(compile(tests.read_text(), str(tests), "exec"), namespace)
    namespace["test_lenet_conforms"](tmp_path / "lenet")
    namespace["test_stripes_conforms"](tmp_path / "stripes")


def test_the_plugin_blocks_are_found() -> None:
    assert len(PLUGIN_BLOCKS) >= 3  # the architecture, the dataset and the export format
    assert all(command.split()[0] in ("pip", "zoo", "python")
               for block in PLUGIN_BLOCKS for command, _ in block.commands)


@pytest.mark.parametrize("block", PLUGIN_BLOCKS, ids=[b.where for b in PLUGIN_BLOCKS])
def test_console_blocks_of_the_example_plugins(block: Block, on_path: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The console blocks tests/test_readme_console.py leaves to this module, as shown:
    ``zoo`` in this process, with the examples installed; ``python`` with them on its path
    (``pip install`` has no output shown, and was done by the fixture)."""
    isolate(tmp_path, monkeypatch)
    path = os.pathsep.join([str(on_path), os.environ.get("PYTHONPATH", "")])
    for command, shown in block.commands:
        if not shown:
            continue
        words = shlex.split(command)
        output = (in_process(words[1:]) if words[0] == "zoo"
                  else shell(command, tmp_path, {"PYTHONPATH": path}))
        assert matches(shown, output), (
            f"{block.where}: '$ {command}' printed\n{output}\ninstead of\n" + "\n".join(shown))
