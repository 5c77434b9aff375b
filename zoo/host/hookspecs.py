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

Every hook is called through pluggy with keyword arguments. A hook name that is
not one of those below (a misspelling such as ``zoo_train_epoch_ended``) is an
error: the plugin is refused as a whole, named with the hook it misspelled,
unless its ``@hookimpl(optionalhook=True)`` says the hook may not exist.

The listing hooks (``zoo_architectures``, ``zoo_datasets``, ``zoo_export_formats``,
``zoo_reference_accuracies``) follow these rules:

* They take no arguments and are called once per plugin, so that every spec
  carries its plugin's provenance; a wrapper (``wrapper=True`` or
  ``hookwrapper=True``) on one of them is refused with a problem line.
* They must be cheap and must not import torch: ``zoo list`` and ``zoo show``
  call them. Point at heavy code lazily, with ``"module:attribute"`` strings.
  Each runs in a thread of its own with a deadline (10 s,
  ``PluginHost.listing_timeout``): a plugin whose hook has not returned by then
  contributes nothing and is reported as failed, and its other listing hooks
  are not called.
  A plugin whose import or hook imports a heavy module (torch, torchvision,
  onnx, onnxruntime, matplotlib, numpy) is named in a warning.
* A builder, loader, format writer or verifier must live in the plugin's own
  top-level package (the package of the entry point's module):
  ``"my_nets.models:build"`` for the plugin ``my_nets``, never ``"os:system"``
  nor another distribution's code.
* Failures stay local and are reported by ``zoo plugins`` (which then exits 1)
  with the plugin's distribution, and warned about once by the other commands:
  a plugin that fails to import contributes nothing; a hook that raises (a spec
  that fails to construct raises in the hook) drops what that hook provides; a
  returned spec that is invalid drops only itself.
* A name may be registered by one plugin only: an architecture, dataset or
  export format two plugins provide is unavailable (an error naming both
  distributions) while every other name works. An entry-point name of the zoo's
  own plugins (``chapter8``, ``datasets``, the core plugins) is refused for any
  other distribution.
* What plugin code raises when it runs (a hook, builder, loader, format writer
  or verifier) and what it returns that breaks the contract below is a
  :class:`zoo.errors.PluginError` naming the plugin and its distribution
  (:mod:`zoo.host.contract`).
* :mod:`zoo.testing` checks a plugin against all of this in one call per
  architecture or dataset (it is also a pytest plugin).

``zoo new-plugin NAME`` writes a ready plugin distribution to start from.

Training hooks
--------------

The trainer announces what happens in a run through the ``zoo_train_*`` hooks
below. Unlike the listing hooks these run with torch imported, may do real work,
and may be wrappers (pluggy's ``@hookimpl(wrapper=True)``).

* They are called on **rank 0 only** (the process that writes the run directory;
  the only process outside ``torchrun``), with a :class:`zoo.host.events.TrainingRun`.
* They never change numerical results: the model, optimizer and data are not
  theirs to touch, and a run trains bitwise the same with or without them. The
  one exception says so: ``zoo_train_should_stop`` may end a run early.
* Whatever a plugin remembers across epochs must be derivable from
  ``run.history`` (every completed epoch, earlier sessions of a resumed run
  included): that keeps the exact-resume guarantee.
* An exception raised by a training hook fails the run as a
  :class:`zoo.errors.PluginError` naming the plugin (a :class:`zoo.ZooError` it
  raises passes as is); the last checkpoint is intact. After a failure or Ctrl-C,
  ``zoo_train_end`` raising is only a warning.

The trainer's own writers are plugins of these hooks, registered by the
:class:`~zoo.host.registry.Registry` itself, the way pytest registers its terminal
reporter: ``zoo.builtin.metricsfiles`` (``metrics.jsonl``, ``metrics.csv``),
``zoo.builtin.curveplot`` (``curves.png``), ``zoo.builtin.progressdisplay`` (the
progress bar and log lines), ``zoo.builtin.earlystop`` (``early_stop_metric``),
``zoo.builtin.tensorboard`` (``loggers=["tensorboard"]``) and ``zoo.builtin.formats``
(the ``onnx`` and ``pt2`` export formats, see ``zoo_export_formats``). They are core
plugins rather than entry points so that they work in any registry (also one
built with ``entry_points=False``), and ``-p no:NAME`` blocks one by its short
name (``metricsfiles``, ``curveplot``, ``progressdisplay``...) like any plugin,
except ``formats``: every bundle is written through its ``onnx`` format, so, like
pytest's essential plugins, it cannot be blocked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path
    from typing import Any

    from zoo.host.events import RunStatus, StopRequest, TrainingRun
    from zoo.spec.architecture import ArchitectureSpec
    from zoo.spec.dataset import DatasetSpec
    from zoo.spec.exportformat import ExportFormat
    from zoo.spec.reference import ReferenceAccuracy
    from zoo.spec.run import EpochMetrics, RunSummary

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
    ``(N, num_classes)`` logits. The zoo checks this once per built model on a
    zero probe batch in eval mode (training flags restored, no random numbers
    drawn): training, export and :func:`zoo.load` refuse a model that breaks it,
    and an export is refused unless its ONNX graph gives one logit per class.

    Hyperparameter names must not be the shape keys ``in_channels``,
    ``in_height``, ``in_width`` and ``num_classes``; every other name
    (``width``, ``depth``, ``channels``...) is the plugin's.

    On a multi-core CPU the trainer may train parts of a batch on parallel
    threads (:mod:`zoo.trainer.batchsplit`). It first checks that the module's training
    forward pass uses no BatchNorm, draws no random numbers, updates no buffers
    and treats samples independently; state kept in plain Python attributes
    escapes that check. A module names its own parts for ``auto`` with a
    ``zoo_batch_split`` attribute or property: ``1`` for whole batches (such
    state, or kernels of its own that already divide a batch between the threads),
    a larger number for that many parts, ``None`` to leave it to the trainer.

    A module may also offer its own training step, ``zoo_train_step(x, loss)``
    (:mod:`zoo.trainer.modelstep`): it computes ``loss(self(x))``, adds that loss's
    gradient to every parameter's ``.grad`` exactly as ``backward()`` would, and
    returns the loss and the logits, detached; or returns ``None``, having changed
    nothing, wherever autograd must run. ``loss`` is a callable of the logits; where it
    has ``value_and_grad(logits)``, that returns the loss and its gradient by the logits
    as autograd would, without a graph. The trainer offers the step only a plain step
    (not distributed, no mixed precision, the batch in one part) and runs autograd when
    it answers ``None``.
    """


@hookspec
def zoo_datasets() -> Sequence[DatasetSpec]:
    """Return the datasets this plugin provides.

    Each item is a :class:`zoo.DatasetSpec`:

    * ``name``: unique across plugins; ``summary``: one line.
    * ``loader``: ``"module:function"`` in the plugin's own package, imported
      only when the dataset is used.
    * ``options``: a :class:`zoo.DatasetOptions` subclass, the dataset's own
      settings (``--option key=value``, validated before the loader runs).
    * ``needs_data_dir``: whether ``--data-dir`` is required; ``downloads``:
      whether it can fetch its data; ``num_classes``: its class count if fixed
      (the loader must then give that many).
    * ``uses``: which of the request's user options the loader honours, from
      ``data_dir``, ``val_dir``, ``val_split``, ``strict``, ``download``; any
      other one the user sets is warned about as ignored (``None``: undeclared).

    The loader is called as ``loader(request, options)`` with a
    :class:`zoo.DatasetRequest` and the validated options. Its obligations:

    * ``request.image_size`` ``(height, width)``: every image has exactly that
      size (resize); ``None`` leaves the data's own size.
    * ``request.channels``: every image has exactly that many channels (1 grey,
      3 RGB).
    * ``request.data_dir`` / ``request.val_dir``: where the data and a separate
      validation set lie; ``request.val_split``: the fraction to hold out when the
      data has no split of its own; ``request.seed``: the seed of anything random
      (same seed, same dataset); ``request.strict``: fail on an unreadable file
      rather than skip it; ``request.download``: whether fetching is allowed;
      ``request.cache_dir``: where decoded caches may go; ``request.quiet``:
      print no warnings.
    * Raise :class:`zoo.errors.DataError` (a :class:`zoo.ZooError`) for data a
      user can fix; anything else it raises is reported as the plugin's fault.

    It returns a :class:`zoo.LoadedDataset`: ``name``; ``train`` and ``val``,
    two non-empty :class:`zoo.Split` s of ``images`` (``numpy.uint8``,
    ``(N, C, H, W)``) and ``labels`` (``numpy.int64``, ``(N,)``, each in
    ``0 .. len(classes) - 1``); ``classes``, at least two distinct names;
    ``content_key``, a non-empty string that changes whenever the data would (a
    hash of the files, or of the generator's options and seed: runs record it and
    ``--resume`` refuses changed data); ``split_description``, one sentence on how
    train and validation were separated; ``skipped``, the files it could not read.
    The zoo checks all of this and refuses a dataset that breaks it.
    """


@hookspec
def zoo_reference_accuracies() -> Sequence[ReferenceAccuracy]:
    """Return accuracies published elsewhere for this plugin's own architectures.

    Each item is a :class:`zoo.ReferenceAccuracy`: the ``architecture`` (one this
    plugin provides; others are dropped with a problem line), the ``value`` (0 to
    1), the ``metric`` (``val_acc`` by default) and its ``source`` (one line, such
    as a book and chapter). ``zoo compare`` marks them on its chart and shows the
    difference; the chapter-8 plugin publishes the book's validation accuracies.
    """


# -- training ----------------------------------------------------------------------------


@hookspec
def zoo_train_start(run: TrainingRun) -> Mapping[str, Any] | None:
    """Called once per process session when the run directory is ready, before the first
    step (also when a run is resumed: ``run.resumed`` is then true and ``run.history``
    holds the epochs already done). Rank 0 only.

    ``run`` gives the config, the model (do not change it), the data info and the
    run directory. A plugin may return a mapping of JSON-serializable entries to add
    to the run summary (``run.json``'s ``plugins`` field, merged over the plugins).
    """


@hookspec
def zoo_train_note(run: TrainingRun, text: str) -> None:
    """A line the trainer wants the user to read (what is trained, resume notes, why it
    stopped). Rank 0 only. The built-in progress display prints it on stderr."""


@hookspec
def zoo_train_step(run: TrainingRun, epoch: int, step: int, steps: int) -> None:
    """After each optimizer step: ``step`` of ``steps`` (1-based) in ``epoch`` (1-based).
    Rank 0 only. Called often: keep it to microseconds, and never read tensors (that
    would synchronize the device)."""


@hookspec
def zoo_train_checkpoint(run: TrainingRun, path: Path, epoch: int, best: bool) -> None:
    """After a checkpoint is written: ``checkpoints/last.pt`` at the end of each epoch
    (``best`` is true when the epoch is also the best so far and ``best.pt`` was
    copied from it). Rank 0 only."""


@hookspec
def zoo_train_epoch_end(run: TrainingRun, metrics: EpochMetrics) -> None:
    """After each epoch, once its checkpoints and ``run.json`` are written. Rank 0 only.

    ``metrics`` is the epoch's :class:`zoo.EpochMetrics` (reduced over all ranks: the
    same numbers whatever the world size); ``run.history`` ends with it. Also called
    for the recorded epochs when a resumed run repairs its records.
    """


@hookspec(firstresult=True)
def zoo_train_should_stop(run: TrainingRun, metrics: EpochMetrics) -> StopRequest | None:
    """After ``zoo_train_epoch_end`` of every epoch but the last: return a
    :class:`zoo.host.events.StopRequest` to end the run now (the first one returned wins),
    ``None`` to go on. Rank 0 decides and every
    rank stops with it. This is the one hook that changes results (fewer epochs); the
    weights of the epochs trained are unchanged. Decide from ``run.history`` only, so
    that a resumed run stops where an uninterrupted one would. The reason is recorded
    in ``run.json`` (``stop_reason``) and a stopped run is finished: ``--resume`` does
    not train it further."""


@hookspec
def zoo_train_end(run: TrainingRun, summary: RunSummary, status: RunStatus) -> None:
    """Once when the run ends, however it ends: ``status`` is ``completed``, ``stopped``
    (a stop request), ``interrupted`` (Ctrl-C; resumable) or ``failed`` (an exception,
    re-raised after this hook). Rank 0 only. ``summary`` is what ``run.json`` holds."""


# -- export ------------------------------------------------------------------------------


@hookspec
def zoo_export_formats() -> Sequence[ExportFormat]:
    """Return the export formats this plugin provides (:class:`zoo.ExportFormat`).

    A format names the files it adds to a bundle, its own options (a
    :class:`zoo.FormatOptions` subclass: ``zoo export --format-option NAME.KEY=VALUE``)
    and points (``"module:function"`` in the plugin's own package, imported only
    when used) at its writer and its verifier (:mod:`zoo.spec.exportformat` gives
    their signatures). ``zoo export --format onnx,NAME`` writes each format asked
    for, ONNX first and through the same path, verifies it against the eager model
    on the inputs the ONNX graph is checked on (random batches of 1 and 7, the run's
    validation samples) with the same tolerances, and records its files (hashed in
    ``Manifest.files``, so readers check them) and checks in ``Manifest.formats``.
    A format that fails its checks fails the export: nothing is written; what its
    writer or verifier raises is a :class:`zoo.errors.PluginError` naming the
    plugin. ``zoo verify`` runs every format's verifier again. Cheap, like the
    other listing hooks: no torch import here.
    """
