"""``TrainConfig``: everything a training run is configured by (pydantic, no torch import).

Filled from a JSON or TOML file (:func:`load_config_file`), CLI flags and
``--set key=value`` model overrides, and written back as the TOML file ``zoo train
--config`` reads (:func:`config_toml`: ``tomli-w`` writes the values; TOML has no
null, so an unset field is written as a comment line, and ``grad_clip = None``
(off) as its equivalent ``0.0``). The defaults are the zoo's fast recipe;
:meth:`TrainConfig.book` gives the book's recipe (plain SGD, lr 1e-2, batch 64).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, Literal

import tomli_w
import tomllib
from pydantic import ConfigDict, Field, ValidationError

from zoo.errors import ZooError
from zoo.spec.architecture import Recipe
from zoo.spec.numbers import NoBoolNumbers
from zoo.util.threads import max_threads

Device = Literal["auto", "cpu", "cuda", "mps"]

#: The largest seed: the trainer derives its generators' seeds as about seed x 1e6,
#: which must stay below 2**64 (torch's limit).
MAX_SEED = 2**44 - 1
#: The largest config file :func:`load_config_file` reads.
MAX_CONFIG_BYTES = 1024 * 1024


class TrainConfig(NoBoolNumbers):
    """A training run's configuration; unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # what to train on
    model: dict[str, Any] = Field(default_factory=dict,
                                  description="Architecture overrides (hyperparameters, "
                                              "in_channels, in_height, in_width, num_classes).")
    dataset: str = Field("synthetic", description="A registered dataset name.")
    dataset_options: dict[str, Any] = Field(default_factory=dict,
                                            description="The dataset's own options.")
    data_dir: Path | None = Field(None, description="Data directory (or download location).")
    val_dir: Path | None = Field(None, description="Separate validation directory.")
    val_split: float = Field(0.1, ge=0.0, lt=1.0,
                             description="Held-out fraction without val_dir.")
    strict: bool = Field(False, description="Fail on unreadable images instead of skipping.")
    download: bool = Field(True, description="Allow downloading datasets.")
    cache_dir: Path | None = Field(None, description="Decoded-image cache directory.")
    # recipe
    epochs: int = Field(12, ge=1, le=100_000, description="Passes over the training split.")
    batch_size: int = Field(128, ge=1, le=65_536, description="Per process (rank) batch size.")
    optimizer: Literal["sgd", "adam", "adamw"] = Field("sgd", description="The optimizer.")
    lr: float = Field(0.1, gt=0.0, description="Peak learning rate.")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum.")
    nesterov: bool = Field(True, description="Nesterov momentum (SGD, momentum > 0).")
    weight_decay: float = Field(5e-4, ge=0.0, description="L2 weight decay (not on biases "
                                "and BatchNorm).")
    schedule: Literal["none", "cosine", "onecycle"] = Field(
        "onecycle", description="Learning-rate schedule (none: constant lr).")
    warmup_fraction: float = Field(0.25, gt=0.0, lt=1.0, description="One-cycle warm-up share.")
    label_smoothing: float = Field(0.05, ge=0.0, lt=1.0,
                                   description="Cross-entropy label smoothing.")
    grad_clip: float | None = Field(2.0, ge=0.0,
                                     description="Clip the gradient norm (0 or None: off).")
    flip: bool = Field(True, description="Random horizontal flips.")
    crop_padding: int = Field(0, ge=0, le=64,
                              description="Random crop after zero padding (0: off).")
    seed: int = Field(0, ge=0, le=MAX_SEED,
                      description="Seed of the split, init, batches and augmentation.")
    # execution
    device: Device = Field("auto", description="auto: CUDA, then MPS, then the CPU.")
    channels_last: bool | None = Field(None, description="None: on for CPU and CUDA.")
    amp: Literal["auto", "off", "bf16", "fp16"] = Field(
        "auto", description="Mixed precision: CUDA (auto: bf16 where supported, else fp16); "
                            "CPU: bf16 autocast (auto: off, fp16 refused).")
    eval_batch_size: int = Field(256, ge=1, description="Validation batch size.")
    num_threads: int | None = Field(
        None, ge=1, le=max_threads(), description="torch threads on CPU (at most 4 per core).")
    tune_allocator: bool = Field(
        True, description="CPU on Linux: keep freed memory in the process instead of "
                          "returning it to the OS every step (avoids page faults).")
    batch_split: int | None = Field(
        None, ge=1, le=256,
        description="CPU: train each batch as this many parts on parallel threads, for "
                    "models whose samples are independent (None: auto, the model's own "
                    "zoo_batch_split, else one per thread with at least 32 samples each; "
                    "1: off).")
    sync_batchnorm: bool = Field(False, description="SyncBatchNorm under DDP on CUDA.")
    dist_timeout_s: float = Field(300.0, gt=0, description="DDP collective timeout.")
    progress: Literal["auto", "bar", "log", "none"] = Field(
        "auto", description="A bar on a terminal, log lines otherwise (auto), or none.")
    loggers: list[Literal["tensorboard"]] = Field(
        default_factory=list, description="Extra loggers of the run (tensorboard: event files "
                                          "in RUN/tensorboard; needs the tensorboard extra).")
    early_stop_metric: Literal["val_acc", "val_loss", "train_acc", "train_loss"] | None = Field(
        None, description="Stop when this metric has not improved for early_stop_patience "
                          "epochs (None: off).")
    early_stop_patience: int = Field(3, ge=1, le=100_000,
                                     description="Epochs without improvement before stopping.")
    out: Path | None = Field(None, description="Run directory (default runs/ARCH-DATA-TIME).")
    resume: Path | None = Field(None, description="Run directory to resume.")
    init_from: Path | None = Field(
        None, description="Start a new run from this run's best weights (fresh optimizer and "
                          "schedule), e.g. to train a finished run longer.")

    @classmethod
    def book(cls, **fields: Any) -> TrainConfig:
        """The book's recipe: SGD lr 1e-2, batch 64; no momentum, decay, schedule, augmentation."""
        base: dict[str, Any] = dict(optimizer="sgd", lr=1e-2, batch_size=64, momentum=0.0,
                                    nesterov=False, weight_decay=0.0, schedule="none",
                                    label_smoothing=0.0, flip=False, crop_padding=0, epochs=100,
                                    grad_clip=None)
        base.update(fields)
        return cls(**base)


def validate_config(data: dict[str, Any], where: str = "config") -> TrainConfig:
    """Validate ``data`` into a TrainConfig, one clear sentence on bad input."""
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(input)"
        if err["type"] == "extra_forbidden":
            raise ZooError(f"{where}: unknown training option {field!r}; accepted: "
                           f"{', '.join(TrainConfig.model_fields)}") from None
        raise ZooError(f"{where}: invalid value {err.get('input')!r} for {field!r}: "
                       f"{err['msg']}") from None


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a JSON (``.json``) or TOML (any other suffix) config file into a dict.

    Only a regular file of at most :data:`MAX_CONFIG_BYTES` is read: a device, a pipe
    or a folder is refused before anything is read from it.
    """
    path = Path(path)
    try:
        # O_NONBLOCK: opening a named pipe must not wait for a writer
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise ZooError(f"cannot read config file {str(path)!r}: "
                       f"{exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
            raise ZooError(f"config file {str(path)!r} is {kind}; accepted: a JSON or TOML file")
        chunks, size = [], 0
        while size <= MAX_CONFIG_BYTES:
            chunk = os.read(fd, MAX_CONFIG_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        raw = b"".join(chunks)
    except OSError as exc:
        raise ZooError(f"cannot read config file {str(path)!r}: "
                       f"{exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ZooError(f"config file {str(path)!r} is larger than "
                       f"{MAX_CONFIG_BYTES // 2**20} MiB; accepted: a JSON or TOML file of "
                       "training options (a few hundred bytes)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ZooError(f"config file {str(path)!r} is not UTF-8 text (byte {exc.start}: "
                       f"{exc.object[exc.start:exc.start + 1]!r}); save it as UTF-8") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError, RecursionError) as exc:
        kind = "JSON" if path.suffix.lower() == ".json" else "TOML"
        raise ZooError(f"config file {str(path)!r} is not valid {kind}: {exc}") from None
    if not isinstance(data, dict):
        raise ZooError(f"config file {str(path)!r} must hold a table of options")
    return data


def check_cache_dir(path: Path | str | None) -> None:
    """Refuse a cache directory that is a file (the cache would silently not be kept)."""
    if path is None:
        return
    path = Path(path)
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        where = "it is a file" if blocker == path else f"{str(blocker)!r} is a file"
        raise ZooError(f"cache directory {str(path)!r} cannot be used: {where}; accepted: a "
                       "folder, or a path where one can be created")


def apply_recipe(config: TrainConfig, explicit: set[str], recipe: Recipe) -> TrainConfig:
    """``config`` with an architecture's recipe changes to the fields not in ``explicit``
    (those the user set: a config file, flags, ``--book``, ``TrainConfig`` fields)."""
    changes = {k: v for k, v in recipe.model_dump(exclude_none=True).items()
               if k not in explicit}
    if not changes:
        return config
    return validate_config({**config.model_dump(), **changes}, "training config")


def config_toml(config: TrainConfig, *, header: str = "") -> str:
    """``config`` as TOML, every field written: :func:`zoo.spec.training.load_config_file` reads it
    back to an equal config (``grad_clip = None`` comes back as the equivalent ``0.0``)."""
    data: dict[str, Any] = config.model_dump(mode="json")
    if data.get("grad_clip") is None:
        data["grad_clip"] = 0.0  # off, as None; TOML cannot write None
    unset = [name for name, value in data.items() if value is None]
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    lines += [f"# {name}: unset ({_describe(name)})" for name in unset]
    scalars = {k: v for k, v in data.items() if v is not None and not isinstance(v, dict)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    body = tomli_w.dumps({**scalars, **tables})  # tables last, as TOML requires
    return "\n".join(lines) + ("\n" if lines else "") + body


def _describe(name: str) -> str:
    description = TrainConfig.model_fields[name].description or "no value"
    return description.rstrip(".")
