"""The optimizer and schedule a TrainConfig describes: decay groups, Nesterov only with
momentum, the fused implementation where PyTorch has one, schedules for short runs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from zoo.spec.training import TrainConfig
from zoo.trainer.optim import LeanSGD, make_optimizer, make_scheduler


def _model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))


def _names(model: nn.Module, group: dict) -> set[str]:
    ids = {id(p) for p in group["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_weight_decay_spares_biases_and_normalization(optimizer: str) -> None:
    model = _model()
    opt = make_optimizer(TrainConfig(optimizer=optimizer, weight_decay=0.01),
                         list(model.parameters()), torch.device("cpu"))
    groups = [(_names(model, g), g["weight_decay"]) for g in opt.param_groups]
    assert groups == [({"0.weight", "3.weight"}, 0.01),
                      ({"0.bias", "1.weight", "1.bias", "3.bias"}, 0.0)]


def test_without_weight_decay_one_group_unless_two_are_asked_for() -> None:
    model = _model()
    params = list(model.parameters())
    one = make_optimizer(TrainConfig(weight_decay=0.0), params, torch.device("cpu"))
    assert [len(g["params"]) for g in one.param_groups] == [len(params)]
    two = make_optimizer(TrainConfig(weight_decay=0.0), params, torch.device("cpu"),
                         two_groups=True)
    assert [(_names(model, g), g["weight_decay"]) for g in two.param_groups] == [
        ({"0.weight", "3.weight"}, 0.0), ({"0.bias", "1.weight", "1.bias", "3.bias"}, 0.0)]


@pytest.mark.parametrize(("momentum", "nesterov"), [(0.9, True), (0.0, False)])
def test_nesterov_only_with_momentum(momentum: float, nesterov: bool) -> None:
    opt = make_optimizer(TrainConfig(momentum=momentum, nesterov=True),
                         list(_model().parameters()), torch.device("cpu"))
    assert isinstance(opt, torch.optim.SGD)
    assert (opt.defaults["momentum"], opt.defaults["nesterov"]) == (momentum, nesterov)


@pytest.mark.parametrize(("device", "optimizer", "kind", "fused", "foreach"), [
    ("cpu", "sgd", LeanSGD, None, False), ("cpu", "adam", torch.optim.Adam, True, None),
    ("cuda", "sgd", torch.optim.SGD, True, None), ("mps", "sgd", torch.optim.SGD, None, True),
    ("meta", "adamw", torch.optim.AdamW, None, True)])
def test_the_fused_implementation_where_pytorch_has_one(device: str, optimizer: str, kind: type,
                                                        fused: bool | None,
                                                        foreach: bool | None) -> None:
    opt = make_optimizer(TrainConfig(optimizer=optimizer), list(_model().parameters()),
                         torch.device(device))
    assert type(opt) is kind
    assert (opt.defaults["fused"], opt.defaults["foreach"]) == (fused, foreach)


def _sgd_run(kind: type, steps: int = 4, **options: object) -> tuple[list[torch.Tensor], dict]:
    """Parameters after ``steps`` updates from fixed gradients (one parameter without any)."""
    torch.manual_seed(0)
    # one large enough for the vectorized kernels and their tails
    params = [nn.Parameter(torch.randn(5, 3)), nn.Parameter(torch.randn(4)),
              nn.Parameter(torch.randn(64, 37)), nn.Parameter(torch.randn(2, 2))]
    groups = [{"params": params[:3]}, {"params": params[3:], "lr": 0.05}]
    opt = kind(groups, lr=0.1, foreach=False, **options)
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        for i, p in enumerate(params[:3]):
            p.grad = torch.sin(torch.arange(p.numel(), dtype=torch.float32) * (step + 1 + i))\
                .view_as(p)
        opt.step()
    return [p.detach().clone() for p in params], opt.state_dict()


@pytest.mark.parametrize("options", [
    {}, {"momentum": 0.9}, {"momentum": 0.9, "nesterov": True}, {"momentum": 0.5, "dampening": 0.3},
    {"weight_decay": 0.01}, {"momentum": 0.9, "weight_decay": 0.01, "maximize": True}])
def test_lean_sgd_updates_as_sgd_does(options: dict) -> None:
    ours, our_state = _sgd_run(LeanSGD, **options)
    theirs, their_state = _sgd_run(torch.optim.SGD, **options)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
    assert not torch.equal(ours[0], _sgd_run(LeanSGD, steps=0, **options)[0][0])  # it moved
    assert our_state["param_groups"] == their_state["param_groups"]
    assert our_state["state"].keys() == their_state["state"].keys()
    for key, value in their_state["state"].items():
        assert torch.equal(our_state["state"][key]["momentum_buffer"], value["momentum_buffer"])


def test_lean_sgd_resumes_from_sgd_state_and_keeps_its_hooks() -> None:
    torch.manual_seed(1)
    w = nn.Parameter(torch.randn(3))
    sgd = torch.optim.SGD([w], lr=0.1, momentum=0.9, fused=True)
    w.grad = torch.ones(3)
    sgd.step()
    lean = LeanSGD([w], lr=0.1, momentum=0.9, foreach=False)
    lean.load_state_dict(sgd.state_dict())
    calls = []
    lean.register_step_pre_hook(lambda *_: calls.append("pre"))
    lean.register_step_post_hook(lambda *_: calls.append("post"))
    before = w.detach().clone()
    buf = sgd.state[w]["momentum_buffer"].clone()
    lean.step()
    assert calls == ["pre", "post"]
    torch.testing.assert_close(w.detach(), before - 0.1 * (buf * 0.9 + 1), rtol=0, atol=1e-6)
    lean.zero_grad()
    assert w.grad is None
    w.grad = torch.ones(3)
    lean.zero_grad(set_to_none=False)
    assert w.grad is not None and torch.equal(w.grad, torch.zeros(3))


def test_lean_sgd_leaves_what_it_does_not_cover_to_sgd() -> None:
    """A tensor learning rate takes SGD's own step (the same numbers)."""
    results = []
    for kind in (LeanSGD, torch.optim.SGD):
        w = nn.Parameter(torch.arange(3, dtype=torch.float32))
        opt = kind([w], lr=torch.tensor(0.25), momentum=0.5, foreach=False)
        for _ in range(3):
            w.grad = w.detach() * 2 + 1
            opt.step()
        results.append(w.detach())
    assert torch.equal(results[0], results[1])
    assert not torch.equal(results[0], torch.arange(3, dtype=torch.float32))


@pytest.mark.parametrize(("steps", "scheduled"), [(1, False), (2, True), (3, True)])
def test_onecycle_needs_two_steps(steps: int, scheduled: bool) -> None:
    opt = make_optimizer(TrainConfig(lr=0.1), list(_model().parameters()), torch.device("cpu"))
    scheduler = make_scheduler(TrainConfig(lr=0.1, schedule="onecycle"), opt, steps)
    assert (scheduler is not None) == scheduled
    if scheduler is not None:
        rates = []
        for _ in range(steps):
            rates.append(opt.param_groups[0]["lr"])
            opt.step()
            scheduler.step()
        assert rates[0] == pytest.approx(0.01)  # from a tenth of the rate
        assert max(rates) <= 0.1 + 1e-12


def _onecycle_rates(config: TrainConfig, steps: int) -> tuple[list[float], list[float]]:
    opt = make_optimizer(config, list(_model().parameters()), torch.device("cpu"))
    scheduler = make_scheduler(config, opt, steps)
    assert scheduler is not None
    rates, momenta = [], []
    for _ in range(steps):
        rates.append(opt.param_groups[0]["lr"])
        momenta.append(opt.param_groups[0]["momentum"])
        opt.step()
        scheduler.step()
    return rates, momenta


@pytest.mark.parametrize("steps", [20, 40])
def test_onecycle_keeps_a_warm_up_of_more_than_one_step_as_configured(steps: int) -> None:
    # 0.1 of 20 steps is 2 steps of warm-up (the peak at index 1), as OneCycleLR gives it
    config = TrainConfig(lr=0.1, schedule="onecycle", warmup_fraction=0.1)
    rates, _ = _onecycle_rates(config, steps)
    assert rates.index(max(rates)) == steps // 10 - 1
    assert max(rates) == pytest.approx(0.1)
    opt = torch.optim.SGD(_model().parameters(), lr=0.1)
    reference = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.1, total_steps=steps, pct_start=0.1, anneal_strategy="cos",
        cycle_momentum=False, div_factor=10.0, final_div_factor=100.0)
    expected = []
    for _ in range(steps):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        reference.step()
    assert rates == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_onecycle_leaves_the_momentum_as_configured(momentum: float) -> None:
    config = TrainConfig(lr=0.1, schedule="onecycle", momentum=momentum)
    _, momenta = _onecycle_rates(config, 10)
    assert momenta == [momentum] * 10
