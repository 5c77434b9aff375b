"""The zoo's data model: what plugins declare and what runs and bundles record.

Pydantic models only, imported by every other part of the zoo and importing none
of them; no torch, no numpy (``tests/test_layout.py`` checks it).

What plugins declare:

* :mod:`zoo.spec.architecture`: :class:`ArchitectureSpec`, its :class:`HParams`,
  :class:`InputShape`, :class:`Recipe`, and the resolved :class:`ModelConfig`;
* :mod:`zoo.spec.dataset`: :class:`DatasetSpec`, its options, the request a loader
  gets and the :class:`LoadedDataset` it returns;
* :mod:`zoo.spec.exportformat`: :class:`ExportFormat`;
* :mod:`zoo.spec.weights`: pretrained :class:`WeightSet` s;
* :mod:`zoo.spec.reference`: published :class:`ReferenceAccuracy` s;
* :mod:`zoo.spec.provenance`: where each comes from, and loading their code.

What the zoo records:

* :mod:`zoo.spec.training`: :class:`TrainConfig`, a run's configuration;
* :mod:`zoo.spec.run`: what a run directory holds (:class:`RunSummary`, ...);
* :mod:`zoo.spec.manifest`: a bundle's :class:`Manifest`.
"""

from __future__ import annotations

from zoo.spec.architecture import (
    IMPORT_PATTERN,
    NAME_PATTERN,
    OLD_SHAPE_KEYS,
    SHAPE_KEYS,
    ArchitectureSpec,
    HParams,
    InputShape,
    ModelConfig,
    Recipe,
    format_validation_error,
    resolve_config,
)
from zoo.spec.provenance import Provenance, import_object, load_callable

__all__ = [
    "IMPORT_PATTERN",
    "NAME_PATTERN",
    "OLD_SHAPE_KEYS",
    "SHAPE_KEYS",
    "ArchitectureSpec",
    "HParams",
    "InputShape",
    "ModelConfig",
    "Provenance",
    "Recipe",
    "format_validation_error",
    "import_object",
    "load_callable",
    "resolve_config",
]
