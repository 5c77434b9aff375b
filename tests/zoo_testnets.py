"""A test-only zoo plugin: ``Faulty``, the book's Net with injectable faults.

``nan_after=K`` makes the logits NaN from the K-th training forward on;
``fail_rank=R`` raises in rank R's K-th training forward under DDP; the
module-level ``SIGINT_AT`` sends this process a SIGINT at that training
forward (once), as a Ctrl-C would.
"""

from __future__ import annotations

import signal

import torch
from pydantic import Field
from zoo_chapter8.models import Net

from zoo import ArchitectureSpec, HParams, InputShape, hookimpl

SIGINT_AT: int | None = None


class FaultyHParams(HParams):
    nan_after: int = Field(-1, description="NaN logits from this training forward on.")
    fail_rank: int = Field(-1, description="Rank that raises at training forward `after`.")
    after: int = Field(3, ge=0)


class Faulty(Net):
    def __init__(self, hp: FaultyHParams, shape: InputShape, num_classes: int) -> None:
        super().__init__(shape.channels, num_classes, shape.height, shape.width)
        self.hp = hp
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        global SIGINT_AT
        out = super().forward(x)
        if not self.training:
            return out
        self.calls += 1
        if self.hp.nan_after >= 0 and self.calls > self.hp.nan_after:
            out = out * float("nan")
        if self.hp.fail_rank >= 0 and self.calls > self.hp.after:
            import torch.distributed as dist

            if dist.is_initialized() and dist.get_rank() == self.hp.fail_rank:
                raise RuntimeError(f"injected failure in rank {self.hp.fail_rank}")
        if SIGINT_AT is not None and self.calls == SIGINT_AT:
            SIGINT_AT = None
            signal.raise_signal(signal.SIGINT)
        return out


def build(hp: FaultyHParams, *, input_shape: InputShape, num_classes: int) -> Faulty:
    return Faulty(hp, input_shape, num_classes)


@hookimpl
def zoo_architectures() -> list[ArchitectureSpec]:
    return [ArchitectureSpec(name="Faulty", summary="Net with injectable faults (tests only).",
                             builder="zoo_testnets:build", hparams=FaultyHParams,
                             min_input_size=4, source="tests")]
