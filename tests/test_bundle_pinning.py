"""Bundles pinned end to end: the manifest's SHA-256 as identity, --expect-sha256 everywhere,
graph/manifest cross-checks, no unhashed external data, sane normalization and bounds."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from export_helpers import make_run, write_images

import zoo
from zoo.bundles.integrity import bundle_sha256, file_entry, open_bundle
from zoo.bundles.store import pretrained_bundles, resolve_bundle
from zoo.cli import main
from zoo.deploy import OnnxClassifier
from zoo.deploy.onnxscan import OnnxScanError, external_data_files
from zoo.errors import BundleError, ExportError, ZooError
from zoo.exporter.verify import verify_bundle
from zoo.exporter.write import export
from zoo.spec.manifest import MANIFEST_FILE, ONNX_FILE


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A bundle from a run (3 classes), another one (2 classes) and a folder of images."""
    root = tmp_path_factory.mktemp("pinning")
    make_run(root / "run", "Net")
    export(root / "run", out=root / "Net-synthetic")
    export("Net", out=root / "Net-untrained")
    write_images(root / "images")
    return root / "Net-synthetic", root / "Net-untrained", root / "images"


@pytest.fixture
def bundle(made: tuple[Path, Path, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(made[0], tmp_path / "bundle"))


def _edit(bundle: Path, change: dict[str, object], *, in_model: bool = False) -> None:
    raw = json.loads((bundle / MANIFEST_FILE).read_text())
    (raw["model"] if in_model else raw).update(change)
    (bundle / MANIFEST_FILE).write_text(json.dumps(raw, indent=2))


def _rehash(bundle: Path, name: str) -> None:
    raw = json.loads((bundle / MANIFEST_FILE).read_text())
    raw["files"][name] = file_entry(bundle / name).model_dump()
    (bundle / MANIFEST_FILE).write_text(json.dumps(raw, indent=2))


def test_the_identity_is_printed_by_export_and_shown_by_verify(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "b"
    assert main(["export", "Net", "--out", str(out)]) == 0
    digest = hashlib.sha256((out / MANIFEST_FILE).read_bytes()).hexdigest()
    assert bundle_sha256(out) == digest
    assert f"bundle sha256 {digest}" in capsys.readouterr().out
    assert main(["verify", str(out), "--expect-sha256", digest]) == 0
    assert f"bundle sha256 {digest}" in capsys.readouterr().out
    assert main(["verify", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sha256"] == digest
    assert export("Net", out=tmp_path / "c").sha256 == bundle_sha256(tmp_path / "c")


def test_pinning_refuses_an_edited_manifest_in_every_reader(
        bundle: Path, made: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    pinned = bundle_sha256(bundle)
    assert zoo.load(bundle, expect_sha256=pinned) is not None
    raw = json.loads((bundle / MANIFEST_FILE).read_text())
    raw["training"]["best"]["val_acc"] = 0.99  # edited metrics
    (bundle / MANIFEST_FILE).write_text(json.dumps(raw, indent=2))
    zoo.load(bundle)  # unpinned, an edited manifest is not noticed: the README says so
    message = rf"is not the one expected: its manifest's SHA-256 is [0-9a-f]{{64}}, " \
              rf"expected {pinned}"
    with pytest.raises(BundleError, match=message):
        zoo.load(bundle, expect_sha256=pinned)
    with pytest.raises(BundleError, match=message):
        OnnxClassifier(bundle, expect_sha256=pinned.upper())
    image = str(made[2] / "rgb.png")
    assert main(["predict", str(bundle), image, "--expect-sha256", pinned]) == 1
    assert "is not the one expected" in capsys.readouterr().err
    assert main(["verify", str(bundle), "--expect-sha256", pinned]) == 1
    with pytest.raises(BundleError, match="is not 64 hexadecimal digits"):
        open_bundle(bundle, expect_sha256="abc")


def test_a_graph_replaced_together_with_its_hash_is_refused_when_pinned(
        bundle: Path, made: tuple[Path, Path, Path]) -> None:
    pinned = bundle_sha256(bundle)
    shutil.copy(made[1] / ONNX_FILE, bundle / ONNX_FILE)  # same shapes, other weights
    _rehash(bundle, ONNX_FILE)
    with pytest.raises(BundleError, match="is not the one expected"):
        OnnxClassifier(bundle, expect_sha256=pinned)


def test_external_onnx_data_is_never_read(bundle: Path) -> None:
    model = onnx.load(str(bundle / ONNX_FILE))
    onnx.save_model(model, str(bundle / ONNX_FILE), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    _rehash(bundle, ONNX_FILE)
    assert external_data_files((bundle / ONNX_FILE).read_bytes()) == ["weights.bin"] * len(
        [t for t in model.graph.initializer])
    for reader in (lambda: OnnxClassifier(bundle), lambda: verify_bundle(bundle)):
        with pytest.raises(BundleError, match=r"keeps tensors in external file\(s\) weights.bin"):
            reader()
    with pytest.raises(OnnxScanError):
        external_data_files(b"\x0a\xff\xff\xff")


@pytest.mark.parametrize(("field", "value", "message"), [
    ("std", [0.25, 0.0, 0.26], r"normalization std .* accepted: finite numbers greater than 0"),
    ("std", [0.25, float("nan"), 0.26], r"normalization std"),
    ("std", [0.25, -1.0, 0.26], r"normalization std"),
    ("mean", [0.5, float("inf"), 0.5], r"non-finite normalization mean"),
])
def test_a_normalization_that_would_give_nan_is_refused(bundle: Path, field: str,
                                                        value: list[float], message: str) -> None:
    raw = json.loads((bundle / MANIFEST_FILE).read_text())
    raw["normalization"][field] = value
    (bundle / MANIFEST_FILE).write_text(json.dumps(raw))
    for reader in (OnnxClassifier, zoo.load):
        with pytest.raises(BundleError, match=message):
            reader(bundle)


def test_the_manifest_is_cross_checked_against_the_graph(bundle: Path,
                                                         made: tuple[Path, Path, Path]) -> None:
    _edit(bundle, {"classes": ["a", "b"]})
    with pytest.raises(BundleError, match="names 2 classes but its model has 3 outputs"):
        OnnxClassifier(bundle)
    _edit(bundle, {"num_classes": 2}, in_model=True)  # consistent manifest, graph has 3
    with pytest.raises(BundleError, match=r"gives outputs of shape \[.*3\].*names 2 classes"):
        OnnxClassifier(bundle)
    shutil.rmtree(bundle)
    shutil.copytree(made[0], bundle)
    raw = json.loads((bundle / MANIFEST_FILE).read_text())
    raw["model"]["input_shape"]["height"] = 16
    (bundle / MANIFEST_FILE).write_text(json.dumps(raw))
    with pytest.raises(BundleError,
                       match=r"takes input shape \[.*3, 32, 32\].*\(batch, 3, 16, 32\)"):
        OnnxClassifier(bundle)


def test_a_deeply_nested_manifest_is_a_bundle_error(bundle: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (bundle / MANIFEST_FILE).write_text('{"format_version": 1, "x": ' + "[" * 100_000
                                        + "]" * 100_000 + "}")
    with pytest.raises(BundleError, match="nested too deeply"):
        OnnxClassifier(bundle)
    monkeypatch.setenv("ZOO_EXPORTS", str(bundle.parent))
    with pytest.raises(BundleError, match="no bundle 'NetArch'"):
        resolve_bundle("NetArch")  # the unreadable manifest is skipped, not a RecursionError


def test_a_shipped_name_wins_over_a_folder_of_that_name(
        made: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exports = tmp_path / "exports"
    shutil.copytree(made[0], exports / "Net-synthetic")
    here = tmp_path / "work"
    shutil.copytree(made[1], here / "Net")
    monkeypatch.setenv("ZOO_EXPORTS", str(exports))
    monkeypatch.chdir(here)
    shipped = pretrained_bundles()["Net"]
    assert resolve_bundle("Net") == shipped  # the declared weights, not a folder here
    assert resolve_bundle("./Net") == Path("./Net")
    assert resolve_bundle(Path("Net")) == Path("Net")
    assert OnnxClassifier("Net").path == shipped
    assert OnnxClassifier("./Net").manifest.training is None


def test_threads_are_bounded(bundle: Path, made: tuple[Path, Path, Path],
                             capsys: pytest.CaptureFixture[str]) -> None:
    top = (os.cpu_count() or 1) * 4
    for bad in (-5, 0, top + 1, 100_000):
        with pytest.raises(ZooError, match=rf"threads must be an integer from 1 to {top}"):
            OnnxClassifier(bundle, threads=bad)
    assert OnnxClassifier(bundle, threads=top).session is not None
    image = str(made[2] / "rgb.png")
    assert main(["predict", str(bundle), image, "--threads", "100000"]) == 1
    assert f"--threads must be an integer from 1 to {top}" in capsys.readouterr().err


def test_an_empty_image_is_refused_not_predicted(bundle: Path) -> None:
    clf = OnnxClassifier(bundle)
    for empty in (np.zeros((0, 0, 3), np.uint8), np.zeros((3, 0, 5), np.uint8)):
        with pytest.raises(ZooError, match="image array is empty"):
            clf.predict(empty)


def test_export_bounds_its_input_size_and_seed(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"input size 2048x2048 is too large to export"):
        export("Net", overrides={"in_height": 2048, "in_width": 2048}, out=tmp_path / "big")
    with pytest.raises(ExportError, match=r"seed must be an integer from 0 to 2\*\*63 - 1"):
        export("Net", seed=-1, out=tmp_path / "neg")
    assert export("Net", seed=2**63 - 1, out=tmp_path / "max").path.is_dir()
    assert not (tmp_path / "big").exists() and not (tmp_path / "neg").exists()


def test_disk_full_during_export_is_one_line_and_keeps_the_existing_bundle(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import errno

    dest = tmp_path / "bundle"
    export("Net", out=dest)
    before = bundle_sha256(dest)
    real = Path.write_bytes

    def full(self: Path, data: bytes) -> int:  # type: ignore[override]
        if self.name == "model.pt":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    assert main(["export", "Net", "--out", str(dest), "--force"]) == 1
    assert main(["export", "Net", "--out", str(tmp_path / "new")]) == 1
    monkeypatch.undo()
    err = capsys.readouterr().err.splitlines()
    assert err[0].endswith("the disk is full; the existing bundle is unchanged")
    assert err[1].endswith("the disk is full; nothing was written")
    assert bundle_sha256(dest) == before and not (tmp_path / "new").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_a_run_with_an_unusable_normalization_is_not_exported(tmp_path: Path) -> None:
    make_run(tmp_path / "run", "Net")
    raw = json.loads((tmp_path / "run" / "run.json").read_text())
    raw["normalization"]["std"] = [0.25, 0.0, 0.26]
    (tmp_path / "run" / "run.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="normalization std"):
        export(tmp_path / "run", out=tmp_path / "bundle")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def _graph(bundle: Path, outputs: int = 1, op: str = "Identity", input_name: str = "input"
           ) -> None:
    """Replace the bundle's graph (and its digest) with a hand-made one."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", 3, 32, 32])
    pooled = helper.make_node("ReduceMean", [input_name], ["pooled"], axes=[2, 3], keepdims=0)
    nodes = [pooled] + [helper.make_node(op, ["pooled"], [f"out{i}"]) for i in range(outputs)]
    outs = [helper.make_tensor_value_info(f"out{i}", TensorProto.FLOAT, ["N", 3])
            for i in range(outputs)]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], outs),
                              opset_imports=[helper.make_opsetid("", 17)])
    (bundle / ONNX_FILE).write_bytes(model.SerializeToString())
    _rehash(bundle, ONNX_FILE)


@pytest.mark.parametrize(("make", "message"), [
    (lambda b: ((b / ONNX_FILE).write_bytes(b"\x0a\xff\xff\xff"), _rehash(b, ONNX_FILE)),
     r"is not an ONNX model: "),
    (lambda b: _graph(b, op="NoSuchOperator"), r"onnxruntime cannot load .*: .*NoSuchOperator"),
    (lambda b: _graph(b, input_name="pixels"),
     r" takes inputs \['pixels'\], but the manifest says one input 'input'"),
    (lambda b: _graph(b, outputs=2),
     r" gives outputs of shape \['N', 3\] \(2 output\(s\)\), but the manifest names 3 classes"),
])
def test_a_graph_that_does_not_fit_its_manifest_is_named(bundle: Path, make: Any,
                                                         message: str) -> None:
    make(bundle)
    with pytest.raises(BundleError) as info:
        OnnxClassifier(bundle)
    assert f"{bundle / ONNX_FILE}" in str(info.value)
    assert re.search(message, str(info.value)), str(info.value)


def test_tampered_members_are_reported_by_size_and_read_boundedly(bundle: Path) -> None:
    from zoo.bundles.integrity import _CHUNK, MAX_MANIFEST_BYTES, read_manifest

    manifest = read_manifest(bundle)
    entry = manifest.files["model.pt"]
    data = (bundle / "model.pt").read_bytes()
    (bundle / "model.pt").write_bytes(bytes([data[0] ^ 1]) + data[1:])  # same size
    with pytest.raises(BundleError, match=rf"model\.pt does not match its SHA-256 in the "
                                          rf"manifest \(size {entry.size}, expected "
                                          rf"{entry.size}\)"):
        open_bundle(bundle)
    (bundle / "model.pt").write_bytes(b"\0" * (3 * _CHUNK))  # far larger than declared
    with pytest.raises(BundleError, match=rf"\(size at least {_CHUNK}, expected {entry.size}\)"):
        open_bundle(bundle)
    (bundle / MANIFEST_FILE).write_bytes(b" " * (MAX_MANIFEST_BYTES + 1))
    with pytest.raises(BundleError, match=rf"manifest\.json is larger than the "
                                          rf"{MAX_MANIFEST_BYTES} bytes accepted"):
        read_manifest(bundle)


def test_a_manifest_with_many_errors_names_the_first_five(bundle: Path) -> None:
    from zoo.bundles.integrity import read_manifest

    _edit(bundle, {"architecture": 1, "classes": 2, "task": 3, "created": 4, "model": 5,
                   "normalization": 6, "files": 7, "zoo_version": 8})
    with pytest.raises(BundleError) as info:
        read_manifest(bundle)
    problems = str(info.value).split("does not validate as a bundle manifest: ")[1]
    assert len(problems.split("; ")) == 5


def test_the_classifier_runs_the_graph_bytes_it_checked(
        bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A graph swapped on disk after its hash was checked is never the one that runs: the
    checked bytes are kept and loaded (no second read, no time-of-check race)."""
    from zoo.deploy import predictor

    intact = OnnxClassifier(bundle)
    images = np.random.default_rng(0).integers(0, 256, (4, intact.channels, *intact.size),
                                               dtype=np.uint8)
    expected = intact.logits(images)
    real_check = predictor.check_bundle

    def check_then_swap(*args: Any, **kwargs: Any) -> Any:
        checked = real_check(*args, **kwargs)
        (bundle / ONNX_FILE).write_bytes(b"not the graph that was checked")
        return checked

    monkeypatch.setattr(predictor, "check_bundle", check_then_swap)
    swapped = OnnxClassifier(bundle)
    np.testing.assert_array_equal(swapped.logits(images), expected)
