"""The training device: which one, how CPU threads and memory are set up on it, and how a
step executes there (mixed precision, batches split into parallel parts on CPU)."""

from __future__ import annotations

import os
import sys

import torch
from torch import nn

from zoo.errors import TrainingError
from zoo.spec.training import TrainConfig
from zoo.trainer.allocator import retain_freed_memory
from zoo.trainer.batchsplit import BatchSplitter, auto_parts, preferred_parts, split_blocker
from zoo.trainer.distributed import Dist
from zoo.util.cpu import native_bf16


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


def configure_cpu(device: torch.device, config: TrainConfig, dist_info: Dist) -> int:
    """Set this process's CPU threads and allocator; return its intra-op thread count."""
    if device.type == "cpu" and (config.num_threads or dist_info.local_world > 1):
        # N processes on one machine share its cores instead of oversubscribing them
        threads = config.num_threads or max(1, (os.cpu_count() or 1) // dist_info.local_world)
        torch.set_num_threads(threads)
    if device.type == "cpu" and config.tune_allocator:
        retain_freed_memory()
    return torch.get_num_threads()


def amp_dtype(device: torch.device, config: TrainConfig) -> torch.dtype | None:
    """The autocast dtype of ``--amp`` (None: full precision).

    CUDA: ``auto`` is bfloat16 where the GPU supports it, else float16. CPU: ``bf16`` is
    bfloat16 autocast (with a warning where this CPU only emulates bfloat16, which is
    slower than float32); ``auto`` stays float32 (bf16's accuracy on every default recipe
    is not established: docs/training.md, "Mixed precision on CPU"); ``fp16`` is refused.
    MPS: float32.
    """
    if config.amp == "off" or device.type not in ("cuda", "cpu"):
        return None
    if device.type == "cpu":
        if config.amp == "fp16":
            raise TrainingError("amp='fp16' applies to CUDA; on CPU use amp='bf16' (bfloat16 "
                                "autocast) or 'off'")
        if config.amp == "auto":
            return None
        if not native_bf16():
            print("zoo: warning: amp='bf16': this CPU has no native bfloat16 (AVX512-BF16, "
                  "AMX or Arm BF16); it is emulated and slower than amp='off' here",
                  file=sys.stderr)
        return torch.bfloat16
    if config.amp == "fp16" or (config.amp == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def make_splitter(config: TrainConfig, device: torch.device, dist_info: Dist, *, threads: int,
                  recorded: int | None, core: nn.Module, sample: torch.Tensor,
                  architecture: str) -> BatchSplitter | None:
    """On CPU in one process, a splitter training each batch as parallel parts, if the
    model allows. ``auto`` keeps the parts a resumed run started with (``recorded``), so
    that it stays exact, else takes the model's own choice (its ``zoo_batch_split``,
    at most one part per sample), else one part per thread; ``sample`` is a probe batch
    for the model's check.
    """
    wanted = config.batch_split
    if device.type != "cpu" or dist_info.enabled:
        if wanted is not None and wanted > 1:
            where = "distributed" if dist_info.enabled else f"on {device.type}"
            raise TrainingError(f"batch_split={wanted} applies to CPU training in one "
                                f"process, not {where}; leave it unset or set 1")
        return None
    try:
        preferred = preferred_parts(core)
    except ValueError as exc:
        raise TrainingError(f"{architecture}: {exc}") from None
    if preferred is not None:
        preferred = min(preferred, config.batch_size)
    parts = wanted or recorded or preferred or auto_parts(threads, config.batch_size)
    if parts > config.batch_size:
        source = "" if wanted else " (recorded by the run being resumed)"
        raise TrainingError(f"batch_split={parts}{source} is more than "
                            f"batch_size={config.batch_size}; use at most one part per sample")
    if parts <= 1:
        return None
    blocker = split_blocker(core, sample)
    if blocker is not None:
        if wanted is not None:
            raise TrainingError(f"batch_split={wanted} cannot be used with "
                                f"{architecture}: {blocker}; set batch_split=1")
        return None
    return BatchSplitter(parts, max(1, threads // parts))


__all__ = ["amp_dtype", "configure_cpu", "make_splitter", "select_device"]
