"""DDP on CPU with 2 gloo processes: equivalence with one process, one set of files, failures."""

from __future__ import annotations

import gc
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
import zoo_testnets
from zoo_chapter8 import kernels

from zoo import Registry
from zoo.trainer.loop import train

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(),
                                reason="torch.distributed is not available")

# 320 images, 0.2 held out: 256 training images, 4 global batches of 64 per epoch
COMMON: dict[str, Any] = {
    "dataset_options": {"size": 320, "num_classes": 2},
    "val_split": 0.2,
    "model": {"in_height": 16, "in_width": 16},
    "flip": False,
    "crop_padding": 0,
    "schedule": "none",
    "progress": "none",
    "num_threads": 1,
    "dist_timeout_s": 30,
}
RUN_FILES = {"config.json", "run.json", "metrics.jsonl", "metrics.csv", "val_samples.npy",
             "checkpoints"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, arch: str, fields: dict[str, Any],
            cache: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      ZOO_CACHE_DIR=cache)
    registry = Registry()
    registry.register(zoo_testnets, name="testnets")
    threads = len(os.listdir("/proc/self/task"))
    # the gloo group's threads end with the run, not during interpreter shutdown (see
    # test_leaving_the_group_frees_it_while_the_interpreter_runs) nor at the next garbage
    # collection: the cyclic collector off, the group must still be freed when train returns
    gc.disable()
    try:
        train(arch, registry=registry, **fields)
    finally:
        gc.enable()
    names = [(Path("/proc/self/task") / t / "comm").read_text().strip()
             for t in os.listdir("/proc/self/task")]
    assert len(names) == threads, names


def _spawn(arch: str, fields: dict[str, Any], cache: Path, world: int = 2,
           timeout: float = 60.0) -> None:
    """Run ``train`` in ``world`` gloo processes; fail (never hang) after ``timeout`` seconds."""
    # the chapter-8 kernels built once beforehand, not by every rank inside its first step
    saved = os.environ.get("ZOO_CACHE_DIR")
    os.environ["ZOO_CACHE_DIR"] = str(cache)
    try:
        kernels._load()
    finally:
        if saved is None:
            del os.environ["ZOO_CACHE_DIR"]
        else:
            os.environ["ZOO_CACHE_DIR"] = saved
    ctx = mp.start_processes(_worker, args=(world, _free_port(), arch, fields, str(cache)),
                             nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=0.5):
            if time.monotonic() > deadline:
                pytest.fail(f"distributed run did not finish in {timeout}s")
    finally:
        for proc in ctx.processes:
            if proc.is_alive():
                proc.kill()


def _params(run: Path) -> dict[str, torch.Tensor]:
    weights: dict[str, torch.Tensor] = torch.load(run / "checkpoints" / "last.pt",
                                                  weights_only=True)["model"]
    return weights


def test_two_ranks_match_one_process_and_resume(tmp_path: Path) -> None:
    cache = Path(os.environ["ZOO_CACHE_DIR"])  # the session's (conftest): kernels built once
    single = train("Net", epochs=2, batch_size=64, out=tmp_path / "single", **COMMON)
    # one process, batch 64, for one epoch; then resumed as 2 ranks x batch 32 (the same
    # global batch) for the second epoch: resume under DDP, then DDP training proper
    train("Net", epochs=1, batch_size=64, out=tmp_path / "ddp", **COMMON)
    _spawn("Net", {"epochs": 2, "batch_size": 32, "resume": tmp_path / "ddp"}, cache)
    a, b = _params(tmp_path / "single"), _params(tmp_path / "ddp")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-5, msg=name)
    # one set of files, written by rank 0 only (a fresh DDP run from the command line:
    # test_readme_trainer_plugin.py's torchrun test)
    names = {p.name for p in (tmp_path / "ddp").iterdir()}
    assert names >= RUN_FILES and not [n for n in names if n.startswith(".")]
    assert {p.name for p in (tmp_path / "ddp" / "checkpoints").iterdir()} <= {"last.pt",
                                                                              "best.pt"}
    lines = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    # metrics are all-reduced over the ranks: the same global numbers as one process
    from zoo.spec.run import EpochMetrics

    ddp_last = EpochMetrics.model_validate_json(lines[-1])
    assert ddp_last.val_acc == single.metrics[-1].val_acc
    assert abs(ddp_last.train_loss - single.metrics[-1].train_loss) < 1e-4


def test_a_failing_rank_ends_the_job(tmp_path: Path) -> None:
    fields = {**COMMON, "epochs": 2, "batch_size": 32, "out": tmp_path / "run",
              "model": {**COMMON["model"], "fail_rank": 1, "after": 2}}
    start = time.monotonic()
    with pytest.raises((mp.ProcessRaisedException, mp.ProcessExitedException)) as info:
        _spawn("Faulty", fields, Path(os.environ["ZOO_CACHE_DIR"]), timeout=60)
    # the failing rank's error, or rank 0's when its collective broke first: never a hang
    message = str(info.value)
    assert ("injected failure in rank 1" in message or "gloo" in message.lower()
            or "connection" in message.lower()), message
    assert time.monotonic() - start < 60


# -- in this process: reading torchrun's environment and the single-process defaults ------

def test_a_process_without_torchrun_is_rank_0_of_1_and_not_distributed() -> None:
    import dataclasses

    from zoo.trainer.distributed import Dist, dist_from_env

    alone = dist_from_env({})
    assert alone == Dist() == Dist(rank=0, world=1, local_rank=0, local_world=1)
    assert (alone.enabled, alone.main) == (False, True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        alone.rank = 1  # type: ignore[misc]


@pytest.mark.parametrize(("env", "expected", "enabled", "main"), [
    ({"WORLD_SIZE": "2", "RANK": "1"}, (1, 2, 1, 2), True, False),  # local = global by default
    ({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"},
     (3, 4, 1, 2), True, False),
    ({"WORLD_SIZE": "2", "RANK": "0"}, (0, 2, 0, 2), True, True),
    ({"WORLD_SIZE": "1"}, (0, 1, 0, 1), False, True),
])
def test_torchruns_environment_gives_each_process_its_place(
        env: dict[str, str], expected: tuple[int, int, int, int], enabled: bool,
        main: bool) -> None:
    from zoo.trainer.distributed import dist_from_env

    place = dist_from_env(env)
    assert (place.rank, place.world, place.local_rank, place.local_world) == expected
    assert (place.enabled, place.main) == (enabled, main)


def test_a_single_process_joins_no_group_and_a_group_needs_its_master() -> None:
    import torch

    from zoo.errors import TrainingError
    from zoo.trainer.distributed import Dist, init_process_group

    assert init_process_group(Dist(), torch.device("cpu"), 10.0) is False
    with pytest.raises(TrainingError, match="MASTER_ADDR is not set"):
        old = os.environ.pop("MASTER_ADDR", None)
        try:
            init_process_group(Dist(rank=0, world=2), torch.device("cpu"), 10.0)
        finally:
            if old is not None:
                os.environ["MASTER_ADDR"] = old


_LEAVE_GROUP = """
import gc, sys, weakref
import torch
import torch.distributed as tdist
from zoo.trainer.distributed import Dist, destroy_process_group, init_process_group

rank = int(sys.argv[1])
assert "torch._dynamo" not in sys.modules  # a fresh process: the import order is the test
assert init_process_group(Dist(rank=rank, world=2, local_rank=rank, local_world=2),
                          torch.device("cpu"), 30.0)
group = weakref.ref(tdist.group.WORLD)
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 2))
model(torch.ones(4, 3)).sum().backward()
del model
destroy_process_group()
gc.collect()
print("alive" if group() is not None else "freed")
"""


def test_leaving_the_group_frees_it_while_the_interpreter_runs(tmp_path: Path) -> None:
    """After a DDP step, destroy_process_group frees the gloo group (and joins its threads)
    in the process: a group left alive until interpreter shutdown aborted rank 1 of a
    torchrun job now and then ("terminate called without an active exception")."""
    import subprocess
    import sys

    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _LEAVE_GROUP, str(rank)], cwd=tmp_path,
                              env={**env, "RANK": str(rank)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    try:
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
        assert out.split() == ["freed"]
