"""``zoo train`` as a command: bad values refused before the trainer (and torch) start,
and the line it prints at the end."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from zoo.cli import main


def test_bad_values_are_refused_before_the_trainer_starts(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the trainer started")

    monkeypatch.setattr("zoo.trainer.loop.train", never)
    for args, message in (
            (["--set", "n_chans1=-1"], "n_chans1"),
            (["--option", "size=1"], "size"),
            (["--dataset", "nope"], "nope"),
            (["--lr", "-1"], "lr")):
        assert main(["train", "Net", *args]) == 1
        err = capsys.readouterr().err
        assert err.startswith("zoo: error: ") and message in err


def test_the_last_line_names_the_run_its_epochs_and_best_accuracy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
    run = tmp_path / "run"
    assert main(["train", "Net", "--epochs", "2", "--option", "size=96",
                 "--option", "num_classes=2", "--set", "in_height=16",
                 "--set", "in_width=16", "--batch-size", "32", "--progress", "none",
                 "--num-threads", "1", "--out", str(run)]) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    match = re.fullmatch(rf"{re.escape(str(run))}: 2 epoch\(s\), best val acc (0\.\d{{4}}|"
                         rf"1\.0000) \(epoch ([12])\), \d+\.\ds", out)
    assert match is not None, out
    from zoo.spec.run import read_summary

    best = read_summary(run).best
    assert best is not None
    assert (match[1], int(match[2])) == (f"{best.val_acc:.4f}", best.epoch)


@pytest.mark.parametrize(("text", "value"), [
    ("3", 3), ("0.5", 0.5), ("true", True), ("True", True), ("FALSE", False),
    ("[1, 2]", [1, 2]), ("maybe", "maybe"), ("", "")])
def test_set_values_are_json_or_a_bool_in_any_case_or_the_string(text: str, value: Any) -> None:
    from zoo.cli.options import parse_value

    parsed = parse_value(text)
    assert parsed == value and type(parsed) is type(value)
