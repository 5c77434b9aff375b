"""Errors a user can cause, each one sentence naming the bad value and what is accepted; and
the zoo's warnings."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any


class ZooError(Exception):
    """Base of every error the zoo raises for bad input; the CLI prints it without traceback."""


class UnknownArchitectureError(ZooError, LookupError):
    """No installed plugin provides an architecture of that name."""


class UnknownDatasetError(ZooError, LookupError):
    """No installed plugin provides a dataset of that name."""


class HyperparameterError(ZooError, ValueError):
    """A hyperparameter override is unknown, out of range or of the wrong type."""


class InputShapeError(ZooError, ValueError):
    """An input shape the architecture cannot take."""


class PluginError(ZooError):
    """A plugin failed to load, returned something invalid, or clashes with another plugin."""


class DuplicateNameError(PluginError):
    """Two plugins register the same architecture or dataset name."""


class ContractError(PluginError):
    """A plugin's builder or loader returned something that breaks the zoo's contract."""


class ConformanceError(ZooError, AssertionError):
    """A plugin's architecture or dataset fails a check of the conformance kit (zoo.testing)."""


class DataError(ZooError):
    """A dataset that cannot be read: missing, empty, corrupt or inconsistent."""


class TrainingError(ZooError):
    """Training cannot start or cannot go on (bad device, non-finite loss, unwritable output)."""


class ExportError(ZooError):
    """An export or a verification that failed, or a bundle that cannot be trusted."""


class BundleError(ExportError):
    """A bundle directory that is missing, tampered with, or of an unknown format."""


class BundleNotFoundError(BundleError, LookupError):
    """A name or path that is no bundle: neither a directory nor a declared or exported name."""


class AmbiguousBundleError(BundleError, LookupError):
    """A name that could mean several of the user's bundles (the error lists them)."""


class ZooWarning(UserWarning):
    """Base class of the zoo's warnings (the CLI prints them as ``zoo: warning: ...``)."""


class CpuFeatureWarning(ZooWarning, RuntimeWarning):
    """A graph built for CPU features this CPU lacks: it runs, but its outputs (and the
    accuracy its export measured) may not hold here."""


def route_zoo_warnings(say: Callable[[str], None]) -> None:
    """From now on, hand each of the zoo's own warnings to ``say`` as one line (in place of
    any ``say`` routed before: the CLI prints them, ``zoo serve`` logs them as JSON);
    other warnings go where they went before."""
    previous = getattr(warnings.showwarning, "zoo_previous", warnings.showwarning)

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: Any = None, line: str | None = None) -> None:
        if issubclass(category, ZooWarning):
            say(str(message))
        else:
            previous(message, category, filename, lineno, file, line)

    show.zoo_previous = previous  # type: ignore[attr-defined]
    warnings.showwarning = show


#: Lines of library errors that say nothing about this failure: torch's weights-only
#: preamble and footer, and load_state_dict's header before the keys it names.
_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation",
                "Error(s) in loading state_dict")


def reason(exc: BaseException, *, every_line: bool = False, limit: int = 300) -> str:
    """The informative part of a library's exception, for a one-line error of ours.

    The first line that is not boilerplate (``every_line``: all of them, joined by
    ``"; "``), without torch's ``WeightsUnpickler error:`` prefix; the exception's
    type name when it has no message.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line.removeprefix("WeightsUnpickler error:").strip()
              for line in lines if not line.startswith(_BOILERPLATE)]
    useful = [line for line in useful if line] or lines[:1] or [type(exc).__name__]
    text = "; ".join(useful) if every_line else useful[0]
    return text if len(text) <= limit else text[: limit - 1] + "…"
