"""An architecture spec's and a recipe's declared bounds at their edges, what a plugin
author may declare."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from zoo.spec.architecture import ArchitectureSpec, HParams, ModelConfig, Recipe

SPEC: dict[str, Any] = {"name": "Tiny", "summary": "a tiny net", "builder": "tiny:build",
                        "hparams": HParams, "source": "a test"}


@pytest.mark.parametrize(("field", "accepted", "refused"), [
    ("lr", 1e-9, 0.0), ("epochs", 1, 0), ("batch_size", 1, 0), ("weight_decay", 0.0, -1e-9),
    ("grad_clip", 1e-9, 0.0), ("crop_padding", 0, -1), ("crop_padding", 64, 65)])
def test_recipe_bounds(field: str, accepted: Any, refused: Any) -> None:
    assert getattr(Recipe(**{field: accepted}), field) == accepted
    with pytest.raises(ValidationError):
        Recipe(**{field: refused})


def test_a_recipe_changes_nothing_by_default_and_is_frozen() -> None:
    recipe = Recipe()
    assert recipe.model_dump() == dict.fromkeys(
        ("lr", "epochs", "batch_size", "weight_decay", "grad_clip", "crop_padding"))
    with pytest.raises(ValidationError):
        recipe.lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(("field", "accepted", "refused"), [
    ("name", "N" * 64, "N" * 65), ("summary", "s" * 200, "s" * 201), ("summary", "s", ""),
    ("summary", "one line", "two\nlines"), ("builder", "pkg.mod:make_net", "pkg.mod.make_net"),
    ("num_classes", 2, 1), ("num_classes", 100_000, 100_001), ("source", "x", ""),
    ("min_input_size", 1, 0)])
def test_spec_bounds(field: str, accepted: Any, refused: Any) -> None:
    assert getattr(ArchitectureSpec(**{**SPEC, field: accepted}), field) == accepted
    with pytest.raises(ValidationError):
        ArchitectureSpec(**{**SPEC, field: refused})


@pytest.mark.parametrize("field", ["name", "summary", "builder", "hparams", "source"])
def test_spec_required_fields(field: str) -> None:
    with pytest.raises(ValidationError, match=f"{field}\n  Field required"):
        ArchitectureSpec(**{k: v for k, v in SPEC.items() if k != field})


def test_spec_defaults() -> None:
    spec = ArchitectureSpec(**SPEC)
    assert (spec.tags, spec.num_classes, spec.min_input_size, spec.recipe, spec.weights,
            spec.provenance) == ((), 2, 1, Recipe(), (), None)
    assert spec.input_shape.as_tuple() == (3, 32, 32)


def test_model_config_defaults_and_freezing() -> None:
    config = ModelConfig(architecture="Net")
    assert config.hparams == {} and config.num_classes == 2
    with pytest.raises(ValidationError):
        config.architecture = "Other"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        ModelConfig(architecture="Net", surprise=1)  # type: ignore[call-arg]


def test_the_run_records_describe_every_field() -> None:
    """run.json's models: the reference (docs/reference/training.md) shows each description."""
    from zoo.spec.run import DataInfo, EpochMetrics, Normalization, RunSummary

    undescribed = {model.__name__: [name for name, field in model.model_fields.items()
                                    if not field.description]
                   for model in (Normalization, DataInfo, EpochMetrics, RunSummary)}
    assert undescribed == {key: [] for key in undescribed}


def test_run_records_are_frozen_and_start_empty() -> None:
    from zoo.spec.run import DataInfo, Normalization

    norm = Normalization(mean=(0.5,), std=(0.2,))
    with pytest.raises(ValidationError):
        norm.mean = (0.1,)  # type: ignore[misc]
    info = DataInfo(dataset="d", content_key="k", split="s", classes=("a", "b"), train_size=1,
                    val_size=1)
    assert info.source is None
    with pytest.raises(ValidationError):
        info.dataset = "other"  # type: ignore[misc]


def test_provenance_describes_every_field() -> None:
    """A manifest's and a spec's provenance: its schema (docs/reference) shows each one."""
    from zoo.spec.provenance import Provenance

    assert [name for name, field in Provenance.model_fields.items()
            if not field.description] == []
