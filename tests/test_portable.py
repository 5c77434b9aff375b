"""No paths of the machine that made them in bundles or in any committed file."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from export_helpers import make_run

from zoo.exporter.write import export
from zoo.spec.manifest import MANIFEST_FILE
from zoo.spec.run import SUMMARY_FILE
from zoo.util.portable import is_machine_path, portable_recipe, portable_source

ROOT = Path(__file__).resolve().parents[1]

# Home and work folders of the usual systems, written so this file does not match itself.
GENERIC = re.compile(r"(?<![\w.~/-])/(?:work|home|root|Users)/"
                     r"|\b[A-Za-z]:\\{1,2}(?:Users|home|work)\b")


def machine_paths() -> list[str]:
    """This checkout's own absolute locations, which no committed file may name."""
    places = {str(ROOT), str(ROOT.parent), str(Path.home())}
    return sorted(p for p in places if p.count("/") >= 2 or p.startswith(("/home", "/Users")))


def committed_text_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                             check=True, timeout=60).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    files = [ROOT / name for name in out.decode().split("\0") if name]
    text = []
    for path in files:
        if not path.is_file():
            continue  # deleted in the working tree
        data = path.read_bytes()
        if b"\0" not in data[:8192]:
            text.append(path)
    return text


def test_no_committed_file_holds_a_machine_path() -> None:
    files = committed_text_files()
    assert any(p.name == "manifest.json" for p in files) and any(p.name == "README.md"
                                                                 for p in files)
    own = machine_paths()
    found = []
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            if GENERIC.search(line) or any(place in line for place in own):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert not found, "absolute paths of a machine in committed files:\n" + "\n".join(found)


def test_the_check_catches_what_it_must() -> None:
    s, b = "/", "\\"  # assembled, so that this file holds no such path itself
    for bad in [f'"source": "{s}work{s}shared/data/cifar2/train"', f"see {s}home{s}ann/data",
                f'"C:{b}{b}Users{b}{b}ann{b}{b}data"', f"C:{b}Users{b}ann", f"{s}Users{s}ann/x",
                f"{s}root{s}.cache"]:
        assert GENERIC.search(bad), bad
    for fine in ["~/.cache/zoo", f"https://example.org{s}home{s}x", "runs/zoo/Net", "exports/",
                 f"a{s}work{s}b", "try:\\n"]:
        assert not GENERIC.search(fine), fine


def test_portable_source_and_recipe() -> None:
    assert portable_source("/srv/data/cifar2/train") == "train"
    assert portable_source("/srv/data/cifar2/train/") == "train"
    assert portable_source("C:\\data\\cifar2\\train") == "train"
    assert portable_source("../shared/cifar2") == "cifar2"
    assert portable_source("https://example.org/cifar.tar.gz") == "https://example.org/cifar.tar.gz"
    assert portable_source(None) is None
    assert is_machine_path("~/data") and is_machine_path("../x") and not is_machine_path("x/y")
    recipe = {"data_dir": "data/cifar2/train", "val_dir": None, "cache_dir": "/tmp/c/zoo",
              "out": "/srv/runs/net", "epochs": 12, "model": {"n_hidden": 32},
              "nested": {"path": "/srv/x/y"}, "optimizer": "sgd"}
    assert portable_recipe(recipe) == {
        "data_dir": "train", "val_dir": None, "cache_dir": "zoo", "out": "net", "epochs": 12,
        "model": {"n_hidden": 32}, "nested": {"path": "y"}, "optimizer": "sgd"}


def test_export_records_the_data_source_without_machine_paths(tmp_path: Path) -> None:
    make_run(tmp_path / "run", "Net")
    summary_path = tmp_path / "run" / SUMMARY_FILE
    raw = json.loads(summary_path.read_text())
    data_dir = tmp_path / "datasets" / "cifar2" / "train"
    raw["data"]["source"] = str(data_dir)
    raw["train_config"].update(data_dir=str(data_dir), val_dir=None,
                               cache_dir=str(tmp_path / "cache"), out=str(tmp_path / "run"))
    summary_path.write_text(json.dumps(raw))
    result = export(tmp_path / "run", out=tmp_path / "bundle")
    training = result.manifest.training
    assert training is not None
    assert training.source == "train" and training.content_key == "abc123"
    assert training.dataset == "synthetic" and training.split == "seeded 10% hold-out"
    assert training.val_images == "seeded 10% hold-out"  # the run's words: no val_split known
    assert training.recipe["data_dir"] == "train" and training.recipe["cache_dir"] == "cache"
    assert training.recipe["out"] == "run" and training.recipe["epochs"] == 2
    assert str(tmp_path) not in (tmp_path / "bundle" / MANIFEST_FILE).read_text()
