"""The seven architectures of chapter 8 of *Deep Learning with PyTorch*, as a zoo plugin.

Stevens, Antiga and Viehmann build them up one idea at a time: a small
convolutional net (``Net``), then wider (``NetWidth``), regularized
(``NetDropout``, ``NetBatchNorm``), deeper (``NetDepth``), with a skip
connection (``NetRes``) and with a stack of residual blocks (``NetResDeep``).

This module only declares them; the torch code lives in :mod:`zoo_chapter8.models`
and is imported when a model is built.
"""

from __future__ import annotations

from zoo import ArchitectureSpec, ReferenceAccuracy, hookimpl
from zoo_chapter8.specs import ARCHITECTURES, SOURCE, book_val_acc


@hookimpl
def zoo_architectures() -> list[ArchitectureSpec]:
    return list(ARCHITECTURES)


@hookimpl
def zoo_reference_accuracies() -> list[ReferenceAccuracy]:
    """The book's validation accuracies, which ``zoo compare`` and the model table show."""
    return [ReferenceAccuracy(architecture=name, value=value, metric="val_acc", source=SOURCE)
            for name, value in book_val_acc().items()]
