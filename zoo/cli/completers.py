"""Shell completion of the names ``zoo`` takes: architectures, datasets, ``--set`` keys, bundles,
export formats and their options (argcomplete completers).

Each completer is called as ``completer(prefix=..., parsed_args=...)`` by argcomplete, and
only while the shell asks for completions (``zoo completion``): building the parser
imports nothing but this module, so ``zoo list`` stays fast. A completer never fails:
whatever goes wrong completes nothing.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zoo.host.registry import Registry

Completer = Callable[..., list[str]]


def attach(action: argparse.Action, completer: Completer) -> argparse.Action:
    """Complete ``action``'s values with ``completer`` (argcomplete's ``completer`` attribute)."""
    setattr(action, "completer", completer)  # noqa: B010 - argcomplete reads it
    return action


def _registry_of(parsed_args: argparse.Namespace | None) -> Registry:
    """The registry the command would use: ``-p no:NAME`` blocks honoured."""
    from zoo.host.registry import Registry

    options = getattr(parsed_args, "plugin_options", None) or []
    return Registry(blocked=[o[3:] for o in options if o.startswith("no:") and len(o) > 3])


def _safe(function: Callable[[str, argparse.Namespace | None], Iterable[str]]) -> Completer:
    @functools.wraps(function)
    def completer(prefix: str = "", parsed_args: argparse.Namespace | None = None,
                  **_: Any) -> list[str]:
        try:
            return sorted(dict.fromkeys(n for n in function(prefix, parsed_args)
                                        if n.startswith(prefix)))
        except Exception:  # a completion must never break the shell
            return []

    return completer


def _directories(prefix: str) -> list[str]:
    from argcomplete.completers import DirectoriesCompleter

    return list(DirectoriesCompleter()(prefix))


@_safe
def architectures(prefix: str, parsed_args: argparse.Namespace | None) -> Iterable[str]:
    """The installed architectures."""
    return _registry_of(parsed_args).list_models()


@_safe
def datasets(prefix: str, parsed_args: argparse.Namespace | None) -> Iterable[str]:
    """The installed datasets."""
    return _registry_of(parsed_args).list_datasets()


@_safe
def bundles(prefix: str, parsed_args: argparse.Namespace | None) -> Iterable[str]:
    """Bundle names (declared and the user's), and directories (bundles or runs)."""
    from zoo.bundles.store import bundle_names

    return [*bundle_names(_registry_of(parsed_args)), *_directories(prefix)]


@_safe
def models(prefix: str, parsed_args: argparse.Namespace | None) -> Iterable[str]:
    """Architecture and bundle names, and directories (bundles or runs)."""
    from zoo.bundles.store import bundle_names

    registry = _registry_of(parsed_args)
    return [*registry.list_models(), *bundle_names(registry), *_directories(prefix)]


def _architecture(parsed_args: argparse.Namespace | None) -> str | None:
    """The architecture the command names (``zoo train NAME``, ``zoo export ARCH``)."""
    for attr in ("name", "source"):
        value = getattr(parsed_args, attr, None)
        if isinstance(value, str):
            return value
    return None


@_safe
def set_keys(prefix: str, parsed_args: argparse.Namespace | None) -> Iterable[str]:
    """``KEY=`` for each hyperparameter and shape key of the architecture already named."""
    name = _architecture(parsed_args)
    if name is None:
        return []
    spec = _registry_of(parsed_args).get_spec(name)
    return [f"{key}=" for key in spec.config_model().model_fields]


@_safe
def dataset_options(prefix: str, parsed_args: argparse.Namespace | None) -> Iterable[str]:
    """``KEY=`` for each option of the dataset named by ``--dataset`` (default: synthetic)."""
    from zoo.spec.training import TrainConfig

    name = getattr(parsed_args, "dataset", None) or TrainConfig.model_fields["dataset"].default
    spec = _registry_of(parsed_args).get_dataset(name)
    return [f"{key}=" for key in spec.options.model_fields]


@_safe
def formats(prefix: str, parsed_args: argparse.Namespace | None) -> Iterable[str]:
    """Export format names, after the ones already listed (``onnx,pt``: ``onnx,pt2``)."""
    head, comma, _ = prefix.rpartition(",")
    given = set(head.split(",")) if comma else set()
    return [f"{head}{comma}{name}" for name in _registry_of(parsed_args).formats()
            if name not in given]


@_safe
def format_options(prefix: str, parsed_args: argparse.Namespace | None) -> Iterable[str]:
    """``FORMAT.KEY=`` for each option of each installed export format."""
    return [f"{name}.{key}=" for name, spec in _registry_of(parsed_args).formats().items()
            for key in spec.options.model_fields]


__all__ = ["architectures", "attach", "bundles", "dataset_options", "datasets",
           "format_options", "formats", "models", "set_keys"]
