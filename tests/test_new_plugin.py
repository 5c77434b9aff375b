"""``zoo new-plugin``: the distribution it writes installs, is found, and passes its own tests."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from zoo.cli import main
from zoo.host.registry import reset_default_registry


def test_new_plugin_refuses_bad_names_and_existing_folders(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["new-plugin", "datasets", "--dir", str(tmp_path / "a")]) == 1
    assert "taken by the zoo's built-in plugin" in capsys.readouterr().err
    assert main(["new-plugin", "My-Nets", "--dir", str(tmp_path / "a")]) == 1
    assert "plugin name 'My-Nets' is not valid" in capsys.readouterr().err
    (tmp_path / "a").mkdir()
    assert main(["new-plugin", "my_nets", "--dir", str(tmp_path / "a")]) == 1
    assert "already exists" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # nothing half-written


@pytest.mark.slow
def test_generated_plugin_installs_and_passes_its_tests(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "zoo-tiny-vgg"
    assert main(["new-plugin", "tiny_vgg", "--dir", str(dest)]) == 0
    assert capsys.readouterr().out.startswith(
        f"wrote zoo-tiny-vgg (plugin 'tiny_vgg', architecture 'TinyVggNet') to {dest}\n")
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()) == [
        "README.md", "pyproject.toml", "tests/test_tiny_vgg.py", "zoo_tiny_vgg/__init__.py",
        "zoo_tiny_vgg/model.py"]
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--no-index", "--target", str(site), str(dest)],
                   check=True, capture_output=True, text=True, timeout=300)
    # the installed copy, found through its metadata, in this process (torch is imported)
    monkeypatch.syspath_prepend(str(site))
    reset_default_registry()
    try:
        assert main(["show", "TinyVggNet"]) == 0
        out = capsys.readouterr().out
        assert "provided by:  zoo-tiny-vgg 0.1.0 (plugin 'tiny_vgg')" in out
        assert "width" in out and "in_width" in out
        tests = dest / "tests" / "test_tiny_vgg.py"
        namespace: dict[str, Any] = {}
        exec(compile(tests.read_text(), str(tests), "exec"), namespace)
        namespace["test_tiny_vgg_is_installed"]()
        namespace["test_tiny_vgg_conforms"](tmp_path / "kit")
        assert sys.modules["zoo_tiny_vgg"].__file__.startswith(str(site))
    finally:
        for module in [m for m in sys.modules if m.startswith("zoo_tiny_vgg")]:
            del sys.modules[module]


@pytest.mark.parametrize(("plugin", "ok"), [("a" * 40, True), ("a" * 41, False),
                                            ("a_" * 19 + "bc", True), ("a_" * 20 + "b", False),
                                            ("tiny_", False),
                                            ("tiny\n", False), (None, False), (7, False)])
def test_plugin_names_at_their_edges(plugin: Any, ok: bool) -> None:
    from zoo.cli.scaffold import PluginNameError, names

    if ok:
        assert names(plugin)["package"] == f"zoo_{plugin}"
        return
    with pytest.raises(PluginNameError, match=rf"^plugin name {re.escape(repr(plugin))} is not "
                       "valid; use up to 40 lower-case letters"):
        names(plugin)


def test_new_plugin_creates_the_folders_above_its_destination(tmp_path: Path) -> None:
    from zoo.cli.scaffold import new_plugin

    dest = new_plugin("tiny", tmp_path / "deep" / "er" / "tiny")
    assert (dest / "pyproject.toml").is_file()
    assert sorted(p.name for p in (tmp_path / "deep" / "er").iterdir()) == ["tiny"]
