"""The shared trainer: any registered architecture on any registered dataset, on CPU, CUDA or MPS.

:func:`train` drives one run. The data lives on the training device
(:mod:`zoo.pipeline`), losses and accuracies accumulate there (no per-step
synchronisation), and under ``torchrun`` the same loop runs as
DistributedDataParallel (:mod:`zoo.distributed`), every rank taking its shard
of the epoch's permutation.

Checkpoints (:mod:`zoo.checkpoint`) hold everything an exact resume needs. On
CPU an interrupted and resumed run ends with bitwise the same weights as an
uninterrupted one.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import random
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import zoo
from zoo.allocator import retain_freed_memory
from zoo.batchsplit import BatchSplitter, auto_parts, split_blocker
from zoo.checkpoint import (
    CHECKPOINT_FORMAT,
    check_resumable,
    check_same_run,
    copy_checkpoint,
    load_checkpoint,
    repair_best,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_failure,
)
from zoo.config import TrainConfig, validate_config
from zoo.curves import write_curves
from zoo.datasets import DatasetRequest, LoadedDataset
from zoo.distributed import (
    all_gather_object,
    all_reduce,
    barrier,
    broadcast_object,
    destroy_process_group,
    dist_from_env,
    init_process_group,
)
from zoo.errors import DataError, TrainingError, ZooError
from zoo.fsutil import atomic_path, atomic_write_bytes, atomic_write_text
from zoo.pipeline import (
    DeviceData,
    compute_normalization,
    epoch_permutation,
    rank_batches,
    shard_indices,
)
from zoo.progress import Progress
from zoo.registry import Registry, default_registry
from zoo.run import (
    BEST_CHECKPOINT,
    CHECKPOINT_DIR,
    CONFIG_FILE,
    CONFUSION_MAX_CLASSES,
    CURVES_PNG,
    LAST_CHECKPOINT,
    METRICS_CSV,
    METRICS_JSONL,
    SUMMARY_FILE,
    VAL_SAMPLES,
    Confusion,
    DataInfo,
    EpochMetrics,
    Normalization,
    RunSummary,
)
from zoo.runlock import LOCK_FILE, RunLock
from zoo.spec import ModelConfig, Recipe

VAL_SAMPLE_COUNT = 64


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns: the run directory, its summary and every epoch's metrics."""

    run_dir: Path
    summary: RunSummary
    metrics: list[EpochMetrics] = field(default_factory=list)


def select_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an explicit device must be available."""
    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    if name == "auto":
        name = "cuda" if cuda else "mps" if mps else "cpu"
    if name == "cuda":
        if not cuda:
            raise TrainingError("--device cuda was requested but CUDA is not available here "
                                f"(torch {torch.__version__}); use --device auto or cpu")
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    if name == "mps":
        if not mps:
            raise TrainingError("--device mps was requested but MPS is not available here; "
                                "use --device auto or cpu")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise TrainingError(f"unknown device {name!r}; accepted: auto, cpu, cuda, mps")


# -- the run directory -----------------------------------------------------------------------


def _probe_writable(path: Path) -> None:
    """Fail early, before loading data, if the run directory cannot be created and written."""
    target = path if path.exists() else path.parent
    try:
        target.mkdir(parents=True, exist_ok=True)
        with atomic_path(target / ".zoo-write-probe"):
            pass
        (target / ".zoo-write-probe").unlink(missing_ok=True)
    except OSError as exc:
        raise TrainingError(f"output directory {str(path)!r} is not writable "
                            f"({exc.strerror or exc}); choose another --out") from None


def _reusable(out: Path) -> bool:
    """Whether a new run may use the existing directory ``out``.

    It may if it is empty, or if it is a run that stopped before its first epoch
    began (it has a lock file but no ``run.json``): its files are rewritten.
    """
    names = {p.name for p in out.iterdir()}
    return not names or (LOCK_FILE in names and SUMMARY_FILE not in names)


def default_out(architecture: str, dataset: str) -> Path:
    """``runs/ARCH-DATASET-TIMESTAMP``: where a run goes when no --out is given."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{architecture}-{dataset}-{stamp}"


def write_metrics(run_dir: Path, metrics: list[EpochMetrics]) -> None:
    """Write every epoch's metrics as ``metrics.jsonl`` and ``metrics.csv``."""
    atomic_write_text(run_dir / METRICS_JSONL,
                      "".join(m.model_dump_json() + "\n" for m in metrics))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    names = list(EpochMetrics.model_fields)
    writer.writerow(names)
    for m in metrics:
        writer.writerow([getattr(m, n) for n in names])
    atomic_write_text(run_dir / METRICS_CSV, buf.getvalue())


# -- Ctrl-C ----------------------------------------------------------------------------------


class _StopFlag:
    """Turns the first Ctrl-C into a flag checked between steps; a second one interrupts.

    A disabled flag (distributed runs) leaves Ctrl-C alone and is never raised.
    """

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> _StopFlag:
        import threading

        if self.enabled and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False


# -- configuration ---------------------------------------------------------------------------


def _merge_config(config: TrainConfig | None,
                  fields: dict[str, Any]) -> tuple[TrainConfig, set[str]]:
    """The run's config, and the fields that were set rather than left at their defaults."""
    data: dict[str, Any] = {}
    explicit: set[str] = set(fields)
    if config is not None:
        data = config.model_dump()
        explicit |= set(config.model_fields_set)
    data.update(fields)
    resume = data.get("resume")
    if resume is not None:
        run_dir = Path(resume)
        cfg_path = run_dir / CONFIG_FILE
        if not cfg_path.is_file():
            raise TrainingError(f"cannot resume {str(run_dir)!r}: it is not a run directory "
                                f"(no {CONFIG_FILE})")
        try:
            saved = json.loads(cfg_path.read_text())
        except (OSError, ValueError) as exc:
            raise TrainingError(f"cannot resume {str(run_dir)!r}: its {CONFIG_FILE} is "
                                f"unreadable ({exc})") from None
        if not isinstance(saved, dict):
            raise TrainingError(f"cannot resume {str(run_dir)!r}: its {CONFIG_FILE} does not "
                                "hold a training config")
        saved["resume"] = run_dir
        saved["out"] = run_dir
        _check_resume_changes(run_dir, saved, {k: data[k] for k in explicit
                                               if k in data and k != "resume"})
        saved.update({k: data[k] for k in explicit if k in RESUME_SETTABLE and k in data})
        data = saved
        explicit = set(saved)  # a resumed run keeps the recipe it started with
    return validate_config(data, "training config"), explicit


#: What a resumed run may change: how it executes (``batch_size`` is per process: the
#: global batch must stay the same, see check_resumable), and how long it trains
#: (``epochs``, within what its schedule allows). Anything else would be recorded but
#: not used (the optimizer and schedule come from the checkpoint) or would change the
#: split.
RESUME_SETTABLE = frozenset({"epochs", "device", "progress", "num_threads", "eval_batch_size",
                             "cache_dir", "tune_allocator", "dist_timeout_s", "download",
                             "strict", "data_dir", "val_dir", "batch_size"})


def _check_resume_changes(run_dir: Path, saved: dict[str, Any],
                          requested: dict[str, Any]) -> None:
    """Refuse a resume that asks for a setting it could not truthfully apply."""
    before = validate_config(saved, f"{run_dir / CONFIG_FILE}")
    for key, value in requested.items():
        if key in RESUME_SETTABLE:
            continue
        after = validate_config({**saved, key: value}, "training config")
        if key == "out":
            if Path(after.out or run_dir).resolve() != run_dir.resolve():
                raise TrainingError(f"--out {str(value)!r} cannot be combined with --resume: a "
                                    f"resumed run continues in its own directory {str(run_dir)!r}")
            continue
        if getattr(after, key) != getattr(before, key):
            raise TrainingError(
                f"cannot resume {str(run_dir)!r} with {key}={getattr(after, key)!r}: the run "
                f"started with {key}={getattr(before, key)!r}, and a resumed run keeps its "
                "model, data, split and recipe (it may change only "
                f"{', '.join(sorted(RESUME_SETTABLE))}); start a new run to change it")


def _with_recipe(config: TrainConfig, explicit: set[str], recipe: Recipe) -> TrainConfig:
    """``config`` with the architecture's recipe changes to the fields left at their defaults."""
    changes = {k: v for k, v in recipe.model_dump(exclude_none=True).items()
               if k not in explicit}
    if not changes:
        return config
    return validate_config({**config.model_dump(), **changes}, "training config")


def _load_dataset(registry: Registry, config: TrainConfig, model_config: ModelConfig, *,
                  quiet: bool = False) -> LoadedDataset:
    spec = registry.get_dataset(config.dataset)
    shape = model_config.input_shape
    request = DatasetRequest(data_dir=config.data_dir, val_dir=config.val_dir,
                             val_split=config.val_split, seed=config.seed,
                             image_size=(shape.height, shape.width), channels=shape.channels,
                             strict=config.strict, download=config.download,
                             cache_dir=config.cache_dir, quiet=quiet)
    data = spec.load(request, **config.dataset_options)
    if len(data.train) == 0 or len(data.val) == 0:
        raise DataError(f"dataset {config.dataset!r} gave {len(data.train)} training and "
                        f"{len(data.val)} validation images; both must be non-empty")
    return data


def _make_optimizer(config: TrainConfig, params: list[nn.Parameter], device: torch.device,
                    two_groups: bool = False) -> torch.optim.Optimizer:
    """The configured optimizer; ``two_groups`` keeps biases in a group of their own even
    without weight decay, as earlier runs did (so that they resume)."""
    # one fused kernel per step on CPU and CUDA (a quarter of foreach's time for small nets)
    fused = True if device.type in ("cpu", "cuda") else None
    foreach = None if fused else True
    if config.weight_decay or two_groups:
        # no decay on biases and normalization parameters
        groups: list[dict[str, Any]] = [
            {"params": [p for p in params if p.ndim > 1], "weight_decay": config.weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
    else:  # one group, one kernel launch per step
        groups = [{"params": params, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                               nesterov=config.nesterov and config.momentum > 0,
                               foreach=foreach, fused=fused)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr, foreach=foreach, fused=fused)
    return torch.optim.AdamW(groups, lr=config.lr, foreach=foreach, fused=fused)


def _make_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer,
                     total_steps: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    if config.schedule == "onecycle":
        if total_steps < 2:
            return None  # one step: nothing to schedule
        # OneCycleLR divides by zero when warm-up x steps is exactly 1, and skips the
        # warm-up below that: give it 1.5 steps
        warmup = config.warmup_fraction
        if warmup * total_steps <= 1:
            warmup = 1.5 / total_steps
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=total_steps,
            pct_start=warmup, anneal_strategy="cos", cycle_momentum=False,
            div_factor=10.0, final_div_factor=100.0)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return None


# -- the trainer -----------------------------------------------------------------------------


def train(architecture: str, config: TrainConfig | None = None, *,
          registry: Registry | None = None, **fields: Any) -> TrainResult:
    """Train ``architecture`` and return the run's directory, summary and metrics.

    ``fields`` override :class:`~zoo.config.TrainConfig` fields, e.g.
    ``zoo.train("Net", dataset="synthetic", epochs=1, out=tmp_path / "run")``; the
    architecture's :class:`~zoo.spec.Recipe` changes the fields neither sets;
    ``resume=RUN_DIR`` continues a run (its saved config, updated by the
    fields given here). Bad input raises :class:`~zoo.errors.ZooError`.
    """
    registry = registry or default_registry()
    cfg, explicit = _merge_config(config, fields)
    cfg = _with_recipe(cfg, explicit, registry.get_spec(architecture).recipe)
    trainer = _Trainer(architecture, cfg, registry)
    return trainer.run()


@dataclass
class _Position:
    """Where the run stands: what a checkpoint restores besides model and optimizer."""

    start_epoch: int = 0
    start_step: int = 0  # non-zero when resuming an epoch interrupted mid-way
    metrics: list[EpochMetrics] = field(default_factory=list)
    train_seconds: float = 0.0
    partial: dict[str, Any] | None = None  # the interrupted epoch's totals so far
    scaler: dict[str, Any] | None = None
    batch_split: int | None = None  # the parts per batch the run was started with
    best_confusion: Confusion | None = None  # validation confusion matrices
    last_confusion: Confusion | None = None

    @property
    def best_acc(self) -> float:
        """The best validation accuracy so far (-1 before the first epoch)."""
        return max((m.val_acc for m in self.metrics), default=-1.0)


@dataclass
class _EpochTotals:
    """One epoch of training on this rank, before it is reduced over the ranks."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    seen: int
    elapsed_before: float  # seconds this epoch ran before an interruption
    started: float  # perf_counter() when this process began (or resumed) the epoch
    lr: float
    seconds: float = 0.0  # training time of this process, set when the epoch ends


class _Trainer:
    """One training run. :meth:`run` sets it up step by step, then runs the epochs."""

    # set by the setup steps of _run
    device: torch.device
    channels_last: bool
    run_dir: Path
    ckpt_dir: Path
    data: LoadedDataset
    data_info: DataInfo
    model_config: ModelConfig
    norm: Normalization
    core: nn.Module  # the model itself
    model: nn.Module  # what is called to train: core, or its DDP wrapper
    train_data: DeviceData
    val_data: DeviceData
    steps: int  # optimizer steps per epoch
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    pos: _Position
    progress: Progress
    amp_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler
    aug_gen: torch.Generator
    stop: _StopFlag
    threads: int  # intra-op threads of this process on CPU
    splitter: BatchSplitter | None  # CPU: each batch trained as parallel parts
    val_confusion: Confusion | None  # the last validation's confusion matrix
    trained_params: list[nn.Parameter]  # what the splitter computes gradients for

    def __init__(self, architecture: str, config: TrainConfig, registry: Registry) -> None:
        self.architecture = architecture
        self.config = config
        self.registry = registry
        self.dist = dist_from_env()
        self.resuming = config.resume is not None
        self.splitter = None
        self.lock: RunLock | None = None
        self.progress_note = ""
        self._made_dir = False
        self._resumed_state: dict[str, Any] | None = None

    def run(self) -> TrainResult:
        """Pick the device, join the process group if distributed, and train."""
        cfg = self.config
        created_group = False
        device = select_device(cfg.device, self.dist.local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)  # before NCCL, so that collectives use this GPU
        try:
            created_group = init_process_group(self.dist, device, cfg.dist_timeout_s)
            result = self._run(device)
            if created_group:
                # every rank leaves the group together: none closes its connections while
                # another may still be completing a collective over them
                barrier(self.dist)
            return result
        except BaseException as exc:
            if self.dist.enabled and not isinstance(exc, KeyboardInterrupt):
                print(f"zoo: rank {self.dist.rank}/{self.dist.world} failed: "
                      f"{type(exc).__name__}: {exc}", file=sys.stderr)
            raise
        finally:
            if created_group:
                destroy_process_group()
            if self.lock is not None and self.lock.held:
                self._drop_unstarted()
                self.lock.release()

    def _run(self, device: torch.device) -> TrainResult:
        self.device = device
        self._configure_device()
        # validates the model overrides before any file or data work
        self.model_config = self._resolve_model(None)
        self._prepare_out_dir()
        self._load_data()
        self._build_model()
        self._place_data()
        self._build_optimizer()
        self.pos = self._restore() if self.resuming else _Position()
        self._setup_precision()
        self._setup_split()
        try:
            self._start()
            self.stop = _StopFlag(enabled=not self.dist.enabled)
            with self.stop:
                for epoch in range(self.pos.start_epoch, self.config.epochs):
                    totals = self._train_epoch(epoch)
                    m = self._epoch_metrics(epoch, totals)
                    self._write_epoch_outputs(m)
                    if self.stop.requested and epoch + 1 < self.config.epochs:
                        self.progress.message(
                            f"zoo: interrupted after epoch {epoch + 1}; continue with: "
                            f"zoo train {self.architecture} --resume {self.run_dir}")
                        raise KeyboardInterrupt
        finally:
            if self.splitter is not None:
                self.splitter.close()
            self._finish()
        return TrainResult(run_dir=self.run_dir, summary=self._summary(len(self.pos.metrics)),
                           metrics=list(self.pos.metrics))

    # setup ------------------------------------------------------------------------------

    def _configure_device(self) -> None:
        """CPU threads, and whether tensors are kept channels-last."""
        cfg, dist_info = self.config, self.dist
        if self.device.type == "cpu" and (cfg.num_threads or dist_info.local_world > 1):
            # N processes on one machine share its cores instead of oversubscribing them
            threads = cfg.num_threads or max(1, (os.cpu_count() or 1) // dist_info.local_world)
            torch.set_num_threads(threads)
        if self.device.type == "cpu" and cfg.tune_allocator:
            retain_freed_memory()
        self.threads = torch.get_num_threads()
        self.channels_last = cfg.channels_last if cfg.channels_last is not None else (
            self.device.type in ("cpu", "cuda"))

    def _resolve_model(self, data: LoadedDataset | None) -> ModelConfig:
        overrides = dict(self.config.model)
        if data is not None:
            n = len(data.classes)
            if "num_classes" in overrides and int(overrides["num_classes"]) != n:
                raise DataError(
                    f"num_classes={overrides['num_classes']} was set but dataset "
                    f"{data.name!r} has {n} classes ({', '.join(data.classes)}); "
                    f"set num_classes={n} or leave it unset")
            overrides["num_classes"] = n
        return self.registry.resolve(self.architecture, **overrides)

    def _prepare_out_dir(self) -> None:
        """Agree on the run directory across ranks; on rank 0, check it can be used."""
        cfg = self.config
        out = Path(cfg.out) if cfg.out is not None else default_out(self.architecture, cfg.dataset)
        out = Path(broadcast_object(str(out), self.dist))
        self.run_dir = out
        self.ckpt_dir = out / CHECKPOINT_DIR
        if self.dist.main:
            if self.resuming:
                if not (out / SUMMARY_FILE).is_file():
                    raise TrainingError(f"cannot resume {str(out)!r}: it has no {SUMMARY_FILE} "
                                        "(it stopped before its first epoch began: run the same "
                                        "command without --resume)")
            elif out.exists() and (not out.is_dir() or not _reusable(out)):
                if out.is_dir():  # a trainer at work there is named
                    RunLock(out, command="zoo train", shared=True).acquire_and_release()
                raise TrainingError(f"output directory {str(out)!r} already exists and is not "
                                    "empty; choose another --out, or --resume it")
            _probe_writable(out)
            self._made_dir = not out.exists()
            out.mkdir(parents=True, exist_ok=True)
            # one writer per run directory, for the whole run
            self.lock = RunLock(out, command="zoo train")
            self.lock.acquire()

    def _drop_unstarted(self) -> None:
        """After a failure before the run began (no run.json), leave no trace of it."""
        out = self.run_dir
        if self.resuming or (out / SUMMARY_FILE).exists():
            return
        for name in (CONFIG_FILE, VAL_SAMPLES, LOCK_FILE):
            (out / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            (out / CHECKPOINT_DIR).rmdir()
        if self._made_dir:
            with contextlib.suppress(OSError):
                out.rmdir()

    def _load_data(self) -> None:
        """Load the dataset, fit the model to it and fix the normalization.

        A resumed run keeps the model configuration and normalization it started with.
        """
        cfg = self.config
        data = _load_dataset(self.registry, cfg, self.model_config, quiet=not self.dist.main)
        self.model_config = self._resolve_model(data)
        if self.resuming:
            previous = zoo.run.read_summary(self.run_dir)
            check_same_run(previous, self.run_dir, self.architecture, data.content_key)
            self.norm = previous.normalization
            self.model_config = previous.model
        else:
            self.norm = compute_normalization(data.train.images)
        self.data = data
        self.data_info = DataInfo(
            dataset=data.name, source=str(cfg.data_dir) if cfg.data_dir else None,
            content_key=data.content_key, split=data.split_description, classes=data.classes,
            train_size=len(data.train), val_size=len(data.val))

    def _build_model(self) -> None:
        """Build the model from the seed, on the device; wrap it in DDP when distributed."""
        cfg, device = self.config, self.device
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        core = self.registry.build(self.model_config).to(device)
        if self.channels_last:
            core = core.to(memory_format=torch.channels_last)
        model: nn.Module = core
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            if cfg.sync_batchnorm and device.type == "cuda":
                convert = nn.SyncBatchNorm.convert_sync_batchnorm
                core = convert(core)  # type: ignore[no-untyped-call]
            model = DistributedDataParallel(
                core, device_ids=[device.index] if device.type == "cuda" else None)
        self.core, self.model = core, model
        # dropout masks differ between ranks; the same seed gives the same run
        torch.manual_seed(cfg.seed * 1_000_003 + 12_345 + self.dist.rank)

    def _place_data(self) -> None:
        """Both splits onto the device, the steps per epoch they make, the augmentation RNG."""
        train, val = self.data.train, self.data.val
        self.train_data = DeviceData(train.images, train.labels, self.device, self.norm,
                                     self.channels_last)
        self.val_data = DeviceData(val.images, val.labels, self.device, self.norm,
                                   self.channels_last)
        min_per_rank = 2 if any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                for m in self.core.modules()) else 1
        self.steps = rank_batches(len(self.train_data), self.config.batch_size, self.dist,
                                  min_per_rank)
        self.aug_gen = torch.Generator(device=self.device)

    def _build_optimizer(self) -> None:
        """The optimizer and the learning-rate schedule over all the run's steps."""
        cfg = self.config
        self.optimizer = _make_optimizer(cfg, list(self.core.parameters()), self.device)
        self.scheduler = _make_scheduler(cfg, self.optimizer, self.steps * cfg.epochs)

    def _restore(self) -> _Position:
        """Load the last checkpoint into model, optimizer, schedule and RNGs.

        A run stopped before its first checkpoint starts again from the beginning:
        everything before that point is derived from its config and seed.
        """
        cfg = self.config
        self._resumed_state = None
        last = self.ckpt_dir / LAST_CHECKPOINT
        if not last.is_file() and zoo.run.read_summary(self.run_dir).epochs_completed == 0:
            if self.dist.main:
                self.progress_note = (f"zoo: {str(self.run_dir)!r} stopped before its first "
                                      "checkpoint; starting it again from the beginning")
            return _Position()
        state = load_checkpoint(last)
        self._resumed_state = state
        check_resumable(state, self.run_dir, steps=self.steps, epochs=cfg.epochs,
                        schedule=cfg.schedule, scheduled=self.scheduler is not None)
        self.core.load_state_dict(state["model"])
        if len(state["optimizer"]["param_groups"]) != len(self.optimizer.param_groups):
            self.optimizer = _make_optimizer(cfg, list(self.core.parameters()), self.device,
                                             two_groups=True)
            self.scheduler = _make_scheduler(cfg, self.optimizer, self.steps * cfg.epochs)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        pos = _Position(
            start_epoch=int(state["epoch"]), start_step=int(state["step"]),
            metrics=[EpochMetrics.model_validate(m) for m in state["metrics"]],
            train_seconds=float(state["train_seconds"]),
            partial=state.get("partial"), scaler=state.get("scaler"),
            batch_split=int(state.get("batch_split") or 1))  # older runs trained unsplit
        previous = zoo.run.read_summary(self.run_dir)
        pos.best_confusion, pos.last_confusion = previous.best_confusion, previous.last_confusion
        rngs = state["rng"]
        set_rng_state(rngs[self.dist.rank] if isinstance(rngs, list) else rngs, self.device)
        return pos

    def _setup_split(self) -> None:
        """On CPU in one process, train each batch as parallel parts where the model allows.

        ``auto`` keeps the parts a resumed run started with, so that it stays exact.
        """
        cfg = self.config
        wanted = cfg.batch_split
        if self.device.type != "cpu" or self.dist.enabled:
            if wanted is not None and wanted > 1:
                where = "distributed" if self.dist.enabled else f"on {self.device.type}"
                raise TrainingError(f"batch_split={wanted} applies to CPU training in one "
                                    f"process, not {where}; leave it unset or set 1")
            return
        parts = wanted or self.pos.batch_split or auto_parts(self.threads, cfg.batch_size)
        if parts > cfg.batch_size:
            source = "" if wanted else " (recorded by the run being resumed)"
            raise TrainingError(f"batch_split={parts}{source} is more than "
                                f"batch_size={cfg.batch_size}; use at most one part per sample")
        if parts <= 1:
            return
        sample, _ = self.train_data.batch(torch.arange(min(2, len(self.train_data))))
        blocker = split_blocker(self.core, sample)
        if blocker is not None:
            if wanted is not None:
                raise TrainingError(f"batch_split={wanted} cannot be used with "
                                    f"{self.architecture}: {blocker}; set batch_split=1")
            return
        self.splitter = BatchSplitter(parts, max(1, self.threads // parts))
        self.trained_params = [p for p in self.core.parameters() if p.requires_grad]

    def _start(self) -> None:
        """Create the run directory (a new run) and say what is being trained."""
        cfg, dist_info, data, device = self.config, self.dist, self.data, self.device
        if dist_info.main and not self.resuming:
            self._create_run_dir(self._summary(0))
        self.progress = Progress(cfg.progress, dist_info.main)
        if dist_info.main and self.resuming:
            if self.progress_note:
                self.progress.message(self.progress_note)
            if self._resumed_state is not None:
                self._reconcile()
        if dist_info.main:
            self.progress.message(
                f"zoo: training {self.architecture} on {data.name} ({len(data.train)} train, "
                f"{len(data.val)} val, {len(data.classes)} classes) on {device}"
                f"{f' x{dist_info.world} ranks' if dist_info.enabled else ''}"
                f"{f' (batches in {self.splitter.parts} parallel parts)' if self.splitter else ''}"
                f" -> {self.run_dir}")
            for skipped in data.skipped[:5]:
                self.progress.message(f"zoo: skipped {skipped}")

    def _setup_precision(self) -> None:
        """Mixed precision on CUDA (``--amp``), with a gradient scaler for float16."""
        cfg, device = self.config, self.device
        self.amp_dtype = None
        if device.type == "cuda" and cfg.amp != "off":
            if cfg.amp == "fp16" or (cfg.amp == "auto" and not torch.cuda.is_bf16_supported()):
                self.amp_dtype = torch.float16
            else:
                self.amp_dtype = torch.bfloat16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        if self.resuming and self.scaler.is_enabled() and self.pos.scaler:
            self.scaler.load_state_dict(self.pos.scaler)

    def _create_run_dir(self, first: RunSummary) -> None:
        """Write config, validation samples and summary into the new (locked) run directory.

        Each file is written atomically and ``run.json`` last: a directory without it
        is a run that never began, which the same command may reuse.
        """
        run_dir = self.run_dir
        try:
            atomic_write_text(run_dir / CONFIG_FILE, self.config.model_dump_json(indent=2))
            buf = io.BytesIO()
            np.save(buf, np.ascontiguousarray(self.data.val.images[:VAL_SAMPLE_COUNT]))
            atomic_write_bytes(run_dir / VAL_SAMPLES, buf.getvalue())
            (run_dir / CHECKPOINT_DIR).mkdir(exist_ok=True)
            atomic_write_text(run_dir / SUMMARY_FILE, first.model_dump_json(indent=2))
        except OSError as exc:
            raise write_failure(run_dir, exc, "nothing of the run was kept") from None

    # the epoch loop ---------------------------------------------------------------------

    def _train_epoch(self, epoch: int) -> _EpochTotals:
        """One pass over this rank's share of the training data (or what remains of it)."""
        cfg, device, pos = self.config, self.device, self.pos
        self.model.train()
        perm = epoch_permutation(len(self.train_data), cfg.seed, epoch).to(device)
        self.aug_gen.manual_seed(cfg.seed * 1_000_003 + epoch * 7_919 + self.dist.rank * 31 + 5)
        totals = _EpochTotals(loss_sum=torch.zeros((), dtype=torch.float64, device=device),
                              correct=torch.zeros((), dtype=torch.int64, device=device),
                              seen=0, elapsed_before=0.0, started=0.0, lr=0.0)
        first_step = 0
        if pos.partial is not None and epoch == pos.start_epoch and pos.start_step > 0:
            totals.loss_sum += float(pos.partial["loss_sum"])
            totals.correct += int(pos.partial["correct"])
            totals.seen = int(pos.partial["seen"])
            totals.elapsed_before = float(pos.partial["elapsed"])
            self.aug_gen.set_state(pos.partial["aug_state"].cpu())
            first_step = pos.start_step
        totals.started = time.perf_counter()
        totals.lr = self.optimizer.param_groups[0]["lr"]
        if self.splitter is not None:  # the calling thread trains one part
            torch.set_num_threads(self.splitter.threads_per_part)
        try:
            self._train_steps(epoch, first_step, perm, totals)
        finally:
            if self.splitter is not None:
                torch.set_num_threads(self.threads)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        totals.seconds = time.perf_counter() - totals.started
        return totals

    def _train_steps(self, epoch: int, first_step: int, perm: torch.Tensor,
                     totals: _EpochTotals) -> None:
        cfg, device = self.config, self.device
        for step in range(first_step, self.steps):
            index = shard_indices(perm, step, cfg.batch_size, self.dist)
            xb, yb = self.train_data.batch(index, flip=cfg.flip, crop_padding=cfg.crop_padding,
                                           generator=self.aug_gen)
            loss_sum, logits = self._optimizer_step(xb, yb)
            totals.lr = self.optimizer.param_groups[0]["lr"]
            if self.scheduler is not None:
                self.scheduler.step()
            totals.loss_sum += loss_sum
            totals.correct += (logits.argmax(1) == yb).sum()
            totals.seen += int(yb.shape[0])
            if step % 50 == 49 and device.type == "cpu" and not torch.isfinite(totals.loss_sum):
                self._non_finite(epoch, step, totals.lr)
            if self.dist.main:
                self.progress.step(epoch + 1, cfg.epochs, step + 1, self.steps, totals.started)
            if self.stop.requested and step + 1 < self.steps:
                self._interrupt_mid_epoch(epoch, step + 1, totals)

    def _optimizer_step(self, xb: torch.Tensor,
                        yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward, backward and update on one batch; its summed loss (float64) and logits."""
        cfg, optimizer, scaler = self.config, self.optimizer, self.scaler
        if self.splitter is not None:  # it sets every .grad itself
            def summed(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
                return F.cross_entropy(logits, labels, reduction="sum",
                                       label_smoothing=cfg.label_smoothing)

            loss_sum, logits = self.splitter.step(self.model, self.trained_params, xb, yb,
                                                  summed)
        else:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                enabled=self.amp_dtype is not None):
                logits = self.model(xb)
                loss = F.cross_entropy(logits, yb, label_smoothing=cfg.label_smoothing)
            scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
            loss_sum, logits = loss.detach().double() * int(yb.shape[0]), logits.detach()
        # a disabled scaler (anything but float16 on CUDA) passes straight through
        if cfg.grad_clip:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(self.core.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        return loss_sum.double(), logits

    def _interrupt_mid_epoch(self, epoch: int, next_step: int,
                             totals: _EpochTotals) -> NoReturn:
        """Save the epoch so far (Ctrl-C, one process only) and stop the run."""
        elapsed = totals.elapsed_before + time.perf_counter() - totals.started
        part = {"loss_sum": float(totals.loss_sum), "correct": int(totals.correct),
                "seen": totals.seen, "elapsed": elapsed, "aug_state": self.aug_gen.get_state()}
        self.pos.train_seconds += time.perf_counter() - totals.started
        last = self.ckpt_dir / LAST_CHECKPOINT
        save_checkpoint(last, self._checkpoint_state(epoch, next_step, part))
        self.progress.message(f"\nzoo: interrupted in epoch {epoch + 1} at step "
                              f"{next_step}/{self.steps}; saved {last}; continue with: "
                              f"zoo train {self.architecture} --resume {self.run_dir}")
        raise KeyboardInterrupt

    def _epoch_metrics(self, epoch: int, totals: _EpochTotals) -> EpochMetrics:
        """Evaluate, sum both over the ranks, and make the epoch's metrics."""
        device = self.device
        train_totals = torch.stack([totals.loss_sum, totals.correct.double(),
                                    torch.tensor(float(totals.seen), dtype=torch.float64,
                                                 device=device)])
        val_totals = self._evaluate()
        train_time = totals.seconds
        if self.dist.enabled:
            both = all_reduce(torch.cat([train_totals, val_totals]), self.dist)
            train_totals, val_totals = both[:3], both[3:]
            timing = torch.tensor([train_time], dtype=torch.float64, device=device)
            train_time = float(all_reduce(timing, self.dist, op="max"))
        t_loss, t_correct, t_seen = (float(v) for v in train_totals.cpu())
        v_loss, v_correct, v_seen = (float(v) for v in val_totals[:3].cpu())
        k = self.model_config.num_classes
        counts = val_totals[3:].round().long().view(-1, k).tolist() if len(val_totals) > 3 else []
        self.val_confusion = tuple(tuple(row) for row in counts) or None
        if not math.isfinite(t_loss) or not math.isfinite(v_loss):
            self._non_finite(epoch, self.steps - 1, totals.lr)
        epoch_seconds = time.perf_counter() - totals.started + totals.elapsed_before
        self.pos.train_seconds += time.perf_counter() - totals.started
        return EpochMetrics(
            epoch=epoch + 1, train_loss=t_loss / max(t_seen, 1.0),
            train_acc=t_correct / max(t_seen, 1.0), val_loss=v_loss / max(v_seen, 1.0),
            val_acc=v_correct / max(v_seen, 1.0),
            images_per_s=t_seen / max(train_time + totals.elapsed_before, 1e-9),
            lr=float(totals.lr), seconds=epoch_seconds)

    def _evaluate(self) -> torch.Tensor:
        """Summed loss, correct count and count over this rank's share of the validation set."""
        dist_info, device, core, data = self.dist, self.device, self.core, self.val_data
        batch_size = self.config.eval_batch_size
        core.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.float64, device=device)
        k = self.model_config.num_classes
        confusion = torch.zeros(k * k if k <= CONFUSION_MAX_CLASSES else 0, dtype=torch.float64,
                                device=device)
        n = len(data)
        mine = torch.arange(dist_info.rank, n, dist_info.world, device=device)
        with torch.inference_mode():
            for start in range(0, mine.shape[0], batch_size):
                index = mine[start:start + batch_size]
                xb, yb = data.batch(index)
                with torch.autocast(device.type, dtype=self.amp_dtype or torch.float32,
                                    enabled=self.amp_dtype is not None):
                    logits = core(xb)
                loss_sum += F.cross_entropy(logits.float(), yb, reduction="sum").double()
                predicted = logits.argmax(1)
                correct += (predicted == yb).sum().double()
                if confusion.numel():
                    confusion += torch.bincount(yb * k + predicted, minlength=k * k).double()
        core.train()
        return torch.cat([torch.stack([loss_sum, correct,
                                       torch.tensor(float(mine.shape[0]), dtype=torch.float64,
                                                    device=device)]), confusion])

    def _write_epoch_outputs(self, m: EpochMetrics) -> None:
        """Record the epoch; rank 0 writes checkpoints, metrics and summary, and reports it."""
        pos = self.pos
        improved = m.val_acc > pos.best_acc
        pos.metrics.append(m)
        pos.partial = None
        pos.last_confusion = self.val_confusion
        if improved:
            pos.best_confusion = self.val_confusion
        state = self._checkpoint_state(m.epoch, 0, None)  # a collective: every rank takes part
        if self.dist.main:
            # last.pt is the run's truth, written first; best.pt (a copy when this epoch is
            # the best) and run.json follow. A crash between them is repaired on --resume.
            last = self.ckpt_dir / LAST_CHECKPOINT
            save_checkpoint(last, state)
            if improved:
                copy_checkpoint(last, self.ckpt_dir / BEST_CHECKPOINT)
            self._write_records(m.epoch)
            self.progress.epoch(m, self.config.epochs)

    def _write_records(self, epochs_done: int) -> None:
        """metrics.jsonl, metrics.csv and run.json of the epochs done (atomically, each)."""
        try:
            write_metrics(self.run_dir, self.pos.metrics)
            atomic_write_text(self.run_dir / SUMMARY_FILE,
                              self._summary(epochs_done).model_dump_json(indent=2))
        except OSError as exc:
            raise write_failure(self.run_dir / SUMMARY_FILE, exc,
                                f"the checkpoints of epoch {epochs_done} are written; "
                                f"--resume {self.run_dir} completes the records") from None

    def _reconcile(self) -> None:
        """On resume, make best.pt, metrics and run.json agree with last.pt (the truth)."""
        assert self._resumed_state is not None
        note = repair_best(self.ckpt_dir, self._resumed_state)
        if note:
            print(f"zoo: {note}", file=sys.stderr)
        if self.pos.metrics:
            self._write_records(len(self.pos.metrics))

    def _finish(self) -> None:
        """Draw the curves of whatever epochs completed (also after a failure)."""
        metrics = self.pos.metrics
        if self.dist.main and metrics:
            try:
                write_curves(self.run_dir, metrics, f"{self.architecture} on {self.data.name}")
            except Exception as exc:  # a plot must never lose a run
                print(f"zoo: warning: could not draw {CURVES_PNG}: {exc}", file=sys.stderr)

    # state ------------------------------------------------------------------------------

    def _checkpoint_state(self, epoch: int, step: int,
                          part: dict[str, Any] | None) -> dict[str, Any]:
        rng: Any = rng_state(self.device)
        if self.dist.enabled:
            rng = all_gather_object(rng, self.dist)
        pos, cfg = self.pos, self.config
        return {
            "format": CHECKPOINT_FORMAT, "model": self.core.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "epoch": epoch, "step": step, "partial": part, "steps_per_epoch": self.steps,
            "total_steps": self.steps * cfg.epochs, "rng": rng,
            "metrics": [m.model_dump() for m in pos.metrics], "best_val_acc": pos.best_acc,
            "train_seconds": pos.train_seconds, "model_config": self.model_config.model_dump(),
            "normalization": self.norm.model_dump(), "classes": list(self.data.classes),
            "batch_split": self.splitter.parts if self.splitter is not None else 1,
        }

    def _summary(self, epochs_done: int) -> RunSummary:
        metrics = self.pos.metrics
        best = max(metrics, key=lambda m: m.val_acc) if metrics else None
        return RunSummary(
            model=self.model_config, train_config=self.config.model_dump(mode="json"),
            data=self.data_info, normalization=self.norm, seed=self.config.seed,
            device=str(self.device), epochs_completed=epochs_done,
            train_seconds=self.pos.train_seconds, best=best,
            last=metrics[-1] if metrics else None, best_confusion=self.pos.best_confusion,
            last_confusion=self.pos.last_confusion, zoo_version=zoo.__version__,
            torch_version=torch.__version__)

    def _non_finite(self, epoch: int, step: int, lr: float) -> NoReturn:
        last = self.ckpt_dir / LAST_CHECKPOINT
        kept = (f"the last good checkpoint {last} is intact" if last.is_file()
                else "no epoch completed, so no checkpoint was written")
        raise TrainingError(
            f"the training loss became non-finite in epoch {epoch + 1} (by step {step + 1}, "
            f"lr {lr:.3g}); {kept}; lower --lr or use a schedule with warm-up")


def iter_metrics(run_dir: Path) -> Iterator[EpochMetrics]:
    """The epochs recorded in a run's ``metrics.jsonl``."""
    path = Path(run_dir) / METRICS_JSONL
    if not path.is_file():
        raise ZooError(f"{str(run_dir)!r} has no {METRICS_JSONL}")
    for line in path.read_text().splitlines():
        if line.strip():
            yield EpochMetrics.model_validate_json(line)


__all__ = ["TrainConfig", "TrainResult", "iter_metrics", "select_device", "train"]
