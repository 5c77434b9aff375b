"""``zoo export`` writes where ``zoo predict NAME`` and ``zoo.load(NAME)`` look."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import zoo
from zoo.bundles.store import exports_dir, resolve_bundle, search_dirs, user_exports_dir
from zoo.cli import main
from zoo.errors import BundleError
from zoo.exporter.write import default_destination


def test_user_exports_dir_follows_xdg_and_zoo_exports(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ZOO_EXPORTS", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert user_exports_dir() == tmp_path / "data" / "zoo" / "exports"
    assert default_destination("Net-x") == tmp_path / "data" / "zoo" / "exports" / "Net-x"
    assert search_dirs() == [user_exports_dir(), exports_dir()]
    monkeypatch.setenv("ZOO_EXPORTS", str(tmp_path / "mine"))
    assert default_destination("Net-x") == tmp_path / "mine" / "Net-x"
    assert search_dirs() == [tmp_path / "mine"]
    assert search_dirs(tmp_path / "other") == [tmp_path / "other"]


def test_export_then_predict_by_name_from_another_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("ZOO_EXPORTS", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(work)
    assert main(["export", "NetDepth", "--set", "n_chans1=4"]) == 0
    exports = tmp_path / "data" / "zoo" / "exports"
    assert f"to {exports / 'NetDepth'}" in capsys.readouterr().out
    assert not (work / "exports").exists()
    monkeypatch.chdir(elsewhere)
    # a bare architecture name means its declared (shipped) weights first
    assert resolve_bundle("NetDepth") != exports / "NetDepth"
    # a run's export is named <Arch>-<dataset>: found by that name from anywhere
    bundle = exports / "NetDepth-mine"
    (exports / "NetDepth").rename(bundle)
    assert resolve_bundle("NetDepth-mine") == bundle
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    from PIL import Image

    Image.fromarray(image).save(elsewhere / "black.png")
    assert main(["predict", "NetDepth-mine", "black.png"]) == 0
    assert capsys.readouterr().out.startswith("black.png\t")
    from zoo.models.load import load_bundle

    assert load_bundle("NetDepth-mine").path == bundle
    assert zoo.load("NetDepth-mine").training is False  # an nn.Module in eval mode


def test_a_declared_weight_set_comes_before_an_export_of_the_same_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ZOO_EXPORTS", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert main(["export", "Net", "--out", str(user_exports_dir() / "Net-cifar2")]) == 0
    assert resolve_bundle("Net-cifar2") != user_exports_dir() / "Net-cifar2"
    assert resolve_bundle("Net-cifar2").name == "Net-cifar2"


def test_unknown_name_lists_both_folders(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ZOO_EXPORTS", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    with pytest.raises(BundleError, match="no bundle 'Nope'") as exc:
        resolve_bundle("Nope")
    assert "known: " in str(exc.value) and "Net-cifar2" in str(exc.value)
