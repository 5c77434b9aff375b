"""Nothing the zoo reads is ever unpickled without restriction (issue 26, security).

A payload whose ``__reduce__`` would create a marker file is planted in every file the
zoo reads: a bundle's ``model.pt``, its ``model.pt2`` and each kind of member torch's
loader would unpickle, evaluate or call, trainer checkpoints, ``val_samples.npy``, the
dataset cache and CIFAR-10's batches. Each is refused in one line and the marker never
appears. The loader of ``model.pt2`` is also checked without its archive checks: the
audit-hook guard alone stops the payloads.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from export_helpers import make_run

import zoo
from zoo import DatasetRequest
from zoo.bundles.integrity import bundle_sha256, file_entry, read_manifest
from zoo.cli import main
from zoo.errors import BundleError, DataError, ZooError
from zoo.exporter import pt2
from zoo.exporter.write import export
from zoo.host.contract import load_dataset
from zoo.host.registry import Registry
from zoo.models.pretrained import create_pretrained
from zoo.spec.manifest import MANIFEST_FILE, WEIGHTS_FILE
from zoo.spec.run import BEST_CHECKPOINT, CHECKPOINT_DIR, LAST_CHECKPOINT, VAL_SAMPLES
from zoo.spec.weights import WeightSet
from zoo.trainer.checkpoint import CheckpointError, load_checkpoint
from zoo.util.pickleguard import UnpicklingRefused, load_restricted, strict_unpickling


class Exploit:
    """Unpickled without restriction, this runs ``touch MARKER``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _torch_payload(marker: Path, wrap: Callable[[Any], Any] = lambda x: x) -> bytes:
    buffer = io.BytesIO()
    torch.save(wrap(Exploit(marker)), buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A run directory and its bundle with the pt2 format."""
    root = tmp_path_factory.mktemp("pickles")
    make_run(root / "run", "Net")
    export(root / "run", out=root / "bundle", formats="pt2")
    return root / "run", root / "bundle"


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "pwned"


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text, text
    return text


def _rehash(bundle: Path, name: str) -> None:
    raw = json.loads((bundle / MANIFEST_FILE).read_text())
    raw["files"][name] = file_entry(bundle / name).model_dump()
    (bundle / MANIFEST_FILE).write_text(json.dumps(raw, indent=2))


# -- model.pt2 ----------------------------------------------------------------------------


def _rewrite(data: bytes, replace: dict[str, bytes] | None = None,
             add: dict[str, bytes] | None = None,
             compression: int = zipfile.ZIP_STORED) -> bytes:
    """The archive with members replaced or added (names relative to its root folder)."""
    replace, add = replace or {}, add or {}
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as zin, \
            zipfile.ZipFile(out, "w", compression) as zout:
        prefix = zin.namelist()[0].split("/")[0] + "/"
        for info in zin.infolist():
            relative = info.filename[len(prefix):]
            content = replace.get(relative, zin.read(info))
            if compression == zipfile.ZIP_STORED:
                zout.writestr(info, content)
            else:
                zout.writestr(info.filename, content)
        for relative, content in add.items():
            zout.writestr(prefix + relative, content)
    return out.getvalue()


def _edit_json(data: bytes, name: str, edit: Callable[[Any], None]) -> bytes:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        prefix = zf.namelist()[0].split("/")[0] + "/"
        raw = json.loads(zf.read(prefix + name))
    edit(raw)
    return _rewrite(data, replace={name: json.dumps(raw).encode()})


_WEIGHTS = "data/weights/model_weights_config.json"
_CONSTANTS = "data/constants/model_constants_config.json"
_PROGRAM = "models/model.json"


def _first_node(raw: Any) -> Any:
    return raw["graph_module"]["graph"]["nodes"][0]


def _pickled_weight(data: bytes, marker: Path) -> bytes:
    def edit(raw: Any) -> None:
        raw["config"]["conv1.weight"]["use_pickle"] = True
    return _rewrite(_edit_json(data, _WEIGHTS, edit),
                    replace={"data/weights/weight_0": _torch_payload(marker)})


def _constant(data: bytes, marker: Path, path_name: str, payload: bytes) -> bytes:
    def edit(raw: Any) -> None:
        raw["config"]["evil"] = {"path_name": path_name, "is_param": False,
                                 "use_pickle": True, "tensor_meta": None}
    return _rewrite(_edit_json(data, _CONSTANTS, edit),
                    add={f"data/constants/{path_name}": payload})


def _expr(data: bytes, marker: Path) -> bytes:
    def edit(raw: Any) -> None:
        values = raw["graph_module"]["graph"]["tensor_values"]
        sizes = next(iter(values.values()))["sizes"]
        sizes[0] = {"as_expr": {"expr_str": f"__import__('os').system('touch {marker}')",
                                "hint": {"as_int": 2}}}
    return _edit_json(data, _PROGRAM, edit)


def _target(name: str) -> Callable[[bytes, Path], bytes]:
    def plant(data: bytes, marker: Path) -> bytes:
        def edit(raw: Any) -> None:
            _first_node(raw)["target"] = name
        return _edit_json(data, _PROGRAM, edit)
    return plant


def _guards(data: bytes, marker: Path) -> bytes:
    def edit(raw: Any) -> None:
        raw["guards_code"] = [f"__import__('os').system('touch {marker}')"]
    return _edit_json(data, _PROGRAM, edit)


PT2_PAYLOADS: dict[str, tuple[Callable[[bytes, Path], bytes], str]] = {
    "sample inputs": (lambda d, m: _rewrite(d, replace={
        "data/sample_inputs/model.pt": _torch_payload(m, lambda x: (x,))}),
        r"sample inputs do not load with weights_only=True .*GLOBAL (posix|nt)\.system"),
    "pickled weight": (_pickled_weight, r"'conv1\.weight' in .*weights_config\.json is pickled"),
    "pickled constant": (lambda d, m: _constant(d, m, "tensor_0", _torch_payload(m)),
                         r"'evil' in .*constants_config\.json is pickled"),
    "opaque object": (lambda d, m: _constant(d, m, "opaque_obj_0", pickle.dumps(Exploit(m))),
                      r"member 'data/constants/opaque_obj_0'"),
    "custom object": (lambda d, m: _constant(d, m, "custom_obj_0", pickle.dumps(Exploit(m))),
                      r"member 'data/constants/custom_obj_0'"),
    "legacy weights": (lambda d, m: _rewrite(d, add={"weights/model.pt": _torch_payload(m)}),
                       r"member 'weights/model\.pt'"),
    "extra member": (lambda d, m: _rewrite(d, add={"extra/x.pkl": pickle.dumps(Exploit(m))}),
                     r"member 'extra/x\.pkl'"),
    "stray payload": (lambda d, m: _rewrite(d, add={"data/weights/weight_999": b"\0" * 8}),
                      r"payload 'data/weights/weight_999', which no configuration names"),
    "symbolic expression": (_expr, r"symbolic expression \"__import__"),
    "callable target": (_target("torch.os.system"), r"calls 'torch\.os\.system'"),
    "file-writing op": (_target("torch.ops.aten.save.default"), r"calls 'torch\.ops\.aten\.save"),
    "extension op": (_target("#evil"), r"calls '#evil'"),
    "guard code": (_guards, r"guard code, which would run as Python"),
    "compressed": (lambda d, m: _rewrite(d, compression=zipfile.ZIP_DEFLATED),
                   r"is encrypted or compressed"),
    "not a zip": (lambda d, m: pickle.dumps(Exploit(m)), r"it is not a zip archive"),
}


@pytest.mark.parametrize("kind", list(PT2_PAYLOADS))
def test_every_pt2_member_torch_would_unpickle_or_run_is_refused(
        made: tuple[Path, Path], marker: Path, kind: str) -> None:
    plant, message = PT2_PAYLOADS[kind]
    data = plant((made[1] / pt2.PT2_FILE).read_bytes(), marker)
    with pytest.raises(BundleError, match=message) as info:
        pt2.load_pt2(data, "bundle/model.pt2")
    assert _one_line(info.value).startswith("refusing bundle/model.pt2: ")
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["sample inputs", "pickled weight", "opaque object"])
def test_without_the_archive_checks_the_guard_alone_stops_the_payload(
        made: tuple[Path, Path], marker: Path, monkeypatch: pytest.MonkeyPatch,
        kind: str) -> None:
    """Defence in depth: torch's own fallbacks to a full unpickling reach no callable."""
    monkeypatch.setattr(pt2, "check_pt2", lambda data, where: None)
    data = PT2_PAYLOADS[kind][0]((made[1] / pt2.PT2_FILE).read_bytes(), marker)
    with pytest.raises(BundleError, match=r"refusing to unpickle global (posix|nt)\.system"):
        pt2.load_pt2(data, "model.pt2")
    assert not marker.exists()


def test_zoo_verify_refuses_a_rewritten_pt2_in_one_line(
        made: tuple[Path, Path], marker: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    bundle = Path(shutil.copytree(made[1], tmp_path / "bundle"))
    path = bundle / pt2.PT2_FILE
    path.write_bytes(PT2_PAYLOADS["sample inputs"][0](path.read_bytes(), marker))
    _rehash(bundle, pt2.PT2_FILE)  # unpinned: the attacker rewrote the manifest's digest too
    assert main(["verify", str(bundle)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"zoo: error: refusing {path}: its sample inputs do not load")
    assert err.count("\n") == 1
    assert not marker.exists()


# -- model.pt, checkpoints, val_samples.npy -----------------------------------------------


def test_a_pickled_model_pt_is_refused_by_create_model_pretrained(
        made: tuple[Path, Path], marker: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from zoo_chapter8 import specs as chapter8_specs

    package = tmp_path / "pkgs" / "zoo_payload_weights"
    bundle = Path(shutil.copytree(made[1], package / "Net-payload"))
    (package / "__init__.py").write_text("")
    (bundle / WEIGHTS_FILE).write_bytes(_torch_payload(marker, lambda x: {"conv1.weight": x}))
    _rehash(bundle, WEIGHTS_FILE)
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    manifest = read_manifest(bundle)
    declared = WeightSet(tag="payload", location="zoo_payload_weights:Net-payload",
                         sha256=bundle_sha256(bundle), dataset="synthetic", split="all",
                         classes=manifest.classes, mean=manifest.normalization.mean,
                         std=manifest.normalization.std)

    class Plugin:
        @zoo.hookimpl
        def zoo_architectures(self) -> list[zoo.ArchitectureSpec]:
            return [s.model_copy(update={"weights": (declared,) if s.name == "Net" else ()})
                    for s in chapter8_specs.ARCHITECTURES]

    registry = Registry(entry_points=False)
    registry.register(Plugin(), name="test", package="zoo_chapter8")
    with pytest.raises(BundleError, match=r"refusing .*model\.pt.*GLOBAL (posix|nt)\.system"):
        create_pretrained(registry, "Net", overrides={"num_classes": 3})
    assert not marker.exists()


@pytest.mark.parametrize("which", [BEST_CHECKPOINT, LAST_CHECKPOINT])
def test_pickled_checkpoints_are_refused_on_resume_and_export(
        made: tuple[Path, Path], marker: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], which: str) -> None:
    run = Path(shutil.copytree(made[0], tmp_path / "run"))
    path = run / CHECKPOINT_DIR / which
    path.write_bytes(_torch_payload(marker, lambda x: {"model": {"w": x}, "epoch": 2}))
    with pytest.raises(CheckpointError, match="unsupported GLOBAL") as info:
        load_checkpoint(path)  # what --resume and every reader of a run call
    _one_line(info.value)
    checkpoint = "best" if which == BEST_CHECKPOINT else "last"
    assert main(["export", str(run), "--checkpoint", checkpoint,
                 "--out", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"zoo: error: cannot read checkpoint {path}") and err.count("\n") == 1
    assert not marker.exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("form", ["npy objects", "pickle"])
def test_val_samples_are_never_unpickled(made: tuple[Path, Path], marker: Path,
                                         tmp_path: Path, form: str) -> None:
    run = Path(shutil.copytree(made[0], tmp_path / "run"))
    samples = run / VAL_SAMPLES
    if form == "npy objects":
        np.save(samples, np.array([Exploit(marker)], dtype=object), allow_pickle=True)
    else:
        samples.write_bytes(pickle.dumps(Exploit(marker)))
    with pytest.raises(ZooError, match=r"val_samples\.npy is not a plain array of images") as info:
        export(run, out=tmp_path / "b")
    _one_line(info.value)
    assert not marker.exists()


# -- dataset caches and CIFAR-10 ----------------------------------------------------------


def test_a_pickle_in_the_dataset_cache_is_a_damaged_entry(
        marker: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from zoo_datasets.cache import cached

    arrays = {"x": np.arange(4, dtype=np.uint8)}
    for planted in (pickle.dumps(Exploit(marker)), _npy_objects(marker)):
        (tmp_path / "k.npz").write_bytes(planted)
        got = cached(tmp_path, "k", lambda: arrays)
        assert np.array_equal(got["x"], arrays["x"])
        assert "is damaged or is not what its name says; rebuilding it" in capsys.readouterr().err
    assert not marker.exists()


def _npy_objects(marker: Path) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array([Exploit(marker)], dtype=object), allow_pickle=True)
    return buffer.getvalue()


def test_cifar_batches_are_unpickled_with_numpy_arrays_only(
        marker: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.datasets import CIFAR10
    from zoo_datasets.cifar import META_FILE, TEST_FILES, TRAIN_FILES

    folder = tmp_path / "c" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in (*TRAIN_FILES, *TEST_FILES):
        entry = {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 2]}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    (folder / META_FILE).write_bytes(pickle.dumps({"label_names": ["a"] * 10}))
    (folder / TRAIN_FILES[0]).write_bytes(pickle.dumps({"data": Exploit(marker)}))
    request = DatasetRequest(data_dir=tmp_path / "c", download=False, quiet=True,
                             cache_dir=tmp_path / "cache")
    spec = zoo.default_registry().get_dataset("cifar10")
    with pytest.raises(DataError, match=r"data_batch_1 is not a readable CIFAR-10 batch "
                                        r"\(refusing to unpickle global (posix|nt)\.system"):
        load_dataset(spec, request)
    # a copy torchvision would accept (its md5 sums matching): its own unpickling is guarded
    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)
    with pytest.raises(DataError, match="refusing to unpickle global"):
        load_dataset(spec, request)
    assert not marker.exists()


def test_the_guard_allows_only_what_it_is_told(marker: Path) -> None:
    array = np.arange(6, dtype=np.uint8).reshape(2, 3)
    for protocol in (2, 3, 4, 5):
        data = pickle.dumps({"a": array, "b": [1, "x", b"y"]}, protocol=protocol)
        assert np.array_equal(load_restricted(data)["a"], array)
    with pytest.raises(UnpicklingRefused, match=r"global (posix|nt)\.system"):
        load_restricted(pickle.dumps(Exploit(marker)))
    with pytest.raises(UnpicklingRefused), strict_unpickling():
        pickle.loads(pickle.dumps(Exploit(marker)))  # a plain pickle.loads, inside the guard
    with pytest.raises(UnpicklingRefused, match=r"os\.system"), strict_unpickling():
        os.system(f"touch {marker}")
    assert pickle.loads(pickle.dumps(array)).shape == (2, 3)  # outside the guard: untouched
    assert not marker.exists()
