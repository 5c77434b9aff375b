"""Export formats as a hook: ONNX and pt2 through one path, third-party formats beside them."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
from conftest import MakeDist
from export_helpers import CLASSES, make_run

import zoo
from zoo.bundles.integrity import open_bundle, read_manifest, sha256_file
from zoo.cli import main
from zoo.errors import BundleError, DuplicateNameError, ExportError, PluginError, ZooError
from zoo.exporter.pt2 import PT2_FILE
from zoo.exporter.verify import verify_bundle
from zoo.exporter.write import export
from zoo.host.registry import Registry
from zoo.spec.manifest import ONNX_FILE, Manifest

#: A third party's export format: the weights as a numpy archive, written and verified by
#: its own plugin (for readers without torch: the arrays and their names).
SCRIPT_FORMAT = '''
import numpy as np
import zoo
from pydantic import Field


class NpzOptions(zoo.FormatOptions):
    compressed: bool = Field(True, description="np.savez_compressed rather than np.savez.")


@zoo.hookimpl
def zoo_export_formats():
    return [zoo.ExportFormat(name="{name}", summary="state_dict as a numpy .npz archive",
                             files=("npz/weights.npz",), writer="{module}:write",
                             verifier="{module}:verify", options=NpzOptions)]


def write(model, directory, config, *, options, target):
    (directory / "npz").mkdir()
    arrays = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    save = np.savez_compressed if options.compressed else np.savez
    save(directory / "npz" / "weights.npz", **arrays)
    WRITTEN.append((target.name, target.classes, options.compressed))


def verify(model, directory, config, inputs, atol, rtol):
    import torch
    from zoo.exporter.checks import check_outputs
    with np.load(directory / "npz" / "weights.npz", allow_pickle=False) as archive:
        state = {k: torch.from_numpy(archive[k]) for k in archive.files}
    rebuilt = zoo.default_registry().build(config)
    rebuilt.load_state_dict(state)
    rebuilt.eval()
    with torch.no_grad():
        return [check_outputs(name, model(torch.from_numpy(x)).numpy(),
                              rebuilt(torch.from_numpy(x)).numpy(), atol, rtol)
                for name, x in inputs]


WRITTEN = []
'''


def script_plugin(module: str, name: str = "npz") -> str:
    return SCRIPT_FORMAT.replace("{module}", module).replace("{name}", name)


def test_onnx_and_pt2_are_written_verified_and_listed(tmp_path: Path) -> None:
    make_run(tmp_path / "run", "NetBatchNorm")
    result = export(tmp_path / "run", out=tmp_path / "b", formats="onnx,pt2")
    manifest = result.manifest
    record = manifest.formats["pt2"]
    assert record.files == (PT2_FILE,) and record.passed
    # the same inputs as the ONNX checks: random batches of 1 and 7 and the samples
    assert [c.name for c in record.checks] == [c.name for c in manifest.verification.checks]
    assert all(c.max_abs_diff <= 1e-4 and c.top1_agreement == 1.0 for c in record.checks)
    assert manifest.files[PT2_FILE].sha256 == sha256_file(tmp_path / "b" / PT2_FILE)
    assert open_bundle(tmp_path / "b") == manifest
    # what was saved is the model: loaded back, it gives the bundle model's logits
    program = torch.export.load(tmp_path / "b" / PT2_FILE).module()
    model = zoo.load(tmp_path / "b").eval()
    x = torch.randn(5, *manifest.model.input_shape.as_tuple())
    with torch.no_grad():
        torch.testing.assert_close(program(x), model(x), rtol=1e-4, atol=1e-5)


def test_a_tampered_pt2_is_caught_like_the_onnx_file(tmp_path: Path) -> None:
    for name in (PT2_FILE, ONNX_FILE):
        copy = tmp_path / f"copy-{name}"
        export("Net", out=copy, formats="pt2")
        data = bytearray((copy / name).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (copy / name).write_bytes(bytes(data))
        with pytest.raises(BundleError, match=f"{name} does not match its SHA-256"):
            zoo.load(copy)


def test_onnx_is_always_written_and_unknown_formats_are_clear_errors(tmp_path: Path) -> None:
    assert {"onnx", "pt2"} <= set(zoo.default_registry().formats())
    with pytest.raises(ExportError, match=r"^unknown export format 'tflite'; installed: int8, "
                                          r"onnx, pt2, triton"):
        export("Net", out=tmp_path / "b", formats="onnx,tflite")
    assert not (tmp_path / "b").exists()
    manifest = export("Net", out=tmp_path / "b", formats="pt2").manifest  # onnx comes with it
    assert set(manifest.files) >= {ONNX_FILE, PT2_FILE} and list(manifest.formats) == ["pt2"]


def test_old_manifests_without_formats_stay_the_same(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "Net", "--out", str(tmp_path / "b"), "--format", "onnx,pt2"]) == 0
    assert "  pt2: model.pt2 verified (2 checks" in capsys.readouterr().out
    assert main(["verify", str(tmp_path / "b")]) == 0  # zoo verify re-checks pt2 too
    assert "  pt2: model.pt2 verified (2 checks, max abs 0)" in capsys.readouterr().out
    plain = export("Net", out=tmp_path / "plain").manifest
    raw = json.loads((tmp_path / "plain" / "manifest.json").read_text())
    assert "formats" not in raw and plain.formats == {}
    assert read_manifest(tmp_path / "plain") == Manifest.model_validate(raw)


def test_onnx_goes_through_its_declared_writer_with_its_options(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import zoo.exporter.onnx as onnx_format

    calls = []
    real = onnx_format.write_onnx

    def spy(model: torch.nn.Module, directory: Path, config: zoo.ModelConfig, *,
            options: object) -> None:
        calls.append(options)
        real(model, directory, config, options=options)

    monkeypatch.setattr(onnx_format, "write_onnx", spy)  # the writer the core plugin declares
    assert main(["export", "Net", "--out", str(tmp_path / "a"),
                 "--format-option", "onnx.opset=18"]) == 0
    assert "opset 18" in capsys.readouterr().out
    manifest = export("Net", out=tmp_path / "b", opset=16).manifest
    assert [(o.opset, o.exporter) for o in calls] == [(18, "torchscript"), (16, "torchscript")]
    assert manifest.export.opset == 16
    assert onnx.load(str(tmp_path / "b" / ONNX_FILE)).opset_import[0].version == 16
    with pytest.raises(ExportError, match=r"invalid option onnx.opset='x'.*; the onnx format's "
                                          r"options: opset, exporter"):
        export("Net", out=tmp_path / "c", options={"onnx": {"opset": "x"}})
    with pytest.raises(ExportError, match="opset=16 and the onnx option opset=18 disagree"):
        export("Net", out=tmp_path / "c", opset=16, options={"onnx": {"opset": 18}})
    with pytest.raises(ExportError, match=r"options were given for export format 'pt2', which "
                                          r"is not written"):
        export("Net", out=tmp_path / "c", options={"pt2": {}})
    assert not (tmp_path / "c").exists()


def test_the_formats_plugin_cannot_be_blocked(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-p", "no:formats", "list"]) == 1
    err = capsys.readouterr().err
    assert err == ("zoo: error: plugin 'formats' cannot be blocked: every export writes and "
                   "verifies its ONNX graph through the onnx format it declares (drop "
                   "-p no:formats, or formats from $ZOO_BLOCK_PLUGINS)\n")
    with pytest.raises(ZooError, match="cannot be blocked"):
        Registry(environ={"ZOO_BLOCK_PLUGINS": "formats"})


def test_a_third_party_format_is_written_verified_listed_and_reverified(
        tmp_path: Path, make_dist: MakeDist, capsys: pytest.CaptureFixture[str]) -> None:
    make_dist("zoo-npz", "zoo_script", script_plugin("zoo_script"))
    registry = Registry()
    assert registry.plugins_by_key()["zoo_script"].formats == ("npz",)
    assert main(["plugins"]) == 0
    assert "format:npz" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    tail = capsys.readouterr().out.split("\ninstalled formats (")[1].splitlines()
    npz = tail.index(next(line for line in tail if line.startswith("  npz ")))
    assert tail[1].startswith("  onnx ")  # the required format first, then as registered
    assert tail[npz + 1].strip().startswith("from zoo-npz ")
    assert tail[npz + 2].strip() == "options:"
    assert tail[npz + 3].strip().startswith("compressed=true (true|false)")
    make_run(tmp_path / "run", "NetDropout")
    result = export(tmp_path / "run", out=tmp_path / "b", formats="npz",
                    registry=registry, options={"npz": {"compressed": False}})
    import zoo_script  # type: ignore[import-not-found]

    # the writer got its options and the bundle it writes into, by keyword
    assert zoo_script.WRITTEN == [("b", CLASSES, False)]  # not sorted: the run's own order
    record = result.manifest.formats["npz"]
    assert record.passed and record.files == ("npz/weights.npz",)
    assert all(c.max_abs_diff == 0.0 for c in record.checks)  # the same weights, bit for bit
    assert result.manifest.files["npz/weights.npz"].sha256 == sha256_file(
        tmp_path / "b" / "npz" / "weights.npz")
    report = verify_bundle(tmp_path / "b", registry=registry)
    assert report.passed and report.formats["npz"].passed
    assert report.sha256 == result.sha256 and len(report.formats["npz"].checks) == 2
    # a modified archive is refused before any verifier runs
    (tmp_path / "b" / "npz" / "weights.npz").write_bytes(b"PK")
    with pytest.raises(BundleError, match=r"npz/weights\.npz does not match its SHA-256"):
        verify_bundle(tmp_path / "b", registry=registry)
    export(tmp_path / "run", out=tmp_path / "b", formats="npz", registry=registry, force=True)
    # without the plugin, the bundle still loads, but cannot be verified whole
    zoo.load(tmp_path / "b")
    with pytest.raises(BundleError, match="holds export format 'npz', which no installed "
                                          "plugin provides"):
        verify_bundle(tmp_path / "b", registry=Registry(blocked=["zoo_script"]))


def test_a_format_two_plugins_declare_is_a_conflict_naming_both(
        tmp_path: Path, make_dist: MakeDist) -> None:
    make_dist("other-pt2", "other_pt2", script_plugin("other_pt2", name="pt2"))
    make_dist("npz-a", "npz_a", script_plugin("npz_a"))
    make_dist("npz-b", "npz_b", script_plugin("npz_b"))
    registry = Registry()
    conflicts = sorted(registry.conflicts)
    assert len(conflicts) == 2
    # the zoo's own pt2 is kept (its formats plugin cannot be blocked: rename the other)
    assert conflicts[1] == ("export format 'pt2' is the zoo's own (core plugin 'formats'), and "
                            "other-pt2 1.0 (plugin 'other_pt2') registers it too: the zoo's is "
                            "kept; rename it in that plugin")
    assert registry.formats()["pt2"].writer == "zoo.exporter.pt2:write_pt2"
    assert registry.plugins_by_key()["other_pt2"].problems == (conflicts[1],)
    # two other plugins: the name is nobody's
    assert conflicts[0].startswith("export format 'npz' is registered by both npz-a 1.0")
    assert "npz" not in registry.formats() and "onnx" in registry.formats()
    with pytest.raises(DuplicateNameError, match="export format 'npz' is registered by both"):
        export("Net", out=tmp_path / "b", formats="npz", registry=registry)
    assert not (tmp_path / "b").exists()
    export("Net", out=tmp_path / "b", formats="pt2", registry=registry)


@pytest.mark.parametrize(("body", "message"), [
    ("def write(model, directory, config):\n    raise RuntimeError('no space in the cloud')\n",
     "the writer 'zoo_badformat:write' of export format 'bad' from zoo-badformat 1.0 (plugin "
     "'zoo_badformat') raised RuntimeError: no space in the cloud"),
    ("def write(model, directory):\n    pass\n",
     "the writer 'zoo_badformat:write' of export format 'bad' from zoo-badformat 1.0 (plugin "
     "'zoo_badformat') cannot be called as the zoo calls it"),
    ("def write(model, directory, config):\n    pass\n",
     "export format 'bad' did not write bad.bin (as regular files)"),
    ("def write(model, directory, config):\n    import os\n"
     "    os.symlink('/etc/passwd', directory / 'bad.bin')\n",
     "export format 'bad' did not write bad.bin (as regular files)"),
])
def test_a_failing_writer_is_one_error_naming_its_plugin(
        tmp_path: Path, make_dist: MakeDist, capsys: pytest.CaptureFixture[str],
        body: str, message: str) -> None:
    make_dist("zoo-badformat", "zoo_badformat", (
        "import zoo\n\n@zoo.hookimpl\ndef zoo_export_formats():\n"
        "    return [zoo.ExportFormat(name='bad', summary='fails', files=('bad.bin',),\n"
        "            writer='zoo_badformat:write', verifier='zoo_badformat:write')]\n\n" + body))
    with pytest.raises(ZooError) as info:
        export("Net", out=tmp_path / "b", formats="bad", registry=Registry())
    assert str(info.value).startswith(message)
    assert isinstance(info.value, PluginError) == ("raised" in message or "cannot" in message)
    assert not (tmp_path / "b").exists()
    assert main(["export", "Net", "--out", str(tmp_path / "b"), "--format", "bad"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"zoo: error: {message}") and "Traceback" not in err
    assert len(err.splitlines()) == 1


def test_a_format_whose_code_lies_outside_its_plugin_is_dropped(make_dist: MakeDist) -> None:
    make_dist("zoo-sneaky", "zoo_sneaky", (
        "import zoo\n\n@zoo.hookimpl\ndef zoo_export_formats():\n"
        "    return [zoo.ExportFormat(name='sneaky', summary='runs os.system',\n"
        "            files=('x.bin',), writer='os:system', verifier='zoo_sneaky:v')]\n"))
    registry = Registry()
    assert "sneaky" not in registry.formats()
    [problem] = registry.plugins_by_key()["zoo_sneaky"].problems
    assert problem == ("zoo_export_formats() returned an invalid spec 'sneaky' (dropped): writer "
                       "'os:system' is outside the plugin's own package 'zoo_sneaky'; a "
                       "plugin's code must live in it")
