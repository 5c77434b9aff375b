"""Look inside a convolutional model: its first filters, its feature maps, its prediction.

:func:`inspect_model` runs one image through any registered architecture (a
shipped bundle, a bundle directory, a run directory, an architecture name or
a ``torch.nn.Module``) and returns the arrays; :func:`write_inspection` draws
them (``zoo inspect``).

Feature maps are captured per convolution block (:mod:`zoo.analysis.capture`): a
block of the book's ``Net`` is ``conv1 16×32×32 → pool 16×16×16``, the
convolution's output shape, then the map that leaves the block.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from zoo.analysis.capture import Recorder, Shape, chw
from zoo.bundles.store import resolve_bundle
from zoo.deploy import ClassScore
from zoo.errors import BundleNotFoundError, UnknownArchitectureError, ZooError, reason
from zoo.host.registry import Registry, default_registry
from zoo.models.load import load_bundle
from zoo.spec.manifest import MANIFEST_FILE
from zoo.spec.run import BEST_CHECKPOINT, SUMMARY_FILE
from zoo.trainer.checkpoint import load_run_model
from zoo.util.figures import min_max, mosaic, new_figure, save_png, show_mosaic
from zoo.util.fsutil import output_folder
from zoo.util.imaging import ImageDecodeError, decode_image, normalize, to_mode
from zoo.util.paths import is_bare_name

FILTERS_PNG = "filters.png"
#: Where the pictures go when no --out is given.
DEFAULT_OUT = Path("inspect")



class InspectionError(ZooError):
    """A model or image that cannot be inspected."""


def _fmt(shape: Shape) -> str:
    return "×".join(str(d) for d in shape)


@dataclass(frozen=True)
class FeatureMap:
    """The output of one convolution block for the inspected image."""

    layer: str  # the convolution's module name, e.g. "conv1"
    conv_shape: Shape  # the convolution's output (C, H, W)
    steps: tuple[tuple[str, Shape], ...]  # the operations after it, with their output shapes
    maps: np.ndarray  # the block's output, float32 (C, H, W)

    @property
    def shape(self) -> Shape:
        """The block output's (C, H, W)."""
        return (int(self.maps.shape[0]), int(self.maps.shape[1]), int(self.maps.shape[2]))

    @property
    def title(self) -> str:
        """``conv1 16×32×32 → pool 16×16×16``: the layer, its shape, the block's last step."""
        head = f"{self.layer} {_fmt(self.conv_shape)}"
        if not self.steps:
            return head
        changed = [name for name, shape in self.steps if shape != self.conv_shape]
        last = changed[0] if changed else self.steps[-1][0]
        return f"{head} → {last} {_fmt(self.shape)}"


@dataclass(frozen=True)
class InspectionResult:
    """What :func:`inspect_model` saw: filters, feature maps and class probabilities."""

    source: str
    architecture: str | None
    trained: bool
    image: np.ndarray  # uint8 (C, H, W), the pixels the model saw (before normalization)
    first_conv: str
    filters: np.ndarray  # float32 (out_channels, in_channels, kh, kw) of the first convolution
    feature_maps: tuple[FeatureMap, ...]
    classes: tuple[str, ...]
    probabilities: np.ndarray  # float32 (num_classes,)

    def top(self, k: int = 5) -> list[ClassScore]:
        """The ``k`` most probable classes, most probable first."""
        order = np.argsort(-self.probabilities, kind="stable")[:max(1, k)]
        return [ClassScore(label=self.classes[i], index=int(i),
                           probability=float(self.probabilities[i])) for i in order]

    def feature_map(self, layer: str) -> FeatureMap:
        """The block of convolution ``layer``; an error listing the layers otherwise."""
        for fm in self.feature_maps:
            if fm.layer == layer:
                return fm
        names = ", ".join(fm.layer for fm in self.feature_maps)
        raise InspectionError(f"the model has no convolution {layer!r}; its convolutions: {names}")


# -- loading ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Loaded:
    model: nn.Module
    source: str
    architecture: str | None
    shape: Shape | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    classes: tuple[str, ...] | None
    trained: bool


def _load(source: str | os.PathLike[str], registry: Registry,
          weights: str | None = None) -> _Loaded:
    """A run directory, a bundle (path or shipped name) or an untrained architecture."""
    text = os.fspath(source)
    path = Path(text)
    if (path / SUMMARY_FILE).is_file():
        model, summary, _ = load_run_model(path, registry, BEST_CHECKPOINT,
                                           command="zoo inspect", error=InspectionError)
        norm = summary.normalization
        return _Loaded(model, text, summary.model.architecture,
                       summary.model.input_shape.as_tuple(), norm.mean, norm.std,
                       tuple(summary.data.classes), True)
    if not is_bare_name(source) and path.exists() and not (path / MANIFEST_FILE).is_file():
        raise InspectionError(f"{text!r} is neither a run directory (no {SUMMARY_FILE}) nor a "
                              f"bundle (no {MANIFEST_FILE})")
    try:
        bundle = resolve_bundle(source, weights=weights, registry=registry)
    except BundleNotFoundError:  # no bundle by that name: an architecture, untrained
        if weights is not None:
            raise
        bundle = None
    if bundle is None:
        try:
            config = registry.resolve(text)
        except UnknownArchitectureError:
            raise InspectionError(f"no model {text!r}: it is not a run directory, a bundle, a "
                                  "shipped bundle name nor a registered architecture "
                                  "(see 'zoo list')") from None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = registry.build(config)
        classes = tuple(f"class{i}" for i in range(config.num_classes))
        return _Loaded(model, f"{text} (untrained, seed 0)", text,
                       config.input_shape.as_tuple(), None, None, classes, False)
    loaded = load_bundle(bundle, registry=registry)  # a tampered bundle is an error, no fallback
    m = loaded.manifest
    return _Loaded(loaded.model, str(loaded.path), m.architecture, m.model.input_shape.as_tuple(),
                   m.normalization.mean, m.normalization.std, m.classes,
                   m.training is not None)


def _image_array(image: str | os.PathLike[str] | np.ndarray, channels: int,
                 size: tuple[int, int] | None) -> np.ndarray:
    """uint8 (C, H, W) pixels of ``image``, converted and resized as training decoded them."""
    if not isinstance(image, np.ndarray):
        try:
            return decode_image(os.fspath(image), channels, size)
        except ImageDecodeError as exc:
            raise InspectionError(str(exc)) from None
    array = image
    if array.dtype != np.uint8:
        raise InspectionError(f"image arrays must be uint8, got dtype {array.dtype}")
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[2] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)  # channels first
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3):
        raise InspectionError(f"an image array must have 2 or 3 dimensions, got {array.shape}")
    pil = to_mode(Image.fromarray(np.ascontiguousarray(array)), channels)
    if size is not None and (pil.height, pil.width) != size:
        pil = pil.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    out = np.asarray(pil, dtype=np.uint8)
    return np.ascontiguousarray(out[None] if out.ndim == 2 else out.transpose(2, 0, 1))


# -- inspection -------------------------------------------------------------------------------


def inspect_model(model_or_name: nn.Module | str | os.PathLike[str],
                  image: str | os.PathLike[str] | np.ndarray, *,
                  registry: Registry | None = None, weights: str | None = None,
                  classes: Sequence[str] | None = None,
                  mean: Sequence[float] | None = None,
                  std: Sequence[float] | None = None,
                  size: tuple[int, int] | None = None) -> InspectionResult:
    """Run ``image`` through a model and return its first filters, feature maps and prediction.

    ``model_or_name`` is a ``torch.nn.Module``, a run directory (its best
    checkpoint), a bundle directory, a shipped bundle name (``"Net"``) or a
    registered architecture (untrained weights, seed 0). ``image`` is an image
    file or a uint8 array, resized to the model's input size and normalized as
    its training data was. For a bare module, ``size`` (height, width) defaults to
    the image's own and normalization to none unless ``mean``/``std`` are given.
    """
    registry = registry or default_registry()
    if isinstance(model_or_name, nn.Module):
        loaded = _Loaded(model_or_name, type(model_or_name).__name__, None, None, None, None,
                         None, True)
    else:
        loaded = _load(model_or_name, registry, weights)
    model = loaded.model
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise InspectionError(f"{loaded.source} has no convolution (nn.Conv2d) layer to inspect")
    channels = loaded.shape[0] if loaded.shape else convs[0].in_channels
    if loaded.shape:
        size = (loaded.shape[1], loaded.shape[2])
    pixels = _image_array(image, channels, size)
    mean = tuple(mean) if mean is not None else loaded.mean or (0.0,) * channels
    std = tuple(std) if std is not None else loaded.std or (1.0,) * channels
    x = torch.from_numpy(normalize(pixels[None], tuple(mean), tuple(std)))
    names = {m: n or type(m).__name__ for n, m in reversed(list(model.named_modules()))}
    recorder = Recorder(names)
    handles = []
    for conv in convs:
        handles.append(conv.register_forward_pre_hook(recorder.pre_hook))
        handles.append(conv.register_forward_hook(recorder.hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), recorder:
            logits = model(x)
    except RuntimeError as exc:
        raise InspectionError(f"{loaded.source} cannot take a {_fmt(chw(x))} image: "
                              f"{reason(exc)}") from None
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    for block in recorder.blocks:
        block.close()
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != 1:
        raise InspectionError(f"{loaded.source} returned {type(logits).__name__} "
                              f"{tuple(getattr(logits, 'shape', ()))}; expected (1, classes) "
                              "logits")
    probs = torch.softmax(logits.double(), dim=1)[0].float().numpy()
    names_out = tuple(classes) if classes is not None else (
        loaded.classes or tuple(f"class{i}" for i in range(probs.shape[0])))
    if len(names_out) != probs.shape[0]:
        raise InspectionError(f"{len(names_out)} class names for {probs.shape[0]} outputs")
    first = recorder.first or convs[0]
    maps = tuple(FeatureMap(b.layer, b.conv_shape, tuple(b.steps), b.final)
                 for b in recorder.blocks if b.final is not None)
    return InspectionResult(
        source=loaded.source, architecture=loaded.architecture, trained=loaded.trained,
        image=pixels, first_conv=names.get(first, "conv"),
        filters=first.weight.detach().float().cpu().numpy().copy(), feature_maps=maps,
        classes=names_out, probabilities=probs)


# -- pictures ---------------------------------------------------------------------------------


def filter_tiles(filters: np.ndarray) -> list[np.ndarray]:
    """One tile per output channel, min-max scaled: RGB for 3 input channels, else the mean."""
    tiles = []
    for kernel in filters:
        tile = kernel.transpose(1, 2, 0) if kernel.shape[0] == 3 else kernel.mean(axis=0)
        tiles.append(min_max(tile))
    return tiles


def render_filters(result: InspectionResult, path: Path) -> int:
    """Draw the first convolution's filters as a grid; return the number of tiles."""
    tiles = filter_tiles(result.filters)
    kh = result.filters.shape[2]
    grid = mosaic(tiles, scale=max(1, 24 // max(kh, 1)))
    kind = "RGB" if result.filters.shape[1] == 3 else "mean over input channels"
    out, inp = result.filters.shape[:2]
    fig = new_figure(4.0, 4.3)
    show_mosaic(fig, grid, f"{result.first_conv}: {out} filters {inp}×{kh}×"
                f"{result.filters.shape[3]} ({kind})")
    save_png(fig, path)
    return len(tiles)


def render_feature_map(fm: FeatureMap, path: Path, image: np.ndarray | None = None) -> int:
    """Draw one block's maps as a grid, each tile min-max scaled, beside the input ``image``
    (uint8 (C, H, W)) when given; return the number of tiles."""
    tiles = [min_max(m) for m in fm.maps]
    h = fm.maps.shape[1]
    grid = mosaic(tiles, scale=max(1, 48 // max(h, 1)), background=np.nan)
    if image is None:
        fig = new_figure(5.0, 5.3)
        show_mosaic(fig, grid, fm.title, cmap="viridis")
    else:
        fig = new_figure(6.6, 5.3)
        left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 4]})
        pixels = image.transpose(1, 2, 0)
        left.imshow(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels, cmap="gray",
                    interpolation="nearest")
        left.set_title("input", fontsize=9)
        left.set_axis_off()
        right.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=0.0, vmax=1.0,
                     interpolation="nearest")
        right.set_axis_off()
        fig.suptitle(fm.title, fontsize=10)
        fig.tight_layout(pad=0.4, rect=(0.0, 0.0, 1.0, 0.96))
    save_png(fig, path)
    return len(tiles)


def feature_map_file(index: int, fm: FeatureMap) -> str:
    """``features-01-conv1.png``: the block's position and its layer name."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in fm.layer.replace(".", "-"))
    return f"features-{index:02d}-{safe}.png"


class Picture(BaseModel):
    """One PNG written by :func:`write_inspection`."""

    model_config = ConfigDict(frozen=True)

    path: str
    title: str
    tiles: int = Field(description="Tiles in the grid: filters or feature-map channels.")


class InspectionReport(BaseModel):
    """What ``zoo inspect`` wrote and predicted (its ``--json`` output)."""

    model_config = ConfigDict(frozen=True)

    source: str
    architecture: str | None
    trained: bool
    image: str
    top: tuple[ClassScore, ...]
    filters: Picture
    feature_maps: tuple[Picture, ...]


def write_inspection(result: InspectionResult, out_dir: Path, *, layer: str | None = None,
                     top_k: int = 5, image_name: str = "<array>") -> InspectionReport:
    """Draw ``filters.png`` and one ``features-NN-LAYER.png`` per block (or only ``layer``)."""
    out_dir = Path(out_dir)
    blocks = [result.feature_map(layer)] if layer is not None else list(result.feature_maps)
    filters_path = out_dir / FILTERS_PNG
    pictures = []
    with output_folder(out_dir, "inspection folder --out"):
        tiles = render_filters(result, filters_path)
        for fm in blocks:
            index = result.feature_maps.index(fm) + 1
            path = out_dir / feature_map_file(index, fm)
            pictures.append(Picture(path=str(path), title=fm.title,
                                    tiles=render_feature_map(fm, path, result.image)))
    return InspectionReport(
        source=result.source, architecture=result.architecture, trained=result.trained,
        image=image_name, top=tuple(result.top(top_k)),
        filters=Picture(path=str(filters_path), title=f"{result.first_conv} filters",
                        tiles=tiles),
        feature_maps=tuple(pictures))


__all__ = ["FeatureMap", "InspectionError", "InspectionReport", "InspectionResult", "Picture",
           "filter_tiles", "inspect_model", "render_feature_map", "render_filters",
           "write_inspection"]
