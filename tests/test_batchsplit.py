"""Batches trained as parallel parts on CPU threads: the probe, the gradient, the runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import zoo
from zoo import Registry
from zoo.cli import main
from zoo.errors import TrainingError
from zoo.spec.run import read_summary
from zoo.trainer.batchsplit import BatchSplitter, auto_parts, split_blocker

FAST: dict[str, Any] = {
    "dataset_options": {"size": 240, "num_classes": 2},
    "model": {"in_height": 16, "in_width": 16},
    "batch_size": 32,
    "progress": "none",
    "num_threads": 2,
}


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))


class BatchCentred(nn.Module):
    """Couples the samples of a batch without any buffer: x minus the batch mean."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        return self.fc(x - x.mean(0))  # type: ignore[no-any-return]


class Counting(nn.Module):
    """Updates a buffer in its forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 2)
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += x.shape[0]
        return self.fc(torch.flatten(x, 1))  # type: ignore[no-any-return]


def test_the_probe_accepts_pure_per_sample_models_and_names_what_blocks_the_others() -> None:
    x = torch.randn(4, 3, 2, 2)
    assert split_blocker(zoo.create_model("Net", in_height=8, in_width=8),
                         torch.randn(2, 3, 8, 8)) is None
    assert split_blocker(zoo.create_model("NetRes", in_height=8, in_width=8),
                         torch.randn(2, 3, 8, 8)) is None
    bn = zoo.create_model("NetBatchNorm", in_height=8, in_width=8)
    assert "BatchNorm" in str(split_blocker(bn, torch.randn(2, 3, 8, 8)))
    dropout = zoo.create_model("NetDropout", in_height=8, in_width=8)
    sample = torch.randn(2, 3, 8, 8)
    rng = torch.get_rng_state()
    assert "random numbers" in str(split_blocker(dropout, sample))
    assert torch.equal(torch.get_rng_state(), rng)  # the probe's dropout draws are undone
    assert "depends on the rest of the batch" in str(split_blocker(BatchCentred(), x))
    counting = Counting()
    assert "updates buffers" in str(split_blocker(counting, x))
    assert int(counting.seen) == 0  # the probe leaves buffers as it found them
    assert counting.training


def test_auto_parts_one_per_thread_with_at_least_32_samples() -> None:
    assert auto_parts(2, 64) == 2
    assert auto_parts(2, 128) == 2
    assert auto_parts(8, 128) == 4
    assert auto_parts(1, 128) == 1
    assert auto_parts(4, 48) == 1


@pytest.mark.parametrize("parts", [2, 3])
def test_split_step_gives_the_full_batch_gradient(parts: int) -> None:
    torch.manual_seed(0)
    model = zoo.create_model("NetRes", in_height=16, in_width=16)
    params = list(model.parameters())
    x, y = torch.randn(20, 3, 16, 16), torch.randint(0, 2, (20,))
    logits = model(x)
    loss = F.cross_entropy(logits, y, label_smoothing=0.1)
    expected = torch.autograd.grad(loss, params)

    def summed(out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, labels, reduction="sum", label_smoothing=0.1)

    splitter = BatchSplitter(parts, threads_per_part=1)
    try:
        loss_sum, split_logits = splitter.step(model, params, x, y, summed)
        grads = [p.grad for p in params]
        again, _ = splitter.step(model, params, x, y, summed)
        assert all(torch.equal(g, p.grad) for g, p in zip(grads, params, strict=True))
    finally:
        splitter.close()
    torch.testing.assert_close(loss_sum / 20, loss.detach())
    splitter = BatchSplitter(parts, threads_per_part=1)
    try:  # a last batch with fewer samples than parts
        one, one_logits = splitter.step(model, params, x[:1], y[:1], summed)
    finally:
        splitter.close()
    torch.testing.assert_close(one, F.cross_entropy(model(x[:1]), y[:1], reduction="sum",
                                                    label_smoothing=0.1).detach())
    assert one_logits.shape == (1, 2)
    assert torch.equal(again, loss_sum)  # parts are summed in a fixed order
    torch.testing.assert_close(split_logits, logits.detach())
    for g, e in zip(grads, expected, strict=True):
        assert g is not None
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


def test_split_runs_are_reproducible_and_resume_exactly(tmp_path: Path) -> None:
    cfg = {**FAST, "batch_split": 2, "schedule": "none"}
    a = zoo.train("Net", epochs=2, out=tmp_path / "a", **cfg)
    b = zoo.train("Net", epochs=2, out=tmp_path / "b", **cfg)
    strip = {"images_per_s", "seconds"}
    assert [m.model_dump(exclude=strip) for m in a.metrics] == \
        [m.model_dump(exclude=strip) for m in b.metrics]
    zoo.train("Net", epochs=1, out=tmp_path / "part", **cfg)
    resumed = zoo.train("Net", epochs=2, resume=tmp_path / "part")
    wa = torch.load(tmp_path / "a" / "checkpoints" / "last.pt", weights_only=True)
    wb = torch.load(tmp_path / "part" / "checkpoints" / "last.pt", weights_only=True)
    assert wa["batch_split"] == wb["batch_split"] == 2
    assert all(torch.equal(wa["model"][k], wb["model"][k]) for k in wa["model"])
    assert [m.model_dump(exclude=strip) for m in resumed.metrics] == \
        [m.model_dump(exclude=strip) for m in a.metrics]
    # the split learns what the unsplit run learns, up to float summation order
    one = zoo.train("Net", epochs=2, out=tmp_path / "one", **{**cfg, "batch_split": 1})
    assert abs(one.metrics[-1].train_loss - a.metrics[-1].train_loss) < 1e-4
    assert read_summary(tmp_path / "a").train_config["batch_split"] == 2


def test_auto_splits_where_the_model_leaves_it_the_choice(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Net without its fused kernels has no preference: auto gives each thread a part."""
    monkeypatch.setattr("zoo_chapter8.models.library", lambda: None)
    zoo.train("Net", epochs=1, out=tmp_path / "net", **{**FAST, "batch_size": 64})
    state = torch.load(tmp_path / "net" / "checkpoints" / "last.pt", weights_only=True)
    assert state["batch_split"] == 2  # two threads, 32 samples each


def test_split_errors_name_the_value_and_the_reason(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(TrainingError, match=r"batch_split=2 cannot be used with NetBatchNorm: "
                                            r"it has BatchNorm layers.*set batch_split=1"):
        zoo.train("NetBatchNorm", epochs=1, out=tmp_path / "bn", batch_split=2,
                  **{k: v for k, v in FAST.items()})
    assert not (tmp_path / "bn").exists()
    with pytest.raises(TrainingError, match=r"batch_split=40 is more than batch_size=32"):
        zoo.train("Net", epochs=1, out=tmp_path / "big", batch_split=40, **FAST)
    # auto quietly trains BatchNorm models whole
    result = zoo.train("NetBatchNorm", epochs=1, out=tmp_path / "auto",
                       **{**FAST, "batch_size": 64})
    assert result.summary.epochs_completed == 1
    state = torch.load(tmp_path / "auto" / "checkpoints" / "last.pt", weights_only=True)
    assert state["batch_split"] == 1
    net = zoo.train("Net", epochs=1, out=tmp_path / "net", **{**FAST, "batch_size": 64})
    assert net.summary.epochs_completed == 1
    state = torch.load(tmp_path / "net" / "checkpoints" / "last.pt", weights_only=True)
    assert state["batch_split"] == 1  # auto: the fused kernels ask for whole batches
    code = main(["train", "NetDropout", "--batch-split", "2", "--epochs", "1", "--option",
                 "size=120", "--set", "in_height=16", "--set", "in_width=16", "--progress", "none",
                 "--out", str(tmp_path / "cli")])
    err = capsys.readouterr().err
    assert code == 1
    assert "batch_split=2 cannot be used with NetDropout: its forward pass draws random numbers" \
        in err and "Traceback" not in err


class Embedded(nn.Module):
    """A learned (1, C, H, W) position embedding: a 4-D parameter that is not a conv weight."""

    def __init__(self) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.randn(1, 3, 8, 8))
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(torch.relu(self.conv(x + self.pos)), 1))  # type: ignore[no-any-return]


def test_split_gradients_keep_each_parameters_layout_for_the_fused_step() -> None:
    torch.manual_seed(0)
    whole = Embedded().to(memory_format=torch.channels_last)
    split = Embedded().to(memory_format=torch.channels_last)
    split.load_state_dict(whole.state_dict())
    x = torch.randn(16, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (16,))
    assert split_blocker(split, x) is None
    opt_whole = torch.optim.Adam(whole.parameters(), lr=0.1, fused=True)
    opt_split = torch.optim.Adam(split.parameters(), lr=0.1, fused=True)
    params = list(split.parameters())

    def summed(out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, labels, reduction="sum")

    splitter = BatchSplitter(2, threads_per_part=1)
    try:
        for _ in range(3):
            opt_whole.zero_grad()
            F.cross_entropy(whole(x), y).backward()
            opt_whole.step()
            splitter.step(split, params, x, y, summed)
            assert all(p.grad is not None and p.grad.stride() == p.stride() for p in params)
            opt_split.step()
    finally:
        splitter.close()
    for a, b in zip(whole.parameters(), split.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


class RunningSum(nn.Module):
    """Sample k sees the samples before it: invisible when only the first sample is probed."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(x, 1).cumsum(0))  # type: ignore[no-any-return]


def test_the_probe_checks_every_probed_sample() -> None:
    assert "depends on the rest of the batch" in str(split_blocker(RunningSum(),
                                                                   torch.randn(2, 3, 2, 2)))


def test_ctrl_c_in_the_middle_of_a_split_epoch_resumes_exactly(tmp_path: Path) -> None:
    import zoo_testnets

    registry = Registry()
    registry.register(zoo_testnets, name="testnets")
    # 7 steps per epoch; the probe makes 3 forward calls, then each step 2 (one per part)
    cfg = {**FAST, "batch_split": 2, "schedule": "onecycle", "epochs": 3}
    whole = zoo.train("Faulty", out=tmp_path / "whole", registry=registry, **cfg)
    zoo_testnets.SIGINT_AT = 20
    with pytest.raises(KeyboardInterrupt):
        zoo.train("Faulty", out=tmp_path / "part", registry=registry, **cfg)
    state = torch.load(tmp_path / "part" / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and 0 < state["step"] < 7 and state["batch_split"] == 2
    resumed = zoo.train("Faulty", resume=tmp_path / "part", registry=registry)
    a = torch.load(tmp_path / "whole" / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "part" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = {"images_per_s", "seconds"}
    assert [m.model_dump(exclude=strip) for m in resumed.metrics] == \
        [m.model_dump(exclude=strip) for m in whole.metrics]


def test_a_parameter_the_forward_does_not_use_keeps_no_gradient() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    spare = nn.Parameter(torch.ones(3))  # a frozen head, a branch not taken: no gradient
    params = [*model.parameters(), spare]
    x, y = torch.randn(8, 3, 2, 2), torch.tensor([0, 1] * 4)
    splitter = BatchSplitter(2, 1)
    try:
        splitter.step(model, params, x, y, lambda o, t: F.cross_entropy(o, t, reduction="sum"))
    finally:
        splitter.close()
    assert spare.grad is None
    split_grads = [p.grad.clone() for p in model.parameters()]  # type: ignore[union-attr]
    model.zero_grad()
    (F.cross_entropy(model(x), y, reduction="sum") / 8).backward()
    for split, whole in zip(split_grads, model.parameters(), strict=True):
        torch.testing.assert_close(split, whole.grad)


@pytest.mark.parametrize("shape", [(1, 3, 8, 8), (1, 1, 8, 8), (0, 3, 8, 8)])
def test_the_probe_needs_two_images(shape: tuple[int, ...]) -> None:
    model = zoo.create_model("Net", in_height=8, in_width=8)
    assert split_blocker(model, torch.randn(shape)) == (
        "the training set has fewer than two images")
    assert split_blocker(model, torch.randn(2, 1, 8, 8).expand(2, 3, 8, 8)) is None
