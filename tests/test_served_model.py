"""A served model (:class:`zoo.serve.models.ServedModel`) without HTTP: its settings'
defaults, its version, card and metadata, and each inference limit at its edge, against
``OnnxClassifier`` on the same bundle."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image
from serve_support import encoded
from test_serve_options import _serve_parser

from zoo.cli.serve import _settings
from zoo.deploy import OnnxClassifier
from zoo.serve.models import ServedModel, ServeSettings
from zoo.serve.protocol import InferenceRequest, ProtocolError, RequestOutput


@pytest.fixture(scope="module")
def clf() -> OnnxClassifier:
    return OnnxClassifier("Net")


@pytest.fixture
def model(clf: OnnxClassifier) -> Iterator[ServedModel]:
    yield ServedModel("Net", clf, clf.sha256, ServeSettings())


def run(model: ServedModel, call: Any) -> Any:
    """``call(served)`` on a fresh copy of ``model`` with its batcher running."""
    served = ServedModel(model.name, model.classifier, model.sha256, model.settings)

    async def go() -> Any:
        served.batcher.start()
        try:
            return await call(served)
        finally:
            await served.batcher.close()
    return asyncio.run(go())


def png(width: int, height: int, seed: int = 0) -> bytes:
    return encoded(np.random.default_rng(seed).integers(0, 256, (height, width, 3),
                                                        dtype=np.uint8))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def probabilities(clf: OnnxClassifier, images: list[bytes]) -> np.ndarray:
    """OnnxClassifier's probabilities of encoded images, by class index."""
    k = len(clf.classes)
    predictions = clf.predict([Image.open(io.BytesIO(i)) for i in images], top_k=k)
    out = np.zeros((len(images), k), np.float32)
    for row, prediction in enumerate(predictions):
        for score in prediction.top:
            out[row, score.index] = score.probability
    return out


def request(**raw: Any) -> InferenceRequest:
    return InferenceRequest.model_validate(raw)


def images_request(images: list[bytes], shape: list[int] | None = None,
                   **raw: Any) -> InferenceRequest:
    return request(inputs=[{"name": "input", "datatype": "BYTES",
                            "shape": shape or [len(images)], "data": [b64(i) for i in images]}],
                   **raw)


def refused(model: ServedModel, call: Any, message: str, status: int = 400) -> None:
    with pytest.raises(ProtocolError) as caught:
        run(model, call)
    assert (caught.value.message, caught.value.status) == (message, status)


def test_the_api_defaults_are_the_command_line_defaults() -> None:
    settings = _settings(_serve_parser().parse_args(["Net"]))
    assert settings == ServeSettings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.top_k = 3  # type: ignore[misc]


def test_version_metadata_and_card(model: ServedModel, clf: OnnxClassifier) -> None:
    model.check_version(None)
    model.check_version(model.version.upper())
    model.check_version(clf.sha256)
    with pytest.raises(ProtocolError) as caught:
        model.check_version("2")
    assert caught.value.status == 404
    assert caught.value.message == (f"model 'Net' has no version '2'; accepted: "
                                    f"{model.version!r} (or the bundle's full SHA-256)")
    card = model.card()
    assert card["input"] == {"channels": 3, "height": 32, "width": 32}
    assert card["graph"] == "onnx" and card["classes"] == list(clf.classes)
    assert card["accuracy"] == clf.manifest.training.exported.val_acc  # type: ignore[union-attr]


def test_a_non_square_input_is_described_by_height_then_width(clf: OnnxClassifier,
                                                              monkeypatch: Any) -> None:
    served = ServedModel("Net", clf, clf.sha256, ServeSettings())
    monkeypatch.setattr(served, "input_shape", (1, 24, 40))
    assert served.card()["input"] == {"channels": 1, "height": 24, "width": 40}


def test_an_int8_graph_names_its_versions(clf: OnnxClassifier) -> None:
    served = ServedModel("Net", clf, clf.sha256, ServeSettings(graph="int8"))
    assert served.version == clf.sha256[:len(served.version) - 5] + "-int8"
    with pytest.raises(ProtocolError, match=r"\(or the bundle's full SHA-256 \+ -int8\)$"):
        served.check_version(clf.sha256)
    served.check_version(clf.sha256 + "-int8")


def test_the_wrong_inputs_name_the_one_expected(model: ServedModel) -> None:
    bad = request(inputs=[{"name": "x", "datatype": "FP32", "shape": [1], "data": [0]}])
    refused(model, lambda m: m.infer(bad, {}),
            "model 'Net' takes one input 'input', got ['x']; accepted: FP32 [N, 3, 32, 32] or "
            "BYTES [N] (encoded images)")


@pytest.mark.parametrize("shape", [[2], [2, 1]])
def test_images_as_bytes_of_shape_n_or_n_by_1(model: ServedModel, clf: OnnxClassifier,
                                              shape: list[int]) -> None:
    images = [png(32, 32, 1), png(40, 30, 2)]
    outputs = run(model, lambda m: m.infer(images_request(images, shape), {}))
    probs = next(o for o in outputs if o.name == "probabilities").data
    np.testing.assert_allclose(probs, probabilities(clf, images), atol=1e-6)


@pytest.mark.parametrize("shape", [[1, 2], [2, 2], [1, 1, 1], [2, 3]])
def test_bytes_of_other_shapes_are_refused(model: ServedModel, shape: list[int]) -> None:
    count = int(np.prod(shape))
    bad = images_request([png(8, 8)] * count, shape)
    refused(model, lambda m: m.infer(bad, {}),
            f"input 'input' of BYTES has shape {shape}; accepted: [N] or [N, 1], one encoded "
            "image per element")


def test_classify_answers_the_top_k_of_one_image(model: ServedModel,
                                                 clf: OnnxClassifier) -> None:
    image = png(32, 32, 3)
    answer = run(model, lambda m: m.classify(image))
    (expected,) = clf.predict(Image.open(io.BytesIO(image)), top_k=len(clf.classes))
    assert [(p["label"], p["index"]) for p in answer["predictions"]] == [
        (s.label, s.index) for s in expected.top]
    assert [p["probability"] for p in answer["predictions"]] == pytest.approx(
        [s.probability for s in expected.top], abs=1e-6)
    one = run(model, lambda m: m.classify(image, 1))
    assert len(one["predictions"]) == 1


@pytest.mark.parametrize("value", [0, 3, True, 1.0, "1"])
def test_top_k_outside_the_classes_is_refused(model: ServedModel, value: Any) -> None:
    refused(model, lambda m: m.classify(png(8, 8), value),
            f"top_k is {value!r}; accepted: an integer from 1 to 2")


@pytest.mark.parametrize("count", [0, 3, True, "1"])
def test_classification_outside_the_classes_is_refused(model: ServedModel, count: Any) -> None:
    bad = images_request([png(8, 8)], outputs=[{"name": "probabilities",
                                                "parameters": {"classification": count}}])
    refused(model, lambda m: m.infer(bad, {}),
            f"classification is {count!r} on output 'probabilities'; accepted: an integer "
            "from 1 to 2")


@pytest.mark.parametrize("count", [1, 2])
def test_classification_of_one_or_every_class(model: ServedModel, count: int) -> None:
    good = images_request([png(8, 8)], outputs=[{"name": "logits",
                                                 "parameters": {"classification": count}}])
    (out,) = run(model, lambda m: m.infer(good, {}))
    assert out.shape == (1, count) and len(out.data) == count


def test_binary_data_must_be_true_or_false_and_defaults_to_json(model: ServedModel) -> None:
    bad = images_request([png(8, 8)], outputs=[{"name": "logits",
                                                "parameters": {"binary_data": 1}}])
    refused(model, lambda m: m.infer(bad, {}),
            "binary_data of output 'logits' is 1; accepted: true or false")
    (out,) = run(model, lambda m: m.infer(
        images_request([png(8, 8)], outputs=[RequestOutput(name="logits").model_dump()]), {}))
    assert out.binary is False


def test_top_labels_are_the_class_names(model: ServedModel, clf: OnnxClassifier) -> None:
    image = png(32, 32, 5)
    outputs = run(model, lambda m: m.infer(images_request([image], parameters={"top_k": 2}),
                                             {}))
    labels = next(o for o in outputs if o.name == "top_labels").data
    (expected,) = clf.predict(Image.open(io.BytesIO(image)), top_k=2)
    assert labels == [s.label.encode() for s in expected.top]


def test_a_batch_mixing_images_of_several_requests_keeps_each_answer(
        model: ServedModel, clf: OnnxClassifier) -> None:
    # three requests in one onnxruntime call: one image, three images, two images
    payloads = [[png(32, 32, 10)], [png(32, 32, 11), png(20, 20, 12), png(32, 32, 13)],
                [png(16, 48, 14), png(32, 32, 15)]]
    results = model._compute(payloads)
    for payload, (_, probs) in zip(payloads, results, strict=True):
        np.testing.assert_allclose(probs, probabilities(clf, payload), atol=1e-6)


@pytest.mark.parametrize(("width", "height", "ok"), [(64, 64, True), (65, 64, False)])
def test_the_pixel_limit_at_its_edge(clf: OnnxClassifier, width: int, height: int,
                                     ok: bool) -> None:
    served = ServedModel("Net", clf, clf.sha256, ServeSettings(max_image_pixels=64 * 64))
    (result,) = served._compute([[png(8, 8), png(width, height)]])
    if ok:
        assert result[1].shape == (2, 2)
    else:
        assert isinstance(result, ProtocolError) and result.status == 413
        assert result.message == (f"image 1 is {width}x{height} = {width * height} pixels; "
                                  "accepted: at most 4096 pixels (--max-image-pixels)")
    (first,) = served._compute([[png(width, height)]])
    assert ok or first.message.startswith("the image is ")  # type: ignore[union-attr]


def test_the_card_shows_the_accuracy_the_served_graph_scored(clf: OnnxClassifier) -> None:
    from zoo.spec.manifest import CheckResult, FormatRecord

    served = ServedModel("Net", clf, clf.sha256, ServeSettings(graph="int8"))
    checks = (CheckResult(name="random batch 7", batch_size=7, max_abs_diff=0.1, max_rel_diff=0.1,
                          top1_agreement=1.0, passed=True),
              CheckResult(name="held-out accuracy", batch_size=500, max_abs_diff=0.0,
                          max_rel_diff=0.0, top1_agreement=0.99, passed=True, accuracy=0.8765,
                          reference_accuracy=0.88))
    record = FormatRecord(files=("model.int8.onnx",), passed=True, atol=0.1, rtol=0.1,
                          checks=checks)
    served.manifest = clf.manifest.model_copy(update={"formats": {"int8": record}})
    assert served.card()["accuracy"] == 0.8765 and served.card()["graph"] == "int8"


def test_one_image_is_one_row_even_with_batches_of_one(clf: OnnxClassifier) -> None:
    served = ServedModel("Net", clf, clf.sha256, ServeSettings(max_batch_size=1,
                                                               max_queue_rows=1))
    answer = run(served, lambda m: m.classify(png(32, 32, 4)))
    assert len(answer["predictions"]) == 2


def test_a_closed_batcher_is_a_503_to_retry_elsewhere(model: ServedModel) -> None:
    async def after_close(m: ServedModel) -> Any:
        await m.batcher.close()
        return await m.classify(png(8, 8))

    with pytest.raises(ProtocolError) as caught:
        run(model, after_close)
    assert (caught.value.status, caught.value.message, caught.value.headers) == (
        503, "the server is shutting down; retry on another replica", {"Retry-After": "1"})


def test_a_request_that_waited_too_long_is_a_503_naming_the_wait(
        clf: OnnxClassifier, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    settings = ServeSettings(max_batch_size=1, max_queue_rows=8, max_queue_delay_s=0.0,
                             max_queue_wait_s=0.02)
    served = ServedModel("Net", clf, clf.sha256, settings)
    slow = clf.run

    def run_slowly(batch: np.ndarray) -> np.ndarray:
        time.sleep(0.2)  # one batch at a time, each past the others' wait limit
        return slow(batch)

    monkeypatch.setattr(served.classifier, "run", run_slowly)

    async def three(m: ServedModel) -> list[Any]:
        return await asyncio.gather(*(m.classify(png(8, 8, i)) for i in range(3)),
                                    return_exceptions=True)

    answers = run(served, three)
    refusals = [a for a in answers if isinstance(a, ProtocolError)]
    assert refusals and len(refusals) < 3
    assert {(r.status, r.message, tuple(r.headers.items())) for r in refusals} == {
        (503, "model 'Net' is over capacity (the request waited over 20 ms in its queue); "
              "retry after a second", (("Retry-After", "1"),))}
