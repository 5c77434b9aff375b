"""What a bundle name means: one rule for every command and the API, whatever ZOO_EXPORTS says."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import MakeDist, tiny_plugin
from export_helpers import make_run
from PIL import Image

import zoo
from zoo.bundles.hub import WeightsError
from zoo.bundles.integrity import bundle_sha256, read_manifest
from zoo.bundles.store import (
    bundle_names,
    declared_names,
    pretrained_bundles,
    resolve_bundle,
    user_exports_dir,
)
from zoo.cli import main
from zoo.deploy import OnnxClassifier
from zoo.errors import AmbiguousBundleError, BundleNotFoundError
from zoo.exporter.write import export
from zoo.host.registry import Registry


@pytest.fixture
def lookalikes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """$ZOO_EXPORTS holding the user's bundles under declared names (Net, Net-cifar2): an
    untrained Net, not the shipped weights."""
    exports = tmp_path / "exports"
    for name in ("Net", "Net-cifar2", "mine"):
        export("Net", out=exports / name, seed=3)
    monkeypatch.setenv("ZOO_EXPORTS", str(exports))
    return exports


def test_a_declared_name_always_means_its_declared_weights(lookalikes: Path,
                                                           tmp_path: Path) -> None:
    shipped = pretrained_bundles()["Net"]
    digest = bundle_sha256(shipped)
    assert resolve_bundle("Net") == resolve_bundle("Net-cifar2") == shipped
    assert resolve_bundle("Net", weights="cifar2") == shipped
    for reader in (lambda name: zoo.load(name),
                   lambda name: zoo.create_model(name, pretrained=True)):
        model = reader("Net")
        assert all(not p.isnan().any() for p in model.parameters())
    assert OnnxClassifier("Net-cifar2").sha256 == digest
    assert zoo.verify("Net").sha256 == digest
    # the user's bundles keep their own names, and their paths
    assert resolve_bundle("mine") == lookalikes / "mine"
    assert resolve_bundle(lookalikes / "Net") == lookalikes / "Net"
    assert OnnxClassifier(lookalikes / "Net-cifar2").sha256 == bundle_sha256(
        lookalikes / "Net-cifar2") != digest


def test_every_command_reads_a_name_the_same_way(lookalikes: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    digest = bundle_sha256(pretrained_bundles()["Net"])
    image = tmp_path / "plane.png"
    Image.fromarray(np.full((32, 32, 3), 200, dtype=np.uint8)).save(image)
    classes = tmp_path / "val"
    for name in ("airplane", "bird"):
        (classes / name).mkdir(parents=True)
        Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(classes / name / "0.png")
    monkeypatch.chdir(tmp_path)
    for command in (["predict", "Net", str(image), "--expect-sha256", digest],
                    ["evaluate", "Net", str(classes), "--expect-sha256", digest],
                    ["verify", "Net", "--expect-sha256", digest],
                    ["predict", "Net", str(image), "--weights", "cifar2",
                     "--expect-sha256", digest]):
        assert main(command) == 0, command
    capsys.readouterr()
    assert main(["inspect", "Net", str(image), "--out", str(tmp_path / "i"), "--json"]) == 0
    assert '"trained": true' in capsys.readouterr().out
    assert main(["compare", "Net", "--weights", "cifar2", "--out", str(tmp_path / "c.png")]) == 0
    assert "| Net-cifar2 | Net |" in capsys.readouterr().out
    assert main(["predict", "mine", str(image), "--weights", "cifar2"]) == 1
    assert "weights='cifar2' picks a declared weight set, and 'mine' declares none" in (
        capsys.readouterr().err)


def test_an_unknown_name_lists_the_declared_names_and_the_users_bundles(
        lookalikes: Path) -> None:
    with pytest.raises(BundleNotFoundError) as info:
        resolve_bundle("Nope")
    message = str(info.value)
    assert message.startswith("no bundle 'Nope': it is neither a declared name (Net, ")
    assert f"nor a bundle in {lookalikes} (mine, Net, Net-cifar2; $ZOO_EXPORTS moves it)" in message
    with pytest.raises(WeightsError, match="Net has no weight set 'imagenet'; declared: cifar2"):
        resolve_bundle("Net", weights="imagenet")
    with pytest.raises(WeightsError, match="'Net-cifar2' names weight set 'cifar2' of Net"):
        resolve_bundle("Net-cifar2", weights="other")
    assert {"Net", "Net-cifar2", "NetResDeep-cifar2"} <= set(declared_names())
    names = bundle_names()
    assert names.index("mine") > names.index("NetWidth-cifar2") and names.count("Net") == 1


def test_an_ambiguous_name_is_an_error_listing_the_candidates(
        make_dist: MakeDist, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_dist("zoo-tiny", "zoo_tiny_names", tiny_plugin("TinyNames", "zoo_tiny_names"))
    registry = Registry()
    exports = tmp_path / "exports"
    monkeypatch.setenv("ZOO_EXPORTS", str(exports))
    export("TinyNames", out=exports / "tiny-a", registry=registry)
    # an architecture without declared weights: its one bundle
    assert resolve_bundle("TinyNames", registry=registry) == exports / "tiny-a"
    export("TinyNames", out=exports / "tiny-b", registry=registry, seed=1)
    with pytest.raises(AmbiguousBundleError, match=r"^'TinyNames' could mean 2 bundles: "
                                                   r"'tiny-a', 'tiny-b'; name the one you mean$"):
        resolve_bundle("TinyNames", registry=registry)
    # a bundle in the exports folder and a folder here of the same name
    monkeypatch.chdir(tmp_path)
    shutil.copytree(exports / "tiny-a", tmp_path / "tiny-a")
    with pytest.raises(AmbiguousBundleError, match=r"'tiny-a' could mean 2 bundles: 'tiny-a', "
                                                   r"'./tiny-a'"):
        resolve_bundle("tiny-a", registry=registry)
    assert resolve_bundle("./tiny-a", registry=registry) == Path("./tiny-a")


def test_export_names_identify_the_run_and_never_take_a_declared_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOO_EXPORTS", str(tmp_path / "exports"))
    first, second = tmp_path / "Net-imagefolder-1", tmp_path / "runs" / "second"
    make_run(first, "Net")
    make_run(second, "Net")
    a, b = export(first), export(second)
    assert a.path == user_exports_dir() / "Net-imagefolder-1"
    assert b.path == user_exports_dir() / "Net-synthetic-second"  # the run's dataset, its folder
    assert resolve_bundle("Net-synthetic-second") == b.path
    untrained = export("Net", seed=4)
    assert untrained.path.name == "Net-untrained-seed4" and untrained.manifest.training is None
    # the shipped weights written again, in another format: their own name, their records
    again = export("Net", weights="cifar2", formats="pt2")
    assert again.path.name == "Net-cifar2-onnx-pt2" and "pt2" in again.manifest.formats
    shipped = zoo.load("Net").state_dict()
    reloaded = zoo.load("Net-cifar2-onnx-pt2").state_dict()
    assert all((shipped[k] == reloaded[k]).all() for k in shipped)
    shipped_manifest = read_manifest(pretrained_bundles()["Net"])
    assert again.manifest.training == shipped_manifest.training
    assert again.manifest.classes == shipped_manifest.classes
    with pytest.raises(zoo.ZooError, match="--set overrides apply to an architecture name"):
        export("Net-cifar2", overrides={"n_hidden": 8})


def test_a_built_in_name_stays_the_zoos_when_a_plugin_reuses_it(make_dist: MakeDist) -> None:
    make_dist("zoo-copycat", "zoo_copycat", tiny_plugin("Net", "zoo_copycat"))
    registry = Registry()
    assert registry.get_spec("Net").provenance.plugin == "chapter8"  # and its weights with it
    assert resolve_bundle("Net", registry=registry) == pretrained_bundles()["Net"]
    [problem] = registry.plugins_by_key()["zoo_copycat"].problems
    assert problem == ("architecture 'Net' is the zoo's own (zoo 0.1.0 (plugin 'chapter8')), "
                       "and zoo-copycat 1.0 (plugin 'zoo_copycat') registers it too: the zoo's "
                       "is kept; rename it in that plugin, or block the zoo's with "
                       "-p no:chapter8 to use it")
    assert Registry(blocked=["chapter8"]).get_spec("Net").provenance.plugin == "zoo_copycat"


def test_the_same_bundle_reached_two_ways_is_not_ambiguous(
        make_dist: MakeDist, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_dist("zoo-tiny-same", "zoo_tiny_same", tiny_plugin("TinySame", "zoo_tiny_same"))
    registry = Registry()
    exports = tmp_path / "exports"
    monkeypatch.setenv("ZOO_EXPORTS", str(exports))
    export("TinySame", out=exports / "tiny", registry=registry)
    monkeypatch.chdir(exports)  # ./tiny and EXPORTS/tiny are one folder
    assert resolve_bundle("tiny", registry=registry) == exports / "tiny"


def test_the_bundle_of_an_architecture_trained_first_then_by_name(
        make_dist: MakeDist, tmp_path: Path) -> None:
    root = tmp_path / "shipped"
    make_run(tmp_path / "run", "Net")
    export("Net", out=root / "a-untrained")
    export(tmp_path / "run", out=root / "b-trained")
    export(tmp_path / "run", out=root / "c-trained")
    (root / "0-broken").mkdir()
    (root / "0-broken" / "manifest.json").write_text("{not json")  # skipped, not the end
    export("NetWidth", out=root / "z-width")
    assert pretrained_bundles(root) == {"Net": root / "b-trained", "NetWidth": root / "z-width"}
