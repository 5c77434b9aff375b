"""zoo.trainer.validation against a computation written out here: a model with dropout,
batches that do not divide the split, a rank's share, the confusion matrix's size limit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zoo.spec.run import CONFUSION_MAX_CLASSES, Normalization
from zoo.trainer.distributed import Dist
from zoo.trainer.pipeline import DeviceData
from zoo.trainer.validation import validate_epoch


def _data(n: int, classes: int) -> DeviceData:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (n, 3, 4, 4), dtype=np.uint8)
    labels = rng.integers(0, classes, n).astype(np.int64)
    norm = Normalization(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    return DeviceData(images, labels, torch.device("cpu"), norm, channels_last=False)


def _model(classes: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(48, classes))


@pytest.mark.parametrize(("rank", "world"), [(0, 1), (1, 2)])
def test_loss_correct_count_and_confusion_of_a_ranks_share(rank: int, world: int) -> None:
    classes, n = 3, 11
    data, model = _data(n, classes), _model(classes)
    model.train()
    out = validate_epoch(model, data, batch_size=4, dist_info=Dist(rank=rank, world=world),
                         amp_dtype=None, num_classes=classes)
    assert model.training  # left as it was found: training
    index = torch.arange(rank, n, world)
    x, y = data.batch(index)
    model.eval()
    with torch.no_grad():
        logits = model(x)
    predicted = logits.argmax(1)
    expected_confusion = torch.zeros(classes, classes, dtype=torch.float64)
    for truth, guess in zip(y.tolist(), predicted.tolist(), strict=True):
        expected_confusion[truth, guess] += 1
    loss, correct, count = out[:3].tolist()
    assert loss == pytest.approx(F.cross_entropy(logits, y, reduction="sum").item(), rel=1e-6)
    assert correct == (predicted == y).sum().item() and count == len(index)
    assert torch.equal(out[3:].view(classes, classes), expected_confusion)
    assert 0 < correct < count  # the fixture is neither all right nor all wrong


@pytest.mark.parametrize(("classes", "size"), [(CONFUSION_MAX_CLASSES, CONFUSION_MAX_CLASSES**2),
                                               (CONFUSION_MAX_CLASSES + 1, 0)])
def test_the_confusion_matrix_is_kept_up_to_the_class_limit(classes: int, size: int) -> None:
    out = validate_epoch(_model(classes), _data(5, classes), batch_size=2, dist_info=Dist(),
                         amp_dtype=None, num_classes=classes)
    assert out.shape == (3 + size,) and out[3:].sum() == (5 if size else 0)


def test_bf16_autocast_runs_the_model_in_bf16() -> None:
    seen: list[torch.dtype] = []
    model = _model(2)
    model.register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    validate_epoch(model, _data(4, 2), batch_size=4, dist_info=Dist(), amp_dtype=torch.bfloat16,
                   num_classes=2)
    validate_epoch(model, _data(4, 2), batch_size=4, dist_info=Dist(), amp_dtype=None,
                   num_classes=2)
    assert seen == [torch.bfloat16, torch.float32]
