"""The training device's choices, decided without the hardware: which device ``auto`` and a
rank pick, how many CPU threads each process takes, the autocast dtype on CUDA, and when
a batch is split into parallel parts (the accelerators are simulated; the choices are
what is tested, not the kernels)."""

from __future__ import annotations

import os
import re
from typing import Any

import pytest
import torch
from torch import nn

import zoo
from zoo.errors import TrainingError
from zoo.spec.training import TrainConfig
from zoo.trainer import devices
from zoo.trainer.devices import amp_dtype, configure_cpu, make_splitter, select_device
from zoo.trainer.distributed import Dist

CPU = torch.device("cpu")
CUDA = torch.device("cuda", 0)


def _hardware(monkeypatch: pytest.MonkeyPatch, *, cuda: int = 0, mps: bool = False) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


@pytest.mark.parametrize(("cuda", "mps", "name", "rank", "expected"), [
    (0, False, "auto", 0, "cpu"),
    (0, True, "auto", 0, "mps"),
    (1, True, "auto", 0, "cuda:0"),  # CUDA before MPS
    (2, False, "auto", 3, "cuda:1"),  # rank 3 of 2 GPUs: the second
    (1, False, "cuda", 3, "cuda:0"),
    (2, False, "cuda", None, "cuda:0"),  # no rank given: the first GPU
    (2, True, "cpu", 1, "cpu"),
    (0, True, "mps", 1, "mps"),
])
def test_the_device_follows_the_hardware_and_the_rank(monkeypatch: pytest.MonkeyPatch, cuda: int,
                                                     mps: bool, name: str, rank: int | None,
                                                     expected: str) -> None:
    _hardware(monkeypatch, cuda=cuda, mps=mps)
    device = select_device(name) if rank is None else select_device(name, rank)
    assert device == torch.device(expected)


@pytest.mark.parametrize(("name", "message"), [
    ("cuda", "--device cuda was requested but CUDA is not available here"),
    ("mps", "--device mps was requested but MPS is not available here"),
    ("tpu", "unknown device 'tpu'; accepted: auto, cpu, cuda, mps"),
])
def test_a_device_that_is_not_there_is_one_line(monkeypatch: pytest.MonkeyPatch, name: str,
                                                message: str) -> None:
    _hardware(monkeypatch)
    with pytest.raises(TrainingError, match=message):
        select_device(name)


@pytest.mark.parametrize(("device", "threads", "local_world", "cpus", "expected"), [
    (CPU, None, 1, 8, None),  # one process, no setting: torch's own default stays
    (CPU, 3, 1, 8, 3),
    (CPU, 3, 4, 8, 3),  # an explicit count wins over the share
    (CPU, None, 2, 5, 2),  # two processes share five cores: two threads each
    (CPU, None, 4, 2, 1),  # more processes than cores: one thread each, never none
    (CPU, None, 2, None, 1),  # the core count unknown
    (CUDA, 3, 2, 8, None),  # the GPU's processes leave CPU threads alone
])
def test_cpu_threads_are_shared_among_the_processes_of_a_machine(
        monkeypatch: pytest.MonkeyPatch, device: torch.device, threads: int | None,
        local_world: int, cpus: int | None, expected: int | None) -> None:
    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    monkeypatch.setattr(devices, "retain_freed_memory", lambda: None)
    config = TrainConfig(num_threads=threads)
    configure_cpu(device, config, Dist(world=local_world, local_world=local_world))
    assert calls == ([] if expected is None else [expected])


@pytest.mark.parametrize(("device", "tune", "tuned"), [
    (CPU, True, True), (CPU, False, False), (CUDA, True, False)])
def test_the_allocator_is_tuned_on_cpu_only_when_asked(monkeypatch: pytest.MonkeyPatch,
                                                       device: torch.device, tune: bool,
                                                       tuned: bool) -> None:
    calls: list[bool] = []
    monkeypatch.setattr(devices, "retain_freed_memory", lambda: calls.append(True))
    configure_cpu(device, TrainConfig(tune_allocator=tune), Dist())
    assert calls == ([True] if tuned else [])


@pytest.mark.parametrize(("amp", "bf16", "expected"), [
    ("fp16", True, torch.float16),
    ("bf16", False, torch.bfloat16),
    ("auto", True, torch.bfloat16),
    ("auto", False, torch.float16),  # a GPU without bfloat16
    ("off", True, None),
])
def test_the_cuda_autocast_dtype(monkeypatch: pytest.MonkeyPatch, amp: str, bf16: bool,
                                 expected: torch.dtype | None) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert amp_dtype(CUDA, TrainConfig(amp=amp)) is expected


def _splitter(config: TrainConfig, device: torch.device = CPU, dist: Dist | None = None, *,
              threads: int = 4, recorded: int | None = None, core: nn.Module | None = None
              ) -> Any:
    core = core or nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    return make_splitter(config, device, dist or Dist(), threads=threads, recorded=recorded,
                         core=core, sample=torch.zeros(4, 3, 2, 2), architecture="Arch")


@pytest.mark.parametrize(("split", "recorded", "threads", "batch", "parts", "per_part"), [
    (None, None, 4, 128, 4, 1),  # auto: one part per thread, each of 32 samples at least
    (None, None, 4, 64, 2, 2),
    (None, None, 4, 63, None, None),  # too small to split
    (None, 3, 4, 128, 3, 1),  # a resumed run keeps the parts it started with
    (2, 3, 4, 128, 2, 2),  # an explicit setting wins over the record
    (2, None, 5, 128, 2, 2),  # five threads over two parts: two each
    (2, None, 1, 128, 2, 1),  # never fewer than one thread a part
    (3, None, 2, 8, 3, 1),  # explicit: more parts than threads, small parts
    (8, None, 2, 8, 8, 1),  # as many parts as samples
    (1, None, 4, 128, None, None),
])
def test_the_batch_split_on_cpu(split: int | None, recorded: int | None, threads: int,
                                batch: int, parts: int | None, per_part: int | None) -> None:
    splitter = _splitter(TrainConfig(batch_split=split, batch_size=batch), threads=threads,
                         recorded=recorded)
    try:
        got = None if splitter is None else (splitter.parts, splitter.threads_per_part)
        assert got == (None if parts is None else (parts, per_part))
        if splitter is not None:
            assert isinstance(splitter.threads_per_part, int)
    finally:
        if splitter is not None:
            splitter.close()


class Preferring(nn.Module):
    """A model naming its own parts per batch, as one with multi-threaded kernels does."""

    def __init__(self, parts: object) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 2)
        self.zoo_batch_split = parts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))  # type: ignore[no-any-return]


@pytest.mark.parametrize(("split", "recorded", "preferred", "batch", "parts"), [
    (None, None, 1, 128, None),  # the model's kernels use every thread: whole batches
    (None, None, 3, 128, 3),  # auto would give 4 (one per thread)
    (None, None, 16, 8, 8),  # at most one part per sample
    (None, None, None, 128, 4),  # no preference: one part per thread
    (None, 2, 1, 128, 2),  # a resumed run keeps the parts it started with
    (4, None, 1, 128, 4),  # an explicit setting wins
])
def test_a_model_names_its_parts_for_auto(split: int | None, recorded: int | None,
                                          preferred: int | None, batch: int,
                                          parts: int | None) -> None:
    splitter = _splitter(TrainConfig(batch_split=split, batch_size=batch), threads=4,
                         recorded=recorded, core=Preferring(preferred))
    try:
        assert (None if splitter is None else splitter.parts) == parts
    finally:
        if splitter is not None:
            splitter.close()


@pytest.mark.parametrize("bad", [0, -2, 1.5, "2", True])
def test_a_model_naming_no_whole_number_of_parts_is_refused(bad: object) -> None:
    with pytest.raises(TrainingError, match=rf"^Arch: Preferring.zoo_batch_split is "
                                            rf"{re.escape(repr(bad))}; a model may set it to "
                                            r"None or a whole number of parts of at least 1$"):
        _splitter(TrainConfig(), core=Preferring(bad))


def test_the_chapter8_models_ask_for_whole_batches_while_their_kernels_run(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from zoo_chapter8 import models

    net = zoo.create_model("Net")

    def split() -> Any:
        return make_splitter(TrainConfig(batch_size=64), CPU, Dist(), threads=2, recorded=None,
                             core=net, sample=torch.randn(2, 3, 32, 32), architecture="Net")

    monkeypatch.setattr(models, "library", lambda: object())
    assert net.zoo_batch_split == 1
    assert split() is None
    monkeypatch.setattr(models, "library", lambda: None)  # kernels off: the trainer decides
    assert net.zoo_batch_split is None
    splitter = split()
    try:
        assert splitter is not None and splitter.parts == 2
    finally:
        if splitter is not None:
            splitter.close()


def test_the_batch_split_is_refused_where_it_cannot_apply() -> None:
    with pytest.raises(TrainingError, match="batch_split=9 is more than batch_size=8"):
        _splitter(TrainConfig(batch_split=9, batch_size=8))
    with pytest.raises(TrainingError, match=r"batch_split=4 \(recorded by the run being "
                                            r"resumed\) is more than batch_size=2"):
        _splitter(TrainConfig(batch_size=2), recorded=4)
    with pytest.raises(TrainingError, match="batch_split=2 applies to CPU training in one "
                                            "process, not on cuda; leave it unset or set 1"):
        _splitter(TrainConfig(batch_split=2), CUDA)
    with pytest.raises(TrainingError, match="not distributed"):
        _splitter(TrainConfig(batch_split=2), dist=Dist(world=2, local_world=2))
    for config in (TrainConfig(batch_split=1), TrainConfig()):  # nothing to refuse: no split
        assert _splitter(config, CUDA) is None
        assert _splitter(config, dist=Dist(world=2, local_world=2)) is None
    bn = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(TrainingError, match="batch_split=2 cannot be used with Arch"):
        _splitter(TrainConfig(batch_split=2), core=bn)
    assert _splitter(TrainConfig(), core=bn) is None  # auto: no split, no error
