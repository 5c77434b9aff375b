"""Bad input: every mistake a user can make is one sentence, and nothing hangs or is coerced.

Config files that are devices, pipes, folders or huge; booleans given for numbers;
API calls with values of the wrong type; output paths that are files; unreadable
and larger labelled folders; arrays and images over the pixel limit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import PositiveInt

import zoo
from zoo.cli import main
from zoo.errors import BundleError, DataError, HyperparameterError, ZooError
from zoo.spec.training import MAX_CONFIG_BYTES, TrainConfig, load_config_file, validate_config


def _images(folder: Path, n: int, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
            folder / f"{i}.png")


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the CLI, which must fail with one ``zoo: error:`` line and no traceback."""
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("zoo: error: ")]
    assert len(lines) == 1, err
    return lines[0].removeprefix("zoo: error: ")


# -- config files --------------------------------------------------------------------------


def test_a_config_that_is_no_regular_file_or_too_large_is_refused_unread(tmp_path: Path) -> None:
    with pytest.raises(ZooError, match=r"^config file '/dev/zero' is not a regular file; "
                                       r"accepted: a JSON or TOML file$"):
        load_config_file(Path("/dev/zero"))
    fifo = tmp_path / "pipe.toml"
    os.mkfifo(fifo)  # opening it must not wait for a writer
    with pytest.raises(ZooError, match=r"pipe\.toml' is not a regular file"):
        load_config_file(fifo)
    with pytest.raises(ZooError, match=f"^config file '{tmp_path}' is a directory; accepted"):
        load_config_file(tmp_path)
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * (MAX_CONFIG_BYTES + 1))
    with pytest.raises(ZooError, match=r"big.toml' is larger than 1 MiB; accepted: a JSON or "
                                       r"TOML file of training options"):
        load_config_file(big)
    big.write_bytes(b"#" * MAX_CONFIG_BYTES)  # the limit itself is fine
    assert load_config_file(big) == {}


# -- booleans are not numbers ----------------------------------------------------------------


def test_booleans_are_refused_for_numbers_everywhere(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert _error(capsys, ["train", "Net", "--set", "n_hidden=true", "--print-config"]) == (
        "invalid value True for Net hyperparameter 'n_hidden': input should be an integer, "
        "not true")
    config = tmp_path / "c.toml"
    config.write_text("epochs = true\n")
    assert _error(capsys, ["train", "Net", "--config", str(config), "--print-config"]) == (
        "training config: invalid value True for 'epochs': Input should be an integer, not true")
    assert _error(capsys, ["train", "Net", "--option", "size=false"]).startswith(
        "invalid option 'size' for dataset 'synthetic': Input should be an integer, not false")
    assert _error(capsys, ["export", "Net", "--format-option", "onnx.opset=true"]).startswith(
        "invalid option onnx.opset=True: Input should be an integer, not true")
    with pytest.raises(ZooError, match="'lr': Input should be a number, not false"):
        validate_config({"lr": False})
    with pytest.raises(ZooError, match="'num_threads': Input should be an integer, not true"):
        validate_config({"num_threads": True})
    with pytest.raises(HyperparameterError, match="'in_height': input should be an integer"):
        zoo.resolve("Net", in_height=True)
    # what booleans are for still takes them; numbers keep their usual conversions
    config_ok = validate_config({"flip": False, "lr": 1, "grad_clip": 0, "epochs": 2.0})
    assert (config_ok.flip, config_ok.lr, config_ok.epochs) == (False, 1.0, 2)
    request = zoo.DatasetRequest.model_validate({"image_size": [12, 20]})  # JSON lists
    assert request.image_size == (12, 20)
    with pytest.raises(ValueError, match="image_size\n  Input should be an integer, not true"):
        zoo.DatasetRequest.model_validate({"image_size": [True, 20]})
    assert TrainConfig(model={"n_hidden": 8}).model == {"n_hidden": 8}

    class Plugins(zoo.HParams):  # what a plugin may declare
        width: PositiveInt | None = None
        sizes: tuple[float, ...] = (1.0,)
        either: int | bool = 0

    for key, value in (("width", True), ("sizes", [0.5, False])):
        with pytest.raises(ValueError, match=f"{key}\n  Input should be an? "):
            Plugins.model_validate({key: value})
    assert Plugins.model_validate({"either": True}).either is True  # it takes booleans


# -- the API ---------------------------------------------------------------------------------


def test_api_calls_with_values_of_the_wrong_type_are_one_sentence() -> None:
    with pytest.raises(ZooError, match=r"^model name patterns are a string or a list of "
                                       r"strings, e.g. 'NetRes\*', got 123$"):
        zoo.list_models(123)  # type: ignore[arg-type]
    with pytest.raises(ZooError, match=r"^tags are a string or a list of strings, e.g. "
                                       r"'dropout', got \['dropout', 5\]$"):
        zoo.list_models(tags=["dropout", 5])  # type: ignore[list-item]
    with pytest.raises(ZooError, match=r"^architecture names are strings, got None; see "
                                       r"zoo.list_models\(\)$"):
        zoo.get_spec(None)  # type: ignore[arg-type]
    assert zoo.list_models(tags="dropout") == ["NetDropout"]  # a string is one tag
    assert zoo.list_models(("NetRes*",), tags=()) == ["NetRes", "NetResDeep"]


def test_the_predictor_refuses_what_is_no_image_and_images_over_the_pixel_limit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BundleError, match=r"^expected SHA-256 123 is not a string of 64 "
                                          r"hexadecimal digits"):
        zoo.OnnxClassifier("Net", expect_sha256=123)  # type: ignore[arg-type]
    clf = zoo.OnnxClassifier("Net")
    with pytest.raises(ZooError, match=r"^cannot classify 42 \(a int\); accepted: a path, a "
                                       r"PIL image, a uint8 numpy array, or a sequence of them$"):
        clf.predict(42)  # type: ignore[arg-type]
    with pytest.raises(ZooError, match=r"cannot classify 2.5 \(a float\)"):
        clf.logits(2.5)  # type: ignore[arg-type]
    monkeypatch.setenv("ZOO_MAX_IMAGE_PIXELS", str(64 * 64))
    assert clf.predict(np.zeros((64, 64, 3), np.uint8))[0].label in clf.classes
    with pytest.raises(ZooError, match=r"^an image array of 65x64 is 4160 pixels, over the "
                                       r"limit of 4096 per image \(set \$ZOO_MAX_IMAGE_PIXELS "
                                       r"to allow more\)$"):
        clf.predict(np.zeros((64, 65, 3), np.uint8))  # (H, W, C): 65 wide
    with pytest.raises(ZooError, match="an image array of 64x65 is 4160 pixels"):
        clf.predict([np.zeros((3, 65, 64), np.uint8)])  # channels first
    with pytest.raises(ZooError, match=r"^an image of 100x100 is 10000 pixels, over the limit"):
        clf.predict(Image.new("RGB", (100, 100)))


# -- outputs and folders ---------------------------------------------------------------------


def test_outputs_that_are_files_are_refused_before_any_work(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    _images(data / "bird", 2, 0)
    image = data / "bird" / "0.png"
    file = tmp_path / "FILE"
    file.write_text("mine")
    for argv, what in ((["evaluate", "Net", str(data)], "evaluation folder --out"),
                       (["inspect", "Net", str(image)], "inspection folder --out"),
                       (["filters", "demo", str(image)], "folder --out")):
        for out in (file, file / "sub"):
            assert _error(capsys, [*argv, "--out", str(out)]) == (
                f"cannot write the {what} {str(out)!r}: {str(file)!r} is a file; accepted: a "
                "folder, or a path where one can be created")
    assert _error(capsys, ["compare", "Net-cifar2", "--out", str(tmp_path)]) == (
        f"cannot write the chart --out {str(tmp_path)!r}: it is a folder; accepted: a file "
        f"path, e.g. {tmp_path / 'compare.png'}")
    assert file.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE", "data"]


def test_an_unreadable_folder_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    _images(data / "bird", 2, 0)
    real_listdir, real_scandir = os.listdir, os.scandir

    def listdir(path: object = ".") -> list[str]:
        if str(path) == str(data):
            raise PermissionError(13, "Permission denied", str(path))
        return real_listdir(path)  # type: ignore[arg-type]

    def scandir(path: object = ".") -> object:
        if str(path) == str(data / "bird"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "listdir", listdir)
    assert _error(capsys, ["evaluate", "Net", str(data)]) == (
        f"cannot read {str(data)!r}: Permission denied; zoo evaluate needs a readable folder "
        "of class folders")
    monkeypatch.setattr(os, "listdir", real_listdir)
    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(DataError, match=f"^cannot read the folder {str(data / 'bird')!r}: "
                                        "Permission denied$"):
        zoo.evaluate("Net", data)


def test_a_folder_of_more_classes_is_scored_on_the_models_classes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cifar = tmp_path / "test"  # the CIFAR-10 layout: ten class folders
    for i, name in enumerate(("airplane", "bird", "cat", "deer")):
        _images(cifar / name, 2 + i, i)
    result = zoo.evaluate("Net", cifar)
    assert result.left_out == ("cat", "deer")
    assert result.images == 5 and [c.name for c in result.per_class] == ["airplane", "bird"]
    assert main(["evaluate", "Net", str(cifar)]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[2] == "left out 2 folder(s) that are not classes of Net: cat, deer"
    assert main(["evaluate", "Net", str(cifar), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["left_out"] == ["cat", "deer"]
    (cifar / "airplane").rename(tmp_path / "gone")  # a larger folder must have every class
    assert _error(capsys, ["evaluate", "Net", str(cifar)]) == (
        f"class folder(s) 'cat', 'deer' in {str(cifar)!r} are not classes of Net; its classes: "
        "airplane, bird; a folder of more classes is scored on the model's classes only when "
        "it has a folder for each (missing: airplane)")
    (cifar / "bird").rename(tmp_path / "gone2")  # nothing in common
    assert _error(capsys, ["evaluate", "Net", str(cifar)]) == (
        f"class folder(s) 'cat', 'deer' in {str(cifar)!r} are not classes of Net; its classes: "
        "airplane, bird")
