"""Copied to the root of the mutation session's source copy (first on PYTHONPATH).

The checkout's editable install maps the package ``zoo_chapter8.weights`` onto the
checkout's ``exports/``; in the copy, where the mutants are, it must be the copy's
``exports/`` (the tests compare it with :func:`zoo.bundles.store.source_exports_dir`, which is
beside the copied ``zoo``). Python imports ``sitecustomize`` at startup, so every
process of the session, the fork server's included, gets this finder first.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from importlib.machinery import ModuleSpec
from typing import Any

_EXPORTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "exports")


class _CopiedWeights:
    @classmethod
    def find_spec(cls, name: str, path: Any = None, target: Any = None) -> ModuleSpec | None:
        if name != "zoo_chapter8.weights":
            return None
        return importlib.util.spec_from_file_location(
            name, os.path.join(_EXPORTS, "__init__.py"), submodule_search_locations=[_EXPORTS])


sys.meta_path.insert(0, _CopiedWeights)
