"""Validation of the model being trained: summed loss, correct count and confusion matrix."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zoo.spec.run import CONFUSION_MAX_CLASSES
from zoo.trainer.distributed import Dist
from zoo.trainer.pipeline import DeviceData


def validate_epoch(core: nn.Module, data: DeviceData, *, batch_size: int, dist_info: Dist,
             amp_dtype: torch.dtype | None, num_classes: int) -> torch.Tensor:
    """Summed loss, correct count and count over this rank's share of the validation set."""
    device = data.device
    core.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.float64, device=device)
    k = num_classes
    confusion = torch.zeros(k * k if k <= CONFUSION_MAX_CLASSES else 0, dtype=torch.float64,
                            device=device)
    n = len(data)
    mine = torch.arange(dist_info.rank, n, dist_info.world, device=device)
    with torch.inference_mode():
        for start in range(0, mine.shape[0], batch_size):
            index = mine[start:start + batch_size]
            xb, yb = data.batch(index)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                                enabled=amp_dtype is not None):
                logits = core(xb)
            loss_sum += F.cross_entropy(logits.float(), yb, reduction="sum").double()
            predicted = logits.argmax(1)
            correct += (predicted == yb).sum().double()
            if confusion.numel():
                confusion += torch.bincount(yb * k + predicted, minlength=k * k).double()
    core.train()
    return torch.cat([torch.stack([loss_sum, correct,
                                   torch.tensor(float(mine.shape[0]), dtype=torch.float64,
                                                device=device)]), confusion])
