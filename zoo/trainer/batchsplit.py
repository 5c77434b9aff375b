"""Data parallelism inside one CPU process: each batch's forward and backward split over threads.

Small convolutional networks use several CPU cores poorly: each operator is too
small to be worth dividing, and a batch's activations spill out of the cores'
caches. Giving each core a whole part of the batch instead (a thread with its
own single-threaded operators) keeps every core busy: with PyTorch's own layers
Net trains about 1.15 times faster on two cores (``bench/bench_train_throughput.py``).
A model whose layers already use every thread (kernels of its own that divide a
batch between threads) loses by it instead: the parts' Python and autograd work
runs twice and one at a time under the GIL. Such a model says so with a
``zoo_batch_split`` attribute (:func:`preferred_parts`); the chapter-8 models
train whole batches 1.1 to 1.3 times faster with their fused kernels.

The result is the full batch's gradient: each part's loss is its sum divided
by the whole batch's size, each part's gradients come back from
``torch.autograd.grad``, and the main thread adds them in part order, so runs
stay bitwise reproducible. That holds only for a model whose training forward
pass is a pure, per-sample function of its input; :func:`split_blocker` checks
it before training (no BatchNorm, no random numbers drawn, no buffers updated,
each sample's output independent of the rest of the batch).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import pairwise

import torch
from torch import nn

#: ``auto`` gives each part at least this many samples.
MIN_PART = 32

#: The attribute by which a model names its own parts per batch for ``auto``.
PREFERENCE = "zoo_batch_split"

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def split_blocker(model: nn.Module, sample: torch.Tensor) -> str | None:
    """Why ``model`` cannot train on parts of a batch in parallel; None if it can.

    ``sample`` holds at least two inputs from the training data. The probe runs
    in training mode without gradients and leaves the model's buffers and the
    CPU random state as it found them.
    """
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return "it has BatchNorm layers, whose statistics depend on the whole batch"
    if sample.shape[0] < 2:
        return "the training set has fewer than two images"
    rng = torch.get_rng_state()
    buffers = [b.detach().clone() for b in model.buffers()]
    was_training = model.training
    model.train()
    try:
        with torch.no_grad():
            both = model(sample[:2])
            if not torch.equal(torch.get_rng_state(), rng):
                return "its forward pass draws random numbers (dropout)"
            if any(not torch.equal(a, b) for a, b in zip(buffers, model.buffers(), strict=True)):
                return "its forward pass updates buffers"
            alone = torch.cat([model(sample[:1]), model(sample[1:2])])
    finally:
        torch.set_rng_state(rng)
        with torch.no_grad():
            for saved, buf in zip(buffers, model.buffers(), strict=True):
                buf.copy_(saved)
        model.train(was_training)
    if not torch.allclose(both, alone, rtol=1e-4, atol=1e-5):
        return "each sample's output depends on the rest of the batch"
    return None


def preferred_parts(model: nn.Module) -> int | None:
    """The parts per batch ``model`` asks ``auto`` for: its ``zoo_batch_split`` attribute
    (or property), a whole number of at least 1, or None (absent or None: no preference).

    ``1`` is for a model whose layers already use every intra-op thread, where parts
    only add work; a larger number is still subject to :func:`split_blocker`.
    Raises ``ValueError`` naming the value when it is anything else.
    """
    value = getattr(model, PREFERENCE, None)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{type(model).__name__}.{PREFERENCE} is {value!r}; a model may set "
                         "it to None or a whole number of parts of at least 1")
    return value


def auto_parts(threads: int, batch_size: int) -> int:
    """Parts per batch for ``auto``: one per thread, each of at least :data:`MIN_PART` samples."""
    return max(1, min(threads, batch_size // MIN_PART))


class BatchSplitter:
    """Runs forward and backward of ``parts`` slices of each batch on as many threads.

    The calling thread trains the first part; ``parts - 1`` workers, each with
    ``threads_per_part`` intra-op threads, train the others. :meth:`close` stops
    the workers.
    """

    def __init__(self, parts: int, threads_per_part: int) -> None:
        if parts < 2:
            raise ValueError(f"a split needs at least 2 parts, got {parts}")
        self.parts = parts
        self.threads_per_part = threads_per_part
        self._pool = ThreadPoolExecutor(max_workers=parts - 1, thread_name_prefix="zoo-part",
                                        initializer=torch.set_num_threads,
                                        initargs=(threads_per_part,))

    def step(self, model: nn.Module, params: list[nn.Parameter], xb: torch.Tensor,
             yb: torch.Tensor, loss_fn: LossFn,
             autocast: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Set each parameter's ``.grad`` to the batch's mean-loss gradient.

        ``loss_fn(logits, labels)`` must return the summed loss of its samples.
        ``autocast``: the CPU autocast dtype of the forward passes (None: full precision);
        autocast is per thread, so each part enters it on its own thread.
        Returns the batch's summed loss (detached) and its logits (detached).
        """
        n = int(yb.shape[0])
        parts = min(self.parts, n)  # a last batch may be smaller than the parts
        bounds = [n * k // parts for k in range(parts + 1)]
        slices = [(xb[a:b], yb[a:b]) for a, b in pairwise(bounds)]

        def part(x: torch.Tensor, y: torch.Tensor) -> tuple[tuple[torch.Tensor | None, ...],
                                                            torch.Tensor, torch.Tensor]:
            with torch.autocast("cpu", dtype=autocast or torch.bfloat16,
                                enabled=autocast is not None):
                logits = model(x)
                loss = loss_fn(logits, y)
            grads = torch.autograd.grad(loss / n, params, allow_unused=True)
            return grads, loss.detach(), logits.detach()

        futures: list[Future[tuple[tuple[torch.Tensor | None, ...], torch.Tensor,
                                    torch.Tensor]]] = [
            self._pool.submit(part, x, y) for x, y in slices[1:]]
        results = [part(*slices[0])] + [f.result() for f in futures]
        for i, p in enumerate(params):
            total: torch.Tensor | None = None
            for grads, _, _ in results:
                g = grads[i]
                if g is not None:
                    total = g if total is None else total + g
            if total is not None and total.stride() != p.stride():
                # .grad in the parameter's layout, as backward() leaves it: fused optimizers
                # give wrong updates otherwise
                total = torch.empty_like(p).copy_(total)
            p.grad = total
        loss_sum = results[0][1]
        for _, loss, _ in results[1:]:
            loss_sum = loss_sum + loss
        return loss_sum, torch.cat([logits for _, _, logits in results])

    def close(self) -> None:
        """Stop the worker threads."""
        self._pool.shutdown(wait=True)
