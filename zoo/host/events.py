"""What the training hooks are given: the run being trained and a request to stop it.

No torch import: a plugin that only reads metrics stays cheap to import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from zoo.spec.architecture import ModelConfig
from zoo.spec.run import DataInfo, EpochMetrics
from zoo.spec.training import TrainConfig

if TYPE_CHECKING:
    from torch import nn

#: How a run ended, as ``zoo_train_end`` is told: every epoch trained (``completed``), a
#: stop request honoured (``stopped``), Ctrl-C (``interrupted``) or an exception (``failed``).
RunStatus = Literal["completed", "stopped", "interrupted", "failed"]


class StopRequest(BaseModel):
    """What ``zoo_train_should_stop`` returns to end a run after the current epoch."""

    model_config = ConfigDict(frozen=True)

    reason: str = Field(description="One sentence, recorded in run.json as stop_reason.")


@dataclass
class TrainingRun:
    """The run the training hooks are called about (on rank 0, the process writing it).

    ``history`` is every epoch completed so far, those of earlier sessions of a resumed
    run included: a plugin that needs state across epochs derives it from here, so that
    an interrupted and resumed run behaves exactly like an uninterrupted one. ``state``
    is scratch space for plugins during this process (key it by your plugin's name);
    it is not saved.
    """

    architecture: str
    config: TrainConfig
    run_dir: Path
    model_config: ModelConfig
    data: DataInfo
    device: str
    world_size: int
    steps_per_epoch: int
    resumed: bool
    model: nn.Module
    history: list[EpochMetrics] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def title(self) -> str:
        """``"ARCH on DATASET"``."""
        return f"{self.architecture} on {self.data.dataset}"


__all__ = ["RunStatus", "StopRequest", "TrainingRun"]
