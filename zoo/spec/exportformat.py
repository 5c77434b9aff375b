"""Export formats: what ``zoo export --format`` can write, as specs plugins provide.

A format is an :class:`ExportFormat` returned by a plugin's ``zoo_export_formats``
hook: its name, the files it writes into the bundle, its own options, and two
``"module:function"`` references in the plugin's own package, imported only when
the format is used:

* ``writer(model, directory, config)`` writes the files into ``directory`` (the
  bundle being built) from the eval-mode ``model`` and its
  :class:`~zoo.spec.ModelConfig`;
* ``verifier(model, directory, config, inputs, atol, rtol)`` loads them back and
  compares their outputs with the eager model's on ``inputs`` (``[(name, float32
  array)]``: random batches of 1 and 7 and the run's validation samples) within
  ``|theirs - torch| <= atol + rtol * |torch|``, returning a list of
  :class:`~zoo.spec.manifest.CheckResult` (or a full
  :class:`~zoo.spec.manifest.VerificationReport`).

Both may also take, by keyword, ``options`` (the format's validated options, an
instance of its ``options`` model: ``--format-option NAME.KEY=VALUE``), ``target``
(an :class:`ExportTarget`: the bundle's name and class names) and ``data`` (a
:class:`zoo.exporter.trainingdata.TrainingData`: the weights' training data,
loaded on first use; the verifier gets none when a bundle is re-checked); they
are passed only to a function whose signature names them, as pluggy passes hook
arguments. A check with ``accuracy`` set that fails refuses the export with the
accuracy it loses. The zoo's own formats (the core plugin ``formats``) are
``onnx``, which every bundle holds, ``pt2``, ``triton`` and ``int8``. Nothing here
imports torch or numpy.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from zoo.spec.architecture import IMPORT_PATTERN
from zoo.spec.numbers import NoBoolNumbers
from zoo.spec.provenance import Provenance, load_callable

#: The format every bundle has: its readers (zoo.load, the ONNX predictor) load model.onnx.
REQUIRED_FORMAT = "onnx"
#: A bundle's file: a relative path of plain names (none starting with a dot) joined by "/".
FILE_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*(/[A-Za-z0-9_][A-Za-z0-9_.\-]*)*$"
_PART = r"([A-Za-z0-9_][A-Za-z0-9_.\-]*|\{name\})"
#: A format's declared file: the same, where a folder may be ``{name}``, the bundle's name.
DECLARED_FILE_PATTERN = rf"^{_PART}(/{_PART})*$"
BundlePath = Annotated[str, Field(pattern=DECLARED_FILE_PATTERN, max_length=255)]


class FormatOptions(NoBoolNumbers):
    """Base class of an export format's own options: frozen, unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class ExportTarget(BaseModel):
    """The bundle being written, as a format's writer and verifier may need it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="The bundle's name: its destination folder's name.")
    classes: tuple[str, ...] = Field(description="Class names, index order (one per logit).")


class ExportFormat(BaseModel):
    """One export format: its name, its files, its options, how it is written and verified."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=32,
                      description="What --format names it by.")
    summary: str = Field(min_length=1, max_length=200, pattern=r"^[^\n]*$",
                         description="One line.")
    files: tuple[BundlePath, ...] = Field(
        min_length=1, description="The files it adds to a bundle: relative paths, '/' between "
        "folders, no '..'; a folder named {name} is the bundle's name.")
    writer: str = Field(pattern=IMPORT_PATTERN, description="'module:function' writing them.")
    verifier: str = Field(pattern=IMPORT_PATTERN,
                          description="'module:function' checking them against the model.")
    options: type[FormatOptions] = Field(
        FormatOptions, description="Its own options' pydantic model (--format-option "
        "NAME.KEY=VALUE).")
    provenance: Provenance | None = Field(None, description="Set by the registry.")

    def files_for(self, bundle: str) -> tuple[str, ...]:
        """Its files in the bundle named ``bundle`` (``{name}`` replaced), or a ValueError
        when that name cannot be a folder's."""
        files = tuple(f.replace("{name}", bundle) for f in self.files)
        bad = [f for f in files if not re.fullmatch(FILE_PATTERN, f)]
        if bad:
            raise ValueError(f"the bundle name {bundle!r} cannot name a folder of export format "
                             f"{self.name!r}; accepted: letters, digits, '_', '-', '.'")
        return files

    def load_writer(self) -> Callable[..., Any]:
        """Import and return the writer function (a PluginError naming the plugin if it fails)."""
        return load_callable(self.writer, f"writer of export format {self.name!r}",
                             self.provenance)

    def load_verifier(self) -> Callable[..., Any]:
        """Import and return the verifier function."""
        return load_callable(self.verifier, f"verifier of export format {self.name!r}",
                             self.provenance)


__all__ = ["DECLARED_FILE_PATTERN", "FILE_PATTERN", "REQUIRED_FORMAT", "ExportFormat",
           "ExportTarget", "FormatOptions"]
