"""The models a server answers for: ``[NAME=]BUNDLE`` arguments, SHA-256 pins, loading.

``zoo serve Net exports/NetRes-cifar2 big=/srv/bundles/NetWidth`` serves three
bundles, as ``Net``, ``NetRes-cifar2`` and ``big``: a bare name is served under that
name, a path under its directory's name, and ``NAME=BUNDLE`` under ``NAME``. Each
bundle is resolved as ``zoo predict`` resolves it (:func:`zoo.pretrained.resolve_bundle`)
and checked file by file before its graph is loaded.

Pins (``--expect-sha256``) are ``NAME=HEX`` (pin the model served as ``NAME``) or a
bare ``HEX`` when exactly one bundle is served; a pinned bundle whose manifest has
another SHA-256 is refused, as ``zoo predict --expect-sha256`` refuses it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from zoo.bundles.integrity import bundle_sha256
from zoo.errors import ZooError
from zoo.serve.models import ServedModel, ServeSettings

if TYPE_CHECKING:
    from zoo.host.registry import Registry

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True)
class ModelSource:
    """One ``[NAME=]BUNDLE`` argument: the name to serve it as, and the bundle as given."""

    name: str
    bundle: str


def _bare(text: str) -> bool:
    return "/" not in text and "\\" not in text and text not in ("", ".", "..")


def parse_sources(args: Sequence[str]) -> list[ModelSource]:
    """``["Net", "fast=exports/NetRes-cifar2"]`` as sources; the names are checked later."""
    sources = []
    for arg in args:
        name, sep, bundle = arg.partition("=")
        if sep and _bare(name) and bundle:
            sources.append(ModelSource(name, bundle))
        else:
            sources.append(ModelSource(arg if _bare(arg) else Path(arg).name, arg))
    return sources


def parse_pins(values: Sequence[str], names: Sequence[str]) -> dict[str, str]:
    """``--expect-sha256`` values as ``{model name: hex}``; see the module's docstring."""
    pins: dict[str, str] = {}
    for value in values:
        name, sep, digest = value.rpartition("=")
        if not sep:
            if len(names) != 1:
                raise ZooError(f"--expect-sha256 {value!r} names no model, and {len(names)} "
                               "bundles are served; accepted: NAME=HEX for each pinned model")
            name = names[0]
        if name not in names:
            raise ZooError(f"--expect-sha256 pins {name!r}, which is not served; accepted: "
                           f"NAME=HEX with NAME one of {', '.join(names)}")
        if name in pins:
            raise ZooError(f"--expect-sha256 pins {name!r} twice; accepted: one pin per model")
        pins[name] = digest
    return pins


def load_models(sources: Sequence[ModelSource], settings: ServeSettings, *,
                pins: Mapping[str, str] | None = None, registry: Registry | None = None
                ) -> list[ServedModel]:
    """Resolve, check and load every bundle; a bad name, bundle or pin is a ZooError."""
    from zoo.bundles.store import resolve_bundle
    from zoo.deploy import OnnxClassifier

    if not sources:
        raise ZooError("no bundle to serve; accepted: one or more bundle names or directories")
    seen: dict[str, str] = {}
    for source in sources:
        if not NAME_PATTERN.fullmatch(source.name):
            raise ZooError(f"cannot serve a model named {source.name!r}; accepted: letters, "
                           "digits, '_', '.' and '-', starting with a letter or digit "
                           "(rename it: NAME=BUNDLE)")
        if source.name in seen:
            raise ZooError(f"two bundles ({seen[source.name]!r} and {source.bundle!r}) would be "
                           f"served as {source.name!r}; name one of them: NAME=BUNDLE")
        seen[source.name] = source.bundle
    models = []
    for source in sources:
        path = resolve_bundle(source.bundle, registry=registry)
        expect = (pins or {}).get(source.name)
        classifier = OnnxClassifier(path, threads=settings.threads, expect_sha256=expect,
                                    graph=settings.graph)
        models.append(ServedModel(source.name, classifier, bundle_sha256(path), settings))
    return models


__all__ = ["ModelSource", "load_models", "parse_pins", "parse_sources"]
