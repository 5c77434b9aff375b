"""Architecture specifications: what a plugin declares, validated by pydantic.

Nothing here imports torch: listing and showing architectures stays fast.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from zoo.errors import HyperparameterError, InputShapeError
from zoo.spec.numbers import NoBoolNumbers
from zoo.spec.provenance import Provenance, load_callable
from zoo.spec.weights import WeightSets

NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_.\-]*$"
IMPORT_PATTERN = r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"

#: Keys every architecture accepts besides its own hyperparameters: the input's channels,
#: height and width, and the number of classes. Prefixed, so that ``width``, ``height``,
#: ``depth`` or ``channels`` stay free for an architecture's own hyperparameters.
SHAPE_KEYS = ("in_channels", "in_height", "in_width", "num_classes")
#: The input-size keys before they were prefixed, for a hint when someone uses them.
OLD_SHAPE_KEYS = {"height": "in_height", "width": "in_width"}


class InputShape(NoBoolNumbers):
    """The shape of one input image: channels, height, width."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    channels: int = Field(3, ge=1, le=64, description="Image channels (3 for RGB).")
    height: int = Field(32, ge=1, le=4096, description="Image height in pixels.")
    width: int = Field(32, ge=1, le=4096, description="Image width in pixels.")

    def as_tuple(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)


class HParams(NoBoolNumbers):
    """Base class of every architecture's hyperparameters: frozen, and unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Recipe(NoBoolNumbers):
    """What an architecture changes in the default training recipe (``TrainConfig``'s defaults).

    The trainer applies these under everything a user sets (a config file, flags,
    ``TrainConfig`` fields, the book's recipe): they change defaults only.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    lr: float | None = Field(None, gt=0.0, description="Peak learning rate.")
    epochs: int | None = Field(None, ge=1, description="Training epochs.")
    batch_size: int | None = Field(None, ge=1, description="Batch size.")
    weight_decay: float | None = Field(None, ge=0.0, description="Weight decay.")
    grad_clip: float | None = Field(None, gt=0.0, description="Gradient-norm clipping.")
    crop_padding: int | None = Field(None, ge=0, le=64,
                                     description="Random-crop padding in pixels (0: no crops).")


class ArchitectureSpec(BaseModel):
    """An architecture, as a plugin declares it.

    ``builder`` is a ``"module:function"`` string, imported only when a model is
    created, so that listing and showing never import torch.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, max_length=64, description="Unique name.")
    summary: str = Field(min_length=1, max_length=200, pattern=r"^[^\n]*$",
                         description="One line saying what it is.")
    tags: tuple[str, ...] = Field((), description="Free labels to filter with (`zoo list --tag`).")
    builder: str = Field(pattern=IMPORT_PATTERN,
                         description="`module:function` building the torch module.")
    hparams: type[HParams] = Field(description="The hyperparameters' pydantic model.")
    input_shape: InputShape = Field(InputShape(), description="Default input shape.")
    num_classes: int = Field(2, ge=2, le=100_000, description="Default number of classes.")
    min_input_size: int = Field(1, ge=1, description="Smallest height and width it accepts.")
    source: str = Field(min_length=1, description="Where the architecture comes from.")
    recipe: Recipe = Field(Recipe(), description="Its changes to the default training recipe.")
    weights: WeightSets = Field((), description="Its pretrained weight sets (zoo.spec.weights), "
                                "the default first: create_model(name, pretrained=True).")
    provenance: Provenance | None = Field(None, description="Set by the registry.")

    def load_builder(self) -> Callable[..., Any]:
        """Import and return the builder function."""
        return load_callable(self.builder, f"builder of architecture {self.name!r}",
                             self.provenance)

    def config_model(self) -> type[HParams]:
        """The pydantic model of everything ``create_model`` accepts for this architecture."""
        return _config_model(self)

    def hparams_schema(self) -> dict[str, Any]:
        """The JSON Schema of the accepted overrides: shape keys and hyperparameters."""
        return self.config_model().model_json_schema()


@functools.cache
def _config_model(spec: ArchitectureSpec) -> type[HParams]:
    shape = spec.input_shape
    fields: dict[str, Any] = {
        "in_channels": (int, Field(shape.channels, ge=1, le=64, description="Input channels.")),
        "in_height": (int, Field(shape.height, ge=1, le=4096, description="Input height.")),
        "in_width": (int, Field(shape.width, ge=1, le=4096, description="Input width.")),
        "num_classes": (int, Field(spec.num_classes, ge=2, le=100_000,
                                   description="Number of output classes.")),
    }
    model = create_model(f"{spec.name}Config", __base__=spec.hparams, **fields)
    return cast(type[HParams], model)


class ModelConfig(BaseModel):
    """A fully resolved architecture: name, hyperparameters, input shape and classes.

    This is what runs, checkpoints and bundles record, and what rebuilds a model.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    architecture: str
    hparams: dict[str, Any] = Field(default_factory=dict)
    input_shape: InputShape = InputShape()
    num_classes: int = Field(2, ge=2)


def resolve_config(spec: ArchitectureSpec, overrides: Mapping[str, Any]) -> ModelConfig:
    """Validate ``overrides`` against ``spec``; raise one clear sentence on bad input."""
    try:
        values = spec.config_model().model_validate(dict(overrides))
    except ValidationError as exc:
        raise HyperparameterError(format_validation_error(spec, exc)) from None
    dumped = values.model_dump()
    shape = InputShape(channels=dumped.pop("in_channels"), height=dumped.pop("in_height"),
                       width=dumped.pop("in_width"))
    num_classes = dumped.pop("num_classes")
    if min(shape.height, shape.width) < spec.min_input_size:
        raise InputShapeError(
            f"{spec.name} cannot take {shape.height}x{shape.width} inputs: height and width "
            f"must be at least {spec.min_input_size} pixels"
        )
    return ModelConfig(architecture=spec.name, hparams=dumped, input_shape=shape,
                       num_classes=num_classes)


def format_validation_error(spec: ArchitectureSpec, exc: ValidationError) -> str:
    """Turn pydantic's report into one sentence naming each bad value and what is accepted."""
    accepted = ", ".join(spec.config_model().model_fields)
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(input)"
        if err["type"] == "extra_forbidden":
            hint = (f" (the input's {field} is {OLD_SHAPE_KEYS[field]!r})"
                    if field in OLD_SHAPE_KEYS else "")
            parts.append(f"{spec.name} has no hyperparameter {field!r}{hint}; "
                         f"accepted: {accepted}")
        else:
            msg = err["msg"][0].lower() + err["msg"][1:]
            parts.append(f"invalid value {err.get('input')!r} for {spec.name} "
                         f"hyperparameter {field!r}: {msg}")
    return "; ".join(parts)
