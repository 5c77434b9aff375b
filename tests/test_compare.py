"""``zoo compare``: each source's own numbers, the reference marked, a chart and a table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import MakeDist, tiny_plugin
from export_helpers import make_run
from PIL import Image
from zoo_chapter8.specs import BOOK_VAL_ACC

import zoo
from zoo.analysis.compare import compare, plugin_references, render_comparison
from zoo.bundles.integrity import open_bundle
from zoo.bundles.store import resolve_bundle
from zoo.cli import main
from zoo.errors import ZooError
from zoo.host.registry import Registry
from zoo.spec.run import read_summary


def test_runs_and_shipped_bundles(tmp_path: Path) -> None:
    run = tmp_path / "net-run"
    make_run(run, "NetDepth")
    result = compare([run, "Net"])
    best = read_summary(run).best
    manifest = open_bundle(resolve_bundle("Net"))
    assert manifest.training is not None and manifest.training.best is not None and best
    shipped = manifest.training.best
    (r_run, r_bundle) = result.rows
    assert (r_run.kind, r_run.name, r_run.architecture) == ("run", "net-run", "NetDepth")
    assert (r_run.epoch, r_run.train_acc, r_run.val_acc) == (best.epoch, best.train_acc,
                                                           best.val_acc)
    assert (r_bundle.kind, r_bundle.architecture, r_bundle.epoch) == ("bundle", "Net",
                                                                      shipped.epoch)
    assert (r_bundle.train_acc, r_bundle.val_acc) == (shipped.train_acc, shipped.val_acc)
    assert (r_run.reference, r_bundle.reference) == (0.90, 0.89) == (
        BOOK_VAL_ACC["NetDepth"], BOOK_VAL_ACC["Net"])
    table = result.to_markdown().splitlines()
    assert table[2] == f"| net-run | NetDepth | 2 | 0.610 | 0.570 | 0.90 | {0.57 - 0.90:+.3f} |"
    assert table[3].startswith(f"| {resolve_bundle('Net').name} | Net | {shipped.epoch} | ")
    assert table[-1].startswith("Reference: Deep Learning with PyTorch")
    out = tmp_path / "chart.png"
    assert render_comparison(result, out) == 2
    assert np.asarray(Image.open(out).convert("RGB"), dtype=np.float32).std() > 0


def test_the_seven_shipped_models_against_the_book() -> None:
    names = sorted(BOOK_VAL_ACC)
    result = compare(names)
    assert [r.architecture for r in result.rows] == names
    assert all(r.reference == BOOK_VAL_ACC[r.architecture] for r in result.rows)


def test_an_architecture_without_reference(make_dist: MakeDist, tmp_path: Path) -> None:
    make_dist("zoo-tiny", "zoo_tiny_cmp", tiny_plugin("TinyCmp", "zoo_tiny_cmp"))
    registry = Registry()
    assert plugin_references(registry, ["TinyCmp", "Net"]) == {"Net": 0.89}
    run = tmp_path / "tiny"
    make_run(run, "TinyCmp")
    result = compare([run], registry=registry)
    assert result.rows[0].reference is None and result.reference_sources == {}
    assert result.to_markdown().splitlines()[-1].endswith("| 0.570 | - | - |")
    assert render_comparison(result, tmp_path / "c.png") == 1


def test_cli_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "r"
    make_run(run, "Net")
    out = tmp_path / "cmp.png"
    assert main(["compare", str(run), "--out", str(out)]) == 0
    assert "| r | Net | 2 | 0.610 | 0.570 | 0.89 | -0.320 |" in capsys.readouterr().out
    assert out.is_file()
    untrained = zoo.export("Net", out=tmp_path / "untrained").path
    with pytest.raises(ZooError, match="was not exported from a run"):
        compare([untrained])
    assert main(["compare", str(tmp_path / "nowhere")]) == 1
    assert "does not exist" in capsys.readouterr().err
