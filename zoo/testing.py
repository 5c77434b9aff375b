"""The conformance kit: one call checks an architecture, or a dataset, against the zoo's contract.

Use it in a plugin's tests::

    from zoo.testing import check_architecture, check_dataset

    def test_my_net_conforms():
        check_architecture("MyNet", hparams={"width": 16})

    def test_my_data_conforms():
        check_dataset("my-data", options={"size": 40})

:func:`check_architecture` builds the architecture at its default input shape, at
its declared smallest input (``min_input_size``: one pixel less must be refused)
and at another shape (other channels, size and class count), checks each model's
output contract, checks that out-of-range, mistyped (booleans for numbers
included) and unknown hyperparameters are rejected, runs one training step,
exports and verifies a bundle and reloads it.
:func:`check_dataset` loads the dataset at two requests (size, channels, seed),
checks the loader contract and that the same request gives the same data, that
unknown options are rejected, and runs one training step on a batch of it.
Each returns a :class:`ConformanceReport` and raises
:class:`~zoo.errors.ConformanceError` (an ``AssertionError``) at the first failure.

This module is also a pytest plugin (entry point ``pytest11``), giving the
``zoo_registry`` fixture: a fresh :class:`~zoo.Registry` of the installed plugins.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from zoo.errors import ConformanceError, InputShapeError, ZooError
from zoo.host.contract import load_dataset
from zoo.host.registry import Registry, default_registry
from zoo.spec.architecture import ArchitectureSpec, InputShape, ModelConfig
from zoo.spec.dataset import DatasetRequest, LoadedDataset
from zoo.spec.numbers import number_kind

if TYPE_CHECKING:
    import torch

UNKNOWN_KEY = "zoo_conformance_no_such_key"


class ConformanceReport(BaseModel):
    """What a conformance check did: one line per check, all passed."""

    model_config = ConfigDict(frozen=True)

    name: str
    checks: tuple[str, ...]


@contextmanager
def _workdir(tmp_dir: str | Path | None) -> Iterator[Path]:
    if tmp_dir is not None:
        path = Path(tmp_dir)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="zoo-conformance-") as tmp:
        yield Path(tmp)


def _fail(name: str, what: str, exc: BaseException | None = None) -> ConformanceError:
    detail = f": {exc}" if exc is not None else ""
    return ConformanceError(f"{name} does not conform: {what}{detail}")


def other_shape(spec: ArchitectureSpec) -> tuple[InputShape, int]:
    """A non-default, non-square input shape and class count the architecture must take."""
    shape = spec.input_shape
    other = InputShape(channels=1 if shape.channels != 1 else 3,
                       height=min(shape.height + 8, 4096), width=min(shape.width + 4, 4096))
    classes = spec.num_classes + 1 if spec.num_classes < 100_000 else spec.num_classes - 1
    return other, classes


def _bad_values(spec: ArchitectureSpec) -> dict[str, list[Any]]:
    """Values each hyperparameter must refuse: beyond its bounds, and of the wrong type."""
    out: dict[str, list[Any]] = {}
    for name, field in spec.hparams.model_fields.items():
        bad: list[Any] = []
        for meta in field.metadata:
            for attr, step in (("ge", -1), ("gt", 0), ("le", 1), ("lt", 0)):
                bound = getattr(meta, attr, None)
                if isinstance(bound, (int, float)) and not isinstance(bound, bool):
                    bad.append(bound + step)
        if number_kind(field.annotation) is not None:
            bad += ["not a number", True]
        if bad:
            out[name] = bad
    return out


def _train_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, what: str) -> None:
    import torch

    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConformanceError(f"{what}: the model has no trainable parameters")
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.SGD(params, lr=0.1)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    if not math.isfinite(float(loss.detach())):
        raise ConformanceError(f"{what}: the training loss is {float(loss.detach())}")
    loss.backward()  # type: ignore[no-untyped-call]
    optimizer.step()
    if all(torch.equal(a, p.detach()) for a, p in zip(before, params, strict=True)):
        raise ConformanceError(f"{what}: one training step changed no parameter")


def check_architecture(
    name: str,
    *,
    hparams: Mapping[str, Any] | None = None,
    registry: Registry | None = None,
    tmp_dir: str | Path | None = None,
    export: bool = True,
) -> ConformanceReport:
    """Check architecture ``name`` against the zoo's contract; raise at the first failure.

    ``hparams``: non-default hyperparameters it must also build with (used at the
    non-default shape). ``export=False`` skips the export, verification and reload.
    """
    import torch

    registry = registry or default_registry()
    spec = registry.get_spec(name)
    checks: list[str] = []
    default = registry.resolve(name)
    try:
        model = registry.build(default)
    except ZooError as exc:
        raise _fail(name, "it does not build at its defaults", exc) from exc
    checks.append(f"builds at {default.input_shape.as_tuple()} -> {default.num_classes} classes")
    checks.append(_check_min_input_size(name, spec, registry))
    shape, classes = other_shape(spec)
    overrides = {**dict(hparams or {}), "in_channels": shape.channels,
                 "in_height": shape.height, "in_width": shape.width, "num_classes": classes}
    try:
        config = registry.resolve(name, **overrides)
        model = registry.build(config)
    except ZooError as exc:
        raise _fail(name, f"it does not build with {overrides}", exc) from exc
    checks.append(f"builds at {shape.as_tuple()} -> {classes} classes with {dict(hparams or {})}")
    for key, values in _bad_values(spec).items():
        for value in values:
            try:
                registry.resolve(name, **{key: value})
            except ZooError:
                continue
            raise _fail(name, f"hyperparameter {key}={value!r} was accepted; its bounds or type "
                              "should refuse it")
        checks.append(f"refuses {key}={', '.join(repr(v) for v in values)}")
    try:
        registry.resolve(name, **{UNKNOWN_KEY: 1})
    except ZooError:
        checks.append("refuses an unknown hyperparameter")
    else:
        raise _fail(name, "an unknown hyperparameter was accepted (HParams must forbid extras)")
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((4, *shape.as_tuple()), generator=generator)
    y = torch.arange(4) % classes
    _train_step(model, x, y, f"{name} does not conform")
    checks.append("one training step changes the parameters with a finite loss")
    if export:
        checks += _export_and_reload(name, registry, config, overrides, tmp_dir)
    return ConformanceReport(name=name, checks=tuple(checks))


def _check_min_input_size(name: str, spec: ArchitectureSpec, registry: Registry) -> str:
    """The architecture builds and runs at its declared ``min_input_size``, and the spec
    refuses one pixel less in height or width."""
    size = spec.min_input_size
    try:
        registry.build(registry.resolve(name, in_height=size, in_width=size))
    except ZooError as exc:
        raise _fail(name, f"it declares min_input_size={size} but does not take {size}x{size} "
                          "inputs (declare the smallest size it takes)", exc) from exc
    if size == 1:
        return "takes its declared minimum input, 1x1"
    for smaller in ({"in_height": size - 1, "in_width": size},
                    {"in_height": size, "in_width": size - 1}):
        try:
            registry.resolve(name, **smaller)
        except InputShapeError:
            continue
        raise _fail(name, f"{smaller} was accepted, below its min_input_size={size}")
    return f"takes its declared minimum input, {size}x{size}, and refuses one pixel less"


def _export_and_reload(name: str, registry: Registry, config: ModelConfig,
                       overrides: Mapping[str, Any], tmp_dir: str | Path | None) -> list[str]:
    import numpy as np
    import torch

    from zoo.deploy.runtime import ort_session
    from zoo.exporter.write import export
    from zoo.models.load import load_bundle
    from zoo.spec.manifest import INPUT_NAME, ONNX_FILE

    with _workdir(tmp_dir) as work:
        dest = work / f"{name}-conformance"
        try:
            result = export(name, overrides=overrides, out=dest, force=True, registry=registry)
            loaded = load_bundle(dest, registry=registry)
        except ZooError as exc:
            raise _fail(name, "its export, verification or reload failed", exc) from exc
        x = np.random.default_rng(0).standard_normal(
            (3, *config.input_shape.as_tuple())).astype(np.float32)
        with torch.no_grad():
            reloaded = loaded.model(torch.from_numpy(x)).numpy()
        onnx_out = ort_session(dest / ONNX_FILE, threads=1).run(None, {INPUT_NAME: x})[0]
        if reloaded.shape != (3, config.num_classes) or not np.allclose(
                reloaded, onnx_out, atol=1e-4, rtol=1e-3):
            raise _fail(name, "the reloaded bundle does not compute what its ONNX graph does")
    return [f"exports a verified bundle ({result.manifest.verification.checks[0].name}, ...)",
            "reloads it with zoo.load and matches its ONNX graph"]


def check_dataset(
    name: str,
    *,
    options: Mapping[str, Any] | None = None,
    data_dir: str | Path | None = None,
    registry: Registry | None = None,
    tmp_dir: str | Path | None = None,
) -> ConformanceReport:
    """Check dataset ``name`` against the loader contract; raise at the first failure.

    ``options``: its ``--option`` values (keep it small: it is loaded three times);
    ``data_dir``: for a dataset that needs one.
    """
    registry = registry or default_registry()
    spec = registry.get_dataset(name)
    if spec.needs_data_dir and data_dir is None:
        raise _fail(name, "it needs a data directory: pass data_dir=")
    opts = dict(options or {})
    checks: list[str] = []
    try:
        load_dataset(spec, DatasetRequest(), **{**opts, UNKNOWN_KEY: 1})
    except ZooError:
        checks.append("refuses an unknown option")
    else:
        raise _fail(name, "an unknown option was accepted (DatasetOptions must forbid extras)")
    with _workdir(tmp_dir) as work:
        base = {"data_dir": Path(data_dir) if data_dir is not None else None,
                "cache_dir": work / "cache", "download": False, "quiet": True}
        requests = [DatasetRequest(image_size=(16, 16), channels=3, seed=0, **base),
                    DatasetRequest(image_size=(12, 20), channels=1, seed=1, val_split=0.25,
                                   **base)]
        loaded: list[LoadedDataset] = []
        for request in requests:
            try:
                loaded.append(load_dataset(spec, request, **opts))
            except ZooError as exc:
                raise _fail(name, f"it does not load {request.image_size} x "
                                  f"{request.channels} channel(s)", exc) from exc
            data = loaded[-1]
            if len(data.train) == 0 or len(data.val) == 0:
                raise _fail(name, f"it gave {len(data.train)} training and {len(data.val)} "
                                  "validation images; both must be non-empty")
            checks.append(f"loads {request.channels}x{request.image_size} with seed "
                          f"{request.seed}: {len(data.train)} + {len(data.val)} images, "
                          f"{len(data.classes)} classes")
        again = load_dataset(spec, requests[1], **opts)
        _same(name, loaded[1], again)
        checks.append("the same request gives the same data and content key")
    _dataset_train_step(name, loaded[0])
    checks.append("one training step on a batch of it changes the parameters")
    return ConformanceReport(name=name, checks=tuple(checks))


def _same(name: str, a: LoadedDataset, b: LoadedDataset) -> None:
    import numpy as np

    same = (a.content_key == b.content_key and a.classes == b.classes
            and all(np.array_equal(getattr(a, s).images, getattr(b, s).images)
                    and np.array_equal(getattr(a, s).labels, getattr(b, s).labels)
                    for s in ("train", "val")))
    if not same:
        raise _fail(name, "loading the same request twice gave different data or content keys")


def _dataset_train_step(name: str, data: LoadedDataset) -> None:
    import torch

    images = torch.from_numpy(data.train.images[:8]).float() / 255.0
    labels = torch.from_numpy(data.train.labels[:8])
    model = torch.nn.Sequential(torch.nn.Flatten(),
                                torch.nn.Linear(images[0].numel(), len(data.classes)))
    _train_step(model, images, labels, f"{name} does not conform")


try:
    import pytest
except ImportError:  # the checks work without pytest; only the fixture needs it
    pass
else:

    @pytest.fixture
    def zoo_registry() -> Registry:
        """A fresh registry of the installed plugins (entry points rescanned)."""
        return Registry()


__all__ = ["ConformanceReport", "check_architecture", "check_dataset", "other_shape"]
