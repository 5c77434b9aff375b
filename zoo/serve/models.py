"""Served models: a bundle's :class:`~zoo.deploy.OnnxClassifier` behind a name, a version
and a :class:`~zoo.serve.batching.DynamicBatcher`.

A model's version is the first 12 hex digits of its bundle's SHA-256
(:func:`zoo.manifest.bundle_sha256`, what ``--expect-sha256`` pins): the version
identifies the weights. It takes one input, the bundle's input tensor (``input``),
as either

* ``FP32`` of shape ``[N, C, H, W]``: already preprocessed, in the bundle's layout; or
* ``BYTES`` of shape ``[N]``: encoded images (JPEG, PNG, BMP, GIF, WebP, TIFF), each
  preprocessed exactly as :meth:`OnnxClassifier.to_uint8` and ``preprocess`` do;

and answers four outputs (all of them unless the request names some):
``logits`` and ``probabilities`` (FP32 ``[N, classes]``, the latter equal to
:meth:`OnnxClassifier.probabilities`), and the top-k classes as ``top_labels``
(BYTES ``[N, k]``) and ``top_probabilities`` (FP32 ``[N, k]``), with ``k`` the
request parameter ``top_k``. An output requested with the parameter
``classification: K`` comes back as Triton's classification extension gives it:
BYTES ``[N, K]`` of ``"value:index:label"``, most probable first.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from zoo.deploy import OnnxClassifier, softmax
from zoo.errors import ZooError
from zoo.serve.batching import (
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_QUEUE_DELAY_S,
    DEFAULT_MAX_QUEUE_ROWS,
    DEFAULT_TIMEOUT_S,
    BatcherClosedError,
    DynamicBatcher,
    OnBatch,
    QueueFullError,
    QueueWaitError,
)
from zoo.serve.protocol import (
    InferenceRequest,
    ModelMetadata,
    Output,
    ProtocolError,
    RequestOutput,
    TensorMetadata,
    check_datatype,
    decode_bytes,
    decode_numbers,
)

VERSION_DIGITS = 12
PLATFORM = "onnxruntime_onnx"
#: The image formats a BYTES input may hold (Pillow decoders; no others are tried).
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")
LOGITS, PROBABILITIES, TOP_LABELS, TOP_PROBABILITIES = (
    "logits", "probabilities", "top_labels", "top_probabilities")
OUTPUTS = (LOGITS, PROBABILITIES, TOP_LABELS, TOP_PROBABILITIES)


@dataclass(frozen=True)
class ServeSettings:
    """Batching, limits and defaults of a server (``zoo serve`` options)."""

    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_queue_delay_s: float = DEFAULT_MAX_QUEUE_DELAY_S
    max_queue_rows: int = DEFAULT_MAX_QUEUE_ROWS
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_body_bytes: int = 16 << 20
    max_image_pixels: int = 4096 * 4096
    top_k: int = 5
    threads: int | None = 1
    max_loop_lag_s: float = 0.025
    max_queue_wait_s: float = 0.05
    graph: str = "onnx"


class ServedModel:
    """One bundle served under ``name``: metadata, model card, inference through the batcher."""

    def __init__(self, name: str, classifier: OnnxClassifier, sha256: str,
                 settings: ServeSettings, on_batch: OnBatch | None = None) -> None:
        self.name = name
        self.classifier = classifier
        self.manifest = classifier.manifest
        self.sha256 = sha256
        #: The bundle's graph that runs: ``onnx`` (float32) or a format holding one (``int8``).
        self.graph = settings.graph
        suffix = "" if settings.graph == "onnx" else f"-{settings.graph}"
        # the version names the weights and the graph: an int8 graph answers otherwise
        self.version = sha256[:VERSION_DIGITS] + suffix
        self._full_version = sha256 + suffix
        self.settings = settings
        self.classes = tuple(classifier.classes)
        self.input_name = self.manifest.export.input_name
        self.input_shape = (classifier.channels, *classifier.size)
        self._labels = np.array([c.encode("utf-8") for c in self.classes], dtype=object)
        self.batcher = DynamicBatcher(
            self._compute, name=name, max_batch_size=settings.max_batch_size,
            max_queue_delay_s=settings.max_queue_delay_s,
            max_queue_rows=settings.max_queue_rows, timeout_s=settings.timeout_s,
            max_queue_wait_s=settings.max_queue_wait_s, on_batch=on_batch)

    # -- description -------------------------------------------------------------------

    def check_version(self, version: str | None) -> None:
        """A 404 ProtocolError unless ``version`` is None, this version or the full SHA-256."""
        if version is not None and version.lower() not in (self.version, self._full_version):
            raise ProtocolError(f"model {self.name!r} has no version {version!r}; accepted: "
                                f"{self.version!r} (or the bundle's full SHA-256"
                                f"{'' if self.graph == 'onnx' else ' + -' + self.graph})", 404)

    def metadata(self) -> ModelMetadata:
        k = len(self.classes)
        return ModelMetadata(
            name=self.name, versions=[self.version], platform=PLATFORM,
            inputs=[TensorMetadata(name=self.input_name, datatype="FP32",
                                   shape=[-1, *self.input_shape])],
            outputs=[TensorMetadata(name=LOGITS, datatype="FP32", shape=[-1, k]),
                     TensorMetadata(name=PROBABILITIES, datatype="FP32", shape=[-1, k]),
                     TensorMetadata(name=TOP_LABELS, datatype="BYTES", shape=[-1, -1]),
                     TensorMetadata(name=TOP_PROBABILITIES, datatype="FP32", shape=[-1, -1])])

    def card(self) -> dict[str, Any]:
        """What the web page shows beside the predictions, from the manifest."""
        m = self.manifest
        training = m.training
        exported = training.exported if training is not None else None
        accuracy = exported.val_acc if exported else None
        record = m.formats.get(self.graph)
        if record is not None:  # the accuracy the served graph itself scored, where measured
            accuracy = next((c.accuracy for c in record.checks if c.accuracy is not None), None)
        return {
            "name": self.name, "version": self.version, "sha256": self.sha256,
            "architecture": m.architecture, "parameters": m.num_parameters,
            "hparams": m.model.hparams, "classes": list(self.classes),
            "input": {"channels": self.input_shape[0], "height": self.input_shape[1],
                      "width": self.input_shape[2]},
            "dataset": training.dataset if training else None,
            "accuracy": accuracy, "graph": self.graph,
            "accuracy_split": (training.val_images or training.split) if training else None,
            "epochs": training.epochs_completed if training else None,
            "train_images": training.train_size if training else None,
            "plugin": m.provenance.describe() if m.provenance else None,
            "exporter": m.export.exporter, "opset": m.export.opset,
            "created": m.created.isoformat(),
        }

    # -- inference ---------------------------------------------------------------------

    async def infer(self, request: InferenceRequest,
                    binary: dict[int, memoryview]) -> list[Output]:
        """Answer an inference request (its JSON and the inputs' binary data)."""
        if len(request.inputs) != 1 or request.inputs[0].name != self.input_name:
            names = [t.name for t in request.inputs]
            dims = ", ".join(map(str, self.input_shape))
            raise ProtocolError(f"model {self.name!r} takes one input {self.input_name!r}, got "
                                f"{names}; accepted: FP32 [N, {dims}] or BYTES [N] (encoded "
                                "images)")
        tensor = request.inputs[0]
        check_datatype(tensor, ("FP32", "BYTES"))
        params = request.parameters or {}
        top_k = self._top_k(params.get("top_k"))
        binary_all = params.get("binary_data_output", False) is True
        requested = (request.outputs if request.outputs is not None
                     else [RequestOutput(name=n) for n in OUTPUTS])
        for out in requested:
            self._check_output(out)
        payload: np.ndarray | list[bytes]
        if tensor.datatype == "FP32":
            array = decode_numbers(tensor, binary.get(0))
            expected = [array.shape[0], *self.input_shape] if array.ndim == 4 else None
            if array.ndim != 4 or list(array.shape) != expected:
                raise ProtocolError(f"input {tensor.name!r} has shape {tensor.shape}; accepted: "
                                    f"[N, {', '.join(map(str, self.input_shape))}]")
            payload = np.ascontiguousarray(array, dtype=np.float32)  # checked finite later
            rows = int(array.shape[0])
        else:
            if not (len(tensor.shape) == 1 or (len(tensor.shape) == 2 and tensor.shape[1] == 1)):
                raise ProtocolError(f"input {tensor.name!r} of BYTES has shape {tensor.shape}; "
                                    "accepted: [N] or [N, 1], one encoded image per element")
            payload = decode_bytes(tensor, binary.get(0))
            rows = len(payload)
        logits, probs = await self.submit(payload, rows)
        return [self._output(out, logits, probs, top_k, binary_all) for out in requested]

    async def classify(self, image: bytes, top_k: int | None = None) -> dict[str, Any]:
        """The top-k of one encoded image, as the web page shows it."""
        k = self._top_k(top_k)
        probs = (await self.submit([image], 1))[1][0]
        order = np.argsort(-probs, kind="stable")[:k]
        return {"model_name": self.name, "model_version": self.version,
                "predictions": [{"label": self.classes[i], "index": int(i),
                                 "probability": float(probs[i])} for i in order]}

    async def submit(self, payload: np.ndarray | list[bytes], rows: int
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Logits and probabilities of ``rows`` rows through the batcher; its refusals as
        protocol errors."""
        limit = self.settings.max_batch_size
        if not 1 <= rows <= limit:
            raise ProtocolError(f"a batch of {rows} images; accepted: 1 to {limit} per request "
                                "(--max-batch-size)")
        try:
            result: tuple[np.ndarray, np.ndarray] = await self.batcher.submit(payload, rows)
            return result
        except QueueWaitError:
            raise ProtocolError(f"model {self.name!r} is over capacity (the request waited "
                                f"over {self.settings.max_queue_wait_s * 1e3:g} ms in its "
                                "queue); retry after a second", 503,
                                {"Retry-After": "1"}) from None
        except QueueFullError:
            raise ProtocolError(f"model {self.name!r} is over capacity (its queue is full); "
                                "retry after a second", 503, {"Retry-After": "1"}) from None
        except BatcherClosedError:
            raise ProtocolError("the server is shutting down; retry on another replica", 503,
                                {"Retry-After": "1"}) from None
        except TimeoutError:
            raise ProtocolError(f"model {self.name!r} did not answer within "
                                f"{self.settings.timeout_s:g} s (--timeout)", 504) from None

    def _top_k(self, value: Any) -> int:
        k = len(self.classes)
        if value is None:
            return min(self.settings.top_k, k)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= k:
            raise ProtocolError(f"top_k is {value!r}; accepted: an integer from 1 to {k}")
        return value

    def _check_output(self, out: RequestOutput) -> None:
        if out.name not in OUTPUTS:
            raise ProtocolError(f"model {self.name!r} has no output {out.name!r}; accepted: "
                                f"{', '.join(OUTPUTS)}")
        params = out.parameters or {}
        count = params.get("classification")
        if count is not None:
            if out.name not in (LOGITS, PROBABILITIES):
                raise ProtocolError(f"output {out.name!r} cannot be classified; accepted: "
                                    f"classification on {LOGITS!r} or {PROBABILITIES!r}")
            if isinstance(count, bool) or not isinstance(count, int) \
                    or not 1 <= count <= len(self.classes):
                raise ProtocolError(f"classification is {count!r} on output {out.name!r}; "
                                    f"accepted: an integer from 1 to {len(self.classes)}")
        if not isinstance(params.get("binary_data", False), bool):
            raise ProtocolError(f"binary_data of output {out.name!r} is "
                                f"{params['binary_data']!r}; accepted: true or false")

    def _output(self, out: RequestOutput, logits: np.ndarray, probs: np.ndarray, top_k: int,
                binary_all: bool) -> Output:
        params = out.parameters or {}
        binary = bool(params.get("binary_data", binary_all))
        values = logits if out.name == LOGITS else probs
        n = values.shape[0]
        count = params.get("classification")
        if count is not None:
            order = np.argsort(-values, axis=1, kind="stable")[:, :count]
            items = [f"{values[r, i]:f}:{i}:{self.classes[i]}".encode()
                     for r in range(n) for i in order[r]]
            return Output(out.name, "BYTES", (n, count), items, binary)
        if out.name in (LOGITS, PROBABILITIES):
            return Output(out.name, "FP32", values.shape, values, binary)
        order = np.argsort(-values, axis=1, kind="stable")[:, :top_k]
        if out.name == TOP_LABELS:
            return Output(out.name, "BYTES", (n, top_k), list(self._labels[order].ravel()),
                          binary)
        return Output(out.name, "FP32", (n, top_k), np.take_along_axis(values, order, 1),
                      binary)

    # -- the batcher's thread ----------------------------------------------------------

    def _compute(self, payloads: Sequence[np.ndarray | list[bytes]]
                 ) -> list[tuple[np.ndarray, np.ndarray] | BaseException]:
        """Logits and probabilities of each payload, in one onnxruntime call (runs in the
        batcher's thread). Images are decoded one by one and normalized all together."""
        arrays: list[np.ndarray | BaseException] = []  # float32 rows, or uint8 images
        for payload in payloads:
            if isinstance(payload, np.ndarray):
                arrays.append(payload if np.isfinite(payload).all() else ProtocolError(
                    f"input {self.input_name!r} holds NaN or infinite values; accepted: "
                    "finite FP32 numbers"))
                continue
            try:
                arrays.append(np.stack([self._decode(data, i) for i, data in enumerate(payload)]))
            except ProtocolError as exc:
                arrays.append(exc)
        good = [a for a in arrays if isinstance(a, np.ndarray)]
        if not good:
            return [a for a in arrays if not isinstance(a, np.ndarray)]
        images = [a for a in good if a.dtype == np.uint8]
        if images:  # OnnxClassifier.preprocess, once for every image of the batch
            floats = iter(np.split(self.classifier.preprocess(np.concatenate(images)),
                                   np.cumsum([len(a) for a in images])[:-1]))
            good = [next(floats) if a.dtype == np.uint8 else a for a in good]
        batch = good[0] if len(good) == 1 else np.concatenate(good)
        logits = self.classifier.run(batch)
        probs = softmax(logits)
        results: list[tuple[np.ndarray, np.ndarray] | BaseException] = []
        start = 0
        for a in arrays:
            if isinstance(a, np.ndarray):
                end = start + a.shape[0]
                results.append((logits[start:end], probs[start:end]))
                start = end
            else:
                results.append(a)
        return results

    def _decode(self, data: bytes, index: int) -> np.ndarray:
        """One encoded image as uint8 (C, H, W), as OnnxClassifier.to_uint8 makes it."""
        limit = self.settings.max_image_pixels
        what = f"image {index}" if index else "the image"
        try:
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as img:
                width, height = img.size  # from the header: nothing is decoded yet
                if width * height > limit:
                    raise ProtocolError(
                        f"{what} is {width}x{height} = {width * height} pixels; accepted: at "
                        f"most {limit} pixels (--max-image-pixels)", 413)
                img.load()
                return self.classifier.to_uint8(img)
        except UnidentifiedImageError:
            raise ProtocolError(f"{what} ({len(data)} bytes) is not an image file of a known "
                                f"format; accepted: {', '.join(IMAGE_FORMATS)}") from None
        except (Image.DecompressionBombError, OSError, SyntaxError, ValueError, EOFError,
                ZooError, MemoryError) as exc:
            raise ProtocolError(f"{what} cannot be decoded ({exc}); accepted: complete "
                                f"{', '.join(IMAGE_FORMATS)} files") from None


__all__ = ["IMAGE_FORMATS", "OUTPUTS", "PLATFORM", "VERSION_DIGITS", "ServeSettings",
           "ServedModel"]
