"""The training device: which one, and how CPU threads and memory are set up on it."""

from __future__ import annotations

import os

import torch

from zoo.allocator import retain_freed_memory
from zoo.config import TrainConfig
from zoo.distributed import Dist
from zoo.errors import TrainingError


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
