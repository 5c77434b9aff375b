"""zoo.deploy.runtime: choosing a bundle's graph, loading it unchecked by the caller, the
identity cross-check key by key, and the latency it measures."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from test_security_bundle import _set_metadata

from zoo.bundles.integrity import read_manifest
from zoo.deploy import OnnxClassifier
from zoo.deploy.runtime import graph_file, load_graph, median_latency_ms
from zoo.errors import BundleError
from zoo.exporter.write import export


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export("Net", out=tmp_path_factory.mktemp("runtime") / "b", formats="pt2").path


@pytest.fixture
def bundle(made: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(made, tmp_path / "b"))


def test_only_formats_of_one_onnx_file_are_graphs(made: Path) -> None:
    manifest = read_manifest(made)
    assert graph_file(manifest, "onnx", made) == "model.onnx"
    with pytest.raises(BundleError) as pt2:
        graph_file(manifest, "pt2", made)
    assert str(pt2.value) == (f"bundle {str(made)!r} holds it, but not as one ONNX graph: graph "
                              "'pt2'; its graphs: onnx")
    with pytest.raises(BundleError) as missing:
        OnnxClassifier(made, graph="int8")
    assert str(missing.value) == (f"bundle {str(made)!r} holds no such format: graph 'int8'; "
                                  "its graphs: onnx")


def test_a_graph_is_loaded_from_its_checked_bytes_when_none_are_given(made: Path) -> None:
    session = load_graph(made, read_manifest(made))
    x = np.zeros((2, 3, 32, 32), np.float32)
    assert session.run(None, {session.get_inputs()[0].name: x})[0].shape == (2, 2)  # 2 classes


def test_every_stamped_key_is_checked_after_an_equal_one(bundle: Path) -> None:
    # hparams equal as JSON though spelt apart, then a class count that is not the manifest's
    _set_metadata(bundle, {"zoo.hparams": '{ "n_hidden": 32 }', "zoo.num_classes": "9"})
    with pytest.raises(BundleError, match=r"is a graph of num classes '9', but the manifest"):
        OnnxClassifier(bundle)


class _SlowSession:
    """An onnxruntime session's interface, each run taking 20 ms."""

    def __init__(self) -> None:
        self.runs = 0

    def get_inputs(self) -> list[object]:
        return [type("Input", (), {"name": "input"})()]

    def run(self, outputs: object, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.runs += 1
        time.sleep(0.02)
        return [feed["input"]]


def test_latency_is_the_median_run_in_milliseconds_after_warming_up() -> None:
    session = _SlowSession()
    latency = median_latency_ms(session, np.zeros(1, np.float32), 3, warmup=2)  # type: ignore[arg-type]
    assert session.runs == 5
    assert 20.0 <= latency < 200.0
