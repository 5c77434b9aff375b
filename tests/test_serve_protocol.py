"""``zoo serve`` speaks the Open Inference Protocol: a client not written here (tritonclient)
gets what OnnxClassifier computes, with JSON and with binary tensors, and images work too."""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import numpy as np
import pytest
import tritonclient.http as httpclient
from PIL import Image
from serve_support import (
    Running,
    binary_request,
    bytes_tensor,
    call,
    encoded,
    metric,
    pixels,
    post_json,
    server_metrics,
    thread_server,
)

from zoo.bundles.integrity import bundle_sha256
from zoo.deploy import OnnxClassifier

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def server() -> Iterator[Running]:
    with thread_server(["Net", "res=NetRes"]) as running:
        yield running


@pytest.fixture(scope="module")
def clf() -> OnnxClassifier:
    return OnnxClassifier("Net")


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return [pixels(seed) for seed in range(6)]


@pytest.fixture
def client(server: Running) -> Iterator[httpclient.InferenceServerClient]:
    c = httpclient.InferenceServerClient(urlsplit(server.url).netloc)
    yield c
    c.close()


def test_health_and_metadata(server: Running, client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "zoo" and "binary_tensor_data" in meta["extensions"]
    sha256 = bundle_sha256(server.models["Net"].classifier.path)
    version = sha256[:12]
    model = client.get_model_metadata("Net")
    assert model["versions"] == [version] and model["platform"] == "onnxruntime_onnx"
    assert model["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 32, 32]}]
    assert {o["name"]: o["shape"] for o in model["outputs"]} == {
        "logits": [-1, 2], "probabilities": [-1, 2], "top_labels": [-1, -1],
        "top_probabilities": [-1, -1]}
    assert client.is_model_ready("Net", version) and client.is_model_ready("res")
    assert client.get_model_metadata("Net", model_version=version)["name"] == "Net"
    assert call(f"{server.url}v2/models/Net/versions/{sha256}").status == 200
    index = client.get_model_repository_index()
    assert [(m["name"], m["state"]) for m in index] == [("Net", "READY"), ("res", "READY")]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_tensors_match_onnxclassifier(
        client: httpclient.InferenceServerClient, clf: OnnxClassifier,
        images: list[np.ndarray], binary: bool) -> None:
    batch = clf.preprocess(images)
    inp = httpclient.InferInput("input", list(batch.shape), "FP32")
    inp.set_data_from_numpy(batch, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary)
               for n in ("logits", "probabilities", "top_labels")]
    result = client.infer("Net", [inp], outputs=outputs, request_id="r1",
                          parameters={"top_k": 1})
    expected = clf.probabilities(images)
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-6)
    np.testing.assert_allclose(result.as_numpy("logits"), clf.logits(images), atol=1e-5)
    top1 = [p.label for p in clf.predict(images)]
    labels = [row[0] for row in result.as_numpy("top_labels")]  # str from JSON, bytes binary
    assert [x.decode() if isinstance(x, bytes) else x for x in labels] == top1
    assert result.get_response()["id"] == "r1"


@pytest.mark.parametrize("binary", [False, True], ids=["json-base64", "binary"])
def test_tritonclient_encoded_images_match_onnxclassifier(
        client: httpclient.InferenceServerClient, clf: OnnxClassifier,
        images: list[np.ndarray], binary: bool) -> None:
    files = [encoded(a, "PNG" if i % 2 else "JPEG") for i, a in enumerate(images)]
    data = files if binary else [base64.b64encode(f) for f in files]
    inp = httpclient.InferInput("input", [len(files)], "BYTES")
    inp.set_data_from_numpy(np.array(data, dtype=object), binary_data=binary)
    result = client.infer("Net", [inp])  # every output, in binary (tritonclient's default)
    decoded = [Image.open(io.BytesIO(f)) for f in files]
    np.testing.assert_allclose(result.as_numpy("probabilities"), clf.probabilities(decoded),
                               atol=1e-6)
    labels = result.as_numpy("top_labels")
    assert labels.shape == (len(files), 2)
    assert [row[0].decode() for row in labels] == [p.label for p in clf.predict(decoded)]
    probs = result.as_numpy("top_probabilities")
    assert (np.diff(probs, axis=1) <= 0).all()


def test_classification_extension(client: httpclient.InferenceServerClient,
                                  clf: OnnxClassifier, images: list[np.ndarray]) -> None:
    batch = clf.preprocess(images[:2])
    inp = httpclient.InferInput("input", list(batch.shape), "FP32")
    inp.set_data_from_numpy(batch)
    out = httpclient.InferRequestedOutput("probabilities", class_count=2)
    result = client.infer("Net", [inp], outputs=[out])
    rows = result.as_numpy("probabilities")
    assert rows.shape == (2, 2)
    for row, expected in zip(rows, clf.predict(images[:2], top_k=2), strict=True):
        value, index, label = row[0].decode().split(":")
        assert (int(index), label) == (expected.top[0].index, expected.top[0].label)
        assert abs(float(value) - expected.top[0].probability) < 1e-6


def test_image_uploads(server: Running, clf: OnnxClassifier, images: list[np.ndarray]) -> None:
    png = encoded(images[0])
    expected = clf.predict(images[:1], top_k=2)[0]
    raw = call(f"{server.url}v2/models/Net/infer", "POST", png, {"Content-Type": "image/png"})
    assert raw.status == 200, raw.body
    outputs = {o["name"]: o for o in raw.json()["outputs"]}
    assert outputs["top_labels"]["data"][0] == expected.label
    boundary = "zooboundary"
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n").encode() + png + \
        f"\r\n--{boundary}--\r\n".encode()
    multi = call(f"{server.url}v2/models/Net/infer", "POST", form,
                 {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert multi.status == 200, multi.body
    assert multi.json()["outputs"] == raw.json()["outputs"]
    page = call(f"{server.url}zoo/models/Net/classify?top_k=2", "POST", png,
                {"Content-Type": "image/png"}).json()
    assert [p["label"] for p in page["predictions"]] == [s.label for s in expected.top]
    assert abs(page["predictions"][0]["probability"] - expected.probability) < 1e-6


def test_binary_request_and_response_by_hand(server: Running, clf: OnnxClassifier,
                                             images: list[np.ndarray]) -> None:
    batch = clf.preprocess(images[:3])
    body, headers = binary_request(
        {"inputs": [{"name": "input", "shape": [3, 3, 32, 32], "datatype": "FP32",
                     "parameters": {"binary_data_size": batch.nbytes}}],
         "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}},
                     {"name": "top_labels", "parameters": {"binary_data": True}}],
         "parameters": {"top_k": 1}}, batch.tobytes())
    reply = call(f"{server.url}v2/models/Net/infer", "POST", body, headers)
    assert reply.status == 200
    size = int(reply.headers["inference-header-content-length"])
    header = json.loads(reply.body[:size])
    first = header["outputs"][0]["parameters"]["binary_data_size"]
    probs = np.frombuffer(reply.body[size:size + first], dtype="<f4").reshape(3, 2)
    np.testing.assert_allclose(probs, clf.probabilities(images[:3]), atol=1e-6)
    labels = reply.body[size + first:]
    assert labels == bytes_tensor([p.label.encode() for p in clf.predict(images[:3])])
    # the same with BYTES images, JSON answer
    files = [encoded(a) for a in images[:3]]
    body, headers = binary_request(
        {"inputs": [{"name": "input", "shape": [3], "datatype": "BYTES",
                     "parameters": {"binary_data_size": len(bytes_tensor(files))}}],
         "outputs": [{"name": "probabilities"}]}, bytes_tensor(files))
    reply = call(f"{server.url}v2/models/res/infer", "POST", body, headers)
    res = OnnxClassifier("NetRes")
    np.testing.assert_allclose(np.array(reply.json()["outputs"][0]["data"]).reshape(3, 2),
                               res.probabilities(images[:3]), atol=1e-6)


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(
        server: Running, clf: OnnxClassifier) -> None:
    arrays = [pixels(100 + i) for i in range(48)]
    expected = clf.probabilities(arrays)
    results: dict[int, np.ndarray] = {}

    def one(i: int) -> None:
        x = clf.preprocess([arrays[i]])
        reply = post_json(f"{server.url}v2/models/Net/infer", {"inputs": [
            {"name": "input", "shape": list(x.shape), "datatype": "FP32",
             "data": x.ravel().tolist()}], "outputs": [{"name": "probabilities"}]})
        results[i] = np.array(reply.json()["outputs"][0]["data"], dtype=np.float32)

    before = server.app.metrics.batch_size.labels("Net")._sum.get()
    batches_before = _count(server, "zoo_serve_batch_size_count")
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(arrays))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    np.testing.assert_allclose(np.stack([results[i] for i in range(len(arrays))]), expected,
                               atol=1e-6)
    rows = server.app.metrics.batch_size.labels("Net")._sum.get() - before
    batches = _count(server, "zoo_serve_batch_size_count") - batches_before
    assert rows == len(arrays) and batches < len(arrays)  # some calls held several requests


def _count(server: Running, name: str) -> float:
    text = call(f"{server.url}metrics").body.decode()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(name) and 'model="Net"' in line)


def test_metrics_and_access_log(server: Running, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="zoo.serve.access"):
        call(f"{server.url}v2/models/nope")
        call(f"{server.url}v2/health/ready")
        for _ in range(200):  # the line is written once the answer is sent
            lines = [json.loads(r.getMessage()) for r in caplog.records
                     if r.name == "zoo.serve.access"]
            if len(lines) >= 2:
                break
            time.sleep(0.01)
    assert [(e["path"], e["status"]) for e in lines][-2:] == [("/v2/models/nope", 404),
                                                             ("/v2/health/ready", 200)]
    assert {"ts", "client", "method", "ms", "bytes"} <= set(lines[-1])
    text = call(f"{server.url}metrics").body.decode()
    for name in ("zoo_serve_requests_total", "zoo_serve_request_errors_total",
                 "zoo_serve_request_duration_seconds_bucket", "zoo_serve_batch_size_bucket",
                 "zoo_serve_queue_rows", "zoo_serve_in_flight_rows", "zoo_serve_loop_lag_seconds",
                 "zoo_serve_model_info"):
        assert name in text, name
    assert 'zoo_serve_requests_total{endpoint="infer",model="Net",outcome="ok"}' in text


def test_page_and_cards(server: Running) -> None:
    page = call(server.url)
    assert page.status == 200 and b'<select id="model"' in page.body
    assert "script-src" not in page.headers["content-security-policy"]  # default-src 'self'
    for name in ("app.js", "style.css"):
        assert call(f"{server.url}static/{name}").status == 200
    assert call(f"{server.url}static/../server.py").status == 404
    cards = call(f"{server.url}zoo/models").json()["models"]
    net = cards[0]
    assert (net["name"], net["architecture"], net["dataset"]) == ("Net", "Net", "imagefolder")
    assert 0.5 < net["accuracy"] <= 1 and "training images" in net["accuracy_split"]
    assert cards[1]["name"] == "res" and cards[1]["architecture"] == "NetRes"


def test_metrics_count_each_inference_by_model_and_outcome(server: Running,
                                                           clf: OnnxClassifier) -> None:
    before = server_metrics(server.url)
    x = clf.preprocess([pixels(1)])
    good = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.ravel().tolist()}]}
    start = time.perf_counter()
    for _ in range(3):
        assert post_json(f"{server.url}v2/models/Net/infer", good).status == 200
    assert call(f"{server.url}v2/models/Net/infer", "POST", b"{not json",
                {"Content-Type": "application/json"}).status == 400
    assert post_json(f"{server.url}v2/models/nope/infer", good).status == 404
    elapsed = time.perf_counter() - start
    after = server_metrics(server.url)

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    requests = "zoo_serve_requests_total"
    assert delta(requests, endpoint="infer", model="Net", outcome="ok") == 3
    assert delta(requests, endpoint="infer", model="Net", outcome="client_error") == 1
    assert delta(requests, endpoint="infer", model="", outcome="client_error") == 1
    assert delta("zoo_serve_request_errors_total", model="Net", status="400") == 1
    assert delta("zoo_serve_request_errors_total", model="", status="404") == 1
    # the latency of the four that reached the model: counted, and of this test's length
    latency = "zoo_serve_request_duration_seconds"
    assert delta(f"{latency}_count", endpoint="infer", model="Net") == 4
    assert 0 < delta(f"{latency}_sum", endpoint="infer", model="Net") <= elapsed
