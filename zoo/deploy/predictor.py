"""Torch-free deployment: classify images with a bundle's ONNX graph on onnxruntime.

Needs only onnxruntime, numpy and Pillow (plus the torch-free parts of the zoo:
:mod:`zoo.spec`, :mod:`zoo.bundles`, :mod:`zoo.util`); importing this module and
predicting never imports torch.

>>> clf = OnnxClassifier("exports/Net-cifar2")        # or OnnxClassifier("Net")
>>> [p.label for p in clf.predict(["cat.png", "plane.jpg"])]
['bird', 'airplane']

Images go through the same preprocessing as training: grayscale, RGBA and
palette images are converted (:func:`zoo.util.imaging.to_mode`), resized bilinearly
to the input size, scaled to [0, 1] and standardized with the manifest's
normalization (:func:`zoo.util.imaging.normalize`).
"""

from __future__ import annotations

import os
import reprlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from zoo.bundles.integrity import check_bundle, read_checked
from zoo.bundles.store import resolve_bundle
from zoo.deploy.runtime import graph_file, load_graph
from zoo.errors import BundleError, ZooError
from zoo.host.registry import Registry
from zoo.spec.exportformat import REQUIRED_FORMAT
from zoo.spec.manifest import ONNX_FILE, Manifest
from zoo.util.imaging import ENV_MAX_PIXELS, decode_image, max_image_pixels, normalize, to_mode
from zoo.util.threads import check_threads

#: What :meth:`OnnxClassifier.predict` accepts as one image.
ImageInput = str | os.PathLike[str] | Image.Image | np.ndarray

DEFAULT_BATCH_SIZE = 64


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)  # type: ignore[no-any-return]


class ClassScore(BaseModel):
    """One class and its softmax probability."""

    model_config = ConfigDict(frozen=True)

    label: str
    index: int
    probability: float


class Prediction(BaseModel):
    """The top-k classes of one image, most probable first."""

    model_config = ConfigDict(frozen=True)

    source: str = Field(description="The file path, or '<image N>' for in-memory images.")
    top: tuple[ClassScore, ...]

    @property
    def label(self) -> str:
        return self.top[0].label

    @property
    def index(self) -> int:
        return self.top[0].index

    @property
    def probability(self) -> float:
        return self.top[0].probability


class OnnxClassifier:
    """A bundle's ONNX graph on onnxruntime's CPU provider, with the bundle's preprocessing.

    ``bundle`` is a bundle directory or a bundle name, read by the rule of
    :mod:`zoo.bundles.store` (``weights`` picks a declared weight set of an
    architecture name; ``registry`` the plugins that declare them). Every file's SHA-256 is checked
    before the graph is loaded, the graph is loaded from the bytes that were
    checked, and its input and output shapes must match the manifest
    (:class:`zoo.errors.BundleError` otherwise). ``expect_sha256`` pins the
    bundle: one whose manifest has another SHA-256 is refused. ``threads``: 1 to
    4 per core. ``graph`` picks which of the bundle's ONNX graphs runs: ``"onnx"``
    (``model.onnx``, float32) or an export format holding one (``"int8"``).
    """

    def __init__(self, bundle: str | os.PathLike[str], *, threads: int | None = None,
                 expect_sha256: str | None = None, weights: str | None = None,
                 registry: Registry | None = None, graph: str = REQUIRED_FORMAT) -> None:
        check_threads(threads)
        self.path = resolve_bundle(bundle, weights=weights, registry=registry)
        if not isinstance(graph, str):
            raise BundleError(f"graph must be a format name such as 'onnx' or 'int8', got "
                              f"{graph!r}")
        # model.onnx is kept as it is hashed; another graph is read again once its name is known
        checked = check_bundle(self.path, expect_sha256=expect_sha256,
                               read=(ONNX_FILE,) if graph == REQUIRED_FORMAT else ())
        self.manifest: Manifest = checked.manifest
        #: The bundle's identity (:func:`zoo.bundles.integrity.bundle_sha256`).
        self.sha256 = checked.sha256
        #: The graph file that runs (``model.onnx``, ``model.int8.onnx``).
        self.graph_file = graph_file(self.manifest, graph, self.path)
        data = checked.data.get(self.graph_file) or read_checked(self.path, self.manifest,
                                                                 self.graph_file)
        self.session = load_graph(self.path, self.manifest, threads=threads, data=data,
                                  file=self.graph_file)
        self.input_name = self.manifest.export.input_name
        shape = self.manifest.model.input_shape
        self.channels = shape.channels
        self.size = (shape.height, shape.width)
        self.classes = self.manifest.classes
        norm = self.manifest.normalization
        self._mean = norm.mean
        self._std = norm.std

    def __repr__(self) -> str:
        graph = "" if self.graph_file == ONNX_FILE else f", graph file {self.graph_file!r}"
        return (f"OnnxClassifier({str(self.path)!r}, architecture="
                f"{self.manifest.architecture!r}{graph})")

    # -- preprocessing -----------------------------------------------------------------

    def to_uint8(self, image: ImageInput) -> np.ndarray:
        """One image as a uint8 ``(C, H, W)`` array of the bundle's input shape.

        Arrays are uint8 ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)`` (channels-first when
        the first axis has 1, 3 or 4 entries and the last does not).
        """
        if isinstance(image, (str, os.PathLike)):
            return decode_image(os.fspath(image), self.channels, self.size)
        if isinstance(image, np.ndarray):
            array = image
            if array.dtype != np.uint8:
                raise ZooError(f"image arrays must be uint8, got dtype {array.dtype}")
            if array.size == 0:
                raise ZooError(f"an image array is empty (shape {array.shape}); accepted: at "
                               "least one pixel")
            if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[2] not in (1, 3, 4):
                if array.shape == (self.channels, *self.size):
                    return np.ascontiguousarray(array)
                array = array.transpose(1, 2, 0)
            if array.ndim == 3 and array.shape[2] == 1:
                array = array[:, :, 0]
            if array.ndim not in (2, 3):
                raise ZooError(f"an image array must have 2 or 3 dimensions, got shape "
                               f"{array.shape}")
            _check_pixels(array.shape[1], array.shape[0], "an image array")
            image = Image.fromarray(np.ascontiguousarray(array))
        if not isinstance(image, Image.Image):
            raise ZooError(f"cannot classify {reprlib.repr(image)} (a {type(image).__name__}); "
                           "accepted: a path, a PIL image or a uint8 numpy array")
        if image.width == 0 or image.height == 0:
            raise ZooError(f"an image is empty ({image.width}x{image.height}); accepted: at "
                           "least one pixel")
        _check_pixels(image.width, image.height, "an image")
        converted = to_mode(image, self.channels)
        if (converted.height, converted.width) != self.size:
            converted = converted.resize((self.size[1], self.size[0]),
                                         Image.Resampling.BILINEAR)
        out = np.asarray(converted, dtype=np.uint8)
        out = out[None, :, :] if out.ndim == 2 else out.transpose(2, 0, 1)
        return np.ascontiguousarray(out)

    def preprocess(self, images: np.ndarray | Sequence[ImageInput]) -> np.ndarray:
        """Images → the float32 ``(N, C, H, W)`` batch the graph takes.

        A uint8 ``(N, C, H, W)`` array of the input shape is taken as a batch as is;
        other 4-D arrays are a sequence of images.
        """
        if (isinstance(images, np.ndarray) and images.dtype == np.uint8
                and images.shape[1:] == (self.channels, *self.size)):
            batch = images
        elif len(images):
            batch = np.stack([self.to_uint8(img) for img in images])
        else:
            batch = np.zeros((0, self.channels, *self.size), dtype=np.uint8)
        return np.ascontiguousarray(normalize(batch, self._mean, self._std), dtype=np.float32)

    # -- inference ---------------------------------------------------------------------

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits of an already preprocessed float32 batch."""
        outputs: list[Any] = self.session.run(None, {self.input_name: batch})
        return np.asarray(outputs[0], dtype=np.float32)

    def logits(self, images: np.ndarray | Sequence[ImageInput], *,
               batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """Logits ``(N, num_classes)``, computed ``batch_size`` images at a time."""
        if batch_size < 1:
            raise ZooError(f"batch size must be at least 1, got {batch_size}")
        images = _as_sequence(images)
        n = len(images)
        chunks = [self.run(self.preprocess(images[i:i + batch_size]))
                  for i in range(0, n, batch_size)]
        if not chunks:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return np.concatenate(chunks)

    def probabilities(self, images: np.ndarray | Sequence[ImageInput], *,
                      batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """Softmax probabilities ``(N, num_classes)``."""
        return softmax(self.logits(images, batch_size=batch_size))

    def predict(self, images: np.ndarray | Sequence[ImageInput] | ImageInput, *,
                top_k: int = 1, batch_size: int = DEFAULT_BATCH_SIZE,
                sources: Sequence[str] | None = None) -> list[Prediction]:
        """The ``top_k`` classes of each image (one image, a sequence, or a uint8 batch).

        ``sources`` names the images in the results (default: the path, or ``<image N>``).
        """
        if top_k < 1:
            raise ZooError(f"top-k must be at least 1, got {top_k}")
        batch = _as_sequence(images)
        probs = self.probabilities(batch, batch_size=batch_size)
        k = min(top_k, probs.shape[1])
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        if sources is not None and len(sources) != len(order):
            raise ZooError(f"got {len(sources)} source names for {len(order)} images")
        results = []
        for i, row in enumerate(order):
            item = batch[i]
            if sources is not None:
                source = sources[i]
            elif isinstance(item, (str, os.PathLike)):
                source = os.fspath(item)
            else:
                source = f"<image {i}>"
            results.append(Prediction(source=source, top=tuple(
                ClassScore(label=self.classes[j], index=int(j), probability=float(probs[i, j]))
                for j in row)))
        return results


def _check_pixels(width: int, height: int, what: str) -> None:
    """The pixel limit of image files (:func:`zoo.util.imaging.max_image_pixels`), for
    in-memory images: resizing a huge one would take as long and as much memory."""
    limit = max_image_pixels()
    if width * height > limit:
        raise ZooError(f"{what} of {width}x{height} is {width * height} pixels, over the limit "
                       f"of {limit} per image (set ${ENV_MAX_PIXELS} to allow more)")


def _as_sequence(images: Any) -> Any:
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [images]
    if isinstance(images, np.ndarray):
        return images if images.ndim == 4 else [images]
    if isinstance(images, (bytes, bytearray)) or not isinstance(images, Iterable):
        raise ZooError(f"cannot classify {reprlib.repr(images)} (a {type(images).__name__}); "
                       "accepted: a path, a PIL image, a uint8 numpy array, or a sequence of them")
    if not isinstance(images, Sequence):
        return list(images)
    return images


__all__ = ["DEFAULT_BATCH_SIZE", "ClassScore", "ImageInput", "OnnxClassifier", "Prediction",
           "softmax"]
