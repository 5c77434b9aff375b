"""Published reference accuracies: what a plugin says its architectures reached elsewhere.

A plugin returns them from its ``zoo_reference_accuracies`` hook, for its own
architectures: the chapter-8 plugin publishes the book's validation accuracies.
``zoo compare`` marks them on its chart and the model table shows the
difference. Data, not code: validated like every other spec.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from zoo.spec.architecture import NAME_PATTERN
from zoo.spec.provenance import Provenance


class ReferenceAccuracy(BaseModel):
    """One published accuracy of an architecture, with where it was published."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    architecture: str = Field(pattern=NAME_PATTERN, max_length=64,
                              description="The architecture (one the plugin provides).")
    value: float = Field(ge=0.0, le=1.0, description="The accuracy, between 0 and 1.")
    metric: str = Field("val_acc", pattern=r"^[a-z][a-z0-9_]*$",
                        description="What was measured, e.g. 'val_acc'.")
    source: str = Field(min_length=1, max_length=200, pattern=r"^[^\n]*$",
                        description="Where it was published, e.g. a book and chapter.")
    provenance: Provenance | None = Field(None, description="Set by the registry.")


__all__ = ["ReferenceAccuracy"]
