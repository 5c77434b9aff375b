"""``zoo new-plugin``: the distribution it writes installs, is found, and passes its own tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from zoo.cli import main


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
def test_generated_plugin_installs_and_passes_its_tests(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
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
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site),
                                                        os.environ.get("PYTHONPATH", "")]),
           "ZOO_CACHE_DIR": str(tmp_path / "cache")}
    show = subprocess.run([sys.executable, "-m", "zoo", "show", "TinyVggNet"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert show.returncode == 0, show.stderr
    assert "provided by:  zoo-tiny-vgg 0.1.0 (plugin 'tiny_vgg')" in show.stdout
    assert "width" in show.stdout and "in_width" in show.stdout
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            str(dest / "tests")], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=300)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "2 passed" in tests.stdout
