"""Old module paths of zoo 0.1 (:mod:`zoo.util.deprecation`): each warns once per import at
the importing line, takes its names from the modules they moved to, lists them, and runs
as ``python -m``; a package's moved names warn the same way."""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

import zoo.exporter


def fresh(name: str) -> tuple[Any, list[warnings.WarningMessage]]:
    sys.modules.pop(name, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(name)
    return module, caught


def test_an_old_path_warns_at_the_import_and_names_the_new_one() -> None:
    module, caught = fresh("zoo.compare")
    (warning,) = [w for w in caught if issubclass(w.category, FutureWarning)]
    assert str(warning.message).startswith("zoo.compare is deprecated and will be removed in "
                                           "zoo 0.3; import ")
    assert "zoo.analysis.compare" in str(warning.message)
    from zoo.analysis import compare

    assert module.compare is compare.compare
    sys.modules.pop("zoo.compare", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import zoo.compare  # type: ignore[import-not-found]  # noqa: F401
    assert [w.filename for w in caught] == [__file__]  # the importing line is named


def test_names_come_from_every_module_an_old_one_was_split_into() -> None:
    module, _ = fresh("zoo.bundle")
    from zoo.models import load, statedict

    assert module.load is load.load  # the first
    assert module.strip_prefix is statedict.strip_prefix  # the second
    with pytest.raises(AttributeError, match=r"^module 'zoo.bundle' \(moved to "
                                             r"zoo.models.load\) has no attribute 'nope'$"):
        module.nope  # noqa: B018
    expected = {n for m in (load, statedict) for n in dir(m) if not n.startswith("_")}
    assert set(dir(module)) == expected and dir(module) == sorted(expected)


def test_python_dash_m_of_an_old_path_runs_the_new_module(tmp_path: Path) -> None:
    # in a fresh interpreter: under pytest the zoo's modules load through its assertion
    # rewriter, which has no get_code
    proc = subprocess.run([sys.executable, "-m", "zoo.weightsync", "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=True)
    assert proc.stdout.startswith("usage: python -m zoo.bundles.weightsync")
    assert "FutureWarning: zoo.weightsync is deprecated and will be removed in zoo 0.3; " \
        "import zoo.bundles.weightsync instead" in proc.stderr


def test_a_package_warns_for_its_moved_names_and_lists_its_api() -> None:
    from zoo.exporter import onnx

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exporters = zoo.exporter.EXPORTERS
    (warning,) = caught
    assert warning.filename == __file__  # pointed at the line that used it
    assert "zoo.exporter.EXPORTERS is deprecated" in str(warning.message)
    assert exporters is onnx.EXPORTERS
    assert {"export", "verify_bundle", "ExportResult"} <= set(dir(zoo.exporter))
    assert "EXPORTERS" not in dir(zoo.exporter)
    with pytest.raises(AttributeError, match=r"^module 'zoo.exporter' has no attribute 'x'$"):
        zoo.exporter.x  # noqa: B018
