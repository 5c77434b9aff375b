"""Following each convolution's output through the operations that consume it.

Convolutions are found by module type (``nn.Conv2d``), never by name. A forward
hook on each one starts a *block*; a ``TorchFunctionMode`` (:class:`Recorder`)
follows the block's tensor through the operations that consume it (activation,
pooling, normalization, a skip addition, functional or module alike) until the
next convolution consumes it, the map stops being a spatial ``(C, H, W)`` map, or
its shape changes a second time. So a block of the book's ``Net`` is ``conv1
16×32×32 → pool 16×16×16``: the convolution's output shape, then the map that
leaves the block.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

Shape = tuple[int, int, int]


def _op_name(func: Any) -> str:
    name = str(getattr(func, "__name__", func)).strip("_")
    if "pool" in name:
        return "pool"
    if name in ("add", "iadd", "radd"):
        return "add"
    if "interpolate" in name or "upsample" in name:
        return "resize"
    return name


def _tensors(values: Any) -> Iterator[torch.Tensor]:
    for v in values:
        if isinstance(v, torch.Tensor):
            yield v
        elif isinstance(v, (list, tuple)):
            yield from (t for t in v if isinstance(t, torch.Tensor))


def chw(t: torch.Tensor) -> Shape:
    return (int(t.shape[1]), int(t.shape[2]), int(t.shape[3]))


@dataclass
class Block:
    layer: str
    tensor: torch.Tensor
    conv_shape: Shape
    steps: list[tuple[str, Shape]] = field(default_factory=list)
    changed: bool = False
    final: np.ndarray | None = None

    def close(self) -> None:
        if self.final is None:
            self.final = self.tensor[0].detach().float().cpu().numpy().copy()


class Recorder(TorchFunctionMode):
    """Follows each convolution's output through the operations that consume it."""

    def __init__(self, names: dict[nn.Module, str]) -> None:
        super().__init__()
        self.names = names
        self.blocks: list[Block] = []
        self.calls: dict[str, int] = {}
        self.first: nn.Conv2d | None = None
        self.in_conv = 0

    def _open(self) -> list[Block]:
        return [b for b in self.blocks if b.final is None]

    def pre_hook(self, module: nn.Module, inputs: tuple[Any, ...]) -> None:
        ids = {id(t) for t in _tensors(inputs)}
        for block in self._open():
            if id(block.tensor) in ids:  # the next convolution: the block ends here
                block.close()
        self.in_conv += 1

    def hook(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        self.in_conv -= 1
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            return
        if self.first is None and isinstance(module, nn.Conv2d):
            self.first = module
        name = self.names.get(module, type(module).__name__)
        count = self.calls[name] = self.calls.get(name, 0) + 1
        layer = name if count == 1 else f"{name}#{count}"
        self.blocks.append(Block(layer, output, chw(output)))

    def __torch_function__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.in_conv == 0 and isinstance(out, torch.Tensor):
            self._follow(func, (*args, *kwargs.values()), out)
        return out

    def _follow(self, func: Any, inputs: tuple[Any, ...], out: torch.Tensor) -> None:
        ids = {id(t) for t in _tensors(inputs)}
        name = _op_name(func)
        for block in self._open():
            if id(block.tensor) not in ids:
                continue
            spatial = (out.dim() == 4 and out.is_floating_point()
                       and out.shape[0] == block.tensor.shape[0]
                       and int(out.shape[2]) * int(out.shape[3]) > 1)
            if not spatial or name.startswith("conv"):
                block.close()
                continue
            shape = chw(out)
            if shape != chw(block.tensor):
                if block.changed:
                    block.close()
                    continue
                block.changed = True
            block.tensor = out
            block.steps.append((name, shape))


__all__ = ["Block", "Recorder", "Shape", "chw"]
