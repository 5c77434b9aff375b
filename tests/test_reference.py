"""Every built-in architecture against an independent implementation, with copied weights.

The references are the book's own classes (``bench/book_ch8.py``, activation
before pooling, ``view`` to flatten, NetResDeep's one repeated block) and, for
NetResDeep's default of independent blocks, a variant written here. They share
no code with ``plugins/zoo_chapter8``: a dropped skip connection, a swapped
activation or a layer in the wrong place changes the outputs.

Eval mode runs zoo's plain PyTorch layers; a training step on channels-last
CPU input runs its fused kernels (``zoo_chapter8.fused``), so both are compared.
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import zoo

ROOT = Path(__file__).resolve().parents[1]


def _book() -> ModuleType:
    spec = importlib.util.spec_from_file_location("book_ch8", ROOT / "bench" / "book_ch8.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BOOK = _book()


class IndependentResDeep(nn.Module):
    """The book's NetResDeep with ``n_blocks`` blocks of their own (zoo's default)."""

    def __init__(self, n_chans1: int = 32, n_blocks: int = 10) -> None:
        super().__init__()
        self.n_chans1 = n_chans1
        self.conv1 = nn.Conv2d(3, n_chans1, kernel_size=3, padding=1)
        self.resblocks = nn.Sequential(*(BOOK.ResBlock(n_chans=n_chans1)
                                         for _ in range(n_blocks)))
        self.fc1 = nn.Linear(8 * 8 * n_chans1, 32)
        self.fc2 = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.max_pool2d(torch.relu(self.conv1(x)), 2)
        for block in self.resblocks:  # written out: conv, BN, ReLU, then the skip
            out = torch.relu(block.batch_norm(block.conv(out))) + out
        out = F.max_pool2d(out, 2)
        out = out.view(-1, 8 * 8 * self.n_chans1)
        out = torch.relu(self.fc1(out))
        return self.fc2(out)  # type: ignore[no-any-return]


# name -> (zoo overrides, reference factory)
REFERENCES: dict[str, tuple[dict[str, object], Callable[[], nn.Module]]] = {
    "Net": ({}, BOOK.Net),
    "NetWidth": ({}, BOOK.NetWidth),
    "NetDropout": ({}, BOOK.NetDropout),
    "NetBatchNorm": ({}, BOOK.NetBatchNorm),
    "NetDepth": ({}, BOOK.NetDepth),
    "NetRes": ({}, BOOK.NetRes),
    "NetResDeep": ({}, IndependentResDeep),
    "NetResDeep-shared": ({"shared_block": True}, BOOK.NetResDeep),
}
CASES = sorted(REFERENCES)


def _pair(case: str, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    overrides, factory = REFERENCES[case]
    torch.manual_seed(seed)
    ours = zoo.create_model(case.split("-")[0], **overrides)
    reference = factory()
    reference.load_state_dict(ours.state_dict(), strict=True)
    # give BatchNorm non-trivial running statistics and affine parameters, so that eval
    # mode really uses them
    with torch.no_grad():
        for name, buf in ours.named_buffers():
            if name.endswith("running_mean"):
                buf.uniform_(-0.3, 0.3)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
        for name, p in ours.named_parameters():
            if "batch_norm" in name or "batchnorm" in name:
                p.add_(torch.randn_like(p) * 0.2)
    reference.load_state_dict(ours.state_dict(), strict=True)
    return ours, reference


def test_every_builtin_has_an_independent_reference() -> None:
    builtin = set(zoo.list_models(tags=("chapter8",)))
    assert builtin == {case.split("-")[0] for case in CASES}


@pytest.mark.parametrize("case", CASES)
def test_eval_forward_matches_the_reference(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ours, reference = _pair(case)
    ours.eval()
    reference.eval()
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2
    with torch.no_grad():
        expected = reference(x)
        got = ours(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert expected.std() > 1e-3  # the comparison is not between two constants


def _clear_winners(t: torch.Tensor) -> bool:
    """Whether every 2×2 pooling window of ``t`` has one clear maximum or an exact tie: no
    two values within float32's rounding of each other, whose order another float32
    computation of the same function could swap (sending that window's gradient elsewhere)."""
    n, c, h, w = t.shape
    windows = t[:, :, : h // 2 * 2, : w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2)
    top = windows.permute(0, 1, 2, 4, 3, 5).reshape(n, c, h // 2, w // 2, 4).topk(2).values
    gap = top[..., 0] - top[..., 1]
    return not bool(((gap > 0) & (gap <= 1e-5 * top[..., 0].abs().clamp(min=1))).any())


def _separated_input(reference: nn.Module) -> torch.Tensor:
    """The first seeded batch on which the float64 reference's poolings all have clear
    winners (probed on a copy: its BatchNorm statistics stay as they are).

    Where two inputs of a window differ by less than float32's rounding, any float32
    computation (PyTorch's own on one thread, or zoo's kernels) may pick the other one
    and send that window's whole gradient there: NetBatchNorm's convolution gradients
    then come out 4-12 % off the float64 result. That is not what these tests are about
    (ties are the kernels' own tests' subject)."""
    probe, seen = copy.deepcopy(reference), []
    pool = F.max_pool2d

    def recording(t: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        seen.append(t.detach())
        return pool(t, *args, **kwargs)  # type: ignore[arg-type]

    for seed in range(2, 40):
        x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
        seen.clear()
        with (mock.patch.object(F, "max_pool2d", recording), torch.no_grad(),
              torch.random.fork_rng(devices=[])):
            torch.manual_seed(5)
            probe(x.double())
        if seen and all(_clear_winners(t) for t in seen):
            return x
    raise AssertionError("every seeded batch has a near-tie in a pooling window")


@pytest.mark.parametrize("case", CASES)
def test_training_step_matches_the_reference(case: str) -> None:
    """Train mode, channels-last CPU input: zoo's fused kernels against the plain book layers.

    Outputs and every parameter's gradient agree; dropout draws the same masks from the
    same RNG state; BatchNorm's running statistics move the same way. The reference runs
    in float64: through NetResDeep's ten blocks float32 ATen itself drifts by 1e-4.
    """
    ours, reference = _pair(case)
    ours.train()
    reference.double().train()
    ours = ours.to(memory_format=torch.channels_last)
    x = _separated_input(reference)
    target = torch.randint(0, 2, (8,), generator=torch.Generator().manual_seed(3))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        out_ours = ours(x.contiguous(memory_format=torch.channels_last))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        out_ref = reference(x.double())
    torch.testing.assert_close(out_ours, out_ref.float(), atol=1e-5, rtol=1e-5)
    F.cross_entropy(out_ours, target).backward()
    F.cross_entropy(out_ref, target).backward()
    ref_params = dict(reference.named_parameters())
    for name, p in ours.named_parameters():
        q = ref_params[name]
        assert p.grad is not None and q.grad is not None, name
        torch.testing.assert_close(p.grad, q.grad.float(), atol=1e-5, rtol=1e-4, msg=name)
    ref_buffers = dict(reference.named_buffers())
    for name, buf in ours.named_buffers():
        torch.testing.assert_close(buf, ref_buffers[name].to(buf.dtype), atol=1e-5, rtol=1e-5,
                                   msg=name)


def test_resdeep_variants_are_different_functions() -> None:
    """Independent blocks and one shared block are not the same network after loading weights
    block by block (the reference would accept either if it ignored the difference)."""
    torch.manual_seed(0)
    independent = zoo.create_model("NetResDeep").eval()
    shared = BOOK.NetResDeep().eval()
    state = independent.state_dict()
    shared.load_state_dict(state)  # every copy of the one block takes the last block's weights
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(independent(x), shared(x), atol=1e-4)
