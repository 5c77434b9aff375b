"""TrainConfig's declared defaults and bounds, field by field: the options `zoo train
--help`, `--print-config` and the docs show (a changed default changes every run)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from zoo.spec.training import MAX_SEED, TrainConfig

DEFAULTS: dict[str, Any] = {
    "dataset": "synthetic", "data_dir": None, "val_dir": None, "val_split": 0.1,
    "strict": False, "download": True, "cache_dir": None, "epochs": 12, "batch_size": 128,
    "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
    "schedule": "onecycle", "warmup_fraction": 0.25, "label_smoothing": 0.05,
    "grad_clip": 2.0, "flip": True, "crop_padding": 0, "seed": 0, "device": "auto",
    "channels_last": None, "amp": "auto", "eval_batch_size": 256, "num_threads": None,
    "tune_allocator": True, "batch_split": None, "sync_batchnorm": False,
    "dist_timeout_s": 300.0, "progress": "auto", "early_stop_metric": None,
    "early_stop_patience": 3, "out": None, "resume": None, "init_from": None,
}

#: field: (values accepted at the edges, values refused just past them)
BOUNDS: dict[str, tuple[tuple[Any, ...], tuple[Any, ...]]] = {
    "val_split": ((0.0, 0.999), (-0.01, 1.0)),
    "epochs": ((1, 100_000), (0, 100_001)),
    "batch_size": ((1, 65_536), (0, 65_537)),
    "lr": ((1e-12,), (0.0, -1.0)),
    "momentum": ((0.0, 0.999), (-0.1, 1.0)),
    "weight_decay": ((0.0,), (-1e-6,)),
    "warmup_fraction": ((0.01, 0.99), (0.0, 1.0)),
    "label_smoothing": ((0.0, 0.99), (-0.1, 1.0)),
    "grad_clip": ((0.0, None), (-1.0,)),
    "crop_padding": ((0, 64), (-1, 65)),
    "seed": ((0, MAX_SEED), (-1, MAX_SEED + 1)),
    "eval_batch_size": ((1,), (0,)),
    "batch_split": ((1, 256, None), (0, 257)),
    "dist_timeout_s": ((0.001,), (0.0,)),
    "early_stop_patience": ((1, 100_000), (0, 100_001)),
    "num_threads": ((1,), (0,)),
    "schedule": (("none", "cosine", "onecycle"), ("linear",)),
    "progress": (("auto", "bar", "log", "none"), ("quiet",)),
}


def test_the_defaults() -> None:
    config = TrainConfig()
    assert {k: getattr(config, k) for k in DEFAULTS} == DEFAULTS
    assert MAX_SEED == 2**44 - 1


@pytest.mark.parametrize("field", sorted(BOUNDS))
def test_the_bounds(field: str) -> None:
    good, bad = BOUNDS[field]
    for value in good:
        assert getattr(TrainConfig(**{field: value}), field) == value
    for value in bad:
        with pytest.raises(ValidationError):
            TrainConfig(**{field: value})


def test_configs_are_frozen_and_refuse_unknown_fields() -> None:
    config = TrainConfig()
    with pytest.raises(ValidationError):
        config.epochs = 3  # type: ignore[misc]
    with pytest.raises(ValidationError, match="extra"):
        TrainConfig(epochz=3)  # type: ignore[call-arg]


def test_the_book_recipe() -> None:
    book = TrainConfig.book()
    assert (book.optimizer, book.lr, book.batch_size, book.momentum, book.nesterov,
            book.weight_decay, book.schedule, book.label_smoothing, book.flip,
            book.crop_padding, book.epochs, book.grad_clip) == (
        "sgd", 1e-2, 64, 0.0, False, 0.0, "none", 0.0, False, 0, 100, None)
    assert TrainConfig.book(epochs=5).epochs == 5
