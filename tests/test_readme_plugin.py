"""The README's plugin example really works: built, pip-installed, listed and built.

The files are taken from the README itself, installed with pip into a folder
(real distribution metadata and entry points, no direct ``register`` call),
and a fresh interpreter with that folder on its path finds the architecture.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from zoo.host.registry import reset_default_registry

README = Path(__file__).resolve().parents[1] / "README.md"
FILE_BLOCK = re.compile(r"<!-- file: (?P<path>\S+) -->\n```\w*\n(?P<body>.*?)```", re.S)


def readme_files() -> dict[str, str]:
    return {m["path"]: m["body"] for m in FILE_BLOCK.finditer(README.read_text())}


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("readme")
    files = readme_files()
    assert {"zoo-lenet/pyproject.toml", "zoo-lenet/zoo_lenet/__init__.py",
            "zoo-lenet/zoo_lenet/model.py", "zoo-stripes/pyproject.toml",
            "zoo-stripes/zoo_stripes/__init__.py", "zoo-stripes/zoo_stripes/data.py"} <= set(files)
    for rel, body in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(body)
    site = root / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(site), str(root / "zoo-lenet"), str(root / "zoo-stripes")],
        check=True, capture_output=True, text=True, timeout=300,
    )
    assert list(site.glob("zoo_lenet-1.0.0.dist-info/entry_points.txt"))
    assert list(site.glob("zoo_stripes-1.0.0.dist-info/entry_points.txt"))
    return site


def readme_console(command: str) -> str:
    """The output the README shows for ``$ command`` (up to the next ``$`` line)."""
    text = README.read_text()
    start = text.index(f"$ {command}\n") + len(command) + 3
    lines = []
    for line in text[start:].splitlines():
        if line.startswith(("$ ", "```")):
            break
        lines.append(line)
    return "\n".join(lines) + "\n"


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


def test_dataset_plugin_output_is_what_the_readme_shows(installed_example: Path) -> None:
    for command in ("zoo datasets", "zoo datasets show stripes"):
        proc = run(installed_example, "-m", "zoo", *command.split()[1:])
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == readme_console(command)


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


def test_the_readme_conformance_tests_pass_on_both_plugins(
        installed_example: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # in this process (torch is imported already): the installed site on the path
    tests = installed_example.parent / "plugin-tests" / "test_conformance.py"
    monkeypatch.syspath_prepend(str(installed_example))
    reset_default_registry()
    namespace: dict[str, Any] = {}
    try:
        exec(compile(tests.read_text(), str(tests), "exec"), namespace)
        namespace["test_lenet_conforms"](tmp_path / "lenet")
        namespace["test_stripes_conforms"](tmp_path / "stripes")
    finally:
        for module in [m for m in sys.modules if m.startswith(("zoo_lenet", "zoo_stripes"))]:
            del sys.modules[module]


def test_readme_console_blocks_of_the_example_plugins(installed_example: Path) -> None:
    """The console blocks tests/test_readme_console.py leaves to this module, as shown."""
    import shlex

    from test_readme_console import BLOCKS, matches

    blocks = [b for b in BLOCKS if b.skip and "test_readme_plugin.py" in b.skip]
    assert len(blocks) == 2
    for block in blocks:
        for command, shown in block.commands:
            if not shown:
                continue
            words = shlex.split(command)
            assert words[0] == "zoo", command
            proc = run(installed_example, "-m", "zoo", *words[1:])
            assert matches(shown, proc.stdout + proc.stderr), (
                f"README.md:{block.line}: '$ {command}' printed\n{proc.stdout}{proc.stderr}")
