"""What ``zoo export`` exports, and the name its bundle gets by default.

Three kinds of source:

* a run directory: its ``best`` or ``last`` checkpoint, with the run's classes,
  normalization and validation samples; the bundle is named after the run
  (``Net-imagefolder-20261206-074100``, or ``<Arch>-<dataset>-<run folder>``), so
  that two runs never take each other's name;
* a bundle: a bundle directory, a declared name (``Net-cifar2``) or an architecture
  with ``weights=TAG``: its weights, classes, normalization and training record,
  written again (in other formats, say); named ``<bundle>-<formats>``;
* an architecture name with overrides: fresh weights from ``seed``, identity
  normalization and classes ``class0``...; named ``<Arch>-untrained-seed<N>``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.errors import BundleNotFoundError, ExportError, UnknownArchitectureError, reason
from zoo.host.registry import Registry
from zoo.models.load import load_bundle
from zoo.spec.architecture import ModelConfig
from zoo.spec.manifest import MANIFEST_FILE, TrainingInfo, check_normalization
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
from zoo.util.portable import portable_recipe, portable_source

#: The largest input an export accepts, in pixels per channel (height x width): the
#: verification runs the model at batch 7 and the graph is built for it.
MAX_EXPORT_PIXELS = 1024 * 1024


@dataclass
class ExportSource:
    """A model to export, with everything its bundle records about it."""

    model: torch.nn.Module
    config: ModelConfig
    classes: tuple[str, ...]
    normalization: Normalization
    training: TrainingInfo | None
    samples: np.ndarray | None  # uint8 validation images (a run's), for the checks
    name: str  # the bundle's default name
    summary: RunSummary | None = None  # a run's record, for the model card's pictures
    run_dir: Path | None = None
    recipe: Mapping[str, Any] | None = None  # the run's configuration, its own paths if local


def identity_normalization(channels: int) -> Normalization:
    return Normalization(mean=(0.0,) * channels, std=(1.0,) * channels)


def training_info(summary: RunSummary, checkpoint: str) -> TrainingInfo:
    """What a bundle records of the run its weights come from (no paths of this machine)."""
    data = summary.data
    info = TrainingInfo(
        # the data directory's last component only: a bundle is shared
        dataset=data.dataset, source=portable_source(data.source), content_key=data.content_key,
        split=data.split, train_size=data.train_size, val_size=data.val_size, seed=summary.seed,
        device=summary.device, epochs_completed=summary.epochs_completed,
        train_seconds=summary.train_seconds, recipe=portable_recipe(summary.train_config),
        checkpoint=checkpoint,
        best=summary.best, last=summary.last)
    return info.model_copy(update={"val_images": info.accuracy_split})


def run_bundle_name(run_dir: Path, summary: RunSummary) -> str:
    """The run's folder name where it starts with the architecture (as ``zoo train``'s
    default folders do), else ``<Arch>-<dataset>-<folder>``."""
    arch, folder = summary.model.architecture, run_dir.resolve().name
    return folder if folder.startswith(f"{arch}-") else f"{arch}-{summary.data.dataset}-{folder}"


def _samples(run_dir: Path, summary: RunSummary) -> np.ndarray | None:
    path = run_dir / VAL_SAMPLES
    if not path.is_file():
        return None
    try:
        samples = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:  # damaged, or pickled objects
        raise ExportError(f"{path} is not a plain array of images: {reason(exc)}") from None
    if not isinstance(samples, np.ndarray):  # an .npz archive under the .npy name
        samples.close()
        raise ExportError(f"{path} is not a plain array of images: it is an .npz archive")
    expected = summary.model.input_shape.as_tuple()
    if samples.ndim != 4 or samples.shape[1:] != expected or samples.dtype != np.uint8:
        raise ExportError(f"{path} holds {samples.dtype} {samples.shape}; expected "
                          f"uint8 (N, {', '.join(map(str, expected))})")
    return samples if len(samples) else None


def _from_run(path: Path, registry: Registry, checkpoint: str) -> ExportSource:
    which = {"best": BEST_CHECKPOINT, "last": LAST_CHECKPOINT}.get(checkpoint)
    if which is None:
        raise ExportError(f"unknown checkpoint {checkpoint!r}; accepted: best, last")
    model, summary, _ = load_run_model(path, registry, which, command="zoo export",
                                       error=ExportError)
    return ExportSource(model, summary.model, tuple(summary.data.classes),
                        summary.normalization, training_info(summary, which),
                        _samples(path, summary), run_bundle_name(path, summary), summary, path,
                        recipe=summary.train_config)


def _from_bundle(bundle: str | Path, registry: Registry, weights: str | None,
                 formats: Sequence[str]) -> ExportSource:
    loaded = load_bundle(bundle, registry=registry, weights=weights)
    m = loaded.manifest
    name = f"{loaded.path.resolve().name}-{'-'.join(formats)}"
    return ExportSource(loaded.model, m.model, m.classes, m.normalization, m.training, None,
                        name, recipe=None if m.training is None else m.training.recipe)


def load_source(source: str | Path, overrides: Mapping[str, Any], registry: Registry,
                checkpoint: str, seed: int, *, weights: str | None = None,
                formats: Sequence[str] = ("onnx",)) -> ExportSource:
    """The model ``source`` names, with what its bundle records (see the module docstring)."""
    path = Path(source)
    text = str(source)
    if (path / SUMMARY_FILE).is_file():
        if overrides or weights is not None:
            what = "--set overrides" if overrides else "--weights"
            raise ExportError(f"{what} apply to an architecture name, not to run directory "
                              f"{text!r} (its hyperparameters are fixed)")
        return _from_run(path, registry, checkpoint)
    if not (path / MANIFEST_FILE).is_file() and (path.exists() or not is_bare_name(source)):
        if not path.exists():
            raise ExportError(f"run directory or bundle {text!r} does not exist")
        if not is_bare_name(source) or not _is_architecture(text, registry):
            raise ExportError(f"{text!r} is neither a run directory (it has no {SUMMARY_FILE}) "
                              f"nor a bundle (it has no {MANIFEST_FILE})")
    architecture = is_bare_name(source) and weights is None and _is_architecture(text, registry)
    if not architecture:
        if overrides:
            raise ExportError(f"--set overrides apply to an architecture name, not to the bundle "
                              f"{text!r} (its hyperparameters are fixed)")
        try:
            return _from_bundle(source, registry, weights, formats)
        except BundleNotFoundError:
            if not is_bare_name(source) or weights is not None:
                raise
            registry.get_spec(text)  # an unknown architecture: the usual error, with a hint
            raise
    config = registry.resolve(text, **dict(overrides))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = registry.build(config)
    shape = config.input_shape
    return ExportSource(model, config, tuple(f"class{i}" for i in range(config.num_classes)),
                        identity_normalization(shape.channels), None, None,
                        f"{config.architecture}-untrained-seed{seed}")


def _is_architecture(name: str, registry: Registry) -> bool:
    try:
        registry.get_spec(name)
    except UnknownArchitectureError:
        return False
    return True


def checked_classes_and_normalization(src: ExportSource, source: str | Path
                                      ) -> tuple[tuple[str, ...], Normalization]:
    """The source's class names and input normalization, checked against its model."""
    config, norm, classes = src.config, src.normalization, src.classes
    what = "the run" if src.run_dir is not None else f"the bundle {str(source)!r}"
    if len(classes) != config.num_classes:
        raise ExportError(f"{what} names {len(classes)} classes but its model has "
                          f"{config.num_classes} outputs")
    if len(norm.mean) != config.input_shape.channels:
        raise ExportError(f"{what}'s normalization has {len(norm.mean)} channels but the model "
                          f"takes {config.input_shape.channels}")
    check_normalization(norm, config.input_shape.channels, f"source {str(source)!r}")
    return classes, norm


__all__ = ["MAX_EXPORT_PIXELS", "ExportSource", "checked_classes_and_normalization",
           "identity_normalization", "load_source", "run_bundle_name", "training_info"]
