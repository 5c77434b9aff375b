"""The fused kernels' backward pass checks what autograd gives back before C reads it (issue 27).

Saved-tensor hooks (``save_on_cpu``, ``.contiguous()``, dtype- and device-changing
hooks), parameters replaced through ``.data`` between forward and backward, and
batched gradients: each case gives the plain layers' gradients (to float32
rounding) or the plain layers' error type. Under ``nox -s sanitize`` these run with
the kernels built with AddressSanitizer and UBSan.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from zoo_chapter8 import fused, fused_bn, fused_checks, kernels

pytestmark = pytest.mark.skipif(kernels.library() is None, reason=kernels.status())

CL = torch.channels_last
Hook = Callable[[torch.Tensor], torch.Tensor]
Swap = Callable[[torch.nn.Conv2d], None]


class _Saved(torch.Tensor):
    """A tensor subclass a saved-tensor hook might give back."""


def _floats(cast: Callable[[torch.Tensor], torch.Tensor]) -> Hook:
    return lambda t: cast(t) if t.is_floating_point() else t


def _unpacked(hook: Hook) -> Callable[[], contextlib.AbstractContextManager[None]]:
    return lambda: torch.autograd.graph.saved_tensors_hooks(lambda t: t, hook)


#: saved-tensor hooks: what autograd gives the backward pass instead of each saved tensor
HOOKS: dict[str, Callable[[], contextlib.AbstractContextManager[None]]] = {
    # gives back NCHW-contiguous copies (it pins them where an accelerator is present)
    "save_on_cpu": lambda: torch.autograd.graph.save_on_cpu(pin_memory=True),
    "contiguous": _unpacked(lambda t: t.contiguous()),
    "column_major": _unpacked(lambda t: t.mT.contiguous().mT),  # the same values, another layout
    "float16": _unpacked(_floats(lambda t: t.half())),
    "bfloat16": _unpacked(_floats(lambda t: t.bfloat16())),
    "float64": _unpacked(_floats(lambda t: t.double())),
    "meta": _unpacked(lambda t: t.to("meta")),
    "neg_view": _unpacked(_floats(lambda t: torch._neg_view(-t))),
    "subclass": _unpacked(lambda t: t.as_subclass(_Saved)),
}
#: parameters replaced through .data between the forward and the backward pass
SWAPS: dict[str, Swap] = {
    "new_3x3": lambda c: setattr(c.weight, "data", torch.randn_like(c.weight)),
    "nchw_copy": lambda c: setattr(c.weight, "data", c.weight.data.contiguous()),
    "1x1": lambda c: setattr(c.weight, "data", torch.randn(*c.weight.shape[:2], 1, 1)),
    "5x5": lambda c: setattr(c.weight, "data", torch.randn(*c.weight.shape[:2], 5, 5)),
    "fewer_outputs": lambda c: setattr(c.weight, "data", torch.randn(8, *c.weight.shape[1:])),
    "float64": lambda c: setattr(c.weight, "data", c.weight.data.double()),
    "float16": lambda c: setattr(c.weight, "data", c.weight.data.half()),
    "bfloat16": lambda c: setattr(c.weight, "data", c.weight.data.bfloat16()),
    "bias_float64": lambda c: setattr(c.bias, "data", c.bias.data.double()),
}
ACTS = {"tanh": (torch.tanh, fused.pool_tanh, fused.conv_pool_tanh),
        "relu": (torch.relu, fused.pool_relu, fused.conv_pool_relu)}
#: a later layer (input gradient too), the stem (weight and bias only), pooling alone, and a
#: stem whose whole output a BatchNorm takes (NetBatchNorm's: weight and bias only)
KINDS = {"layer": (16, 16), "stem": (3, 16), "pool": (16, 0), "dense": (3, 16)}
NO_INPUT_GRAD = ("stem", "dense")


def _setup(kind: str) -> tuple[torch.nn.Conv2d | None, torch.Tensor]:
    torch.manual_seed(0)
    cin, cout = KINDS[kind]
    conv = torch.nn.Conv2d(cin, cout, 3, padding=1).to(memory_format=CL) if cout else None
    x = torch.randn(2, cin, 8, 8).contiguous(memory_format=CL)
    return conv, x.requires_grad_(kind not in NO_INPUT_GRAD)


def _forward(kind: str, act: str, use_kernel: bool, conv: torch.nn.Conv2d | None,
             x: torch.Tensor) -> torch.Tensor:
    ref, pool, conv_pool = ACTS[act]
    if kind == "dense":  # no activation: nothing else saves a tensor a hook would change
        assert conv is not None
        z = fused_bn.stem_conv(conv, x, True) if use_kernel else conv(x)
        assert ("StemConv" in type(z.grad_fn).__name__) == use_kernel
        return z
    if not use_kernel:
        out: torch.Tensor = ref(F.max_pool2d(conv(x) if conv is not None else x, 2))
        return out
    out = conv_pool(conv, x, True) if conv is not None else pool(x, True)
    assert ("ConvPool" if conv is not None else "PoolAct") in type(out.grad_fn).__name__
    return out


def _grads(kind: str, act: str, use_kernel: bool, hook: str | None = None,
           swap: str | None = None, batched: bool = False) -> list[torch.Tensor] | Exception:
    """The gradients of the fused layer (``use_kernel``) or the plain layers, or what the
    backward pass raised: the same inputs, hook, swap and incoming gradient either way."""
    conv, x = _setup(kind)
    with HOOKS[hook]() if hook else contextlib.nullcontext():
        out = _forward(kind, act, use_kernel, conv, x)
    if swap is not None:
        assert conv is not None
        SWAPS[swap](conv)
    wrt = [t for t in (x, *(conv.parameters() if conv else ())) if t.requires_grad]
    g = torch.randn((3, *out.shape) if batched else out.shape,
                    generator=torch.Generator().manual_seed(1))
    try:
        if batched:
            return list(torch.autograd.grad(out, wrt, g, is_grads_batched=True))
        out.backward(g)  # .grad: autograd.grad finds no parameter whose dtype .data changed
    except Exception as exc:
        return exc
    return [t.grad for t in wrt]


def _same_as_plain(kind: str, act: str, **case: Any) -> list[torch.Tensor] | Exception:
    """Assert the fused backward pass gives the plain layers' gradients or their error type."""
    got = _grads(kind, act, True, **case)
    if kind == "dense" and case.get("hook") == "meta":
        # the plain convolution's backward reads a meta input's memory, which it does not
        # have, and returns whatever it found there; the kernel's refuses it
        assert isinstance(got, RuntimeError) and "saved input" in str(got)
        return got
    want = _grads(kind, act, False, **case)
    if isinstance(want, Exception) or isinstance(got, Exception):
        assert type(got) is type(want), (got, want)
        return got
    assert len(got) == len(want)
    for mine, plain in zip(got, want, strict=True):
        assert mine.dtype == plain.dtype and mine.shape == plain.shape
        torch.testing.assert_close(mine.as_subclass(torch.Tensor), plain.as_subclass(torch.Tensor),
                                   rtol=1e-5, atol=1e-5)
    return got


@pytest.fixture
def kernel_path_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The backward pass must run the kernels (copying into their layout), not the plain ops."""
    def refuse(*_: object) -> None:
        raise AssertionError("the plain backward ran")

    monkeypatch.setattr(fused_checks, "plain_pool_backward", refuse)
    monkeypatch.setattr(fused_checks, "plain_conv_backward", refuse)
    monkeypatch.setattr(fused_checks, "plain_stem_backward", refuse)


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("act", sorted(ACTS))
@pytest.mark.parametrize("hook", ["save_on_cpu", "contiguous", "column_major"])
def test_hooks_that_change_the_layout_give_the_plain_gradients(
        kind: str, act: str, hook: str, kernel_path_only: None) -> None:
    """save_on_cpu(pin_memory=True) gives back NCHW-contiguous tensors: the kernel read the
    channels_last output as NHWC (input/weight/bias gradients off by up to 0.33/5.85/4.24)."""
    got = _same_as_plain(kind, act, hook=hook)
    wanted = {"layer": 3, "stem": 2, "pool": 1, "dense": 2}[kind]
    assert isinstance(got, list) and len(got) == wanted


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("hook", ["float16", "bfloat16", "float64", "meta"])
def test_hooks_that_change_dtype_or_device_raise_as_the_plain_layers_do(kind: str,
                                                                        hook: str) -> None:
    """A float16 hook made the kernel read past its buffers, a meta hook crashed it."""
    got = _same_as_plain(kind, "tanh", hook=hook)
    assert isinstance(got, RuntimeError) and "saved" in str(got)


@pytest.mark.parametrize("hook", ["neg_view", "subclass"])
def test_saved_tensors_c_cannot_read_get_the_plain_backward(hook: str) -> None:
    for kind in KINDS:
        got = _same_as_plain(kind, "relu", hook=hook)
        assert isinstance(got, list)


@pytest.mark.parametrize("swap", sorted(SWAPS))
@pytest.mark.parametrize("act", sorted(ACTS))
def test_weight_replaced_through_data_between_forward_and_backward(swap: str, act: str) -> None:
    """The saved weight is the parameter: the plain layers read what .data holds now (a new or
    half-precision weight) or raise (1×1 read past the weight, float64 gave garbage)."""
    got = _same_as_plain("layer", act, swap=swap)
    if swap in ("new_3x3", "nchw_copy", "float16", "bfloat16", "bias_float64"):
        assert isinstance(got, list) and len(got) == 3
    else:
        assert isinstance(got, RuntimeError)
    _same_as_plain("stem", act, swap=swap)


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("act", sorted(ACTS))
def test_batched_gradients_get_the_plain_backward(kind: str, act: str) -> None:
    """is_grads_batched=True raised "NYI: querying is_contiguous inside of vmap"."""
    got = _same_as_plain(kind, act, batched=True)
    assert isinstance(got, list) and all(g.shape[0] == 3 for g in got)


def test_vectorized_jacobian_is_the_plain_layers() -> None:
    torch.manual_seed(2)
    conv = torch.nn.Conv2d(8, 8, 3, padding=1).to(memory_format=CL)
    x = torch.randn(1, 8, 4, 4).contiguous(memory_format=CL)

    def layer(use_kernel: bool) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda t: _forward("layer", "tanh", use_kernel, conv,
                                  t.contiguous(memory_format=CL))

    got = torch.autograd.functional.jacobian(layer(True), x, vectorize=True)
    want = torch.autograd.functional.jacobian(layer(False), x, vectorize=True)
    assert got.shape == (1, 8, 2, 2, 1, 8, 4, 4)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    weights = torch.autograd.functional.jacobian(
        lambda w: torch.func.functional_call(conv, {"weight": w}, (x,)), conv.weight,
        vectorize=True)
    assert weights.shape == (1, 8, 4, 4, 8, 8, 3, 3)


class _SeenOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        self.seen.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def test_a_dispatch_mode_in_the_backward_pass_sees_the_plain_operators() -> None:
    conv, x = _setup("layer")
    assert conv is not None
    out = _forward("layer", "tanh", True, conv, x)
    g = torch.randn_like(out)
    with _SeenOps() as mode:
        got = torch.autograd.grad(out, [x, conv.weight], g)
    assert {"tanh_backward", "convolution_backward"} <= mode.seen
    want = torch.autograd.grad(_forward("layer", "tanh", False, conv, x), [x, conv.weight], g)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_indices_a_hook_changed_stay_window_positions() -> None:
    """C reads a pooling index modulo 4: high bits a hook sets never move a read out of the
    image (under the sanitizer, an out-of-bounds read aborts). Not a case for the plain
    layers: ATen's pooling backward trusts its int64 indices."""
    HOOKS["high_index_bits"] = _unpacked(lambda t: t | 0xFC if t.dtype == torch.uint8 else t)
    try:
        for kind in KINDS:
            changed = _grads(kind, "relu", True, hook="high_index_bits")
            unchanged = _grads(kind, "relu", True)
            assert isinstance(changed, list) and isinstance(unchanged, list)
            torch.testing.assert_close(changed, unchanged, rtol=0, atol=0)
    finally:
        del HOOKS["high_index_bits"]


def _graph(node: Any) -> Iterator[Any]:
    """Every node of an autograd graph from ``node``."""
    seen, todo = set(), [node]
    while todo:
        node = todo.pop()
        if node is not None and node not in seen:
            seen.add(node)
            yield node
            todo.extend(parent for parent, _ in node.next_functions)


@pytest.mark.parametrize("arch", ["Net", "NetBatchNorm", "NetDepth"])
def test_a_training_step_under_save_on_cpu_is_the_plain_layers(
        arch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import zoo

    torch.manual_seed(3)
    model = zoo.create_model(arch).to(memory_format=CL).train()
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=CL)
    y = torch.randint(0, 2, (4,))
    params = list(model.parameters())
    with torch.autograd.graph.save_on_cpu(pin_memory=True):
        loss = F.cross_entropy(model(x), y)
    nodes = {type(node).__name__ for node in _graph(loss.grad_fn)}
    assert nodes & {"_ConvPoolBackward", "_PoolActBackward", "_BNPoolActBackward"}
    fast = torch.autograd.grad(loss, params)
    monkeypatch.setattr(kernels, "library", lambda: None)
    plain = torch.autograd.grad(F.cross_entropy(model(x), y), params)
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-6)


def _cases(count: int) -> Iterator[dict[str, Any]]:
    rng = random.Random(27)
    for _ in range(count):
        kind = rng.choice(sorted(KINDS))
        batched = rng.random() < 0.3
        swaps = ["new_3x3", "nchw_copy"] if batched else sorted(SWAPS)
        yield {"kind": kind, "act": rng.choice(sorted(ACTS)),
               "hook": rng.choice([None, *sorted(HOOKS)]),
               "swap": rng.choice([None, *swaps]) if kind != "pool" else None,
               "batched": batched}


@pytest.mark.parametrize("case", list(_cases(40)), ids=lambda c: "-".join(
    str(v) for v in c.values()))
def test_random_backward_cases_match_the_plain_layers(case: dict[str, Any]) -> None:
    """Hooks, swaps and batched gradients together, drawn at random (seeded)."""
    rest = dict(case)
    _same_as_plain(rest.pop("kind"), rest.pop("act"), **rest)
