"""The shared trainer: run directory, determinism, exact resume, errors, CLI (CPU, offline)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zoo_testnets

import zoo
from zoo import Registry
from zoo.cli import main
from zoo.errors import DataError, TrainingError
from zoo.spec.run import read_summary
from zoo.spec.training import TrainConfig
from zoo.trainer.checkpoint import save_checkpoint
from zoo.trainer.distributed import Dist
from zoo.trainer.loop import train
from zoo.trainer.pipeline import augment, rank_batches, shard_indices

# tiny and fast: 16x16 images, a few hundred samples
FAST: dict[str, Any] = {
    "dataset_options": {"size": 240, "num_classes": 2},
    "model": {"in_height": 16, "in_width": 16},
    "batch_size": 32,
    "progress": "none",
    "num_threads": 1,
}


@pytest.fixture(scope="module")
def registry() -> Registry:
    reg = Registry()
    reg.register(zoo_testnets, name="testnets")
    return reg


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))


def _metrics(result: zoo.trainer.loop.TrainResult) -> list[dict[str, float]]:
    return [m.model_dump(exclude={"images_per_s", "seconds"}) for m in result.metrics]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    weights: dict[str, torch.Tensor] = state["model"]
    return weights


def test_train_writes_a_complete_run(tmp_path: Path) -> None:
    result = zoo.train("Net", epochs=2, out=tmp_path / "run", **FAST)
    run = tmp_path / "run"
    assert result.run_dir == run
    names = {p.name for p in run.iterdir()}
    assert {"config.json", "run.json", "metrics.jsonl", "metrics.csv", "val_samples.npy",
            "checkpoints"} <= names
    assert not [n for n in names if n.startswith(".")]  # no temporary files left
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"last.pt", "best.pt"}
    summary = read_summary(run)
    assert summary == result.summary
    assert summary.epochs_completed == 2 and summary.model.num_classes == 2
    assert summary.model.input_shape.height == 16
    assert len(summary.normalization.mean) == 3 and all(s > 0 for s in summary.normalization.std)
    assert summary.data.train_size + summary.data.val_size == 240
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert (run / "metrics.csv").read_text().startswith("epoch,train_loss,train_acc,val_loss")
    samples = np.load(run / "val_samples.npy")
    assert samples.dtype == np.uint8 and samples.shape[1:] == (3, 16, 16)
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    model = zoo.create_model("Net", in_height=16, in_width=16)
    model.load_state_dict(state["model"])
    saved = TrainConfig.model_validate_json((run / "config.json").read_text())
    assert saved.epochs == 2 and saved.model == FAST["model"]
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_training_learns_the_synthetic_set(tmp_path: Path) -> None:
    result = zoo.train("Net", epochs=6, out=tmp_path / "run",
                       **{**FAST, "dataset_options": {"size": 600, "num_classes": 2}})
    assert result.metrics[-1].train_loss < result.metrics[0].train_loss
    assert result.summary.best is not None and result.summary.best.val_acc >= 0.8


def test_same_seed_same_metrics(tmp_path: Path) -> None:
    a = train("NetBatchNorm", epochs=2, out=tmp_path / "a", **FAST)
    b = train("NetBatchNorm", epochs=2, out=tmp_path / "b", **FAST)
    assert _metrics(a) == _metrics(b)
    c = train("NetBatchNorm", epochs=2, out=tmp_path / "c", seed=1, **FAST)
    assert _metrics(c) != _metrics(a)


def test_resume_is_bitwise_exact(tmp_path: Path) -> None:
    # NetDropout: the resumed run must also restore the RNG behind dropout masks
    cfg = {**FAST, "schedule": "none"}
    whole = train("NetDropout", epochs=2, out=tmp_path / "whole", **cfg)
    train("NetDropout", epochs=1, out=tmp_path / "part", **cfg)
    resumed = train("NetDropout", epochs=2, resume=tmp_path / "part")
    assert resumed.summary.epochs_completed == 2
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "part")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _metrics(whole) == _metrics(resumed)
    assert len((tmp_path / "part" / "metrics.jsonl").read_text().splitlines()) == 2
    confusions = (whole.summary.best_confusion, whole.summary.last_confusion)
    assert (resumed.summary.best_confusion, resumed.summary.last_confusion) == confusions
    assert None not in confusions


def test_ctrl_c_saves_and_resume_is_exact(tmp_path: Path, registry: Registry) -> None:
    # one-cycle schedule, interrupted in the middle of epoch 2 (7 steps per epoch)
    cfg = {**FAST, "schedule": "onecycle", "epochs": 3}
    whole = train("Faulty", out=tmp_path / "whole", registry=registry, **cfg)
    zoo_testnets.SIGINT_AT = 10
    with pytest.raises(KeyboardInterrupt):
        train("Faulty", out=tmp_path / "part", registry=registry, **cfg)
    state = torch.load(tmp_path / "part" / "checkpoints" / "last.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 3)
    resumed = train("Faulty", resume=tmp_path / "part", registry=registry)
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "part")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _metrics(whole) == _metrics(resumed)
    assert resumed.summary.best_confusion == whole.summary.best_confusion is not None


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path,
                                                              registry: Registry) -> None:
    # 7 steps per epoch: NaN logits from the 10th step, in epoch 2
    with pytest.raises(TrainingError, match=r"non-finite.*epoch 2.*last good checkpoint"):
        train("Faulty", epochs=3, out=tmp_path / "run", registry=registry,
              **{**FAST, "model": {**FAST["model"], "nan_after": 9}})
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert read_summary(tmp_path / "run").epochs_completed == 1


def test_bad_input_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"num_classes=3 was set but dataset 'synthetic' has 2"):
        train("Net", out=tmp_path / "a", **{**FAST, "model": {"num_classes": 3}})
    assert not (tmp_path / "a").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(TrainingError, match="not writable"):
        train("Net", out=tmp_path / "file" / "run", **FAST)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(TrainingError, match="already exists and is not empty"):
        train("Net", out=tmp_path / "full", **FAST)
    if not torch.cuda.is_available():
        with pytest.raises(TrainingError, match="CUDA is not available"):
            train("Net", device="cuda", out=tmp_path / "b", **FAST)
    with pytest.raises(zoo.ZooError, match="unknown training option 'epoch'"):
        train("Net", epoch=3)
    with pytest.raises(TrainingError, match="not a run directory"):
        train("Net", resume=tmp_path / "nothing")


def test_imagefolder_takes_num_classes_from_the_data(tmp_path: Path) -> None:
    from PIL import Image

    for c, cls in enumerate(("a", "b", "c")):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(6):
            image = Image.new("RGB", (20, 20), (80 * c, 10 * i, 0))
            image.save(tmp_path / "data" / cls / f"{i}.png")
    result = train("Net", dataset="imagefolder", data_dir=tmp_path / "data", val_split=0.34,
                   epochs=1, out=tmp_path / "run", **{k: v for k, v in FAST.items()
                                                      if k != "dataset_options"})
    assert result.summary.model.num_classes == 3
    assert result.summary.data.classes == ("a", "b", "c")


def test_augment_and_sharding() -> None:
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.uint8).view(2, 3, 4, 5)
    g = torch.Generator().manual_seed(0)
    out = augment(x, flip=True, crop_padding=2, generator=g)
    assert out.shape == x.shape and out.dtype == torch.uint8
    again = augment(x, flip=True, crop_padding=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    assert torch.equal(augment(x, flip=False, crop_padding=0, generator=g), x)
    perm = torch.randperm(100)
    assert rank_batches(100, 32, Dist()) == 4
    single = shard_indices(perm, 1, 64, Dist())
    two = [shard_indices(perm, 1, 32, Dist(rank=r, world=2)) for r in range(2)]
    assert sorted(torch.cat(two).tolist()) == sorted(single.tolist())


def test_cli_train_config_file_and_set(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "train.toml"
    cfg.write_text('epochs = 1\nbatch_size = 32\nprogress = "none"\nnum_threads = 1\n'
                   '[dataset_options]\nsize = 100\nnum_classes = 2\n')
    code = main(["train", "NetWidth", "--config", str(cfg), "--set", "n_chans1=8",
                 "--set", "in_height=16", "--set", "in_width=16", "--out", str(tmp_path / "run"),
                 "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["model"]["hparams"]["n_chans1"] == 8
    assert summary["train_config"]["batch_size"] == 32
    code = main(["train", "--resume", str(tmp_path / "run"), "--epochs", "2", "--schedule",
                 "onecycle"])
    assert code == 1
    assert "zoo: error:" in capsys.readouterr().err
    assert main(["train", "Net", "--dataset", "nope"]) == 1
    assert "unknown dataset 'nope'" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"epochs": 0}')
    assert main(["train", "Net", "--config", str(bad)]) == 1
    assert "invalid value 0 for 'epochs'" in capsys.readouterr().err


def test_book_recipe_is_a_config() -> None:
    book = TrainConfig.book()
    assert (book.optimizer, book.lr, book.batch_size, book.momentum) == ("sgd", 1e-2, 64, 0.0)
    assert (book.schedule, book.flip, book.crop_padding, book.weight_decay) == ("none", False,
                                                                                0, 0.0)
    assert not book.grad_clip and book.label_smoothing == 0.0


def test_device_data_uint8_and_float_paths_agree() -> None:
    from zoo.spec.run import Normalization
    from zoo.trainer.pipeline import DeviceData

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 3, 6, 6), dtype=np.uint8)
    labels = np.arange(10, dtype=np.int64)
    norm = Normalization(mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    small = DeviceData(images, labels, torch.device("cpu"), norm, channels_last=True)
    big = DeviceData(images, labels, torch.device("cpu"), norm, channels_last=True,
                     prenormalize_bytes=0)
    assert small.prenormalized and not big.prenormalized
    index = torch.tensor([3, 1, 4])
    (xa, ya), (xb, yb) = small.batch(index), big.batch(index)
    torch.testing.assert_close(xa, xb)
    assert xa.is_contiguous(memory_format=torch.channels_last)
    assert ya.tolist() == yb.tolist() == [3, 1, 4]
    expected = (images[3, 0, 0, 0] / 255.0 - 0.4) / 0.2
    assert abs(float(xa[0, 0, 0, 0]) - expected) < 1e-5


def test_resume_without_a_checkpoint_or_with_a_corrupt_config(tmp_path: Path) -> None:
    train("Net", epochs=1, out=tmp_path / "run", **FAST)
    (tmp_path / "run" / "checkpoints" / "last.pt").unlink()
    with pytest.raises(TrainingError, match=r"its checkpoints/last\.pt is missing, though "
                                            r"run\.json records 1 completed epoch"):
        train("Net", epochs=1, resume=tmp_path / "run")
    (tmp_path / "run" / "config.json").write_text("{not json")
    with pytest.raises(TrainingError, match=r"config.json is unreadable"):
        train("Net", epochs=1, resume=tmp_path / "run")


@pytest.mark.parametrize("size", [20, 80, 160])
def test_one_cycle_schedule_on_a_handful_of_steps(tmp_path: Path, size: int) -> None:
    # 18, 72 and 144 training images at batch 32: 1, 3 and 5 steps in all
    result = train("Net", epochs=1, out=tmp_path / "run", schedule="onecycle",
                   **{**FAST, "dataset_options": {"size": size, "num_classes": 2}})
    assert result.summary.epochs_completed == 1
    assert 0 < result.metrics[0].lr <= 0.1


def test_resume_of_a_run_with_biases_in_a_group_of_their_own(tmp_path: Path) -> None:
    """Runs without weight decay now train one parameter group; older ones had two."""
    cfg = {**FAST, "schedule": "none", "weight_decay": 0.0, "momentum": 0.9}
    train("Net", epochs=2, out=tmp_path / "whole", **cfg)
    train("Net", epochs=1, out=tmp_path / "part", **cfg)
    path = tmp_path / "part" / "checkpoints" / "last.pt"
    state = torch.load(path, weights_only=False)
    params = list(zoo.create_model("Net", in_height=16, in_width=16).parameters())
    old = state["optimizer"]
    assert len(old["param_groups"]) == 1
    ids = old["param_groups"][0]["params"]
    order = [i for i, p in zip(ids, params, strict=True) if p.ndim > 1] + \
            [i for i, p in zip(ids, params, strict=True) if p.ndim <= 1]
    renumber = {i: n for n, i in enumerate(order)}
    split = len([p for p in params if p.ndim > 1])
    group = {k: v for k, v in old["param_groups"][0].items() if k != "params"}
    state["optimizer"] = {
        "state": {renumber[i]: s for i, s in old["state"].items()},
        "param_groups": [{**group, "params": list(range(split))},
                         {**group, "params": list(range(split, len(params)))}]}
    save_checkpoint(path, state)  # with the digest of its new content
    train("Net", epochs=2, resume=tmp_path / "part")
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "part")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_architecture_recipe_changes_defaults_only(tmp_path: Path) -> None:
    """NetResDeep's spec lowers the peak learning rate; whatever a user sets wins."""
    small = {**FAST, "model": {"in_height": 16, "in_width": 16, "n_blocks": 1},
             "dataset_options": {"size": 80, "num_classes": 2}, "schedule": "none"}

    def lr(run: Path) -> float:
        return float(json.loads((run / "config.json").read_text())["lr"])

    assert zoo.get_spec("NetResDeep").recipe.lr == 0.05
    train("NetResDeep", TrainConfig(epochs=1, **small), out=tmp_path / "default")
    assert lr(tmp_path / "default") == 0.05
    train("NetResDeep", epochs=1, lr=0.2, out=tmp_path / "set", **small)
    assert lr(tmp_path / "set") == 0.2
    train("NetResDeep", TrainConfig.book(epochs=1, **small), out=tmp_path / "book")
    assert lr(tmp_path / "book") == 0.01
    train("Net", epochs=1, out=tmp_path / "net", **small | {"model": FAST["model"]})
    assert lr(tmp_path / "net") == TrainConfig().lr
    # a resumed run keeps the learning rate it started with
    train("NetResDeep", epochs=2, resume=tmp_path / "set")
    assert lr(tmp_path / "set") == 0.2
