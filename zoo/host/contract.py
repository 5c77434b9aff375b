"""The contract between the zoo and a plugin's code, checked where that code runs.

A builder is called as ``builder(hparams, input_shape=..., num_classes=...)`` and
must return a ``torch.nn.Module`` that maps ``(N, C, H, W)`` float images to
``(N, num_classes)`` logits; :meth:`zoo.Registry.build` checks it once on a probe
input, so training, export and :func:`zoo.load` all refuse a model that does not.
A dataset loader must return a :class:`~zoo.spec.dataset.LoadedDataset` of uint8
NCHW images of the requested size and channels, int64 labels in range and at
least two distinct class names (:func:`load_dataset` calls it and checks that).
Whatever plugin code raises, or returns that breaks the contract, becomes one
:class:`~zoo.errors.PluginError` naming the plugin and its distribution (the
original exception is its ``__cause__``).

Nothing here imports torch or numpy at module level: the checks import them when
they run, since what they check is plugin code's torch modules and numpy arrays.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from typing import Any

from zoo.errors import ContractError, DataError, PluginError, ZooError, reason
from zoo.spec.architecture import ArchitectureSpec, ModelConfig
from zoo.spec.dataset import DatasetRequest, DatasetSpec, LoadedDataset, Split
from zoo.spec.provenance import Provenance, load_callable

#: The batch size of the probe input a built model is checked on.
PROBE_BATCH = 2


def describe_provider(provenance: Provenance | None) -> str:
    """``"tiny-nets 1.0 (plugin 'tiny')"``: who provides a spec."""
    return provenance.describe() if provenance is not None else "an unregistered plugin"


def call_plugin(what: str, provenance: Provenance | None, fn: Callable[..., Any],
                *args: Any, passthrough: tuple[type[Exception], ...] = (),
                **kwargs: Any) -> Any:
    """Call plugin code ``fn``; anything but a :class:`ZooError` becomes a :class:`PluginError`.

    ``what`` names the code, e.g. ``"the builder 'm:f' of architecture 'X'"``. A call
    that does not fit ``fn``'s signature is reported as such before ``fn`` runs.
    Exceptions of the ``passthrough`` types are the environment's, not the plugin's
    (a full disk while a format writer writes): they pass as they are.
    """
    try:
        inspect.signature(fn).bind(*args, **kwargs)
    except TypeError as exc:
        try:
            signature = str(inspect.signature(fn))
        except (TypeError, ValueError):
            signature = "(unknown)"
        raise PluginError(f"{what} from {describe_provider(provenance)} cannot be called as the "
                          f"zoo calls it ({exc}); its signature is {signature}") from exc
    except ValueError:  # no signature to inspect (some builtins): just call it
        pass
    passing: tuple[type[Exception], ...] = (ZooError, *passthrough)
    try:
        return fn(*args, **kwargs)
    except passing:
        raise
    except Exception as exc:
        raise PluginError(f"{what} from {describe_provider(provenance)} raised "
                          f"{type(exc).__name__}: {reason(exc)}") from exc


def _shape_text(shape: tuple[int, ...]) -> str:
    return str(tuple(int(d) for d in shape))


def check_model(module: object, spec: ArchitectureSpec, config: ModelConfig) -> None:
    """Check that ``module`` maps a ``(N, C, H, W)`` probe to ``(N, num_classes)`` logits.

    The probe is a zero batch of :data:`PROBE_BATCH` images of ``config``'s input
    shape, run in eval mode under ``torch.no_grad()``; every submodule's training
    flag is restored afterwards and no random numbers are drawn.
    """
    import torch

    shape = (PROBE_BATCH, *config.input_shape.as_tuple())
    wanted = (PROBE_BATCH, config.num_classes)
    head = (f"architecture {spec.name!r} from {describe_provider(spec.provenance)} breaks the "
            f"model contract: expected a torch.nn.Module mapping (N, C, H, W) "
            f"{_shape_text(shape)} to (N, num_classes) {_shape_text(wanted)}")
    if not isinstance(module, torch.nn.Module):
        raise ContractError(f"{head}; its builder returned {type(module).__name__}")
    param = next(module.parameters(), None)
    probe = torch.zeros(shape, device=param.device if param is not None else None)
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            out = module(probe)
    except Exception as exc:
        raise ContractError(f"{head}; its forward raised {type(exc).__name__}: "
                            f"{reason(exc)}") from exc
    finally:
        for m, training in flags:
            m.training = training
    if not isinstance(out, torch.Tensor):
        raise ContractError(f"{head}; seen {type(out).__name__}, not a tensor")
    if tuple(out.shape) != wanted or not out.is_floating_point():
        raise ContractError(f"{head}; seen {str(out.dtype).removeprefix('torch.')} "
                            f"{_shape_text(tuple(out.shape))}")


def _describe_array(array: object) -> str:
    dtype = getattr(array, "dtype", None)
    shape = getattr(array, "shape", None)
    if dtype is None or shape is None:
        return type(array).__name__
    return f"{dtype} {_shape_text(tuple(shape))}"


def _check_split(name: str, split: object, request: DatasetRequest, num_classes: int,
                 head: str) -> None:
    import numpy as np

    if not isinstance(split, Split):
        raise ContractError(f"{head}: its {name} split is {type(split).__name__}, not a "
                            "zoo.spec.dataset.Split")
    images: np.ndarray = split.images
    size = request.image_size
    want = (f"uint8 (N, C, H, W) with C={request.channels}"
            + (f" and (H, W)={_shape_text(size)}" if size is not None else ""))
    ok = (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4
          and images.shape[1] == request.channels
          and (size is None or tuple(images.shape[2:]) == tuple(size)))
    if not ok:
        hint = ""
        if (isinstance(images, np.ndarray) and images.ndim == 4
                and images.shape[3] == request.channels != images.shape[1]):
            hint = " (channels last: NHWC, not NCHW)"
        raise ContractError(f"{head}: {name} images must be {want}; seen "
                            f"{_describe_array(images)}{hint}")
    labels = split.labels
    if (not isinstance(labels, np.ndarray) or labels.dtype != np.int64
            or labels.shape != (images.shape[0],)):
        raise ContractError(f"{head}: {name} labels must be int64 ({images.shape[0]},), one per "
                            f"image; seen {_describe_array(labels)}")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ContractError(f"{head}: {name} labels must lie in 0..{num_classes - 1} (one per "
                            f"class name); seen {int(labels.min())}..{int(labels.max())}")


def check_dataset(loaded: object, spec: DatasetSpec, request: DatasetRequest) -> LoadedDataset:
    """Check what ``spec``'s loader returned for ``request``; return it typed."""
    head = (f"dataset {spec.name!r} from {describe_provider(spec.provenance)} breaks the loader "
            "contract")
    if not isinstance(loaded, LoadedDataset):
        raise ContractError(f"{head}: its loader returned {type(loaded).__name__}, not a "
                            "zoo.LoadedDataset")
    classes = loaded.classes
    if (not isinstance(classes, tuple) or not all(isinstance(c, str) for c in classes)
            or len(set(classes)) < 2 or len(set(classes)) != len(classes)):
        raise ContractError(f"{head}: classes must be a tuple of at least two distinct names; "
                            f"seen {classes!r}")
    if spec.num_classes is not None and len(classes) != spec.num_classes:
        raise ContractError(f"{head}: its spec declares {spec.num_classes} classes; the loader "
                            f"gave {len(classes)} ({', '.join(classes)})")
    if not isinstance(loaded.content_key, str) or not loaded.content_key:
        raise ContractError(f"{head}: content_key must be a non-empty string; seen "
                            f"{loaded.content_key!r}")
    for name in ("train", "val"):
        _check_split(name, getattr(loaded, name), request, len(classes), head)
    if loaded.train.images.shape[2:] != loaded.val.images.shape[2:]:
        raise ContractError(f"{head}: train and val images differ in size: "
                            f"{_describe_array(loaded.train.images)} and "
                            f"{_describe_array(loaded.val.images)}")
    return loaded


def load_dataset(spec: DatasetSpec, request: DatasetRequest, **options: Any) -> LoadedDataset:
    """Validate ``options``, import ``spec``'s loader, load the dataset and check the result.

    Whatever the loader raises (but a :class:`ZooError`) and whatever it returns
    that breaks the contract of :class:`~zoo.spec.dataset.LoadedDataset` is a
    :class:`~zoo.errors.PluginError` naming the dataset, plugin and distribution.
    """
    opts = spec.validate_options(options)
    if spec.needs_data_dir and request.data_dir is None:
        raise DataError(f"dataset {spec.name!r} needs --data-dir DIR")
    unused = spec.unused_options(request)
    if unused and not request.quiet:
        print(f"zoo: warning: dataset {spec.name!r} does not use {', '.join(unused)}; "
              f"ignored", file=sys.stderr)
    loader = load_callable(spec.loader, f"loader of dataset {spec.name!r}", spec.provenance)
    loaded = call_plugin(f"the loader {spec.loader!r} of dataset {spec.name!r}",
                         spec.provenance, loader, request, opts)
    return check_dataset(loaded, spec, request)


__all__ = ["PROBE_BATCH", "call_plugin", "check_dataset", "check_model", "describe_provider",
           "load_dataset"]
