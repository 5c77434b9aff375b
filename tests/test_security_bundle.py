"""Unpinned bundles that lie are refused by every reader, in one line (issue 26, security).

Symbolic links (a member to a system file, a member out of the bundle to a file of the
same bytes, the manifest itself), class names and other manifest text holding control
characters, and a graph whose stamped identity is not the manifest's model: each is
refused through ``zoo.load``, ``OnnxClassifier``, ``zoo verify`` and ``zoo predict``.
A bundle directory that is itself a link is allowed (the user named it; its identity is
its manifest's digest).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import pytest
from export_helpers import make_run, write_images

import zoo
from zoo.bundles.integrity import bundle_sha256, file_entry
from zoo.cli import main
from zoo.deploy import OnnxClassifier
from zoo.errors import BundleError, DataError, ExportError
from zoo.exporter.write import export
from zoo.host.contract import load_dataset
from zoo.spec.manifest import MANIFEST_FILE, ONNX_FILE, WEIGHTS_FILE
from zoo.spec.run import SUMMARY_FILE


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A run, its bundle (Net, 3 classes) and a folder of images."""
    root = tmp_path_factory.mktemp("lies")
    make_run(root / "run", "Net")
    export(root / "run", out=root / "bundle")
    write_images(root / "images")
    return root / "run", root / "bundle", root / "images"


@pytest.fixture
def bundle(made: tuple[Path, Path, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(made[1], tmp_path / "bundle"))


def _edit(bundle: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    raw = json.loads((bundle / MANIFEST_FILE).read_text())
    edit(raw)
    (bundle / MANIFEST_FILE).write_text(json.dumps(raw, indent=2))


def _rehash(bundle: Path, name: str) -> None:
    def edit(raw: dict[str, Any]) -> None:
        raw["files"][name] = file_entry(bundle / name).model_dump()
    _edit(bundle, edit)


def _every_reader_refuses(bundle: Path, image: Path, message: str,
                          capsys: pytest.CaptureFixture[str], *, load: bool = True) -> None:
    """``zoo.load`` (unless ``load`` is False: it never reads the graph), ``OnnxClassifier``,
    ``zoo verify`` and ``zoo predict`` refuse ``bundle`` with one line matching ``message``."""
    readers: list[Callable[[], object]] = [lambda: OnnxClassifier(bundle)]
    if load:
        readers.append(lambda: zoo.load(bundle))
    for reader in readers:
        with pytest.raises(BundleError, match=message) as info:
            reader()
        assert "\n" not in str(info.value)
    for argv in (["verify", str(bundle)], ["predict", str(bundle), str(image)]):
        assert main(argv) == 1
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.startswith("zoo: error: ") and captured.err.count("\n") == 1
        assert "\x1b" not in captured.err
        assert __import__("re").search(message, captured.err), captured.err


# -- symbolic links -------------------------------------------------------------------------


def _link_system_file(bundle: Path, outside: Path) -> str:
    (bundle / WEIGHTS_FILE).unlink()
    (bundle / WEIGHTS_FILE).symlink_to("/etc/passwd" if os.path.exists("/etc/passwd")
                                       else os.devnull)
    return WEIGHTS_FILE


def _link_out_same_bytes(name: str) -> Callable[[Path, Path], str]:
    """``name`` replaced by a link to a copy outside the bundle: its hash still matches."""
    def plant(bundle: Path, outside: Path) -> str:
        copy = outside / name
        shutil.move(bundle / name, copy)
        (bundle / name).symlink_to(copy)
        return name
    return plant


@pytest.mark.parametrize("plant", [_link_system_file, _link_out_same_bytes("README.md"),
                                   _link_out_same_bytes(ONNX_FILE),
                                   _link_out_same_bytes(MANIFEST_FILE)],
                         ids=["model.pt to a system file", "README.md out of the bundle",
                              "model.onnx out of the bundle", "manifest.json out of the bundle"])
def test_a_member_that_is_a_symbolic_link_is_refused_by_every_reader(
        bundle: Path, made: tuple[Path, Path, Path], tmp_path: Path,
        plant: Callable[[Path, Path], str], capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "outside").mkdir()
    name = plant(bundle, tmp_path / "outside")
    _every_reader_refuses(bundle, made[2] / "rgb.png",
                          rf"bundle member '{name}' of '.*bundle' is not a regular file inside "
                          r"the bundle \(Too many levels of symbolic links\); bundles hold no "
                          r"symbolic links", capsys)


def test_a_bundle_directory_that_is_a_link_is_allowed(
        bundle: Path, made: tuple[Path, Path, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    link = tmp_path / "link"
    link.symlink_to(bundle, target_is_directory=True)
    digest = bundle_sha256(bundle)
    assert zoo.load(link, expect_sha256=digest) is not None
    assert OnnxClassifier(link, expect_sha256=digest).sha256 == digest
    assert main(["verify", str(link), "--expect-sha256", digest]) == 0
    assert main(["predict", str(link), str(made[2] / "rgb.png")]) == 0
    assert capsys.readouterr().out.count("rgb.png") == 1


# -- control characters ---------------------------------------------------------------------


@pytest.mark.parametrize(("where", "value", "message"), [
    ("class", "dog\x1b[2J\ncat 1.000", r"names class 1 'dog\\x1b\[2J\\ncat 1\.000', which holds "
                                       r"the control character '\\x1b'; accepted: printable text"),
    ("class", "bird\u202e", r"names class 1 'bird\\u202e'|names class 1 'bird\u202e'"),
    ("source", "data\r\nzoo: ok", r"holds the control character '\\r' in training\.source "
                                  r"\('data\\r\\nzoo: ok'\); accepted: printable text"),
    ("hparam key", "n\x07", r"holds the control character '\\x07' in a key of model\.hparams "
                            r"\('n\\x07'\)"),
])
def test_control_characters_in_a_manifest_are_refused_by_every_reader(
        bundle: Path, made: tuple[Path, Path, Path], where: str, value: str, message: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    def edit(raw: dict[str, Any]) -> None:
        if where == "class":
            raw["classes"][1] = value
        elif where == "source":
            raw["training"]["source"] = value
        else:
            raw["model"]["hparams"][value] = 1
    _edit(bundle, edit)
    _every_reader_refuses(bundle, made[2] / "rgb.png", message, capsys)


def test_a_manifest_architecture_that_is_no_name_is_refused(bundle: Path) -> None:
    def edit(raw: dict[str, Any]) -> None:
        raw["architecture"] = raw["model"]["architecture"] = "Net Evil"
    _edit(bundle, edit)
    with pytest.raises(BundleError, match=r"names architecture 'Net Evil'; accepted: a name of "
                                          r"letters, digits"):
        OnnxClassifier(bundle)


def test_class_folders_with_control_characters_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_images(root / "cat")
    write_images(root / "dog\x1b[31m")
    spec = zoo.default_registry().get_dataset("imagefolder")
    request = zoo.DatasetRequest(data_dir=root, cache_dir=tmp_path / "cache", quiet=True)
    with pytest.raises(DataError, match=r"has class folder 1 'dog\\x1b\[31m', which holds the "
                                        r"control character '\\x1b'; accepted: printable names"):
        load_dataset(spec, request)


def test_a_run_whose_classes_hold_control_characters_is_not_exported(
        made: tuple[Path, Path, Path], tmp_path: Path) -> None:
    run = Path(shutil.copytree(made[0], tmp_path / "run"))
    raw = json.loads((run / SUMMARY_FILE).read_text())
    raw["data"]["classes"][2] = "bird\nzoo: ok"
    (run / SUMMARY_FILE).write_text(json.dumps(raw))
    with pytest.raises(ExportError, match=r"cannot export Net: class 2 'bird\\nzoo: ok' holds "
                                          r"the control character '\\n'"):
        export(run, out=tmp_path / "b")
    assert not (tmp_path / "b").exists()


# -- the graph's identity -------------------------------------------------------------------


def _set_metadata(bundle: Path, changes: dict[str, str | None]) -> None:
    graph = onnx.load(str(bundle / ONNX_FILE))
    props = {p.key: p.value for p in graph.metadata_props}
    for key, value in changes.items():
        if value is None:
            props.pop(key, None)
        else:
            props[key] = value
    del graph.metadata_props[:]
    for key, value in props.items():
        graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, str(bundle / ONNX_FILE))
    _rehash(bundle, ONNX_FILE)


def test_the_exporter_stamps_the_graph_with_the_manifests_model(bundle: Path) -> None:
    props = {p.key: p.value for p in onnx.load(str(bundle / ONNX_FILE)).metadata_props}
    assert props == {"zoo.architecture": "Net", "zoo.hparams": '{"n_hidden":32}',
                     "zoo.input_shape": "3x32x32", "zoo.num_classes": "3"}


def test_a_graph_of_another_architecture_is_refused(
        bundle: Path, made: tuple[Path, Path, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    other = export("NetWidth", out=tmp_path / "other", overrides={"num_classes": 3}).path
    shutil.copy(other / ONNX_FILE, bundle / ONNX_FILE)  # same shapes, another model
    _rehash(bundle, ONNX_FILE)
    _every_reader_refuses(bundle, made[2] / "rgb.png",
                          r"model\.onnx is a graph of architecture 'NetWidth', but the manifest "
                          r"says 'Net': the graph is not the manifest's model", capsys,
                          load=False)


@pytest.mark.parametrize(("key", "value", "shown"), [
    ("zoo.hparams", '{"n_hidden":16}', r"hparams '\{\"n_hidden\":16\}'"),
    ("zoo.num_classes", "4", r"num classes '4'"),
    ("zoo.input_shape", "1x32x32", r"input shape '1x32x32'"),
])
def test_every_stamped_field_is_checked(bundle: Path, key: str, value: str, shown: str) -> None:
    _set_metadata(bundle, {key: value})
    with pytest.raises(BundleError, match=rf"is a graph of {shown}, but the manifest says"):
        OnnxClassifier(bundle)


def test_graphs_of_older_exports_without_a_stamp_still_load(bundle: Path) -> None:
    _set_metadata(bundle, {k: None for k in ("zoo.architecture", "zoo.hparams",
                                             "zoo.input_shape", "zoo.num_classes")})
    assert not onnx.load(str(bundle / ONNX_FILE)).metadata_props
    assert OnnxClassifier(bundle).manifest.architecture == "Net"
    _set_metadata(bundle, {"zoo.hparams": '{ "n_hidden": 32 }'})  # the same JSON, spelt apart
    OnnxClassifier(bundle)
