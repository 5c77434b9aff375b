"""zoo.exporter.checks: one format's logits against the eager model's, with numbers."""

from __future__ import annotations

import numpy as np
import pytest

from zoo.exporter.checks import check_outputs, verification_inputs
from zoo.spec.architecture import InputShape, ModelConfig


def test_differences_relative_differences_and_agreement() -> None:
    expected = np.array([[1.0, 2.0], [4.0, -3.0]], np.float32)
    actual = np.array([[1.0, 2.5], [4.0, -3.0]], np.float32)
    result = check_outputs("x", expected, actual, atol=0.0, rtol=0.3)
    assert (result.name, result.batch_size) == ("x", 2)
    assert result.max_abs_diff == pytest.approx(0.5)
    assert result.max_rel_diff == pytest.approx(0.25)
    assert result.top1_agreement == 1.0 and result.passed  # 0.5 <= 0 + 0.3 * 2
    moved = check_outputs("x", expected, np.array([[2.5, 2.0], [4.0, -3.0]], np.float32),
                          atol=0.0, rtol=0.3)
    assert moved.top1_agreement == 0.5 and moved.max_rel_diff == pytest.approx(1.5)


def test_the_tolerance_is_inclusive_and_relative_to_the_expected_value() -> None:
    expected = np.array([[2.0, 1.0]], np.float32)
    exact_edge = check_outputs("x", expected, np.array([[2.5, 1.0]], np.float32), atol=0.0,
                               rtol=0.25)
    assert exact_edge.passed  # |0.5| <= 0.25 * 2
    over = check_outputs("x", expected, np.array([[2.5, 1.0]], np.float32), atol=0.0,
                         rtol=0.2)
    assert not over.passed


@pytest.mark.filterwarnings("ignore:invalid value encountered")
def test_a_non_finite_output_fails_whatever_the_tolerance() -> None:
    expected = np.array([[1.0, 2.0]], np.float32)
    for bad in (np.array([[np.nan, 2.0]], np.float32), np.array([[np.inf, 2.0]], np.float32)):
        assert not check_outputs("x", expected, bad, atol=1e9, rtol=1e9).passed
        assert not check_outputs("x", bad, expected, atol=1e9, rtol=1e9).passed


def test_a_shape_mismatch_fails_with_infinite_differences() -> None:
    result = check_outputs("x", np.zeros((3, 2), np.float32), np.zeros((3, 4), np.float32),
                           atol=1.0, rtol=1.0)
    assert (result.batch_size, result.max_abs_diff, result.max_rel_diff,
            result.top1_agreement, result.passed) == (3, float("inf"), float("inf"), 0.0, False)
    empty = check_outputs("x", np.zeros((0, 2), np.float32), np.zeros((0, 3), np.float32),
                          atol=1.0, rtol=1.0)
    assert empty.batch_size == 1


def test_verification_inputs_are_seeded_batches_of_1_and_7_and_the_samples() -> None:
    config = ModelConfig(architecture="Net", hparams={}, num_classes=2,
                         input_shape=InputShape(channels=3, height=8, width=8))
    samples = np.ones((5, 3, 8, 8), np.float64)
    inputs = verification_inputs(config, samples)
    assert [(name, x.shape, x.dtype) for name, x in inputs] == [
        ("random batch 1", (1, 3, 8, 8), np.float32), ("random batch 7", (7, 3, 8, 8), np.float32),
        ("val samples (5)", (5, 3, 8, 8), np.float32)]
    expected = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(inputs[0][1], expected)
    assert len(verification_inputs(config, np.zeros((0, 3, 8, 8)))) == 2
