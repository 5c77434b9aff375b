"""What ``zoo export`` exports: a run's checkpoint with its data's classes and samples, or
an architecture by name with fresh weights."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.errors import ExportError, UnknownArchitectureError, reason
from zoo.host.registry import Registry
from zoo.spec.architecture import ModelConfig
from zoo.spec.run import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    SUMMARY_FILE,
    VAL_SAMPLES,
    Normalization,
    RunSummary,
)
from zoo.trainer.checkpoint import load_run_model
from zoo.util.paths import is_bare_name

#: The largest input an export accepts, in pixels per channel (height x width): the
#: verification runs the model at batch 7 and the graph is built for it.
MAX_EXPORT_PIXELS = 1024 * 1024


@dataclass
class ExportSource:
    model: torch.nn.Module
    config: ModelConfig
    summary: RunSummary | None
    checkpoint: str | None
    samples: np.ndarray | None
    name: str
    run_dir: Path | None = None


def identity_normalization(channels: int) -> Normalization:
    return Normalization(mean=(0.0,) * channels, std=(1.0,) * channels)


def load_source(source: str | Path, overrides: Mapping[str, Any], registry: Registry,
                 checkpoint: str, seed: int) -> ExportSource:
    path = Path(source)
    text = str(source)
    if (path / SUMMARY_FILE).is_file() or not is_bare_name(source):
        if overrides:
            raise ExportError("--set overrides apply to an architecture name, not to run "
                              f"directory {str(source)!r} (its hyperparameters are fixed)")
        if not path.exists():
            raise ExportError(f"run directory {str(source)!r} does not exist")
        if not (path / SUMMARY_FILE).is_file():
            raise ExportError(f"{str(source)!r} is not a run directory (it has no {SUMMARY_FILE}) "
                              "nor an architecture name")
        which = {"best": BEST_CHECKPOINT, "last": LAST_CHECKPOINT}.get(checkpoint)
        if which is None:
            raise ExportError(f"unknown checkpoint {checkpoint!r}; accepted: best, last")
        model, summary, _ = load_run_model(path, registry, which, command="zoo export",
                                           error=ExportError)
        samples = None
        sample_path = path / VAL_SAMPLES
        if sample_path.is_file():
            try:
                samples = np.load(sample_path, allow_pickle=False)
            except (ValueError, OSError, EOFError) as exc:  # damaged, or pickled objects
                raise ExportError(f"{sample_path} is not a plain array of images: "
                                  f"{reason(exc)}") from None
            expected = summary.model.input_shape.as_tuple()
            if samples.ndim != 4 or samples.shape[1:] != expected or samples.dtype != np.uint8:
                raise ExportError(f"{sample_path} holds {samples.dtype} {samples.shape}; expected "
                                  f"uint8 (N, {', '.join(map(str, expected))})")
            if len(samples) == 0:
                samples = None
        return ExportSource(model, summary.model, summary, which, samples,
                       f"{summary.model.architecture}-{summary.data.dataset}", path)
    try:
        config = registry.resolve(text, **dict(overrides))
    except UnknownArchitectureError as exc:
        if path.is_dir():
            raise ExportError(f"{text!r} is neither a run directory (it has no {SUMMARY_FILE}) "
                              f"nor an architecture name ({exc})") from None
        raise
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = registry.build(config)
    return ExportSource(model, config, None, None, None, config.architecture)


__all__ = ["MAX_EXPORT_PIXELS", "ExportSource", "identity_normalization", "load_source"]
