"""The training recipe does what its options say, measured on one optimizer step.

Every run here trains Net (or NetBatchNorm) at its default 32x32 input on 36
synthetic images in one batch: one step, so the update ``last.pt - init`` is a
known function of the gradient. The initial weights are the architecture's,
seeded with the run's seed (as the trainer builds them). Each test compares two
runs that differ in one option, so that the option being ignored fails it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

import zoo
from zoo.trainer.loop import train

ONE_STEP: dict[str, Any] = {
    "dataset_options": {"size": 40, "num_classes": 2},  # 36 train, 4 val
    "batch_size": 64, "epochs": 1, "schedule": "none", "progress": "none", "num_threads": 1,
    "optimizer": "sgd", "lr": 0.1, "momentum": 0.0, "nesterov": False, "weight_decay": 0.0,
    "grad_clip": None,
}


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))


def _init(architecture: str, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.detach().clone() for k, v in zoo.create_model(architecture).state_dict().items()}


def _update(tmp_path: Path, name: str, architecture: str = "Net",
            **fields: Any) -> dict[str, torch.Tensor]:
    """Train one step; the change of every parameter (and buffer) from its initial value."""
    result = train(architecture, out=tmp_path / name, **{**ONE_STEP, **fields})
    assert result.summary.data.train_size <= ONE_STEP["batch_size"]  # one step
    state = torch.load(result.run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    init = _init(architecture)
    assert state.keys() == init.keys()
    return {k: state[k].float() - init[k].float() for k in state}


def _params(architecture: str) -> dict[str, int]:
    """Parameter names and their number of dimensions."""
    return {n: p.ndim for n, p in zoo.create_model(architecture).named_parameters()}


def _norm(update: dict[str, torch.Tensor], names: list[str]) -> float:
    return math.sqrt(sum(float(update[n].double().pow(2).sum()) for n in names))


def test_nesterov_first_step_is_one_plus_momentum_times_plain(tmp_path: Path) -> None:
    """First step: plain momentum moves by lr*g, Nesterov by lr*(1 + momentum)*g."""
    plain = _update(tmp_path, "plain", momentum=0.9, nesterov=False)
    nesterov = _update(tmp_path, "nesterov", momentum=0.9, nesterov=True)
    no_momentum = _update(tmp_path, "none", momentum=0.0, nesterov=True)
    for name in _params("Net"):
        assert plain[name].abs().max() > 1e-6, name  # every parameter moves
        torch.testing.assert_close(nesterov[name], 1.9 * plain[name], atol=2e-6, rtol=1e-3,
                                   msg=name)
        torch.testing.assert_close(no_momentum[name], plain[name], atol=2e-6, rtol=1e-3,
                                   msg=name)


def test_weight_decay_spares_biases_and_batchnorm(tmp_path: Path) -> None:
    """The README: decay on weights only; biases and BatchNorm parameters are not decayed."""
    wd, lr = 0.5, 0.1
    base = _update(tmp_path, "base", "NetBatchNorm")
    decayed = _update(tmp_path, "decayed", "NetBatchNorm", weight_decay=wd)
    init = _init("NetBatchNorm")
    params = _params("NetBatchNorm")
    assert any("batchnorm" in n for n in params)
    for name, ndim in params.items():
        if ndim <= 1:  # biases, BatchNorm weights and biases: the same step as without decay
            torch.testing.assert_close(decayed[name], base[name], atol=1e-7, rtol=1e-5,
                                       msg=name)
        else:  # weights: an extra -lr * wd * w
            torch.testing.assert_close(decayed[name] - base[name], -lr * wd * init[name],
                                       atol=2e-6, rtol=1e-3, msg=name)


def test_gradient_clipping_bounds_the_update_when_it_triggers(tmp_path: Path) -> None:
    clip, lr = 1e-3, 0.1
    names = list(_params("Net"))
    free = _norm(_update(tmp_path, "free"), names)
    clipped = _norm(_update(tmp_path, "clipped", grad_clip=clip), names)
    assert free > 10 * lr * clip  # the clip triggers
    assert clipped == pytest.approx(lr * clip, rel=1e-3)  # the whole gradient scaled to norm clip
    loose = _norm(_update(tmp_path, "loose", grad_clip=1e6), names)
    assert loose == pytest.approx(free, rel=1e-5)  # a clip that never triggers changes nothing


def test_adam_first_step_moves_each_parameter_by_lr(tmp_path: Path) -> None:
    """Adam's first step is lr * g / (|g| + eps): lr for every element with a real gradient."""
    lr = 1e-3
    step = _update(tmp_path, "adam", optimizer="adam", lr=lr)
    moved = torch.cat([step[n].abs().flatten() for n in _params("Net")])
    assert (moved - lr).abs().le(2e-5).float().mean() > 0.95
    sgd = torch.cat([v.abs().flatten() for k, v in _update(tmp_path, "sgd", lr=lr).items()
                     if k in _params("Net")])
    assert (sgd - lr).abs().le(2e-5).float().mean() < 0.5  # SGD does not look like this


def test_adamw_decays_weights_decoupled_from_the_gradient(tmp_path: Path) -> None:
    """AdamW: w - lr*wd*w - lr*sign(g) on weights; biases are not decayed (one group each)."""
    lr, wd = 1e-3, 5.0
    step = _update(tmp_path, "adamw", optimizer="adamw", lr=lr, weight_decay=wd)
    adam = _update(tmp_path, "adam", optimizer="adam", lr=lr, weight_decay=wd)
    init = _init("Net")
    weights = [n for n, d in _params("Net").items() if d > 1]
    biases = [n for n, d in _params("Net").items() if d <= 1]
    decoupled = torch.cat([(step[n] + lr * wd * init[n]).abs().flatten() for n in weights])
    assert (decoupled - lr).abs().le(3e-5).float().mean() > 0.95
    bias_moves = torch.cat([step[n].abs().flatten() for n in biases])
    assert (bias_moves - lr).abs().le(2e-5).float().mean() > 0.95
    # Adam adds the decay to the gradient instead: its weights move by lr exactly
    coupled = torch.cat([(adam[n] + lr * wd * init[n]).abs().flatten() for n in weights])
    assert (coupled - lr).abs().le(3e-5).float().mean() < 0.5


def test_cosine_schedule_follows_the_cosine_over_all_steps(tmp_path: Path) -> None:
    # 72 training images in batches of 36: 2 steps per epoch, 6 in all
    cfg = {**ONE_STEP, "dataset_options": {"size": 80, "num_classes": 2}, "batch_size": 36,
           "epochs": 3, "lr": 0.2}
    result = train("Net", out=tmp_path / "cosine", **{**cfg, "schedule": "cosine"})
    total = 6
    # each epoch records the learning rate of its last step (0-based step 2e - 1)
    expected = [0.1 * (1 + math.cos(math.pi * (2 * e - 1) / total)) for e in (1, 2, 3)]
    assert [m.lr for m in result.metrics] == pytest.approx(expected, rel=1e-6)
    constant = train("Net", out=tmp_path / "none", **{**cfg, "schedule": "none"})
    assert [m.lr for m in constant.metrics] == pytest.approx([0.2] * 3)


def test_channels_last_option_sets_the_layout_and_not_the_result(tmp_path: Path) -> None:
    runs = {}
    for channels_last in (True, False):
        result = train("Net", out=tmp_path / str(channels_last), channels_last=channels_last,
                       **{**ONE_STEP, "epochs": 2})
        state = torch.load(result.run_dir / "checkpoints" / "last.pt",
                           weights_only=True)["model"]
        weight = state["conv2.weight"]  # (8, 16, 3, 3): the two layouts differ
        assert weight.is_contiguous(memory_format=torch.channels_last) == channels_last
        assert weight.is_contiguous() == (not channels_last)
        runs[channels_last] = result
    for got, want in zip(runs[True].metrics, runs[False].metrics, strict=True):
        assert got.train_loss == pytest.approx(want.train_loss, rel=1e-4)
        assert got.val_loss == pytest.approx(want.val_loss, rel=1e-4)


def test_flip_option_reaches_the_batches(tmp_path: Path) -> None:
    """Same seed, flips on or off: the shapes sit off-centre, so the step differs."""
    on = _update(tmp_path, "on", flip=True)
    off = _update(tmp_path, "off", flip=False)
    assert not torch.equal(on["conv1.weight"], off["conv1.weight"])
    cropped = _update(tmp_path, "crop", flip=False, crop_padding=4)
    assert not torch.equal(cropped["conv1.weight"], off["conv1.weight"])


def test_flips_happen_at_half_the_rate_and_crops_shift_by_the_padding() -> None:
    from zoo.trainer.pipeline import augment

    n = 4000
    x = torch.arange(n * 4, dtype=torch.uint8).view(n, 1, 1, 4) % 250 + 1  # asymmetric rows
    flipped = augment(x, flip=True, crop_padding=0,
                      generator=torch.Generator().manual_seed(0))
    mirrored = (flipped == x.flip(3)).all(dim=3).flatten()
    kept = (flipped == x).all(dim=3).flatten()
    rate = float(mirrored.float().mean())
    assert abs(rate - 0.5) < 0.03  # binomial sd 0.008
    assert bool((mirrored ^ kept).all())  # each image is either mirrored or untouched
    # a padded crop shows the image shifted by at most the padding; zeros fill the rest
    img = torch.full((n, 1, 6, 6), 9, dtype=torch.uint8)
    cropped = augment(img, flip=False, crop_padding=2, generator=torch.Generator().manual_seed(1))
    visible = (cropped == 9).sum(dim=(1, 2, 3))
    assert visible.min() >= 16 and visible.max() == 36
    assert (visible < 36).float().mean() > 0.8  # 1 in 25 offsets is the centre
