"""How a step executes: mixed precision on CUDA, and batches split into parallel parts on CPU."""

from __future__ import annotations

import torch
from torch import nn

from zoo.batchsplit import BatchSplitter, auto_parts, split_blocker
from zoo.config import TrainConfig
from zoo.distributed import Dist
from zoo.errors import TrainingError


def amp_dtype(device: torch.device, config: TrainConfig) -> torch.dtype | None:
    """The autocast dtype of ``--amp`` on CUDA (None: full precision)."""
    if device.type != "cuda" or config.amp == "off":
        return None
    if config.amp == "fp16" or (config.amp == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def make_splitter(config: TrainConfig, device: torch.device, dist_info: Dist, *, threads: int,
                  recorded: int | None, core: nn.Module, sample: torch.Tensor,
                  architecture: str) -> BatchSplitter | None:
    """On CPU in one process, a splitter training each batch as parallel parts, if the
    model allows. ``auto`` keeps the parts a resumed run started with (``recorded``), so
    that it stays exact; ``sample`` is a probe batch for the model's check.
    """
    wanted = config.batch_split
    if device.type != "cpu" or dist_info.enabled:
        if wanted is not None and wanted > 1:
            where = "distributed" if dist_info.enabled else f"on {device.type}"
            raise TrainingError(f"batch_split={wanted} applies to CPU training in one "
                                f"process, not {where}; leave it unset or set 1")
        return None
    parts = wanted or recorded or auto_parts(threads, config.batch_size)
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
