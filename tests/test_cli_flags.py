"""Every flag reaches the setting it names: zoo train's TrainConfig, zoo export's arguments.

The tables list each flag with a value other than the default and where it must land;
a flag the parser has but a table lacks fails the coverage tests, so a new flag cannot
be added without saying where it goes.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

import zoo.exporter.write
from zoo.cli import build_parser, main
from zoo.cli.train import config_fields
from zoo.spec.training import TrainConfig, validate_config

#: zoo train: flag, its arguments, the TrainConfig field, the value it must hold.
TRAIN: list[tuple[str, list[str], str, Any]] = [
    ("--dataset", ["imagefolder"], "dataset", "imagefolder"),
    ("--option", ["size=12"], "dataset_options", {"size": 12}),
    ("--data-dir", ["somewhere"], "data_dir", Path("somewhere")),
    ("--val-dir", ["held-out"], "val_dir", Path("held-out")),
    ("--val-split", ["0.25"], "val_split", 0.25),
    ("--strict", [], "strict", True),
    ("--no-download", [], "download", False),
    ("--cache-dir", ["cache"], "cache_dir", Path("cache")),
    ("--epochs", ["7"], "epochs", 7),
    ("--batch-size", ["48"], "batch_size", 48),
    ("--optimizer", ["adamw"], "optimizer", "adamw"),
    ("--lr", ["0.003"], "lr", 0.003),
    ("--momentum", ["0.5"], "momentum", 0.5),
    ("--nesterov", [], "nesterov", True),
    ("--no-nesterov", [], "nesterov", False),
    ("--weight-decay", ["0.01"], "weight_decay", 0.01),
    ("--schedule", ["cosine"], "schedule", "cosine"),
    ("--label-smoothing", ["0.2"], "label_smoothing", 0.2),
    ("--flip", [], "flip", True),
    ("--no-flip", [], "flip", False),
    ("--crop-padding", ["3"], "crop_padding", 3),
    ("--grad-clip", ["0.5"], "grad_clip", 0.5),
    ("--seed", ["11"], "seed", 11),
    ("--device", ["cpu"], "device", "cpu"),
    ("--amp", ["bf16"], "amp", "bf16"),
    ("--channels-last", [], "channels_last", True),
    ("--no-channels-last", [], "channels_last", False),
    ("--num-threads", ["1"], "num_threads", 1),
    ("--tune-allocator", [], "tune_allocator", True),
    ("--no-tune-allocator", [], "tune_allocator", False),
    ("--batch-split", ["2"], "batch_split", 2),
    ("--eval-batch-size", ["96"], "eval_batch_size", 96),
    ("--out", ["runs/x"], "out", Path("runs/x")),
    ("--resume", ["runs/y"], "resume", Path("runs/y")),
    ("--init-from", ["runs/z"], "init_from", Path("runs/z")),
    ("--progress", ["log"], "progress", "log"),
    ("--log", ["tensorboard"], "loggers", ["tensorboard"]),
    ("--early-stop-metric", ["val_loss"], "early_stop_metric", "val_loss"),
    ("--set", ["n_hidden=7"], "model", {"n_hidden": 7}),
]
#: zoo train's flags that are not a field: where they act instead.
TRAIN_ELSEWHERE = {"--config", "--print-config", "--book", "--json", "--early-stop-patience"}


def _options(command: str) -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {o for action in sub.choices[command]._actions for o in action.option_strings
            if o.startswith("--") and o != "--help"}


def test_the_train_table_covers_every_flag() -> None:
    assert {flag for flag, *_ in TRAIN} | TRAIN_ELSEWHERE == _options("train")


@pytest.mark.parametrize(("flag", "values", "field", "expected"), TRAIN,
                         ids=[flag for flag, *_ in TRAIN])
def test_a_train_flag_sets_its_field(flag: str, values: list[str], field: str,
                                     expected: Any) -> None:
    args = build_parser().parse_args(["train", "Net", flag, *values])
    config = validate_config(config_fields(args))
    assert getattr(config, field) == expected
    default = getattr(validate_config(config_fields(
        build_parser().parse_args(["train", "Net"]))), field)
    if isinstance(expected, bool) and default is not None and default != expected:
        return  # a one-way switch (--strict, --no-download) away from its default
    if isinstance(expected, bool):
        # a --x/--no-x pair: each half must land, and together they set both values
        pair = {e for f, _, fld, e in TRAIN if fld == field}
        assert pair == {True, False}, f"{flag} lacks its --no- half in the table"
        return
    assert default != expected  # so the flag, not the default, is what set it


def test_the_patience_config_file_and_book_flags_land_where_they_say(tmp_path: Path) -> None:
    args = build_parser().parse_args(["train", "Net", "--early-stop-metric", "val_acc",
                                      "--early-stop-patience", "4"])
    assert validate_config(config_fields(args)).early_stop_patience == 4
    config = tmp_path / "c.toml"
    config.write_text("epochs = 9\nlr = 0.02\n")
    args = build_parser().parse_args(["train", "Net", "--config", str(config), "--lr", "0.05"])
    fields = validate_config(config_fields(args))
    assert (fields.epochs, fields.lr) == (9, 0.05)  # the file, then the flags over it
    book = validate_config(config_fields(build_parser().parse_args(
        ["train", "Net", "--book", "--epochs", "2"])))
    assert book.model_dump() == {**TrainConfig.book().model_dump(), "epochs": 2}


#: zoo export: flag, its arguments, the keyword of zoo.export it fills, the value.
EXPORT: list[tuple[str, list[str], str, Any]] = [
    ("--set", ["n_hidden=5"], "overrides", {"n_hidden": 5}),
    ("--out", ["b"], "out", "b"),
    ("--force", [], "force", True),
    ("--opset", ["18"], "opset", 18),
    ("--exporter", ["dynamo"], "exporter", "dynamo"),
    ("--checkpoint", ["last"], "checkpoint", "last"),
    ("--atol", ["0.01"], "atol", 0.01),
    ("--rtol", ["0.02"], "rtol", 0.02),
    ("--seed", ["3"], "seed", 3),
    ("--format", ["pt2"], "formats", "pt2"),
    ("--format-option", ["onnx.exporter=dynamo"], "options", {"onnx": {"exporter": "dynamo"}}),
    ("--weights", ["cifar2"], "weights", "cifar2"),
    ("--quantize", ["int8"], "formats", "onnx,int8"),
    ("--data-dir", ["images"], "data_dir", "images"),
]


def test_the_export_table_covers_every_flag() -> None:
    assert {flag for flag, *_ in EXPORT} | {"--json"} == _options("export")


@pytest.mark.parametrize(("flag", "values", "keyword", "expected"), EXPORT,
                         ids=[flag for flag, *_ in EXPORT])
def test_an_export_flag_reaches_its_keyword(flag: str, values: list[str], keyword: str,
                                            expected: Any, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    seen: dict[str, Any] = {}

    class Stop(Exception):
        pass

    def capture(source: str, **kwargs: Any) -> Any:
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(zoo.exporter.write, "export", capture)
    with pytest.raises(Stop):
        main(["export", "Net", flag, *values])
    assert seen[keyword] == expected
    defaults = {"overrides": {}, "out": None, "force": False, "opset": None, "exporter": None,
                "checkpoint": "best", "atol": 1e-4, "rtol": 1e-3, "seed": 0, "formats": "onnx",
                "options": {}, "weights": None, "data_dir": None}
    assert defaults[keyword] != expected
    assert all(seen[k] == v for k, v in defaults.items() if k != keyword)
