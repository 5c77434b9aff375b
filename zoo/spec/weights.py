"""Weight sets: the pretrained weights an architecture's spec declares (torch-free).

A :class:`WeightSet` names one trained bundle of an architecture, as torchvision's
``Weights`` enums and timm's ``pretrained_cfg`` do: a ``tag`` to ask for it by
(``zoo.create_model("Net", weights="cifar2")``), where the bundle lives, the
SHA-256 that pins it, and what it was measured on. The first set of a spec is
its default (``pretrained=True``).

A bundle lives either in an installed package (``"zoo_chapter8.weights:Net-cifar2"``:
the directory ``Net-cifar2`` inside package ``zoo_chapter8.weights``) or at an
``https://`` URL of a ``.zip`` or ``.tar.gz`` archive of the bundle, downloaded once
into ``$ZOO_CACHE_DIR/weights`` (:mod:`zoo.bundles.store`). ``sha256`` is the bundle's
identity, :func:`zoo.bundles.integrity.bundle_sha256`: the SHA-256 of its ``manifest.json``,
which in turn lists the SHA-256 of every other file; a URL also pins the archive's
own SHA-256, checked before anything is extracted, and may declare its size
(``archive_size``), which caps the download (with a margin; 1 GiB where none is declared).

A plugin keeps its declarations in a JSON file generated from its bundles'
manifests (``{"Net": [WeightSet, ...], ...}``), read with :func:`read_weights_file`::

    python -m zoo.bundles.weightsync --write plugins/zoo_chapter8/weights.json \
        --package zoo_chapter8.weights

(:mod:`zoo.bundles.weightsync`; ``--check`` instead of ``--write`` fails when the file
differs from what the bundles say.)
"""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from zoo.errors import PluginError

TAG_PATTERN = r"^[a-z0-9][a-z0-9_.\-]*$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
RESOURCE_PATTERN = re.compile(r"^(?P<package>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):(?P<path>[^:]+)$")
ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz")
#: The largest archive_size a weight set may declare (64 GiB).
MAX_ARCHIVE_SIZE = 1 << 36

#: How :meth:`WeightSet.describe_metrics` names the usual metrics.
METRIC_NAMES = {"val_acc": "val accuracy", "acc": "accuracy", "top1": "top-1 accuracy",
                "top5": "top-5 accuracy"}


def _loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class WeightSet(BaseModel):
    """One set of pretrained weights of an architecture: where its bundle is, and its metrics."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tag: str = Field(pattern=TAG_PATTERN, max_length=64,
                     description="Its name, e.g. 'cifar2': create_model(NAME, weights=TAG).")
    location: str = Field(
        min_length=3,
        description="Where the bundle is: a package resource 'package.name:dir' or the "
        "https:// URL of a .zip or .tar.gz archive of the bundle.")
    sha256: str = Field(
        pattern=SHA256_PATTERN,
        description="The bundle's identity: SHA-256 of its manifest.json "
        "(zoo.bundles.integrity.bundle_sha256), which lists every other file's SHA-256.")
    archive_sha256: str | None = Field(
        None, pattern=SHA256_PATTERN,
        description="For a URL: SHA-256 of the archive, checked before it is extracted.")
    archive_size: int | None = Field(
        None, ge=1, le=MAX_ARCHIVE_SIZE,
        description="For a URL: the archive's size in bytes. The download stops past it (plus "
        "a margin); without it, past 1 GiB.")
    dataset: str = Field(min_length=1, description="The dataset the weights were trained on.")
    split: str = Field(min_length=1,
                       description="The held-out images the metrics were measured on, "
                       "e.g. '10% of the training images, seed 0'.")
    metrics: dict[str, float] = Field(default_factory=dict,
                                      description="Measured on `split`, e.g. {'val_acc': 0.906}.")
    classes: tuple[str, ...] = Field(min_length=1, description="Class names, index order.")
    mean: tuple[float, ...] = Field(min_length=1,
                                    description="Per-channel mean of the input normalization.")
    std: tuple[float, ...] = Field(min_length=1,
                                   description="Per-channel std of the input normalization.")

    @model_validator(mode="after")
    def _check(self) -> WeightSet:
        if len(self.mean) != len(self.std):
            raise ValueError(f"weight set {self.tag!r} has {len(self.mean)} means but "
                             f"{len(self.std)} stds")
        if "://" in self.location:
            url = urlsplit(self.location)
            if url.scheme != "https" and not (url.scheme == "http" and _loopback(url.hostname)):
                raise ValueError(f"weight set {self.tag!r}: URL {self.location!r} must use "
                                 "https:// (plain http only on the loopback address)")
            if not url.path.lower().endswith(ARCHIVE_SUFFIXES):
                raise ValueError(f"weight set {self.tag!r}: URL {self.location!r} must name an "
                                 f"archive ending in {', '.join(ARCHIVE_SUFFIXES)}")
            if self.archive_sha256 is None:
                raise ValueError(f"weight set {self.tag!r}: URL {self.location!r} needs the "
                                 "archive's archive_sha256")
            return self
        if self.archive_size is not None:
            raise ValueError(f"weight set {self.tag!r}: archive_size applies to a URL, not to "
                             f"package resource {self.location!r}")
        match = RESOURCE_PATTERN.match(self.location)
        path = PurePosixPath(match["path"]) if match else None
        if path is None or path.is_absolute() or ".." in path.parts or "\\" in str(path):
            raise ValueError(f"weight set {self.tag!r}: location {self.location!r} is neither "
                             "an https:// URL nor a package resource 'package.name:relative/dir'")
        return self

    def __hash__(self) -> int:  # specs are hashed (cached config models); metrics is a dict
        return hash((self.tag, self.location, self.sha256))

    @property
    def is_url(self) -> bool:
        """Whether the bundle is downloaded (else it is a package resource)."""
        return "://" in self.location

    def describe_metrics(self) -> str:
        """The metrics naming their split: ``val accuracy 0.906 (10% of the training images)``."""
        if not self.metrics:
            return f"no metrics recorded ({self.split})"
        shown = ", ".join(f"{METRIC_NAMES.get(k, k)} {v:.3f}" for k, v in self.metrics.items())
        return f"{shown} ({self.split})"


def unique_tags(sets: tuple[WeightSet, ...]) -> tuple[WeightSet, ...]:
    tags = [w.tag for w in sets]
    duplicated = sorted({t for t in tags if tags.count(t) > 1})
    if duplicated:
        raise ValueError(f"weight set tags must be unique, got {', '.join(duplicated)} twice")
    return sets


#: A spec's weight sets: tags unique, the first is the default.
WeightSets = Annotated[tuple[WeightSet, ...], AfterValidator(unique_tags)]


class _WeightsFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    architectures: dict[str, WeightSets]


def parse_weights(data: Any,
                  source: str = "weight declarations") -> dict[str, tuple[WeightSet, ...]]:
    """Validate ``{architecture: [weight set, ...]}``; a :class:`PluginError` naming the problem."""
    try:
        return dict(_WeightsFile.model_validate({"architectures": data}).architectures)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"][1:]) or "(root)"
        raise PluginError(f"{source} is invalid at {loc}: {err['msg']}") from None


def read_weights_file(path: Path | str) -> dict[str, tuple[WeightSet, ...]]:
    """Read a plugin's weights file: ``{architecture: [weight set, ...]}`` as JSON."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PluginError(f"cannot read the weights file {path}: {exc}") from None
    return parse_weights(data, str(path))


def dump_weights(declared: dict[str, tuple[WeightSet, ...]]) -> str:
    """The JSON text of a weights file, stable (sorted architectures, fields in model order)."""
    data = {arch: [w.model_dump(mode="json", exclude_none=True) for w in sets]
            for arch, sets in sorted(declared.items(), key=lambda kv: kv[0].lower())}
    return json.dumps(data, indent=2) + "\n"


__all__ = ["WeightSet", "WeightSets", "dump_weights", "parse_weights", "read_weights_file"]
