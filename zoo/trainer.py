"""The shared trainer: any registered architecture on any registered dataset, on CPU, CUDA or MPS.

The whole dataset lives on the training device as uint8; each epoch draws one
seeded permutation, batches are taken by indexing it, augmented on the device
(vectorized flip and padded crop) and normalized there: no DataLoader and no
per-sample Python in the hot loop. Losses and accuracies accumulate on the
device (no per-step synchronisation). Under ``torchrun`` the same loop runs as
DistributedDataParallel, every rank taking its shard of the epoch's permutation.

Checkpoints hold everything an exact resume needs: model, optimizer, scheduler,
RNG states, epoch and step. On CPU an interrupted and resumed run ends with
bitwise the same weights as an uninterrupted one.
"""

from __future__ import annotations

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
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import zoo
from zoo.config import TrainConfig, validate_config
from zoo.datasets import DatasetRequest, LoadedDataset
from zoo.errors import DataError, TrainingError, ZooError
from zoo.fsutil import atomic_directory, atomic_path, atomic_write_text
from zoo.registry import Registry, default_registry
from zoo.run import (
    BEST_CHECKPOINT,
    CHECKPOINT_DIR,
    CONFIG_FILE,
    CURVES_PNG,
    LAST_CHECKPOINT,
    METRICS_CSV,
    METRICS_JSONL,
    SUMMARY_FILE,
    VAL_SAMPLES,
    DataInfo,
    EpochMetrics,
    Normalization,
    RunSummary,
)
from zoo.spec import ModelConfig

CHECKPOINT_FORMAT = 1
VAL_SAMPLE_COUNT = 64


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns: the run directory, its summary and every epoch's metrics."""

    run_dir: Path
    summary: RunSummary
    metrics: list[EpochMetrics] = field(default_factory=list)


# -- devices and processes -----------------------------------------------------------------


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


@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun job (``world == 1``: not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def dist_from_env(environ: dict[str, str] | None = None) -> Dist:
    env = os.environ if environ is None else environ
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local_rank = int(env.get("LOCAL_RANK", str(rank)))
        local_world = int(env.get("LOCAL_WORLD_SIZE", str(world)))
    except ValueError as exc:
        raise TrainingError(f"bad torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK): "
                            f"{exc}") from None
    return Dist(rank=rank, world=world, local_rank=local_rank, local_world=local_world)


def _init_distributed(dist_info: Dist, device: torch.device, timeout_s: float) -> bool:
    """Join the process group if torchrun started us; return whether we created it."""
    import torch.distributed as tdist

    if not dist_info.enabled or tdist.is_initialized():
        return False
    if "MASTER_ADDR" not in os.environ:
        raise TrainingError("WORLD_SIZE > 1 but MASTER_ADDR is not set: start distributed runs "
                            "with torchrun --nproc_per_node=N -m zoo train ...")
    backend = "nccl" if device.type == "cuda" else "gloo"
    tdist.init_process_group(backend=backend, rank=dist_info.rank, world_size=dist_info.world,
                             timeout=timedelta(seconds=timeout_s))
    return True


# -- data on the device ----------------------------------------------------------------------


def compute_normalization(images: np.ndarray) -> Normalization:
    """Per-channel mean and std of uint8 ``(N, C, H, W)`` images on the [0, 1] scale."""
    n, c = images.shape[:2]
    total = np.zeros(c, dtype=np.float64)
    total_sq = np.zeros(c, dtype=np.float64)
    for start in range(0, n, 4096):
        chunk = images[start:start + 4096].astype(np.float64) / 255.0
        total += chunk.sum(axis=(0, 2, 3))
        total_sq += (chunk * chunk).sum(axis=(0, 2, 3))
    count = max(1, n * images.shape[2] * images.shape[3])
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
    std = np.where(std < 1e-6, 1.0, std)
    return Normalization(mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std))


#: Splits up to this size (as float32) are normalized once and kept as floats on the device.
PRENORMALIZE_BYTES = 512 * 1024**2


class DeviceData:
    """One split on the device: batches are taken by index, then augmented on the device.

    A small split is normalized once and kept as float32 (no per-batch conversion);
    a large one stays uint8 and each batch is normalized as it is taken.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, device: torch.device,
                 norm: Normalization, channels_last: bool,
                 prenormalize_bytes: int = PRENORMALIZE_BYTES) -> None:
        x = torch.from_numpy(np.ascontiguousarray(images))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = x.to(device)
        self.labels = torch.from_numpy(np.ascontiguousarray(labels)).to(device)
        self.device = device
        self.channels_last = channels_last
        c = images.shape[1]
        self.mean = torch.tensor([m * 255.0 for m in norm.mean], device=device).view(1, c, 1, 1)
        self.inv_std = torch.tensor([1.0 / (s * 255.0) for s in norm.std],
                                    device=device).view(1, c, 1, 1)
        self.prenormalized = images.size * 4 <= prenormalize_bytes
        if self.prenormalized:
            x = self._normalize(x)
        self.images = x

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        out = (x.float() - self.mean) * self.inv_std
        if self.channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch(self, index: torch.Tensor, *, flip: bool = False, crop_padding: int = 0,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[index]
        if flip or crop_padding:  # crops pad with zeros: black, or the mean once normalized
            x = augment(x, flip=flip, crop_padding=crop_padding, generator=generator)
        if not self.prenormalized:
            x = self._normalize(x)
        elif self.channels_last and crop_padding:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, self.labels[index]


def augment(x: torch.Tensor, *, flip: bool, crop_padding: int,
            generator: torch.Generator | None) -> torch.Tensor:
    """Random horizontal flips and random crops of zero-padded images, for a whole batch.

    Works on uint8 or float batches, on any device, with one generator call per kind.
    """
    b, c, h, w = x.shape
    dev = x.device
    if flip:
        mask = torch.rand(b, generator=generator, device=dev) < 0.5
        x = torch.where(mask.view(b, 1, 1, 1), x.flip(3), x)
    if crop_padding:
        p = crop_padding
        padded = F.pad(x, (p, p, p, p))
        offsets = torch.randint(0, 2 * p + 1, (b, 2), generator=generator, device=dev)
        rows = (offsets[:, 0:1] + torch.arange(h, device=dev)).view(b, 1, h, 1)
        cols = (offsets[:, 1:2] + torch.arange(w, device=dev)).view(b, 1, 1, w)
        bi = torch.arange(b, device=dev).view(b, 1, 1, 1)
        ci = torch.arange(c, device=dev).view(1, c, 1, 1)
        x = padded[bi, ci, rows, cols]
    return x


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The epoch's permutation of ``range(n)``: the same on every rank, seeded by (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 7_919 + 1)
    return torch.randperm(n, generator=g)


def rank_batches(n: int, batch_size: int, dist_info: Dist, min_per_rank: int = 1) -> int:
    """Steps per epoch: global batches of ``batch_size * world`` over ``n`` (padded per rank)."""
    global_batch = batch_size * dist_info.world
    padded = math.ceil(n / dist_info.world) * dist_info.world
    steps = math.ceil(padded / global_batch)
    last = padded - (steps - 1) * global_batch
    if steps > 1 and last < min_per_rank * dist_info.world:
        steps -= 1
    return max(steps, 1)


def shard_indices(perm: torch.Tensor, step: int, batch_size: int, dist_info: Dist) -> torch.Tensor:
    """This rank's samples of global batch ``step``: a strided slice, as DistributedSampler does."""
    n = perm.shape[0]
    if dist_info.world == 1:
        return perm[step * batch_size:(step + 1) * batch_size]
    padded_n = math.ceil(n / dist_info.world) * dist_info.world
    global_batch = batch_size * dist_info.world
    start = step * global_batch
    idx = torch.arange(start, min(start + global_batch, padded_n)) % n
    return perm[idx][dist_info.rank::dist_info.world]


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


def default_out(architecture: str, dataset: str) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{architecture}-{dataset}-{stamp}"


def write_metrics(run_dir: Path, metrics: list[EpochMetrics]) -> None:
    atomic_write_text(run_dir / METRICS_JSONL,
                      "".join(m.model_dump_json() + "\n" for m in metrics))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    names = list(EpochMetrics.model_fields)
    writer.writerow(names)
    for m in metrics:
        writer.writerow([getattr(m, n) for n in names])
    atomic_write_text(run_dir / METRICS_CSV, buf.getvalue())


def write_curves(run_dir: Path, metrics: list[EpochMetrics], title: str) -> bool:
    """Loss and accuracy per epoch as a PNG (if matplotlib is installed)."""
    if not metrics:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    epochs = [m.epoch for m in metrics]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [m.train_loss for m in metrics], "o-", label="train")
    ax_loss.plot(epochs, [m.val_loss for m in metrics], "o-", label="val")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [m.train_acc for m in metrics], "o-", label="train")
    ax_acc.plot(epochs, [m.val_acc for m in metrics], "o-", label="val")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy")
    ax_acc.legend()
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(run_dir / CURVES_PNG) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return True


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# -- progress --------------------------------------------------------------------------------


class Progress:
    """A one-line progress bar with ETA on a terminal; plain log lines otherwise."""

    def __init__(self, mode: str, enabled: bool) -> None:
        self.stream = sys.stderr
        tty = self.stream.isatty()
        if mode == "auto":
            mode = "bar" if tty else "log"
        self.mode = mode if enabled else "none"
        self._last = 0.0

    def step(self, epoch: int, epochs: int, step: int, steps: int, started: float) -> None:
        if self.mode != "bar":
            return
        now = time.perf_counter()
        if now - self._last < 0.2 and step != steps:
            return
        self._last = now
        elapsed = now - started
        eta = elapsed / max(step, 1) * (steps - step)
        width = 30
        filled = int(width * step / steps)
        self.stream.write(f"\repoch {epoch}/{epochs} [{'#' * filled}{'.' * (width - filled)}] "
                          f"{step}/{steps} {elapsed:5.1f}s eta {eta:5.1f}s")
        self.stream.flush()

    def epoch(self, m: EpochMetrics, epochs: int) -> None:
        if self.mode == "none":
            return
        if self.mode == "bar":
            self.stream.write("\r\033[K")
        self.stream.write(
            f"epoch {m.epoch}/{epochs}  train loss {m.train_loss:.4f} acc {m.train_acc:.4f}  "
            f"val loss {m.val_loss:.4f} acc {m.val_acc:.4f}  {m.images_per_s:,.0f} img/s  "
            f"lr {m.lr:.3g}  {m.seconds:.1f}s\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        if self.mode != "none":
            self.stream.write(text + "\n")
            self.stream.flush()


class _StopFlag:
    """Turns the first Ctrl-C into a flag checked between steps; a second one interrupts."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> _StopFlag:
        import threading

        if threading.current_thread() is threading.main_thread():
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


def _merge_config(config: TrainConfig | None, fields: dict[str, Any]) -> TrainConfig:
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
        saved = json.loads(cfg_path.read_text())
        saved.update({k: data[k] for k in explicit if k in data})
        saved["resume"] = run_dir
        saved["out"] = run_dir
        data = saved
    return validate_config(data, "training config")


def _load_dataset(registry: Registry, config: TrainConfig,
                  model_config: ModelConfig) -> LoadedDataset:
    spec = registry.get_dataset(config.dataset)
    shape = model_config.input_shape
    request = DatasetRequest(data_dir=config.data_dir, val_dir=config.val_dir,
                             val_split=config.val_split, seed=config.seed,
                             image_size=(shape.height, shape.width), channels=shape.channels,
                             strict=config.strict, download=config.download,
                             cache_dir=config.cache_dir)
    data = spec.load(request, **config.dataset_options)
    if len(data.train) == 0 or len(data.val) == 0:
        raise DataError(f"dataset {config.dataset!r} gave {len(data.train)} training and "
                        f"{len(data.val)} validation images; both must be non-empty")
    return data


def _build_optimizer(config: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups: list[dict[str, Any]] = [{"params": decay, "weight_decay": config.weight_decay},
                                    {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                               nesterov=config.nesterov and config.momentum > 0, foreach=True)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr, foreach=True)
    return torch.optim.AdamW(groups, lr=config.lr, foreach=True)


def _build_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer,
                     total_steps: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=total_steps,
            pct_start=config.warmup_fraction, anneal_strategy="cos", cycle_momentum=False,
            div_factor=10.0, final_div_factor=100.0)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return None


# -- the trainer -----------------------------------------------------------------------------


def train(architecture: str, config: TrainConfig | None = None, *,
          registry: Registry | None = None, **fields: Any) -> TrainResult:
    """Train ``architecture`` and return the run's directory, summary and metrics.

    ``fields`` override :class:`~zoo.config.TrainConfig` fields, e.g.
    ``zoo.train("Net", dataset="synthetic", epochs=1, out=tmp_path / "run")``;
    ``resume=RUN_DIR`` continues a run (its saved config, updated by the
    fields given here). Bad input raises :class:`~zoo.errors.ZooError`.
    """
    cfg = _merge_config(config, fields)
    trainer = _Trainer(architecture, cfg, registry or default_registry())
    return trainer.run()


class _Trainer:
    def __init__(self, architecture: str, config: TrainConfig, registry: Registry) -> None:
        self.architecture = architecture
        self.config = config
        self.registry = registry
        self.dist = dist_from_env()

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

    def run(self) -> TrainResult:
        cfg = self.config
        created_group = False
        device = select_device(cfg.device, self.dist.local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)  # before NCCL, so that collectives use this GPU
        try:
            created_group = _init_distributed(self.dist, device, cfg.dist_timeout_s)
            return self._run(device)
        except BaseException as exc:
            if self.dist.enabled and not isinstance(exc, KeyboardInterrupt):
                print(f"zoo: rank {self.dist.rank}/{self.dist.world} failed: "
                      f"{type(exc).__name__}: {exc}", file=sys.stderr)
            raise
        finally:
            if created_group:
                import torch.distributed as tdist

                if tdist.is_initialized():
                    tdist.destroy_process_group()

    def _run(self, device: torch.device) -> TrainResult:
        cfg = self.config
        dist_info = self.dist
        if device.type == "cpu" and (cfg.num_threads or dist_info.local_world > 1):
            # N processes on one machine share its cores instead of oversubscribing them
            threads = cfg.num_threads or max(1, (os.cpu_count() or 1) // dist_info.local_world)
            torch.set_num_threads(threads)
        channels_last = cfg.channels_last if cfg.channels_last is not None else (
            device.type in ("cpu", "cuda"))
        resuming = cfg.resume is not None

        model_config = self._resolve_model(None)  # validates overrides before any data work
        out = Path(cfg.out) if cfg.out is not None else default_out(self.architecture, cfg.dataset)
        if dist_info.enabled:
            import torch.distributed as tdist

            box: list[Any] = [str(out)]
            tdist.broadcast_object_list(box, src=0)
            out = Path(box[0])
        if dist_info.main:
            if resuming:
                if not (out / SUMMARY_FILE).is_file():
                    raise TrainingError(f"cannot resume {str(out)!r}: it has no {SUMMARY_FILE}")
            elif out.exists() and (not out.is_dir() or any(out.iterdir())):
                raise TrainingError(f"output directory {str(out)!r} already exists and is not "
                                    "empty; choose another --out, or --resume it")
            _probe_writable(out)

        data = _load_dataset(self.registry, cfg, model_config)
        model_config = self._resolve_model(data)
        norm = compute_normalization(data.train.images)
        previous: RunSummary | None = None
        if resuming:
            previous = zoo.run.read_summary(out)
            if previous.model.architecture != self.architecture:
                raise TrainingError(f"run {str(out)!r} trained {previous.model.architecture!r}, "
                                    f"not {self.architecture!r}")
            if previous.data.content_key != data.content_key:
                raise DataError(f"the data of run {str(out)!r} changed since it started "
                                f"(content key {previous.data.content_key} != "
                                f"{data.content_key}); start a new run instead")
            norm = previous.normalization
            model_config = previous.model

        # model, optimizer, schedule -------------------------------------------------------
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        core = self.registry.build(model_config).to(device)
        if channels_last:
            core = core.to(memory_format=torch.channels_last)
        model: nn.Module = core
        if dist_info.enabled:
            from torch.nn.parallel import DistributedDataParallel

            if cfg.sync_batchnorm and device.type == "cuda":
                convert = nn.SyncBatchNorm.convert_sync_batchnorm
                core = convert(core)  # type: ignore[no-untyped-call]
            model = DistributedDataParallel(
                core, device_ids=[device.index] if device.type == "cuda" else None)
        # dropout masks differ between ranks; the same seed gives the same run
        torch.manual_seed(cfg.seed * 1_000_003 + 12_345 + dist_info.rank)
        optimizer = _build_optimizer(cfg, list(core.parameters()))
        train_data = DeviceData(data.train.images, data.train.labels, device, norm, channels_last)
        val_data = DeviceData(data.val.images, data.val.labels, device, norm, channels_last)
        min_per_rank = 2 if any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                for m in core.modules()) else 1
        steps = rank_batches(len(train_data), cfg.batch_size, dist_info, min_per_rank)
        scheduler = _build_scheduler(cfg, optimizer, steps * cfg.epochs)

        start_epoch, start_step = 0, 0
        resumed_scaler: dict[str, Any] | None = None
        metrics: list[EpochMetrics] = []
        best_acc = -1.0
        train_seconds = 0.0
        partial: dict[str, Any] | None = None
        run_dir = out
        ckpt_dir = run_dir / CHECKPOINT_DIR
        if resuming:
            state = torch.load(ckpt_dir / LAST_CHECKPOINT, map_location="cpu", weights_only=True)
            if state.get("steps_per_epoch") != steps:
                raise TrainingError(
                    f"cannot resume {str(out)!r}: it ran {state.get('steps_per_epoch')} steps "
                    f"per epoch, this configuration gives {steps} (the global batch size, "
                    "batch_size x processes, changed)")
            if scheduler is not None and state.get("total_steps") != steps * cfg.epochs:
                raise TrainingError(
                    f"cannot resume {str(out)!r} with epochs={cfg.epochs}: its {cfg.schedule} "
                    f"schedule was planned for {state['total_steps'] // steps} epochs (only "
                    "schedule 'none' can be extended)")
            core.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None:
                scheduler.load_state_dict(state["scheduler"])
            resumed_scaler = state.get("scaler")
            start_epoch, start_step = int(state["epoch"]), int(state["step"])
            metrics = [EpochMetrics.model_validate(m) for m in state["metrics"]]
            best_acc = float(state["best_val_acc"])
            train_seconds = float(state["train_seconds"])
            partial = state.get("partial")
            rngs = state["rng"]
            _set_rng_state(rngs[dist_info.rank] if isinstance(rngs, list) else rngs, device)

        data_info = DataInfo(
            dataset=data.name, source=str(cfg.data_dir) if cfg.data_dir else None,
            content_key=data.content_key, split=data.split_description, classes=data.classes,
            train_size=len(data.train), val_size=len(data.val))

        def summary(epochs_done: int) -> RunSummary:
            best = max(metrics, key=lambda m: m.val_acc) if metrics else None
            return RunSummary(
                model=model_config, train_config=cfg.model_dump(mode="json"), data=data_info,
                normalization=norm, seed=cfg.seed, device=str(device),
                epochs_completed=epochs_done, train_seconds=train_seconds, best=best,
                last=metrics[-1] if metrics else None, zoo_version=zoo.__version__,
                torch_version=torch.__version__)

        if dist_info.main and not resuming:
            self._create_run_dir(run_dir, cfg, summary(0), data)

        progress = Progress(cfg.progress, dist_info.main)
        if dist_info.main:
            progress.message(
                f"zoo: training {self.architecture} on {data.name} ({len(data.train)} train, "
                f"{len(data.val)} val, {len(data.classes)} classes) on {device}"
                f"{f' x{dist_info.world} ranks' if dist_info.enabled else ''} -> {run_dir}")
            for skipped in data.skipped[:5]:
                progress.message(f"zoo: skipped {skipped}")

        amp_dtype: torch.dtype | None = None
        if device.type == "cuda" and cfg.amp != "off":
            if cfg.amp == "fp16" or (cfg.amp == "auto" and not torch.cuda.is_bf16_supported()):
                amp_dtype = torch.float16
            else:
                amp_dtype = torch.bfloat16
        scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
        if resuming and scaler.is_enabled() and resumed_scaler:
            scaler.load_state_dict(resumed_scaler)
        aug_gen = torch.Generator(device=device)

        def checkpoint_state(epoch: int, step: int, part: dict[str, Any] | None) -> dict[str, Any]:
            rng: Any = _rng_state(device)
            if dist_info.enabled:
                import torch.distributed as tdist

                gathered: list[Any] = [None] * dist_info.world
                tdist.all_gather_object(gathered, rng)
                rng = gathered
            return {
                "format": CHECKPOINT_FORMAT, "model": core.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "scaler": scaler.state_dict(),
                "epoch": epoch, "step": step, "partial": part, "steps_per_epoch": steps,
                "total_steps": steps * cfg.epochs, "rng": rng,
                "metrics": [m.model_dump() for m in metrics], "best_val_acc": best_acc,
                "train_seconds": train_seconds, "model_config": model_config.model_dump(),
                "normalization": norm.model_dump(), "classes": list(data.classes),
            }

        stop = _StopFlag() if not dist_info.enabled else None
        try:
            if stop is not None:
                stop.__enter__()
            for epoch in range(start_epoch, cfg.epochs):
                model.train()
                perm = epoch_permutation(len(train_data), cfg.seed, epoch).to(device)
                aug_gen.manual_seed(cfg.seed * 1_000_003 + epoch * 7_919 + dist_info.rank * 31 + 5)
                loss_sum = torch.zeros((), dtype=torch.float64, device=device)
                correct = torch.zeros((), dtype=torch.int64, device=device)
                seen = 0
                elapsed_before = 0.0
                first_step = 0
                if partial is not None and epoch == start_epoch and start_step > 0:
                    loss_sum += float(partial["loss_sum"])
                    correct += int(partial["correct"])
                    seen = int(partial["seen"])
                    elapsed_before = float(partial["elapsed"])
                    aug_gen.set_state(partial["aug_state"].cpu())
                    first_step = start_step
                t0 = time.perf_counter()
                lr = optimizer.param_groups[0]["lr"]
                for step in range(first_step, steps):
                    index = shard_indices(perm, step, cfg.batch_size, dist_info)
                    xb, yb = train_data.batch(index, flip=cfg.flip, crop_padding=cfg.crop_padding,
                                              generator=aug_gen)
                    with torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                                        enabled=amp_dtype is not None):
                        logits = model(xb)
                        loss = F.cross_entropy(logits, yb, label_smoothing=cfg.label_smoothing)
                    optimizer.zero_grad(set_to_none=True)
                    if scaler.is_enabled():
                        scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
                        if cfg.grad_clip:
                            scaler.unscale_(optimizer)
                            nn.utils.clip_grad_norm_(core.parameters(), cfg.grad_clip)
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        loss.backward()  # type: ignore[no-untyped-call]
                        if cfg.grad_clip:
                            nn.utils.clip_grad_norm_(core.parameters(), cfg.grad_clip)
                        optimizer.step()
                    lr = optimizer.param_groups[0]["lr"]
                    if scheduler is not None:
                        scheduler.step()
                    n = int(yb.shape[0])
                    loss_sum += loss.detach().double() * n
                    correct += (logits.detach().argmax(1) == yb).sum()
                    seen += n
                    if step % 50 == 49 and device.type == "cpu" and not torch.isfinite(loss_sum):
                        self._non_finite(epoch, step, lr, run_dir)
                    if dist_info.main:
                        progress.step(epoch + 1, cfg.epochs, step + 1, steps, t0)
                    if stop is not None and stop.requested and step + 1 < steps:
                        elapsed = elapsed_before + time.perf_counter() - t0
                        part = {"loss_sum": float(loss_sum), "correct": int(correct),
                                "seen": seen, "elapsed": elapsed,
                                "aug_state": aug_gen.get_state()}
                        train_seconds += time.perf_counter() - t0
                        save_checkpoint(ckpt_dir / LAST_CHECKPOINT,
                                        checkpoint_state(epoch, step + 1, part))
                        progress.message(f"\nzoo: interrupted in epoch {epoch + 1} at step "
                                         f"{step + 1}/{steps}; saved {ckpt_dir / LAST_CHECKPOINT}"
                                         f"; continue with: zoo train {self.architecture} "
                                         f"--resume {run_dir}")
                        raise KeyboardInterrupt
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                train_time = time.perf_counter() - t0
                totals = torch.stack([loss_sum, correct.double(),
                                      torch.tensor(float(seen), dtype=torch.float64,
                                                   device=device)])
                val_totals = self._evaluate(core, val_data, amp_dtype, device)
                if dist_info.enabled:
                    import torch.distributed as tdist

                    both = torch.cat([totals, val_totals])
                    tdist.all_reduce(both)
                    totals, val_totals = both[:3], both[3:]
                    timing = torch.tensor([train_time], dtype=torch.float64, device=device)
                    tdist.all_reduce(timing, op=tdist.ReduceOp.MAX)
                    train_time = float(timing)
                t_loss, t_correct, t_seen = (float(v) for v in totals.cpu())
                v_loss, v_correct, v_seen = (float(v) for v in val_totals.cpu())
                if not math.isfinite(t_loss) or not math.isfinite(v_loss):
                    self._non_finite(epoch, steps - 1, lr, run_dir)
                epoch_seconds = time.perf_counter() - t0 + elapsed_before
                train_seconds += time.perf_counter() - t0
                m = EpochMetrics(
                    epoch=epoch + 1, train_loss=t_loss / max(t_seen, 1.0),
                    train_acc=t_correct / max(t_seen, 1.0), val_loss=v_loss / max(v_seen, 1.0),
                    val_acc=v_correct / max(v_seen, 1.0),
                    images_per_s=t_seen / max(train_time + elapsed_before, 1e-9),
                    lr=float(lr), seconds=epoch_seconds)
                metrics.append(m)
                improved = m.val_acc > best_acc
                best_acc = max(best_acc, m.val_acc)
                partial = None
                state = checkpoint_state(epoch + 1, 0, None)
                if dist_info.main:
                    save_checkpoint(ckpt_dir / LAST_CHECKPOINT, state)
                    if improved:
                        save_checkpoint(ckpt_dir / BEST_CHECKPOINT, state)
                    write_metrics(run_dir, metrics)
                    atomic_write_text(run_dir / SUMMARY_FILE,
                                      summary(epoch + 1).model_dump_json(indent=2))
                    progress.epoch(m, cfg.epochs)
                if stop is not None and stop.requested and epoch + 1 < cfg.epochs:
                    progress.message(f"zoo: interrupted after epoch {epoch + 1}; continue with: "
                                     f"zoo train {self.architecture} --resume {run_dir}")
                    raise KeyboardInterrupt
        finally:
            if stop is not None:
                stop.__exit__()
            if dist_info.main and metrics:
                try:
                    write_curves(run_dir, metrics, f"{self.architecture} on {data.name}")
                except Exception as exc:  # a plot must never lose a run
                    print(f"zoo: warning: could not draw {CURVES_PNG}: {exc}", file=sys.stderr)
        final = summary(len(metrics))
        return TrainResult(run_dir=run_dir, summary=final, metrics=list(metrics))

    def _non_finite(self, epoch: int, step: int, lr: float, run_dir: Path) -> None:
        last = run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
        kept = (f"the last good checkpoint {last} is intact" if last.is_file()
                else "no epoch completed, so no checkpoint was written")
        raise TrainingError(
            f"the training loss became non-finite in epoch {epoch + 1} (by step {step + 1}, "
            f"lr {lr:.3g}); {kept}; lower --lr or use a schedule with warm-up")

    def _evaluate(self, core: nn.Module, data: DeviceData, amp_dtype: torch.dtype | None,
                  device: torch.device) -> torch.Tensor:
        """Summed loss, correct count and count over this rank's share of ``data``."""
        dist_info = self.dist
        core.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.float64, device=device)
        n = len(data)
        mine = torch.arange(dist_info.rank, n, dist_info.world, device=device)
        with torch.inference_mode():
            for start in range(0, mine.shape[0], self.config.eval_batch_size):
                index = mine[start:start + self.config.eval_batch_size]
                xb, yb = data.batch(index)
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                                    enabled=amp_dtype is not None):
                    logits = core(xb)
                loss_sum += F.cross_entropy(logits.float(), yb, reduction="sum").double()
                correct += (logits.argmax(1) == yb).sum().double()
        core.train()
        return torch.stack([loss_sum, correct,
                            torch.tensor(float(mine.shape[0]), dtype=torch.float64,
                                         device=device)])

    def _create_run_dir(self, run_dir: Path, cfg: TrainConfig, first: RunSummary,
                        data: LoadedDataset) -> None:
        """Write config, summary and validation samples into a new run directory, atomically."""
        if run_dir.exists():  # an empty directory the user made: keep it, fill it
            run_dir.rmdir()
        try:
            with atomic_directory(run_dir) as tmp:
                atomic_write_text(tmp / CONFIG_FILE, cfg.model_dump_json(indent=2))
                atomic_write_text(tmp / SUMMARY_FILE, first.model_dump_json(indent=2))
                with atomic_path(tmp / VAL_SAMPLES) as npy, npy.open("wb") as fh:
                    np.save(fh, np.ascontiguousarray(data.val.images[:VAL_SAMPLE_COUNT]))
                (tmp / CHECKPOINT_DIR).mkdir()
        except OSError as exc:
            raise TrainingError(f"cannot create run directory {str(run_dir)!r} "
                                f"({exc.strerror or exc}); choose another --out") from None


def iter_metrics(run_dir: Path) -> Iterator[EpochMetrics]:
    """The epochs recorded in a run's ``metrics.jsonl``."""
    path = Path(run_dir) / METRICS_JSONL
    if not path.is_file():
        raise ZooError(f"{str(run_dir)!r} has no {METRICS_JSONL}")
    for line in path.read_text().splitlines():
        if line.strip():
            yield EpochMetrics.model_validate_json(line)


__all__ = ["TrainConfig", "TrainResult", "iter_metrics", "select_device", "train"]
