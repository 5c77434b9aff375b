"""The first hour with the zoo: shell completion of names, the formats in ``zoo export --help``,
a plugin that hangs, ``zoo new-plugin`` names, killed exports, the compare chart's title."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MakeDist, tiny_plugin

import zoo
from zoo.cli import build_parser, completers, main
from zoo.host import calls
from zoo.host.registry import Registry

HANGS = tiny_plugin("Hangs", "zoo_hangs").replace(
    "def zoo_architectures():\n", "def zoo_architectures():\n    threading.Event().wait()\n"
) + '''

@zoo.hookimpl
def zoo_datasets():
    raise AssertionError("a plugin that hung is not called again")
'''
HANGS = "import threading\n" + HANGS


def test_a_listing_hook_that_never_returns_fails_its_plugin_only(
        make_dist: MakeDist, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    make_dist("zoo-hangs", "zoo_hangs", HANGS)
    monkeypatch.setattr(calls, "LISTING_TIMEOUT_S", 0.2)
    assert main(["list", "Net*"]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[1].startswith("Net ")
    assert captured.err == (
        "zoo: warning: zoo-hangs 1.0 (plugin 'zoo_hangs'): zoo_architectures() did not return "
        "within 0.2 s; nothing from this plugin's listing hooks was registered (see 'zoo "
        "plugins')\n")
    registry = Registry(listing_timeout=0.1)
    assert registry.listing_timeout == 0.1 and "Net" in registry.list_models()
    info = registry.plugins_by_key()["zoo_hangs"]
    assert info.status == "partial" and info.architectures == () and info.datasets == ()


def test_the_process_exits_though_a_listing_hook_still_runs(make_dist: MakeDist,
                                                            tmp_path: Path) -> None:
    site = make_dist("zoo-hangs", "zoo_hangs", HANGS)
    code = ("import sys; from zoo.host import calls; calls.LISTING_TIMEOUT_S = 0.2\n"
            "from zoo.cli import main; sys.exit(main(['list', 'Net']))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *sys.path])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.splitlines()[1].startswith("Net ")
    assert "did not return within 0.2 s" in done.stderr


@pytest.mark.parametrize("name", ["tiny\n", "tiny_", "tiny__net", "_tiny", "9lives", "t" * 41])
def test_new_plugin_refuses_names_that_make_broken_distributions(
        name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["new-plugin", name, "--dir", str(tmp_path / "p")]) == 1
    assert capsys.readouterr().err == (
        f"zoo: error: plugin name {name!r} is not valid; use up to 40 lower-case letters and "
        "digits, starting with a letter, with single underscores between them (e.g. "
        "tiny_vgg)\n")
    assert list(tmp_path.iterdir()) == []


def test_the_next_export_removes_what_killed_exports_left_beside_it(tmp_path: Path) -> None:
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout)
    exports = tmp_path / "exports"
    killed = exports / f".Net-old-name.zoo-{dead}-x1.tmp"
    (killed / "model.onnx").parent.mkdir(parents=True)
    (killed / "model.onnx").write_bytes(b"half")
    swapped = exports / f".Other.zoo-{dead}-x2.old"
    swapped.mkdir()
    live = exports / f".Busy.zoo-{os.getppid()}-x3.tmp"  # a process still writing
    live.mkdir()
    mine = exports / ".notes.zoo-backup"
    mine.write_text("not a temporary")
    zoo.export("Net", out=exports / "Net-new-name")
    assert sorted(p.name for p in exports.iterdir()) == [live.name, mine.name, "Net-new-name"]


def test_export_help_lists_the_installed_formats(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    out = capsys.readouterr().out
    tail = out[out.index("\ninstalled formats (") + 1:].splitlines()
    assert tail == [
        "installed formats (--format NAME, --format-option NAME.KEY=VALUE):",
        "  onnx    ONNX graph with a dynamic batch axis (onnxruntime) (always written)",
        "          options:",
        "            opset=none (int 1..100, or none) ONNX opset (default: 17, or the",
        "              lowest the exporter produces above it).",
        "            exporter=torchscript (torchscript|dynamo) torch.onnx.export with",
        "              dynamo=False (torchscript: 20-30x faster here) or dynamo=True",
        "              (opsets 18 and up).",
        "  pt2     torch.export ExportedProgram (torch.export.load)",
        "          options: none",
        "  triton  Triton model repository (tritonserver --model-repository=BUNDLE/triton)",
        "          options:",
        "            max_batch_size=64 (int 1..65536) Triton's max_batch_size.",
        "            max_queue_delay_us=500 (int 0..10000000) dynamic_batching's",
        "              max_queue_delay_microseconds (how long Triton waits to fill a",
        "              batch).",
        "            instance_count=1 (int 1..256) Model instances on the CPU.",
        "  int8    int8 ONNX graph (static QDQ, calibrated on training images; refused if it "
        "loses accuracy on the held-out split)",
        "          options:",
        "            calibration_images=512 (int 1..100000) Training images its",
        "              activation ranges are calibrated on.",
        "            activations=uint8 (uint8|int8) Activation type (uint8 x int8",
        "              weights: the operand order of VNNI and AVX2 integer dot",
        "              products).",
        "            max_drop_points=0.5 (float 0..100) The most top-1 accuracy (points)",
        "              it may lose on the held-out split.",
        "            reduce_range=true (true|false) 7-bit weights (onnxruntime's",
        "              reduce_range): sums no CPU overflows, where 8-bit ones overflow",
        "              x86's 16-bit sums without VNNI (AVX2); false only for CPUs with",
        "              VNNI, AMX or Arm's dot product."]


def test_export_help_is_computed_only_when_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> Registry:
        raise AssertionError("the registry is not built to parse")

    monkeypatch.setattr("zoo.host.registry.default_registry", boom)
    args = build_parser().parse_args(["export", "Net", "--format", "pt2"])
    assert args.formats == "pt2"


def _args(*argv: str) -> argparse.Namespace:
    return argparse.Namespace(plugin_options=[], **dict(a.split("=", 1) for a in argv))


def test_completers_name_what_is_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    assert completers.architectures("NetR", _args()) == ["NetRes", "NetResDeep"]
    assert completers.architectures("Net", argparse.Namespace(
        plugin_options=["no:chapter8"])) == []
    assert completers.datasets("", _args()) == ["cifar10", "cifar2", "imagefolder", "synthetic"]
    assert completers.set_keys("n", _args("name=NetResDeep")) == [
        "n_blocks=", "n_chans1=", "n_hidden=", "num_classes="]
    assert completers.set_keys("in_", _args("source=Net")) == [
        "in_channels=", "in_height=", "in_width="]
    assert completers.set_keys("", _args("name=NoSuchNet")) == []  # never an error
    assert completers.dataset_options("", _args("dataset=synthetic")) == [
        "noise=", "num_classes=", "size="]
    assert completers.dataset_options("", _args("dataset=imagefolder")) == ["cache="]
    assert completers.dataset_options("", _args()) == ["noise=", "num_classes=", "size="]
    assert completers.formats("onnx,", _args()) == ["onnx,int8", "onnx,pt2", "onnx,triton"]
    assert completers.format_options("onnx.o", _args()) == ["onnx.opset="]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "Net-run").mkdir()
    assert completers.bundles("Net-", _args()) == ["Net-cifar2", "Net-run/"]
    assert completers.models("NetW", _args()) == ["NetWidth", "NetWidth-cifar2"]


def test_completion_answers_the_shell_with_names() -> None:
    line = "zoo train NetResDeep --set n_b"
    env = {**os.environ, "_ARGCOMPLETE": "1", "COMP_LINE": line, "COMP_POINT": str(len(line)),
           "_ARGCOMPLETE_IFS": "\n", "_ARGCOMPLETE_STDOUT_FILENAME": "/dev/stdout"}
    done = subprocess.run([sys.executable, "-m", "zoo"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["n_blocks="]


def test_the_compare_chart_title_fits_the_figure() -> None:
    from zoo.analysis.compare import compare, comparison_figure

    for sources in (["Net"], ["Net", "NetRes", "NetDepth"]):
        fig = comparison_figure(compare(sources))
        renderer = fig.canvas.get_renderer()
        title = fig.axes[0].title
        box = title.get_window_extent(renderer)
        assert "reference: Deep Learning with" in title.get_text().replace("\n", " ")
        assert 0 <= box.x0 < box.x1 <= fig.bbox.width and 0 < box.y0 < box.y1 <= fig.bbox.height

