"""zoo.load / zoo verify: SHA-256 checks, manifest validation, safe unpickling, missing plugins."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import MakeDist, tiny_plugin
from export_helpers import make_run
from PIL import Image

import zoo
from zoo.bundles.integrity import bundle_sha256, file_entry, read_manifest
from zoo.bundles.store import pretrained_bundles, resolve_bundle
from zoo.cli import main
from zoo.errors import BundleError
from zoo.exporter.verify import verify_bundle
from zoo.exporter.write import export
from zoo.host.registry import Registry
from zoo.models.load import load_bundle
from zoo.models.statedict import load_state_dict, strip_prefix
from zoo.spec.manifest import MANIFEST_FILE, ONNX_FILE, WEIGHTS_FILE


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bundles")
    make_run(root / "run", "NetResDeep", n_blocks=2)
    return export(root / "run", out=root / "NetResDeep-synthetic").path


@pytest.fixture
def bundle(bundle_dir: Path, tmp_path: Path) -> Path:
    """A private copy that a test may tamper with."""
    return Path(shutil.copytree(bundle_dir, tmp_path / "bundle"))


def _rewrite_manifest(bundle: Path, **changes: object) -> None:
    raw = json.loads((bundle / MANIFEST_FILE).read_text())
    raw.update(changes)
    (bundle / MANIFEST_FILE).write_text(json.dumps(raw))


def _rehash(bundle: Path, name: str) -> None:
    raw = json.loads((bundle / MANIFEST_FILE).read_text())
    raw["files"][name] = file_entry(bundle / name).model_dump()
    (bundle / MANIFEST_FILE).write_text(json.dumps(raw))


def test_load_rebuilds_the_exported_model(bundle: Path) -> None:
    loaded = load_bundle(bundle)
    assert not loaded.model.training
    assert loaded.manifest.architecture == "NetResDeep" and loaded.path == bundle
    model = zoo.load(bundle)
    assert isinstance(model, torch.nn.Module) and len(model.resblocks) == 2  # type: ignore[arg-type]
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), loaded.model(x))


def test_load_matches_the_run_checkpoint(tmp_path: Path) -> None:
    make_run(tmp_path / "run", "NetDropout")
    path = export(tmp_path / "run", out=tmp_path / "b").path
    state = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)["model"]
    loaded = zoo.load(path).state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


@pytest.mark.parametrize("name", [WEIGHTS_FILE, ONNX_FILE])
def test_a_tampered_file_is_an_error_naming_it(bundle: Path, name: str) -> None:
    data = bytearray((bundle / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle / name).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"{name} does not match its SHA-256"):
        zoo.load(bundle)
    with pytest.raises(BundleError, match=f"{name} does not match its SHA-256"):
        verify_bundle(bundle)


@pytest.mark.parametrize("name", [WEIGHTS_FILE, ONNX_FILE])
def test_a_missing_file_is_an_error_naming_it(bundle: Path, name: str) -> None:
    (bundle / name).unlink()
    with pytest.raises(BundleError, match=f"is missing {name}"):
        zoo.load(bundle)


def test_a_weights_file_that_runs_code_when_unpickled_is_refused(bundle: Path,
                                                                 tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    torch.save({"conv1.weight": Exploit()}, bundle / WEIGHTS_FILE)
    _rehash(bundle, WEIGHTS_FILE)  # an attacker who can write files can rewrite the sums too
    # the message names the blocked callable, not torch's boilerplate
    blocked = r"weights_only=True \(Trying to load unsupported GLOBAL (posix|nt)\.system"
    with pytest.raises(BundleError, match=r"refusing .*model\.pt.*" + blocked):
        zoo.load(bundle)
    with pytest.raises(BundleError, match="refusing"):
        verify_bundle(bundle)
    assert main(["verify", str(bundle)]) == 1
    assert not marker.exists()


def test_a_loaded_bundle_is_read_only(bundle: Path) -> None:
    loaded = load_bundle(bundle)
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.path = Path("elsewhere")  # type: ignore[misc]


def test_weights_saved_from_ddp_or_torch_compile_load(bundle: Path) -> None:
    state = torch.load(bundle / WEIGHTS_FILE, weights_only=True)
    for prefix in ("module.", "_orig_mod.", "module._orig_mod."):
        wrapped = {prefix + k: v for k, v in state.items()}
        assert list(strip_prefix(wrapped)) == list(state)
        torch.save(wrapped, bundle / WEIGHTS_FILE)
        _rehash(bundle, WEIGHTS_FILE)
        model = zoo.load(bundle)
        assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    # a prefix that only some keys carry is a key, not a wrapper's prefix
    assert list(strip_prefix({"module.a": 1, "b": 2})) == ["module.a", "b"]


def test_the_checked_bytes_are_the_ones_loaded(bundle: Path, tmp_path: Path) -> None:
    """Given the bytes whose digest was checked, the file is not read again (no swap between)."""
    data = (bundle / WEIGHTS_FILE).read_bytes()
    state = load_state_dict(tmp_path / "gone.pt", data)
    assert state.keys() == torch.load(bundle / WEIGHTS_FILE, weights_only=True).keys()


@pytest.mark.parametrize(("content", "reason"), [
    (b"x" * 64, "Unsupported operand"),  # the reason, not torch's boilerplate
    (b"", "EOFError"),
    (b"PK\x03\x04garbage", "not a ZIP archive"),
])
def test_a_weights_file_that_is_not_a_checkpoint_names_the_reason(
        tmp_path: Path, content: bytes, reason: str) -> None:
    (tmp_path / "model.pt").write_bytes(content)
    with pytest.raises(BundleError, match=rf"refusing .*model\.pt.*weights_only=True \(.*{reason}"):
        load_state_dict(tmp_path / "model.pt")


@pytest.mark.parametrize("obj", [["conv1.weight"], {1: torch.zeros(1)}, torch.zeros(3)])
def test_a_weights_file_that_holds_no_state_dict_is_refused(tmp_path: Path, obj: object) -> None:
    torch.save(obj, tmp_path / "model.pt")
    with pytest.raises(BundleError, match="does not hold a state_dict"):
        load_state_dict(tmp_path / "model.pt")


def test_a_trainer_checkpoint_reads_as_its_model_weights(tmp_path: Path) -> None:
    make_run(tmp_path / "run", "Net")
    ckpt = tmp_path / "run" / "checkpoints" / "best.pt"
    expected = torch.load(ckpt, weights_only=True)["model"]
    state = load_state_dict(ckpt)
    assert list(state) == list(expected)
    assert all(torch.equal(state[k], v) for k, v in expected.items())


@pytest.mark.parametrize("change", ["missing", "unexpected", "renamed"])
def test_weights_load_strictly(bundle: Path, change: str) -> None:
    """A key too few or too many is an error, never a model left half at its initial values;
    the error names every key that does not fit."""
    state = torch.load(bundle / WEIGHTS_FILE, weights_only=True)
    if change in ("missing", "renamed"):
        bias = state.pop("fc2.bias")
    if change in ("unexpected", "renamed"):
        state["fc3.bias"] = bias if change == "renamed" else torch.zeros(2)
    torch.save(state, bundle / WEIGHTS_FILE)
    _rehash(bundle, WEIGHTS_FILE)
    missing = r'Missing key\(s\) in state_dict: "fc2\.bias"'
    unexpected = r'Unexpected key\(s\) in state_dict: "fc3\.bias"'
    expected = {"missing": missing, "unexpected": unexpected,
                "renamed": f"{missing}.*; {unexpected}"}[change]
    with pytest.raises(BundleError, match=rf"does not fit NetResDeep .*: {expected}"):
        zoo.load(bundle)


def test_a_weights_file_of_the_wrong_shapes_is_an_error(bundle: Path) -> None:
    torch.save({"conv1.weight": torch.zeros(1)}, bundle / WEIGHTS_FILE)
    _rehash(bundle, WEIGHTS_FILE)
    with pytest.raises(BundleError, match="does not fit NetResDeep"):
        zoo.load(bundle)


def test_unknown_format_version_is_a_clear_error(bundle: Path) -> None:
    _rewrite_manifest(bundle, format_version=2)
    with pytest.raises(BundleError, match="format_version 2, which this zoo cannot read; "
                                          "accepted: 1"):
        zoo.load(bundle)


@pytest.mark.parametrize(("change", "message"), [
    ({"classes": 7}, "does not validate as a bundle manifest: classes"),
    ({"files": {}}, "does not list model.pt"),
    ({"surprise": 1}, "surprise: Extra inputs are not permitted"),
])
def test_a_manifest_that_does_not_validate_is_a_clear_error(bundle: Path, change: dict[str, object],
                                                            message: str) -> None:
    _rewrite_manifest(bundle, **change)
    with pytest.raises(BundleError, match=message):
        zoo.load(bundle)


def test_missing_or_unreadable_bundles(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        zoo.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match=r"has no manifest\.json"):
        zoo.load(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(BundleError, match="is not valid JSON"):
        read_manifest(tmp_path / "bad")


def test_a_bundle_whose_plugin_is_not_installed_names_the_plugin(
        make_dist: MakeDist, tmp_path: Path) -> None:
    make_dist("zoo-tiny", "tiny_nets", tiny_plugin("TinyNet", "tiny_nets"), version="2.3",
              entry_points={"tiny": "tiny_nets"})
    with_plugin = Registry()
    path = export("TinyNet", out=tmp_path / "b", registry=with_plugin).path
    manifest = read_manifest(path)
    assert manifest.provenance is not None
    assert (manifest.provenance.distribution, manifest.provenance.version) == ("zoo-tiny", "2.3")
    assert zoo.load(path, registry=with_plugin) is not None
    without = Registry(blocked=["tiny"])
    with pytest.raises(BundleError, match="needs architecture 'TinyNet' from zoo-tiny 2.3 "
                                          r"\(plugin 'tiny'\), which is not installed"):
        zoo.load(path, registry=without)


@pytest.mark.parametrize(("provenance", "origin"), [
    (None, "an unknown plugin, which is not installed"),
    ({"plugin": "gone"}, "plugin 'gone', which is not installed"),
    ({"plugin": "gone", "distribution": "zoo-gone", "version": "1.0"},
     "zoo-gone 1.0 \\(plugin 'gone'\\), which is not installed; install 'zoo-gone' to load it"),
])
def test_a_bundle_of_an_unknown_architecture_says_what_to_install(
        bundle: Path, provenance: dict[str, str] | None, origin: str) -> None:
    _rewrite_manifest(bundle, architecture="GoneNet", provenance=provenance,
                      model={**read_manifest(bundle).model.model_dump(), "architecture": "GoneNet"})
    with pytest.raises(BundleError, match=rf"needs architecture 'GoneNet' from {origin}$"):
        zoo.load(bundle)


def test_verify_reruns_the_checks(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = zoo.verify(bundle)
    assert report.passed and [c.batch_size for c in report.checks] == [1, 7]
    assert report.atol == 1e-4 and report.rtol == 1e-3
    strict = verify_bundle(bundle, atol=0.5, rtol=0.0)
    assert strict.atol == 0.5
    assert main(["verify", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert "SHA-256 sums, manifest and weights (weights_only): ok" in out
    assert "verification PASSED" in out
    (bundle / ONNX_FILE).write_bytes(b"garbage")
    assert main(["verify", str(bundle)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("zoo: error: ") and "model.onnx does not match its SHA-256" in err


def test_verify_fails_on_a_graph_that_computes_something_else(bundle: Path,
                                                              tmp_path: Path) -> None:
    other = export("NetResDeep", overrides={"n_blocks": 2, "num_classes": 3}, seed=99,
                   out=tmp_path / "other").path
    shutil.copy(other / ONNX_FILE, bundle / ONNX_FILE)
    _rehash(bundle, ONNX_FILE)
    report = verify_bundle(bundle)
    assert not report.passed and all(not c.passed for c in report.checks)
    assert main(["verify", str(bundle)]) == 1


def test_resolve_bundle_by_path_bundle_name_and_architecture(
        bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exports = tmp_path / "exports"
    shutil.copytree(bundle_dir, exports / "NetResDeep-synthetic")
    export("NetResDeep", overrides={"n_blocks": 1}, out=exports / "NetResDeep")
    export("Net", out=exports / "Net")
    monkeypatch.setenv("ZOO_EXPORTS", str(exports))
    shipped = pretrained_bundles()
    # the trained bundle wins over the untrained one of the same architecture
    assert shipped == {"Net": exports / "Net", "NetResDeep": exports / "NetResDeep-synthetic"}
    assert resolve_bundle("NetResDeep") == exports / "NetResDeep-synthetic"
    assert resolve_bundle("NetResDeep-synthetic") == exports / "NetResDeep-synthetic"
    assert resolve_bundle(str(bundle_dir)) == bundle_dir
    assert zoo.load("Net").fc2.out_features == 2
    with pytest.raises(BundleError, match=r"no bundle 'NetWidth'.*known: Net, NetResDeep, "
                                          r"NetResDeep-synthetic"):
        resolve_bundle("NetWidth")
    with pytest.raises(BundleError, match="bundle 'some/where' does not exist"):
        resolve_bundle("some/where")


def test_default_exports_dir_is_the_repository_exports_folder(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from zoo.bundles.store import exports_dir

    monkeypatch.delenv("ZOO_EXPORTS", raising=False)
    assert exports_dir() == Path(zoo.__file__).resolve().parent.parent / "exports"


def test_zoo_verify_hashes_each_file_and_builds_the_model_once(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import collections

    import zoo.bundles.integrity as integrity

    read: collections.Counter[str] = collections.Counter()
    builds: list[str] = []
    real_read, real_build = integrity._read_member, Registry.build

    def count_read(bundle: Path, name: str, *args: Any, **kwargs: Any) -> bytes:
        read[name] += 1
        return real_read(bundle, name, *args, **kwargs)

    def count_build(self: Registry, config: Any) -> Any:
        builds.append(config.architecture)
        return real_build(self, config)

    monkeypatch.setattr(integrity, "_read_member", count_read)
    monkeypatch.setattr(Registry, "build", count_build)
    assert main(["verify", "NetBatchNorm"]) == 0
    files = read_manifest(pretrained_bundles()["NetBatchNorm"]).files
    assert len(files) == 5 and read == dict.fromkeys(files, 1)  # every file hashed once
    assert builds == ["NetBatchNorm"]
    out = capsys.readouterr().out
    digest = bundle_sha256(pretrained_bundles()["NetBatchNorm"])
    assert out.startswith(f"bundle sha256 {digest}\n")


def test_the_commands_resolve_names_with_the_command_lines_plugins(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``-p no:NAME`` reaches the name lookups of zoo compare, inspect and verify."""
    import zoo.bundles.store as store

    seen: list[list[str]] = []
    real = store.declared_bundle

    def spy(name: str, weights: str | None = None, *, registry: Any = None) -> Any:
        seen.append(sorted(i.name for i in registry.plugins() if i.status == "blocked"))
        return real(name, weights, registry=registry)

    monkeypatch.setattr(store, "declared_bundle", spy)
    image = tmp_path / "image.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(image)
    for argv in (["compare", "Net", "--out", str(tmp_path / "c.png")],
                 ["inspect", "Net", str(image), "--out", str(tmp_path / "i")],
                 ["verify", "Net"]):
        seen.clear()
        assert main(["-p", "no:tensorboard", *argv]) == 0, argv
        assert seen and all(blocked == ["tensorboard"] for blocked in seen), (argv, seen)
