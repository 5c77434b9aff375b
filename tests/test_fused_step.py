"""A chapter-8 network's whole training step on the fused kernels (``zoo_train_step``): the
loss and gradients of autograd through the same kernels, bit for bit; nothing done wherever
autograd must run; and the trainer taking it only for a plain step, to the same weights."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from zoo_chapter8 import fused_step, kernels, models

import zoo
from zoo.errors import TrainingError
from zoo.trainer.loss import CrossEntropy
from zoo.trainer.modelstep import model_step

pytestmark = pytest.mark.skipif(kernels.library() is None, reason=kernels.status())

CL = torch.channels_last
CHAINS = ["Net", "NetWidth", "NetDepth", "NetRes"]


def _model(arch: str, seed: int = 0, **hparams: Any) -> nn.Module:
    torch.manual_seed(seed)
    return zoo.create_model(arch, **hparams).to(memory_format=CL).train()


def _batch(n: int, size: int = 32, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g).contiguous(memory_format=CL)
    return x, torch.randint(0, 2, (n,), generator=g)


def _loss(y: torch.Tensor, smoothing: float = 0.0) -> Callable[[torch.Tensor], torch.Tensor]:
    return functools.partial(F.cross_entropy, target=y, label_smoothing=smoothing)


def _grads(model: nn.Module) -> list[torch.Tensor | None]:
    return [None if p.grad is None else p.grad.clone() for p in model.parameters()]


def _same(a: list[torch.Tensor | None], b: list[torch.Tensor | None]) -> bool:
    return all((x is None and y is None) or (x is not None and y is not None and torch.equal(x, y)
                                             and x.stride() == y.stride())
               for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("arch", CHAINS)
@pytest.mark.parametrize(("n", "smoothing", "accumulate"), [(64, 0.0, False), (37, 0.1, True)])
@pytest.mark.parametrize("loss_kind", ["callable", "trainer's"])
def test_step_is_autograd_bit_for_bit(arch: str, n: int, smoothing: float,
                                      accumulate: bool, loss_kind: str) -> None:
    """Loss, logits and every gradient (values and layout) as ``loss.backward()`` through the
    layers' autograd Functions gives them; added to gradients already there. A plain
    callable loss is differentiated through autograd; the trainer's offers its own gradient
    (``value_and_grad``)."""
    make = _loss if loss_kind == "callable" else CrossEntropy
    model = _model(arch)
    x, y = _batch(n)
    start = [torch.randn_like(p) if accumulate else None for p in model.parameters()]
    for p, g in zip(model.parameters(), start, strict=True):
        p.grad = None if g is None else g.clone()
    logits = model(x)
    loss = _loss(y, smoothing)(logits)
    loss.backward()
    expected = _grads(model)
    for p, g in zip(model.parameters(), start, strict=True):
        p.grad = None if g is None else g.clone()
    loss_fn = make(y, smoothing)
    assert hasattr(loss_fn, "value_and_grad") == (loss_kind != "callable")
    got = model.zoo_train_step(x, loss_fn)
    assert got is not None
    assert torch.equal(got[0], loss.detach()) and not got[0].requires_grad
    assert torch.equal(got[1], logits.detach()) and not got[1].requires_grad
    assert _same(_grads(model), expected)
    assert all(g is not None and g.abs().sum() > 0 for g in _grads(model))
    assert not any(p.grad is not None and (p.grad.requires_grad or p.grad.grad_fn is not None)
                   for p in model.parameters())


def test_frozen_parameters_get_no_gradient() -> None:
    model = _model("Net")
    x, y = _batch(8)
    model.conv1.requires_grad_(False)
    model.fc2.weight.requires_grad_(False)
    _loss(y)(model(x)).backward()
    expected = _grads(model)
    model.zero_grad(set_to_none=True)
    assert model.zoo_train_step(x, _loss(y)) is not None
    assert _same(_grads(model), expected)
    assert model.conv1.weight.grad is None and model.fc2.weight.grad is None


def _hook_module(model: nn.Module) -> None:
    model.register_forward_hook(lambda *_: None)


def _hook_layer(model: nn.Module) -> None:
    model.conv2.register_forward_pre_hook(lambda *_: None)


def _hook_param(model: nn.Module) -> None:
    model.fc1.bias.register_hook(lambda g: g * 2)


def _hook_accumulation(model: nn.Module) -> None:
    model.conv1.weight.register_post_accumulate_grad_hook(lambda p: None)


def _instance_forward(model: nn.Module) -> None:
    model.forward = lambda x: x  # type: ignore[method-assign]


def _double(model: nn.Module) -> None:
    model.double()


SETUPS: dict[str, Callable[[nn.Module], None]] = {
    "module hook": _hook_module, "layer hook": _hook_layer, "parameter hook": _hook_param,
    "accumulation hook": _hook_accumulation, "instance forward": _instance_forward,
    "float64": _double, "eval": lambda m: m.eval()}


@pytest.mark.parametrize("case", [*SETUPS, "no_grad", "anomaly", "autocast", "input grad",
                                  "NCHW input", "odd map", "kernels off"])
def test_nothing_done_where_autograd_must_run(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model("Net", **({"in_height": 30, "in_width": 30} if case == "odd map" else {}))
    x, y = _batch(4, size=30 if case == "odd map" else 32)
    if case in SETUPS:
        SETUPS[case](model)
    if case == "float64":
        x = x.double()
    if case == "input grad":
        x.requires_grad_()
    if case == "NCHW input":
        x = x.contiguous()
    if case == "kernels off":
        monkeypatch.setattr(kernels, "library", lambda: None)
    before = [p.detach().clone() for p in model.parameters()]
    with (torch.no_grad() if case == "no_grad" else torch.autograd.set_detect_anomaly(True)
          if case == "anomaly" else torch.autocast("cpu", dtype=torch.bfloat16)
          if case == "autocast" else torch.enable_grad()):
        assert model.zoo_train_step(x, _loss(y)) is None
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


def test_a_global_module_hook_leaves_the_step_to_autograd() -> None:
    model = _model("Net")
    x, y = _batch(4)
    seen: list[str] = []
    handle = nn.modules.module.register_module_forward_hook(
        lambda module, args, out: seen.append(type(module).__name__))
    try:
        assert model.zoo_train_step(x, _loss(y)) is None
    finally:
        handle.remove()
    assert seen == [] and all(p.grad is None for p in model.parameters())
    assert model.zoo_train_step(x, _loss(y)) is not None  # the hook gone, the step again


@pytest.mark.parametrize("arch", ["NetDropout", "NetBatchNorm", "NetResDeep"])
def test_models_that_are_not_a_chain_of_kernels_train_through_autograd(arch: str) -> None:
    model = _model(arch)
    x, y = _batch(4)
    assert model_step(model) is None or model.zoo_train_step(x, _loss(y)) is None
    assert all(p.grad is None for p in model.parameters())


def test_a_subclass_with_its_own_forward_trains_through_autograd() -> None:
    class Scaled(models.Net):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) * 2

    torch.manual_seed(0)
    model = Scaled().to(memory_format=CL).train()
    x, y = _batch(4)
    assert model.zoo_train_step(x, _loss(y)) is None


FAST: dict[str, Any] = {"dataset_options": {"size": 192, "num_classes": 2}, "batch_size": 32,
                        "progress": "none", "momentum": 0.9, "label_smoothing": 0.1,
                        "val_split": 0.25}


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    weights: dict[str, torch.Tensor] = state["model"]
    return weights


@pytest.mark.parametrize("arch", ["Net", "NetRes"])
def test_the_trainer_takes_the_step_to_the_weights_autograd_gives(
        arch: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = fused_step.train_step

    def counted(*args: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(models, "train_step", counted)
    own = zoo.train(arch, epochs=2, out=tmp_path / "own", **FAST)
    assert len(calls) == 2 * 5  # 144 training images: 5 steps an epoch, each the model's own
    monkeypatch.setattr(models, "train_step", lambda *args: None)  # autograd every step
    plain = zoo.train(arch, epochs=2, out=tmp_path / "plain", **FAST)
    mine, theirs = _final_weights(tmp_path / "own"), _final_weights(tmp_path / "plain")
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    assert [m.train_loss for m in own.metrics] == [m.train_loss for m in plain.metrics]
    assert own.metrics[-1].train_loss < own.metrics[0].train_loss


def test_the_trainer_leaves_split_batches_to_autograd(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(models, "train_step", lambda *args: calls.append(1))
    zoo.train("Net", epochs=1, out=tmp_path / "run", batch_split=2, num_threads=2, **FAST)
    assert calls == []


def test_a_step_that_is_not_a_method_is_refused(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models.Net, "zoo_train_step", 3)
    with pytest.raises(TrainingError, match=r"^Net: Net\.zoo_train_step is 3; a model's "
                                            r"zoo_train_step must be a method"):
        zoo.train("Net", epochs=1, out=tmp_path / "run", **FAST)
