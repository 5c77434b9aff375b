"""Distributed training under ``torchrun``: this process's place, the process group, collectives.

The collective helpers pass their input through when the run is not
distributed; ``torch.distributed`` is imported only when one is needed.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

import torch

from zoo.errors import TrainingError


@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun job (``world == 1``: not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def enabled(self) -> bool:
        """Whether more than one process takes part."""
        return self.world > 1

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the one that writes files and reports."""
        return self.rank == 0


def dist_from_env(environ: dict[str, str] | None = None) -> Dist:
    """Read RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE as torchrun sets them."""
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


def init_process_group(dist_info: Dist, device: torch.device, timeout_s: float) -> bool:
    """Join the process group if torchrun started us; return whether we created it."""
    import torch.distributed as tdist

    if not dist_info.enabled or tdist.is_initialized():
        return False
    if "MASTER_ADDR" not in os.environ:
        raise TrainingError("WORLD_SIZE > 1 but MASTER_ADDR is not set: start distributed runs "
                            "with torchrun --nproc_per_node=N -m zoo train ...")
    backend = "nccl" if device.type == "cuda" else "gloo"
    # torch._dynamo (imported by DDP and the optimizers) keeps references to the default
    # group when it is first imported after the group exists: destroy_process_group then
    # cannot free it, and its gloo threads die during interpreter shutdown, which now and
    # then aborts the process ("terminate called without an active exception"). Imported
    # first, it holds none.
    import torch._dynamo  # noqa: F401

    tdist.init_process_group(backend=backend, rank=dist_info.rank, world_size=dist_info.world,
                             timeout=timedelta(seconds=timeout_s))
    return True


def destroy_process_group() -> None:
    """Leave the process group, if there is one; what holds it only through reference cycles
    (a dropped DDP wrapper's reducer) is collected first, so its threads end now."""
    import torch.distributed as tdist

    if tdist.is_initialized():
        gc.collect()
        tdist.destroy_process_group()


def barrier(dist_info: Dist) -> None:
    """Wait until every rank gets here."""
    if not dist_info.enabled:
        return
    import torch.distributed as tdist

    tdist.barrier()


def broadcast_object(obj: Any, dist_info: Dist) -> Any:
    """Rank 0's ``obj`` on every rank (picklable objects)."""
    if not dist_info.enabled:
        return obj
    import torch.distributed as tdist

    box: list[Any] = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(obj: Any, dist_info: Dist) -> list[Any]:
    """Every rank's ``obj``, indexed by rank (picklable objects)."""
    if not dist_info.enabled:
        return [obj]
    import torch.distributed as tdist

    gathered: list[Any] = [None] * dist_info.world
    tdist.all_gather_object(gathered, obj)
    return gathered


def all_reduce(tensor: torch.Tensor, dist_info: Dist,
               op: Literal["sum", "max"] = "sum") -> torch.Tensor:
    """Reduce ``tensor`` over all ranks, in place, and return it."""
    if not dist_info.enabled:
        return tensor
    import torch.distributed as tdist

    tdist.all_reduce(tensor, op=tdist.ReduceOp.SUM if op == "sum" else tdist.ReduceOp.MAX)
    return tensor
