"""The int8 export format: calibrated on training images, measured on the held-out split,
refused where it loses accuracy, and run by the classifier like the float32 graph."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from export_helpers import make_run
from PIL import Image

import zoo
from zoo.bundles.integrity import read_manifest
from zoo.cli import main
from zoo.deploy import OnnxClassifier
from zoo.errors import BundleError, CpuFeatureWarning, ExportError
from zoo.exporter.int8 import INT8_FILE
from zoo.exporter.source import training_info
from zoo.exporter.trainingdata import TrainingData
from zoo.exporter.verify import verify_bundle
from zoo.spec.dataset import DatasetRequest
from zoo.spec.run import BEST_CHECKPOINT, SUMMARY_FILE, RunSummary
from zoo.trainer.checkpoint import load_checkpoint, save_checkpoint

#: A small ReLU model that learns the two-shape synthetic task to about 0.9 in a second.
RECIPE = dict(dataset="synthetic", dataset_options={"size": 800, "num_classes": 2},
              model={"num_classes": 2, "n_chans1": 8}, epochs=8, lr=0.01, optimizer="adam",
              progress="none", seed=0)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("int8") / "NetDepth-run"
    zoo.train("NetDepth", out=out, **RECIPE)
    return out


def _held_out() -> tuple[np.ndarray, np.ndarray]:
    """The run's held-out split, loaded here as the trainer loads it."""
    data = zoo.default_registry().load_dataset(
        "synthetic", DatasetRequest(val_split=0.1, seed=0, image_size=(32, 32)),
        size=800, num_classes=2)
    return data.val.images, data.val.labels


def test_int8_bundle_records_both_accuracies_on_the_held_out_split(
        run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # quantizing leaves nothing in the working folder
    result = zoo.export(run_dir, out=tmp_path / "b", formats="int8")
    assert list((tmp_path / "cwd").iterdir()) == []
    record = result.manifest.formats["int8"]
    assert record.files == (INT8_FILE,) and record.passed
    assert record.ort_latency_ms_batch1 is not None and record.ort_latency_ms_batch1 > 0
    [check] = [c for c in record.checks if c.accuracy is not None]
    # not a logit comparison; the two graphs agree on nearly every image
    assert (check.max_abs_diff, check.max_rel_diff) == (0.0, 0.0)
    assert check.top1_agreement >= 0.9
    # uint8 activations (the default), int8 weights with one scale per output channel
    graph = onnx.load(str(tmp_path / "b" / INT8_FILE))
    types = {t.name: t for t in graph.graph.initializer}
    zero_points = [types[n.input[2]] for n in graph.graph.node
                   if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in types]
    assert zero_points and all(z.data_type == onnx.TensorProto.UINT8 for z in zero_points)
    weight_scales = [types[n.input[1]] for n in graph.graph.node
                     if n.op_type == "DequantizeLinear" and n.input[0] in types
                     and types[n.input[0]].data_type == onnx.TensorProto.INT8]
    assert any(len(s.dims) == 1 and s.dims[0] > 1 for s in weight_scales)
    training = result.manifest.training
    assert training is not None and training.best is not None
    # the float32 graph on the reloaded split scores what the trainer measured on its own
    assert check.batch_size == training.val_size == 80
    assert check.reference_accuracy == pytest.approx(training.best.val_acc, abs=1 / 80)
    assert training.best.val_acc >= 0.8
    assert abs(check.reference_accuracy - check.accuracy) <= 0.005 + 1e-9
    # the int8 graph, run by the classifier on the held-out images, scores what was recorded
    images, labels = _held_out()
    clf = OnnxClassifier(tmp_path / "b", graph="int8")
    assert clf.graph_file == INT8_FILE and "model.int8.onnx" in repr(clf)
    assert float((clf.logits(images).argmax(1) == labels).mean()) == check.accuracy
    fp32 = OnnxClassifier(tmp_path / "b")
    assert float((fp32.logits(images).argmax(1) == labels).mean()) == check.reference_accuracy
    Image.fromarray(images[0].transpose(1, 2, 0)).save(tmp_path / "x.png")
    [expected] = clf.predict([tmp_path / "x.png"], top_k=1)
    assert main(["predict", str(tmp_path / "b"), "--graph", "int8", "--json",
                 str(tmp_path / "x.png")]) == 0
    [printed] = json.loads(capsys.readouterr().out)["predictions"]
    assert printed["top"][0]["label"] == expected.label
    assert printed["top"][0]["probability"] == pytest.approx(expected.probability, abs=1e-6)
    card = (tmp_path / "b" / "README.md").read_text()
    assert f"top-1 accuracy {check.accuracy!r} on the held-out split" in card
    assert f"(80 images; the float32 graph: {check.reference_accuracy!r})" in card
    # re-checked without data: the graph loads and agrees in shape; no accuracy is claimed
    report = verify_bundle(tmp_path / "b")
    assert report.passed and report.formats["int8"].passed
    assert [c.accuracy for c in report.formats["int8"].checks] == [None, None]
    # with --accuracy the data is loaded again and the same split gives the same numbers
    again = verify_bundle(tmp_path / "b", accuracy=True).formats["int8"]
    [rechecked] = [c for c in again.checks if c.accuracy is not None]
    assert (rechecked.accuracy, rechecked.reference_accuracy, rechecked.batch_size) == (
        check.accuracy, check.reference_accuracy, 80)
    assert again.options == record.options == {"calibration_images": 512,
                                               "activations": "uint8", "max_drop_points": 0.5,
                                               "reduce_range": True}
    assert main(["verify", str(tmp_path / "b"), "--accuracy"]) == 0
    assert f"top-1 {check.accuracy:.3f} (float32 {check.reference_accuracy:.3f})" in (
        capsys.readouterr().out)
    with pytest.raises(BundleError, match=r"holds no such format: graph 'pt2'; its graphs: "
                                          r"onnx, int8"):
        OnnxClassifier(tmp_path / "b", graph="pt2")


def _int8_weights(path: Path) -> list[np.ndarray]:
    """The int8 weight tensors a graph dequantizes."""
    graph = onnx.load(str(path)).graph
    constants = {t.name: t for t in graph.initializer}
    return [onnx.numpy_helper.to_array(constants[n.input[0]]) for n in graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in constants
            and constants[n.input[0]].data_type == onnx.TensorProto.INT8]


def test_weights_keep_7_bits_unless_8_are_asked_for(run_dir: Path, tmp_path: Path) -> None:
    """7-bit weights by default: AVX2 without VNNI sums two uint8 x int8 products in 16 bits,
    which 8-bit weights overflow (this NetDepth lost 3.7 points on such a CPU with them)."""
    portable = zoo.export(run_dir, out=tmp_path / "b7", formats="int8")
    full = zoo.export(run_dir, out=tmp_path / "b8", formats="int8",
                      options={"int8": {"reduce_range": False, "max_drop_points": 100}})
    assert full.manifest.formats["int8"].options["reduce_range"] is False
    seven, eight = _int8_weights(tmp_path / "b7" / INT8_FILE), _int8_weights(
        tmp_path / "b8" / INT8_FILE)
    assert len(seven) == len(eight) == 5  # three convolutions, two linear layers
    # per output channel, symmetric: each channel's largest weight takes the top of the range
    # (2 x 255 x 64 fits in int16's 32767; 2 x 255 x 127 does not)
    assert max(int(np.abs(w).max()) for w in seven) == 64
    assert max(int(np.abs(w).max()) for w in eight) == 127
    [check] = [c for c in portable.manifest.formats["int8"].checks if c.accuracy is not None]
    assert check.accuracy is not None and check.reference_accuracy is not None
    assert check.reference_accuracy - check.accuracy <= 0.005 + 1e-9
    # the 8-bit graph names the CPUs it is exact on; the 7-bit one runs anywhere
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "b8" / INT8_FILE)).metadata_props}
    assert props["zoo.requires_cpu"] == "amx_int8,asimddp,avx512_vnni,avx_vnni"
    assert "zoo.requires_cpu" not in {
        p.key for p in onnx.load(str(tmp_path / "b7" / INT8_FILE)).metadata_props}


@pytest.mark.parametrize(("features", "bits", "warns"), [
    ({"avx2", "fma"}, 8, True),           # AVX2 only: 16-bit sums overflow with 8-bit weights
    ({"avx2", "avx512_vnni"}, 8, False),
    ({"asimd", "asimddp"}, 8, False),     # Arm's dot product
    (set(), 8, False),                    # features unknown (not Linux): nothing to say
    ({"avx2", "fma"}, 7, False),
])
def test_an_8_bit_graph_warns_on_a_cpu_without_int8_dot_products(
        run_dir: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], features: set[str], bits: int, warns: bool) -> None:
    bundle = tmp_path_factory.getbasetemp() / f"int8-{bits}-bit"
    if not bundle.exists():
        zoo.export(run_dir, out=bundle, formats="int8",
                   options={"int8": {"reduce_range": bits == 7, "max_drop_points": 100}})
    monkeypatch.setattr("zoo.deploy.runtime.cpu_features", lambda: frozenset(features))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        classifier = OnnxClassifier(bundle, graph="int8")
        OnnxClassifier(bundle)  # the float32 graph names no features
    messages = [str(w.message) for w in caught if issubclass(w.category, CpuFeatureWarning)]
    assert messages == ([f"{bundle / INT8_FILE} is built for CPUs with amx_int8 or asimddp or "
                         "avx512_vnni or avx_vnni, and this one has none of them: its outputs, "
                         "and the accuracy its export measured, may not hold here (re-export "
                         "it on this CPU, or use another graph)"] if warns else [])
    if warns:  # it is said where the user's code loaded the graph
        assert [w.filename for w in caught
                if issubclass(w.category, CpuFeatureWarning)] == [__file__]
    # a warning, not a refusal: the graph runs
    batch = np.zeros((2, classifier.channels, *classifier.size), np.uint8)
    assert classifier.probabilities(batch).shape == (2, len(classifier.classes))
    # the CLI says it in one line, as its errors, and answers
    image = tmp_path_factory.mktemp("image") / "x.png"
    Image.fromarray(np.zeros((*classifier.size, 3), np.uint8)).save(image)
    capsys.readouterr()
    assert main(["predict", str(bundle), "--graph", "int8", "--json", str(image)]) == 0
    out, err = capsys.readouterr()
    assert len(json.loads(out)["predictions"]) == 1
    assert [line for line in err.splitlines() if "built for CPUs" in line] == (
        [f"zoo: warning: {messages[0]}"] if warns else [])


def test_calibration_uses_training_images_only(run_dir: Path) -> None:
    summary = RunSummary.model_validate_json((run_dir / SUMMARY_FILE).read_text())
    data = TrainingData(zoo.default_registry(), summary.model, summary.normalization,
                        training_info(summary, BEST_CHECKPOINT), summary.train_config,
                        data_dir=None, what="the run", local_paths=True)
    everything = data.calibration(10**6)
    held = data.held_out()
    assert len(everything) == 720 and len(held.labels) == 80
    rows = {x.tobytes() for x in everything}
    assert not any(x.tobytes() in rows for x in held.images)
    assert np.array_equal(data.calibration(64), data.calibration(64))  # a fixed choice


def test_int8_is_refused_where_it_loses_accuracy(run_dir: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # one channel of the first convolution scaled up by 1000 and the next layer's input from
    # it scaled down: the same float function (ReLU and max pooling commute with a positive
    # scale), but one activation range 1000x wider crushes every other channel to a few
    # int8 steps
    edited = tmp_path / "edited-run"
    shutil.copytree(run_dir, edited)
    path = edited / "checkpoints" / "best.pt"
    state = load_checkpoint(path)
    weights = state["model"]
    weights["conv1.weight"][0] *= 1e3
    weights["conv1.bias"][0] *= 1e3
    weights["conv2.weight"][:, 0] /= 1e3
    state.pop("digest")
    save_checkpoint(path, state)
    fp32 = zoo.export(edited, out=tmp_path / "fp32")  # the float graph still verifies
    assert fp32.manifest.verification.passed
    best = read_manifest(tmp_path / "fp32").training.best  # type: ignore[union-attr]
    assert best is not None
    code = main(["export", str(edited), "--quantize", "int8", "--out", str(tmp_path / "q")])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    assert (f"the int8 export of NetDepth fails its accuracy check 'held-out split (10% of the "
            f"training images, seed 0), at most 0.5 points lost': top-1 {best.val_acc:.3f} -> "
            in err)
    lost = float(err.split("(")[-1].split(" points lost")[0])
    int8_acc = float(err.split(" -> ")[1].split(" (")[0])  # printed to 3 decimals
    assert lost >= 20.0 and abs(lost - 100 * (best.val_acc - int8_acc)) <= 0.1
    assert not (tmp_path / "q").exists() and not list(tmp_path.glob(".q*"))
    # a larger limit, given as the format's option, lets it through
    assert main(["export", str(edited), "--quantize", "int8", "--out", str(tmp_path / "q"),
                 "--format-option", "int8.max_drop_points=100"]) == 0
    assert (tmp_path / "q" / INT8_FILE).is_file()


def test_int8_needs_the_data_the_weights_were_trained_on(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # no training record at all
    assert main(["export", "Net", "--quantize", "int8", "--out", str(tmp_path / "a")]) != 0
    err = capsys.readouterr().err
    assert "records no training data" in err and "Traceback" not in err
    # a run whose recorded content key is not what its dataset gives now
    make_run(tmp_path / "run")
    with pytest.raises(ExportError, match=r"is not the data the source .* was trained on "
                                          r"\(content key [0-9a-f]+, recorded abc123\)"):
        zoo.export(tmp_path / "run", formats="int8", out=tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _folder(root: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for k, name in enumerate(("plane", "bird")):
        (root / name).mkdir(parents=True)
        for i in range(20):
            pixels = rng.integers(0, 120, (32, 32, 3), dtype=np.uint8) + 120 * k
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def test_a_bundle_is_given_its_data_folder(tmp_path: Path) -> None:
    data_dir = _folder(tmp_path / "images", seed=0)
    run = zoo.train("Net", dataset="imagefolder", data_dir=data_dir, epochs=2,
                    out=tmp_path / "Net-run", progress="none", seed=0, cache_dir=tmp_path / "c",
                    val_split=0.2)
    bundle = zoo.export(run.run_dir, out=tmp_path / "fp32").path
    with pytest.raises(ExportError, match=r"trained on the folder 'images', which a bundle does "
                                          r"not locate; give its path with --data-dir"):
        zoo.export(bundle, formats="int8", out=tmp_path / "a")
    other = _folder(tmp_path / "elsewhere", seed=1)
    with pytest.raises(ExportError, match=r"the data at .*elsewhere is not the data"):
        zoo.export(bundle, formats="int8", out=tmp_path / "a", data_dir=other)
    result = zoo.export(bundle, formats="int8", out=tmp_path / "a", data_dir=data_dir,
                        options={"int8": {"max_drop_points": 100, "calibration_images": 7}})
    [check] = [c for c in result.manifest.formats["int8"].checks if c.accuracy is not None]
    assert check.batch_size == 8  # 20% of 40 images
    # a re-check reads the options the format was written with, and needs the folder too
    assert result.manifest.formats["int8"].options["max_drop_points"] == 100
    with pytest.raises(ExportError, match="give its path with --data-dir"):
        verify_bundle(tmp_path / "a", accuracy=True)
    with pytest.raises(zoo.ZooError, match=r"read only to measure accuracy again; add "
                                           r"--accuracy"):
        verify_bundle(tmp_path / "a", data_dir=data_dir)
    again = verify_bundle(tmp_path / "a", accuracy=True, data_dir=data_dir).formats["int8"]
    assert [c.accuracy for c in again.checks if c.accuracy is not None] == [check.accuracy]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_zoo_serve_answers_with_the_int8_graph(run_dir: Path, tmp_path: Path) -> None:
    import tritonclient.http as httpclient
    from serve_support import call, thread_server

    from zoo.serve.models import ServeSettings

    bundle = zoo.export(run_dir, out=tmp_path / "b", formats="int8").path
    [check] = [c for c in read_manifest(bundle).formats["int8"].checks if c.accuracy is not None]
    images, _ = _held_out()
    batch = images[:16]
    int8, fp32 = OnnxClassifier(bundle, graph="int8"), OnnxClassifier(bundle)
    assert not np.allclose(int8.logits(batch), fp32.logits(batch), atol=1e-6)
    settings = ServeSettings(max_loop_lag_s=0, max_queue_wait_s=0, graph="int8")
    with thread_server([f"q={bundle}"], settings) as running:
        client = httpclient.InferenceServerClient(running.url.split("//")[1].rstrip("/"))
        try:
            version = running.models["q"].sha256[:12] + "-int8"
            assert client.get_model_metadata("q")["versions"] == [version]
            x = int8.preprocess(list(batch.transpose(0, 2, 3, 1)))
            inp = httpclient.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=True)
            result = client.infer("q", [inp], model_version=version,
                                  outputs=[httpclient.InferRequestedOutput("logits")])
            np.testing.assert_allclose(result.as_numpy("logits"), int8.logits(batch), atol=1e-6)
        finally:
            client.close()
        sha = running.models["q"].sha256
        assert call(f"{running.url}v2/models/q/versions/{sha[:12]}").status == 404
        assert call(f"{running.url}v2/models/q/versions/{sha}-int8").status == 200
        assert running.models["q"].card()["accuracy"] == check.accuracy
        assert running.models["q"].card()["graph"] == "int8"


def test_calibration_batches_cover_every_image_once() -> None:
    from zoo.exporter.int8 import _Batches

    images = np.arange(70 * 3, dtype=np.float32).reshape(70, 3, 1, 1)
    reader = _Batches(images)
    batches = list(iter(reader.get_next, None))
    assert [len(b["input"]) for b in batches] == [32, 32, 6]
    np.testing.assert_array_equal(np.concatenate([b["input"] for b in batches]), images)


class _RecordingRegistry:
    """The default registry's datasets, each request recorded (paths dropped: the run's data
    is synthetic, so the folders named here need not exist)."""

    def __init__(self) -> None:
        self.requests: list[DatasetRequest] = []

    def load_dataset(self, name: str, request: DatasetRequest, **options: object) -> object:
        self.requests.append(request)
        plain = request.model_copy(update={"data_dir": None, "val_dir": None})
        return zoo.default_registry().load_dataset(name, plain, **options)


def _training_data(run_dir: Path, recipe_changes: dict[str, object], *, local: bool,
                   data_dir: Path | None = None) -> tuple[TrainingData, _RecordingRegistry]:
    summary = RunSummary.model_validate_json((run_dir / SUMMARY_FILE).read_text())
    registry = _RecordingRegistry()
    recipe = {**summary.train_config, **recipe_changes}
    data = TrainingData(registry, summary.model, summary.normalization,  # type: ignore[arg-type]
                        training_info(summary, BEST_CHECKPOINT), recipe, data_dir=data_dir,
                        what="the source", local_paths=local)
    return data, registry


def test_a_runs_own_folders_are_used_and_a_bundles_are_asked_for(run_dir: Path) -> None:
    data, registry = _training_data(run_dir, {"data_dir": "trained/here"}, local=True)
    data.calibration(8)
    data.held_out()
    assert [r.data_dir for r in registry.requests] == [Path("trained/here")]  # loaded once
    data, registry = _training_data(run_dir, {"data_dir": "trained/here"}, local=False,
                                    data_dir=Path("given"))
    data.held_out()
    assert [r.data_dir for r in registry.requests] == [Path("given")]
    data, _ = _training_data(run_dir, {"data_dir": "trained/here"}, local=False)
    with pytest.raises(ExportError, match="was trained on the folder 'trained/here', which a "
                                          "bundle does not locate; give its path with "
                                          "--data-dir"):
        data.held_out()
    data, registry = _training_data(run_dir, {"val_dir": "val/here"}, local=True)
    data.held_out()
    assert [r.val_dir for r in registry.requests] == [Path("val/here")]
    data, _ = _training_data(run_dir, {"val_dir": "val/here"}, local=False)
    with pytest.raises(ExportError, match="was validated on a separate folder 'val/here'; "
                                          "export its run directory instead"):
        data.held_out()


def test_calibration_images_are_distinct(run_dir: Path) -> None:
    data, _ = _training_data(run_dir, {}, local=True)
    chosen = data.calibration(600)
    assert len({x.tobytes() for x in chosen}) == len(chosen) == 600


def test_verify_never_reads_folders_a_bundle_names(run_dir: Path, tmp_path: Path) -> None:
    """A bundle may come from elsewhere: the data folder its recipe names is not opened."""
    import json

    zoo.export(run_dir, out=tmp_path / "b", formats="int8")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    manifest["training"]["recipe"]["data_dir"] = str(tmp_path / "trained-here")
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match="which a bundle does not locate; give its path with "
                                          "--data-dir"):
        verify_bundle(tmp_path / "b", accuracy=True)
