"""zoo.spec: what a plugin declares, how overrides resolve, and the errors a user sees.

Uses a spec built here (no plugin, no torch). The reserved shape keys are read
from ``SHAPE_KEYS`` (in_channels, height, width, num_classes, in that order).
"""

from __future__ import annotations

import os.path
from pathlib import Path
from typing import Any

import pytest
from pydantic import Field, ValidationError

from zoo.errors import HyperparameterError, InputShapeError, PluginError
from zoo.spec.architecture import (
    SHAPE_KEYS,
    ArchitectureSpec,
    HParams,
    InputShape,
    ModelConfig,
    Recipe,
    resolve_config,
)
from zoo.spec.provenance import Provenance, import_object, load_callable

IN_CHANNELS, HEIGHT, WIDTH, NUM_CLASSES = SHAPE_KEYS


class Params(HParams):
    depth: int = Field(3, ge=1, le=10, description="Depth.")
    rate: float = Field(0.5, ge=0.0, lt=1.0)


def _spec(**kw: Any) -> ArchitectureSpec:
    fields: dict[str, Any] = {"name": "Tiny", "summary": "A test net.", "builder": "os.path:join",
                              "hparams": Params, "source": "tests"}
    return ArchitectureSpec(**{**fields, **kw})


def test_input_shape_defaults_bounds_and_order() -> None:
    shape = InputShape()
    assert shape.as_tuple() == (3, 32, 32)
    assert InputShape(channels=1, height=5, width=7).as_tuple() == (1, 5, 7)
    for bad in ({"channels": 0}, {"channels": 65}, {"height": 0}, {"width": 4097},
                {"depth": 1}):
        with pytest.raises(ValidationError):
            InputShape(**bad)
    for bad in ({"height": 4097}, {"width": 0}, {"channels": -1}):
        with pytest.raises(ValidationError):
            InputShape(**bad)
    # the bounds themselves are accepted
    InputShape(channels=64, height=4096, width=1)
    InputShape(channels=1, height=1, width=4096)
    with pytest.raises(ValidationError):
        shape.channels = 1  # type: ignore[misc]  # frozen


def test_hparams_are_frozen_and_closed() -> None:
    params = Params()
    with pytest.raises(ValidationError):
        params.depth = 2  # type: ignore[misc]
    with pytest.raises(ValidationError):
        Params(width_factor=2)  # type: ignore[call-arg]


def test_provenance_describes_its_origin() -> None:
    prov = Provenance(plugin="p")
    assert prov.describe() == "plugin 'p'"
    assert prov.distribution is None and prov.version is None
    with pytest.raises(ValidationError):
        prov.plugin = "q"  # type: ignore[misc]  # frozen
    with pytest.raises(ValidationError):
        Provenance()  # type: ignore[call-arg]  # the plugin's name is required
    assert Provenance(plugin="p", distribution="zoo-x", version="1.2").describe() == \
        "zoo-x 1.2 (plugin 'p')"


def test_import_object_follows_module_and_attributes() -> None:
    assert import_object("os.path:join") is os.path.join
    assert import_object("zoo.spec:InputShape.as_tuple") is InputShape.as_tuple


def test_load_callable_errors_name_the_reference_and_plugin() -> None:
    prov = Provenance(plugin="tiny", distribution="zoo-tiny", version="0.1")
    assert load_callable("os.path:join", "builder", prov) is os.path.join
    with pytest.raises(PluginError, match=r"cannot import the builder \('nope_mod:f'\) from "
                                          r"zoo-tiny 0.1 \(plugin 'tiny'\)"):
        load_callable("nope_mod:f", "builder", prov)
    with pytest.raises(PluginError, match=r"cannot import the loader \('os.path:nope'\) from "
                                          r"its plugin"):
        load_callable("os.path:nope", "loader", None)
    with pytest.raises(PluginError, match=r"the builder \('os:sep'\) from its plugin is not "
                                          r"callable"):
        load_callable("os:sep", "builder", None)


@pytest.mark.parametrize("bad", [
    {"name": "1abc"}, {"name": "a b"}, {"name": "x" * 65}, {"summary": ""},
    {"summary": "two\nlines"}, {"summary": "x" * 201}, {"builder": "no_colon"},
    {"builder": "mod:"}, {"num_classes": 1}, {"num_classes": 100_001}, {"min_input_size": 0},
    {"source": ""}, {"colour": "red"},
])
def test_architecture_spec_validation(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        _spec(**bad)


def test_architecture_spec_accepts_its_bounds() -> None:
    spec = _spec(name="A" + "b" * 63, summary="s" * 200, num_classes=100_000)
    assert spec.name == "A" + "b" * 63 and spec.tags == () and spec.recipe == Recipe()
    assert spec.min_input_size == 1
    short = _spec(name="A", summary="s", source="x", min_input_size=1)
    assert (short.summary, short.source) == ("s", "x")
    with pytest.raises(ValidationError):
        ArchitectureSpec(name="T", summary="s", builder="a:b", source="x")  # no hparams
    assert spec.input_shape == InputShape() and spec.provenance is None
    assert _spec(num_classes=2).num_classes == 2
    assert spec.load_builder() is os.path.join


def test_recipe_bounds() -> None:
    assert Recipe().model_dump(exclude_none=True) == {}
    Recipe(lr=1e-9, epochs=1, batch_size=1, weight_decay=0.0, grad_clip=1e-9)
    for bad in ({"lr": 0.0}, {"epochs": 0}, {"batch_size": 0}, {"weight_decay": -1e-9},
                {"grad_clip": 0.0}, {"momentum": 0.9}):
        with pytest.raises(ValidationError):
            Recipe(**bad)


def test_config_model_holds_hyperparameters_and_shape_keys() -> None:
    spec = _spec(input_shape=InputShape(channels=1, height=20, width=24), num_classes=7)
    model = spec.config_model()
    assert model is spec.config_model()  # built once per spec
    assert set(model.model_fields) == {"depth", "rate", *SHAPE_KEYS}
    defaults = model().model_dump()
    assert defaults == {"depth": 3, "rate": 0.5, IN_CHANNELS: 1, HEIGHT: 20, WIDTH: 24,
                        NUM_CLASSES: 7}
    schema = spec.hparams_schema()
    assert schema["properties"]["depth"]["maximum"] == 10
    assert schema["properties"][NUM_CLASSES]["minimum"] == 2
    for key, low, high in ((IN_CHANNELS, 1, 64), (HEIGHT, 1, 4096), (WIDTH, 1, 4096),
                           (NUM_CLASSES, 2, 100_000)):
        assert schema["properties"][key]["minimum"] == low, key
        assert schema["properties"][key]["maximum"] == high, key


def test_resolve_config_fills_defaults_and_applies_overrides() -> None:
    spec = _spec(min_input_size=8)
    config = resolve_config(spec, {})
    assert config == ModelConfig(architecture="Tiny", hparams={"depth": 3, "rate": 0.5},
                                 input_shape=InputShape(), num_classes=2)
    config = resolve_config(spec, {"depth": 10, IN_CHANNELS: 1, HEIGHT: 8, WIDTH: 9,
                                   NUM_CLASSES: 5})
    assert config.hparams == {"depth": 10, "rate": 0.5}
    assert config.input_shape.as_tuple() == (1, 8, 9) and config.num_classes == 5


@pytest.mark.parametrize(("height", "width"), [(7, 8), (8, 7)])
def test_resolve_config_refuses_inputs_below_the_minimum(height: int, width: int) -> None:
    with pytest.raises(InputShapeError, match=rf"^Tiny cannot take {height}x{width} inputs: "
                                              r"height and width must be at least 8 pixels$"):
        resolve_config(_spec(min_input_size=8), {HEIGHT: height, WIDTH: width})


def test_errors_name_each_bad_value_and_what_is_accepted() -> None:
    spec = _spec()
    accepted = ", ".join(["depth", "rate", *SHAPE_KEYS])
    with pytest.raises(HyperparameterError) as info:
        resolve_config(spec, {"dpeth": 2})
    assert str(info.value) == f"Tiny has no hyperparameter 'dpeth'; accepted: {accepted}"
    with pytest.raises(HyperparameterError) as info:
        resolve_config(spec, {"depth": 11, "rate": "fast"})
    assert str(info.value) == (
        "invalid value 11 for Tiny hyperparameter 'depth': input should be less than or "
        "equal to 10; invalid value 'fast' for Tiny hyperparameter 'rate': input should be a "
        "valid number, unable to parse string as a number")


def test_model_config_defaults() -> None:
    config = ModelConfig(architecture="X")
    assert config.hparams == {} and config.input_shape == InputShape()
    assert config.num_classes == 2
    with pytest.raises(ValidationError):
        ModelConfig(architecture="X", num_classes=1)
    with pytest.raises(ValidationError):
        ModelConfig(architecture="X", height=3)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        config.num_classes = 3  # type: ignore[misc]  # frozen


@pytest.mark.parametrize("model", [InputShape, Provenance, Recipe, ArchitectureSpec])
def test_every_declared_field_is_described(model: type[Any]) -> None:
    """The descriptions are what ``zoo show`` and the published schemas tell a user."""
    for name, field in model.model_fields.items():
        assert field.description, f"{model.__name__}.{name}"


@pytest.mark.parametrize(("field", "edges"), [
    ("crop_padding", (0, 64)), ("epochs", (1, None)), ("batch_size", (1, None)),
    ("weight_decay", (0.0, None)),
])
def test_a_recipe_accepts_what_the_training_config_accepts_at_the_edges(
        field: str, edges: tuple[float, float | None]) -> None:
    """A recipe changes TrainConfig's defaults: its bounds are TrainConfig's, edge for edge."""
    from zoo.spec.training import TrainConfig

    low, high = edges
    for value, ok in [(low, True), (low - 1, False)] + ([(high, True), (high + 1, False)]
                                                        if high is not None else []):
        accepted = []
        for model in (Recipe, TrainConfig):
            try:
                model(**{field: value})
                accepted.append(True)
            except ValidationError:
                accepted.append(False)
        assert accepted == [ok, ok], (field, value)


def test_a_builder_module_that_fails_to_import_names_the_error(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    (tmp_path / "broken_builder.py").write_text("raise ValueError('no GPU here')\n")
    (tmp_path / "silent_builder.py").write_text("raise RuntimeError()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    prov = Provenance(plugin="p", distribution="zoo-p", version="1")
    with pytest.raises(PluginError, match=r"^cannot import the builder \('broken_builder:f'\) "
                                          r"from zoo-p 1 \(plugin 'p'\): ValueError: no GPU here$"):
        load_callable("broken_builder:f", "builder", prov)
    with pytest.raises(PluginError, match=r"\): RuntimeError: \(no message\)$"):
        load_callable("silent_builder:f", "builder", prov)
    # a missing module or attribute needs no type name: the message says it all
    with pytest.raises(PluginError, match=r"its plugin: No module named 'no_such_module'$"):
        load_callable("no_such_module:f", "builder", None)


# -- published reference accuracies (zoo.spec.reference) ---------------------------------

_REFERENCE: dict[str, Any] = {"architecture": "Net", "value": 0.89,
                              "source": "Deep Learning with PyTorch, chapter 8"}


@pytest.mark.parametrize(("field", "value"), [
    ("architecture", "N" * 65), ("architecture", "1Net"), ("architecture", None),
    ("value", 1.0001), ("value", -0.01), ("value", None), ("metric", "Val_acc"),
    ("metric", None), ("source", ""), ("source", "s" * 201), ("source", "a\nb"),
    ("source", None), ("origin", "x"),
])
def test_a_reference_accuracy_outside_its_declaration_is_refused(field: str,
                                                                 value: object) -> None:
    from zoo.spec.reference import ReferenceAccuracy

    with pytest.raises(ValidationError, match=field):
        ReferenceAccuracy(**{**_REFERENCE, field: value})


def test_a_reference_accuracy_at_its_bounds_is_accepted_frozen_and_defaults_to_val_acc(
        ) -> None:
    from zoo.spec.reference import ReferenceAccuracy

    for architecture, value, source in (("N" * 64, 1.0, "s"), ("Net", 0.0, "s" * 200)):
        ref = ReferenceAccuracy(architecture=architecture, value=value, source=source)
        assert (ref.architecture, ref.value, ref.source) == (architecture, value, source)
        assert ref.metric == "val_acc" and ref.provenance is None
    for missing in _REFERENCE:
        with pytest.raises(ValidationError, match=missing):
            ReferenceAccuracy(**{k: v for k, v in _REFERENCE.items() if k != missing})
    with pytest.raises(ValidationError, match="frozen"):
        ref.value = 0.5


# -- what the training hooks are given (zoo.host.events) ---------------------------------

def test_a_stop_request_needs_a_reason_and_is_frozen() -> None:
    from zoo.host.events import StopRequest

    with pytest.raises(ValidationError, match="reason"):
        StopRequest()  # type: ignore[call-arg]
    stop = StopRequest(reason="plateau")
    assert stop.reason == "plateau"
    with pytest.raises(ValidationError, match="frozen"):
        stop.reason = "other"


def test_each_training_run_starts_with_its_own_empty_history_and_state() -> None:
    from zoo.host.events import TrainingRun
    from zoo.spec.training import TrainConfig

    def run() -> TrainingRun:
        return TrainingRun(architecture="Net", config=TrainConfig(), run_dir=Path("r"),
                           model_config=None, data=None, device="cpu",  # type: ignore[arg-type]
                           world_size=1, steps_per_epoch=1, resumed=False,
                           model=None)  # type: ignore[arg-type]

    first, second = run(), run()
    assert first.history == [] and first.state == {}
    first.history.append(None)  # type: ignore[arg-type]
    first.state["plugin"] = 1
    assert second.history == [] and second.state == {}
