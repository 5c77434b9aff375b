"""The numbers every export format is verified on, and how its outputs are compared.

Every format's verifier compares its outputs with the eager PyTorch model's on the
same inputs (:func:`verification_inputs`: random batches of 1 and 7, and a run's
validation samples) within ``|theirs - torch| <= atol + rtol * |torch|``
(:func:`check_outputs`). Torch-free: numpy only.
"""

from __future__ import annotations

import numpy as np

from zoo.errors import ExportError
from zoo.spec.architecture import ModelConfig
from zoo.spec.manifest import CheckResult

#: Batch sizes of the random-input checks: 1 and a batch other than the export's example (2).
RANDOM_BATCHES = (1, 7)


def check_tolerances(atol: float, rtol: float) -> None:
    """Tolerances must be finite and non-negative (NaN would fail every comparison)."""
    if not (0 <= atol < float("inf") and 0 <= rtol < float("inf")):
        raise ExportError(f"tolerances must be finite and non-negative, got atol {atol} and "
                          f"rtol {rtol}")


def verification_inputs(config: ModelConfig, samples: np.ndarray | None,
                        seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """The inputs every format is checked on: random batches of 1 and 7, and the samples
    (already normalized)."""
    rng = np.random.default_rng(seed)
    shape = config.input_shape.as_tuple()
    inputs = [(f"random batch {n}", rng.standard_normal((n, *shape)).astype(np.float32))
              for n in RANDOM_BATCHES]
    if samples is not None and len(samples):
        inputs.append((f"val samples ({len(samples)})", samples.astype(np.float32)))
    return inputs


def check_outputs(name: str, expected: np.ndarray, actual: np.ndarray, atol: float,
                  rtol: float) -> CheckResult:
    """One check: a format's ``actual`` logits against the eager model's ``expected``."""
    if expected.shape != actual.shape:
        return CheckResult(name=name, batch_size=max(1, expected.shape[0]),
                           max_abs_diff=float("inf"), max_rel_diff=float("inf"),
                           top1_agreement=0.0, passed=False)
    diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    scale = np.abs(expected.astype(np.float64))
    rel = diff / np.maximum(scale, np.finfo(np.float32).tiny)
    finite = bool(np.isfinite(actual).all() and np.isfinite(expected).all())
    passed = finite and bool((diff <= atol + rtol * scale).all())
    agreement = float((actual.argmax(axis=1) == expected.argmax(axis=1)).mean())
    return CheckResult(name=name, batch_size=int(expected.shape[0]),
                       max_abs_diff=float(diff.max()), max_rel_diff=float(rel.max()),
                       top1_agreement=agreement, passed=passed)


__all__ = ["RANDOM_BATCHES", "check_outputs", "check_tolerances", "verification_inputs"]
