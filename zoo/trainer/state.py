"""A run's state: device, data, model, optimizer and position, set up step by step,
restored from a checkpoint on resume, and saved as checkpoints and ``run.json``.

:class:`RunState` holds the setup steps; :class:`zoo.trainer.loop._Trainer` adds the loop.
"""

from __future__ import annotations

import contextlib
import io
import random
import sys
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from torch import nn

from zoo.errors import DataError, TrainingError
from zoo.host.events import RunStatus
from zoo.host.registry import Registry
from zoo.spec.architecture import ModelConfig
from zoo.spec.dataset import LoadedDataset
from zoo.spec.run import (
    BEST_CHECKPOINT,
    CHECKPOINT_DIR,
    CONFIG_FILE,
    LAST_CHECKPOINT,
    SUMMARY_FILE,
    VAL_SAMPLES,
    Confusion,
    DataInfo,
    EpochMetrics,
    Normalization,
    RunSummary,
    checkpoint_path,
    read_summary,
)
from zoo.spec.training import TrainConfig
from zoo.trainer.batchsplit import BatchSplitter
from zoo.trainer.checkpoint import (
    CHECKPOINT_FORMAT,
    check_resumable,
    check_same_run,
    load_checkpoint,
    repair_best,
    rng_state,
    set_rng_state,
    write_failure,
)
from zoo.trainer.data import data_info, load_run_data
from zoo.trainer.devices import amp_dtype, make_splitter
from zoo.trainer.distributed import (
    all_gather_object,
    broadcast_object,
    destroy_process_group,
    dist_from_env,
)
from zoo.trainer.modelstep import ModelStep, model_step
from zoo.trainer.optim import make_optimizer, make_scheduler
from zoo.trainer.pipeline import DeviceData, compute_normalization, rank_batches
from zoo.trainer.resume import Position
from zoo.trainer.rundir import (
    RunLock,
    RunLockedError,
    check_resumable_files,
    default_out,
    drop_unstarted,
    probe_writable,
    reusable,
)
from zoo.util.fsutil import atomic_write_bytes, atomic_write_text
from zoo.util.version import __version__

#: Validation images kept in the run directory (val_samples.npy), for export checks.
VAL_SAMPLE_COUNT = 64


class RunState:
    """Everything a run trains with, and where it stands."""

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
    pos: Position
    amp_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler
    aug_gen: torch.Generator
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
        self.own_step: ModelStep | None = None
        self.lock: RunLock | None = None
        self.progress_note = ""
        self._made_dir = False
        self._resumed_state: dict[str, Any] | None = None
        self.status: RunStatus = "failed"  # how this session ends, once it has
        self.stop_reason: str | None = None
        self.init_from: str | None = None
        self.extras: dict[str, Any] = {}
        self.started = False  # the run directory is ready and zoo_train_start was called
        self.created = False  # this session wrote the new run's run.json
        self.failure: str | None = None  # why this session failed

    # setup ------------------------------------------------------------------------------

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
                check_resumable_files(out, self.architecture)  # before the data is loaded
            elif out.exists() and (not out.is_dir() or not reusable(out)):
                if out.is_dir():  # a trainer at work there is named
                    RunLock(out, command="zoo train", shared=True).acquire_and_release()
                raise TrainingError(f"output directory {str(out)!r} already exists and is not "
                                    "empty; choose another --out, or --resume it")
            probe_writable(out)
            self._made_dir = not out.exists()
            out.mkdir(parents=True, exist_ok=True)
            # one writer per run directory, for the whole run
            self.lock = RunLock(out, command="zoo train")
            try:
                self.lock.acquire()
            except RunLockedError:
                raise
            except TrainingError:  # the lock record could not be written: undo the folder
                if self._made_dir:
                    with contextlib.suppress(OSError):
                        out.rmdir()
                raise

    def _leave_group(self) -> None:
        """Leave the process group, its threads joined now: the DDP wrapper (its reducer holds
        the group, in cycles) goes first, or the group outlives ``destroy_process_group``."""
        if hasattr(self, "core"):
            self.model = self.core
        destroy_process_group()

    def _drop_unstarted(self) -> None:
        """After a failure before the run began (no run.json), leave no trace of it."""
        if not self.resuming:
            drop_unstarted(self.run_dir, made_dir=self._made_dir)

    def _load_data(self) -> None:
        """Load the dataset, fit the model to it and fix the normalization (a resumed run
        keeps the model configuration and normalization it started with)."""
        cfg = self.config
        data = load_run_data(self.registry, cfg, self.model_config, quiet=not self.dist.main)
        self.model_config = self._resolve_model(data)
        if self.resuming:
            previous = read_summary(self.run_dir)
            check_same_run(previous, self.run_dir, self.architecture, data.content_key)
            self.norm = previous.normalization
            self.model_config = previous.model
        else:
            self.norm = compute_normalization(data.train.images)
        self.data = data
        self.data_info = data_info(data, cfg)

    def _build_model(self) -> None:
        """Build the model from the seed, on the device; wrap it in DDP when distributed."""
        cfg, device = self.config, self.device
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        core = self.registry.build(self.model_config).to(device)
        if cfg.init_from is not None and not self.resuming:
            self._init_from(core, Path(cfg.init_from))
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

    def _init_from(self, core: nn.Module, source: Path) -> None:
        """Load the best weights of run ``source`` (``--init-from``): a new run from them."""
        state = load_checkpoint(checkpoint_path(source, BEST_CHECKPOINT))
        theirs = ModelConfig.model_validate(state["model_config"])
        if theirs != self.model_config:
            raise TrainingError(
                f"--init-from {str(source)!r}: that run trained {theirs.architecture} "
                f"{theirs.hparams} on {theirs.input_shape} with {theirs.num_classes} classes, "
                f"this one is {self.model_config.architecture} {self.model_config.hparams} on "
                f"{self.model_config.input_shape} with {self.model_config.num_classes}; "
                "init from a run of the same model and data shape")
        core.load_state_dict(state["model"])
        self.init_from = str(source)

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
        self.optimizer = make_optimizer(cfg, list(self.core.parameters()), self.device)
        self.scheduler = make_scheduler(cfg, self.optimizer, self.steps * cfg.epochs)

    def _restore(self) -> Position:
        """Load the last checkpoint into model, optimizer, schedule and RNGs.

        A run stopped before its first checkpoint starts again from the beginning:
        everything before that point is derived from its config and seed.
        """
        cfg = self.config
        self._resumed_state = None
        last = self.ckpt_dir / LAST_CHECKPOINT
        if not check_resumable_files(self.run_dir, self.architecture):
            if self.dist.main:
                self.progress_note = (f"zoo: {str(self.run_dir)!r} stopped before its first "
                                      "checkpoint; starting it again from the beginning")
            return Position()
        state = load_checkpoint(last)
        self._resumed_state = state
        check_resumable(state, self.run_dir, steps=self.steps, epochs=cfg.epochs,
                        schedule=cfg.schedule, scheduled=self.scheduler is not None)
        self.core.load_state_dict(state["model"])
        if len(state["optimizer"]["param_groups"]) != len(self.optimizer.param_groups):
            self.optimizer = make_optimizer(cfg, list(self.core.parameters()), self.device,
                                             two_groups=True)
            self.scheduler = make_scheduler(cfg, self.optimizer, self.steps * cfg.epochs)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        pos = Position(
            start_epoch=int(state["epoch"]), start_step=int(state["step"]),
            metrics=[EpochMetrics.model_validate(m) for m in state["metrics"]],
            train_seconds=float(state["train_seconds"]),
            partial=state.get("partial"), scaler=state.get("scaler"),
            batch_split=int(state.get("batch_split") or 1))  # older runs trained unsplit
        previous = read_summary(self.run_dir)
        pos.best_confusion, pos.last_confusion = previous.best_confusion, previous.last_confusion
        self.stop_reason, self.extras = previous.stop_reason, dict(previous.plugins)
        self.init_from = previous.init_from
        rngs = state["rng"]
        set_rng_state(rngs[self.dist.rank] if isinstance(rngs, list) else rngs, self.device)
        return pos

    def _setup_split(self) -> None:
        sample, _ = self.train_data.batch(torch.arange(min(2, len(self.train_data))))
        self.splitter = make_splitter(self.config, self.device, self.dist, threads=self.threads,
                                      recorded=self.pos.batch_split, core=self.core,
                                      sample=sample, architecture=self.architecture)
        self.trained_params = [p for p in self.core.parameters() if p.requires_grad]
        try:
            own = model_step(self.core)
        except ValueError as exc:
            raise TrainingError(f"{self.architecture}: {exc}") from None
        # only a plain step: not wrapped, no parts, no mixed precision or gradient scaling
        plain = (self.model is self.core and self.splitter is None and self.amp_dtype is None
                 and not self.scaler.is_enabled())
        self.own_step = own if plain else None

    def _setup_precision(self) -> None:
        """Mixed precision on CUDA (``--amp``), with a gradient scaler for float16."""
        self.amp_dtype = amp_dtype(self.device, self.config)
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

    def _non_finite(self, epoch: int, step: int, lr: float) -> NoReturn:
        last = self.ckpt_dir / LAST_CHECKPOINT
        kept = (f"the last good checkpoint {last} is intact" if last.is_file()
                else "no epoch completed, so no checkpoint was written")
        raise TrainingError(
            f"the training loss became non-finite in epoch {epoch + 1} (by step {step + 1}, "
            f"lr {lr:.3g}); {kept}; lower --lr or use a schedule with warm-up")

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

    def _write_records(self, epochs_done: int) -> None:
        """run.json of the epochs done (atomically); the metrics files are a plugin's."""
        try:
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

    def _summary(self, epochs_done: int) -> RunSummary:
        metrics = self.pos.metrics
        best = max(metrics, key=lambda m: m.val_acc) if metrics else None
        return RunSummary(
            model=self.model_config, train_config=self.config.model_dump(mode="json"),
            data=self.data_info, normalization=self.norm, seed=self.config.seed,
            device=str(self.device), epochs_completed=epochs_done,
            train_seconds=self.pos.train_seconds, best=best,
            last=metrics[-1] if metrics else None, best_confusion=self.pos.best_confusion,
            last_confusion=self.pos.last_confusion, zoo_version=__version__,
            torch_version=torch.__version__, stop_reason=self.stop_reason,
            status="running" if self.status == "failed" else self.status,
            init_from=self.init_from, plugins=self.extras, history=list(metrics[:epochs_done]))
