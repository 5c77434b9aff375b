"""The plugin contract: every hook a zoo plugin may implement.

A plugin is any importable module (or object) with functions marked
``@zoo.hookimpl`` whose names match the specifications below. To have the
zoo find it, a distribution declares it in the ``zoo.plugins`` entry-point
group of its packaging metadata::

    [project.entry-points."zoo.plugins"]
    my_nets = "my_nets"          # the name on the left is the plugin's name

The name is what ``zoo plugins`` shows and what ``-p no:NAME`` (or the
``ZOO_BLOCK_PLUGINS`` variable) blocks. Setting ``ZOO_DISABLE_PLUGIN_AUTOLOAD=1``
loads only the plugins of the ``zoo`` distribution itself, plus those named in
``ZOO_PLUGINS`` (a comma-separated list of entry-point names).

Rules every hook follows:

* Hooks are called with keyword arguments only and take none here.
* Hooks must be cheap and must not import torch: ``zoo list`` and ``zoo show``
  call them. Point at heavy code lazily, with ``"module:attribute"`` strings.
* What a hook returns is validated; a plugin that raises, fails to import or
  returns something invalid is reported by ``zoo plugins`` with its
  distribution, and the other plugins keep working.
* A name may be registered by one plugin only: two plugins providing the same
  architecture or dataset name is an error naming both distributions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from zoo.datasets import DatasetSpec
    from zoo.spec import ArchitectureSpec

PROJECT_NAME = "zoo"
ENTRY_POINT_GROUP = "zoo.plugins"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def zoo_architectures() -> Sequence[ArchitectureSpec]:
    """Return the architectures this plugin provides.

    Each item is a :class:`zoo.ArchitectureSpec` (or a mapping that validates
    as one): a unique ``name``, a one-line ``summary``, ``tags``, the
    ``builder`` as a ``"module:function"`` string, the ``hparams`` pydantic
    model (subclass of :class:`zoo.HParams`), the default ``input_shape`` and
    ``num_classes``, the smallest input size it takes (``min_input_size``), its
    ``source``, and optionally a :class:`zoo.Recipe`: the settings of the default
    training recipe it needs changed (say a lower peak ``lr``), which apply
    wherever the user leaves them unset.

    The builder is imported only when a model is created, and is called as
    ``builder(hparams, input_shape=InputShape, num_classes=int)``, returning a
    ``torch.nn.Module`` that maps ``(N, C, H, W)`` float images to
    ``(N, num_classes)`` logits.

    On a multi-core CPU the trainer may train parts of a batch on parallel
    threads (:mod:`zoo.batchsplit`). It first checks that the module's training
    forward pass uses no BatchNorm, draws no random numbers, updates no buffers
    and treats samples independently; state kept in plain Python attributes
    escapes that check, and such a module is trained with ``batch_split=1``.
    """


@hookspec
def zoo_datasets() -> Sequence[DatasetSpec]:
    """Return the datasets this plugin provides.

    Each item is a :class:`zoo.DatasetSpec`: a unique ``name``, a one-line
    ``summary``, the ``loader`` as a ``"module:function"`` string, its
    ``options`` pydantic model, and whether it needs a data directory or may
    download. The loader is imported only when the dataset is used, and is
    called as ``loader(request: zoo.DatasetRequest, options)``, returning a
    :class:`zoo.datasets.LoadedDataset` (uint8 images, integer labels, class
    names and a content key that identifies the source's content).
    """
