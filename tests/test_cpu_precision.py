"""Mixed precision on CPU (``--amp``) and the CPU-feature checks that choose it.

bfloat16 autocast on CPU is a choice made at run time: ``bf16`` trains under it (every
batch-split part on its own thread too), ``auto`` stays float32, ``fp16`` is refused, and
a CPU without native bfloat16 is warned about. The fallbacks are forced by patching the
feature check, so they are tested on every machine, whatever its CPU.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from zoo.errors import TrainingError
from zoo.spec.training import TrainConfig
from zoo.trainer import devices
from zoo.trainer.batchsplit import BatchSplitter
from zoo.trainer.loop import train
from zoo.util import cpu

ONE_STEP: dict[str, Any] = {
    "dataset_options": {"size": 40, "num_classes": 2},  # 36 train, 4 val
    "batch_size": 64, "epochs": 1, "schedule": "none", "progress": "none",
    "optimizer": "sgd", "lr": 0.1, "momentum": 0.0, "nesterov": False, "weight_decay": 0.0,
    "grad_clip": None, "device": "cpu",
}


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(params=[True, False], ids=["native-bf16", "no-bf16"])
def native(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Run the test as on a CPU with native bfloat16 and as on one without."""
    monkeypatch.setattr(devices, "native_bf16", lambda: request.param)
    return bool(request.param)


def test_cpu_features_are_read_from_cpuinfo_on_x86_and_arm() -> None:
    x86 = "processor\t: 0\nflags\t\t: fpu avx2 fma avx512f avx512_bf16 avx512_vnni\n" \
          "processor\t: 1\nflags\t\t: fpu\n"
    assert cpu._parse_cpuinfo(x86) == {"fpu", "avx2", "fma", "avx512f", "avx512_bf16",
                                       "avx512_vnni"}
    arm = "processor\t: 0\nFeatures\t: fp asimd asimddp bf16 sve\nCPU part\t: 0xd40\n"
    assert cpu._parse_cpuinfo(arm) == {"fp", "asimd", "asimddp", "bf16", "sve"}
    assert cpu._parse_cpuinfo("model name : something\n") == frozenset()


@pytest.mark.parametrize(("flags", "bf16", "int8"), [
    ({"avx2", "fma"}, False, False),
    ({"avx2", "avx512f", "avx512_vnni"}, False, True),
    ({"avx512_bf16", "avx512_vnni"}, True, True),
    ({"amx_bf16", "amx_int8"}, True, True),
    ({"asimd", "asimddp", "bf16"}, True, True),
    (set(), False, False),
])
def test_native_precisions_follow_the_features(monkeypatch: pytest.MonkeyPatch, flags: set[str],
                                               bf16: bool, int8: bool) -> None:
    monkeypatch.setattr(cpu, "cpu_features", lambda: frozenset(flags))
    assert (cpu.native_bf16(), cpu.native_int8()) == (bf16, int8)
    line = cpu.describe()
    assert line.startswith(f"{platform.machine() or 'unknown'} CPU, features: ")
    assert all(f in line for f in flags if f in cpu.REPORTED)
    assert "none known" in line if not flags else "none known" not in line


def test_amp_dtype_on_cpu(native: bool, capsys: pytest.CaptureFixture[str]) -> None:
    cpu_device = torch.device("cpu")
    assert devices.amp_dtype(cpu_device, TrainConfig(amp="off")) is None
    assert devices.amp_dtype(cpu_device, TrainConfig(amp="auto")) is None
    assert capsys.readouterr().err == ""
    assert devices.amp_dtype(cpu_device, TrainConfig(amp="bf16")) is torch.bfloat16
    warning = capsys.readouterr().err
    assert ("no native bfloat16" in warning) is not native
    with pytest.raises(TrainingError, match=r"amp='fp16' applies to CUDA; on CPU use "
                                            r"amp='bf16'"):
        devices.amp_dtype(cpu_device, TrainConfig(amp="fp16"))
    assert devices.amp_dtype(torch.device("mps"), TrainConfig(amp="bf16")) is None


@pytest.mark.parametrize("architecture", ["Net", "NetBatchNorm"])
def test_auto_trains_bit_for_bit_as_off_and_bf16_trains_in_bfloat16(
        tmp_path: Path, native: bool, architecture: str) -> None:
    """auto is float32 on CPU (the same numbers as off); bf16 changes them, a little."""
    off = train(architecture, out=tmp_path / "off", amp="off", **ONE_STEP)
    auto = train(architecture, out=tmp_path / "auto", amp="auto", **ONE_STEP)
    bf16 = train(architecture, out=tmp_path / "bf16", amp="bf16", **ONE_STEP)
    assert auto.metrics[0].train_loss == off.metrics[0].train_loss
    assert auto.metrics[0].val_loss == off.metrics[0].val_loss
    assert bf16.metrics[0].train_loss != off.metrics[0].train_loss
    assert bf16.metrics[0].train_loss == pytest.approx(off.metrics[0].train_loss, rel=0.02)
    weights = torch.load(tmp_path / "bf16" / "checkpoints" / "last.pt", weights_only=True)
    assert {t.dtype for t in weights["model"].values() if t.is_floating_point()} \
        == {torch.float32}  # autocast computes in bfloat16; the weights stay float32


def test_bf16_reaches_every_batch_split_part(tmp_path: Path) -> None:
    """Autocast is per thread: a part on a worker thread must enter it too."""
    seen: list[tuple[bool, torch.dtype]] = []

    class Probe(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.linear(x)
            seen.append((torch.is_autocast_enabled("cpu"), out.dtype))
            return out

    model = Probe()
    params = list(model.parameters())
    splitter = BatchSplitter(4, 1)
    try:
        def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return nn.functional.cross_entropy(logits, labels, reduction="sum")

        x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
        splitter.step(model, params, x, y, loss_fn, autocast=torch.bfloat16)
        assert seen == [(True, torch.bfloat16)] * 4
        assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in params)
        seen.clear()
        splitter.step(model, params, x, y, loss_fn)
        assert seen == [(False, torch.float32)] * 4
    finally:
        splitter.close()


def test_bf16_with_batch_split_matches_bf16_in_one_part(tmp_path: Path) -> None:
    """Split into parts or not, a bf16 step is the same update (to bfloat16 rounding)."""
    runs = {}
    for parts in (1, 2):
        train("Net", out=tmp_path / f"p{parts}", amp="bf16", batch_split=parts, num_threads=2,
              **ONE_STEP)
        runs[parts] = torch.load(tmp_path / f"p{parts}" / "checkpoints" / "last.pt",
                                 weights_only=True)["model"]
    for name, value in runs[1].items():
        torch.testing.assert_close(runs[2][name], value, rtol=0.0, atol=2e-3)
