"""``zoo predict`` in process: defaults, bounds, a batch that fails to decode, the JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zoo.cli import main


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("predict")
    (folder / "a_broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    rng = np.random.default_rng(0)
    for name in ("b.png", "c.png"):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / name)
    return folder


def test_one_label_by_default_and_a_failed_batch_does_not_end_the_run(
        images: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # batches of one: the first batch has only the broken file (exit 1: an input was bad)
    assert main(["predict", "Net", str(images), "--batch-size", "1"]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(images / "b.png"),
                                                        str(images / "c.png")]
    assert all(len(line.split("\t")[1].split("  ")) == 1 for line in lines)  # top-1
    assert "a_broken.png" in captured.err


@pytest.mark.parametrize(("flag", "value"), [("--batch-size", "0"), ("--top-k", "0")])
def test_batch_size_and_top_k_are_at_least_one(images: Path, flag: str, value: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", "Net", str(images), flag, value]) == 1
    assert capsys.readouterr().err == f"zoo: error: {flag} must be at least 1, got {value}\n"


def test_the_json_report(images: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", "Net", str(images / "b.png"), "--json", "--top-k", "2"]) == 0
    text = capsys.readouterr().out
    assert text.startswith('{\n  "bundle": ')
    report = json.loads(text)
    assert report["architecture"] == "Net" and report["errors"] == []
    assert [len(p["top"]) for p in report["predictions"]] == [2]
