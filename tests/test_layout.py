"""The package's shape: layers without cycles, torch-free packages that stay so, old paths kept."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Package -> the heavy modules importing it must leave out.
TORCH_FREE = {
    "zoo": ("torch", "numpy", "onnxruntime", "matplotlib", "PIL"),
    "zoo.spec": ("torch", "numpy", "onnxruntime", "matplotlib", "PIL"),
    "zoo.host": ("torch", "numpy", "onnxruntime", "matplotlib", "PIL"),
    "zoo.bundles": ("torch", "onnx", "matplotlib"),
    "zoo.deploy": ("torch", "onnx", "matplotlib"),
    "zoo.util": ("torch", "numpy", "onnx", "matplotlib"),
    "zoo.cli": ("torch", "numpy", "onnx", "onnxruntime", "matplotlib"),
    "zoo.trainer": ("torch", "numpy"),
    "zoo.exporter": ("torch", "numpy", "onnx"),
}
HEAVY = sorted({m for mods in TORCH_FREE.values() for m in mods})


def _imported_after(code: str) -> list[str]:
    probe = f"import sys\n{code}\nprint([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    return list(ast.literal_eval(out.strip().splitlines()[-1]))


@pytest.mark.parametrize("package", sorted(TORCH_FREE))
def test_a_torch_free_package_imports_no_heavy_module(package: str) -> None:
    imported = _imported_after(f"import {package}")
    assert not set(imported) & set(TORCH_FREE[package]), imported


def test_listing_and_showing_import_neither_torch_nor_numpy() -> None:
    code = ("from zoo.cli import main\nmain(['list'])\nmain(['show', 'NetResDeep'])\n"
            "main(['plugins'])\nmain(['datasets'])")
    assert _imported_after(code) == []


def test_the_layering_contracts_hold() -> None:
    code = ("import sys; from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(config_filename='pyproject.toml'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):  # every import, in functions too
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return found


def test_no_import_cycle_counting_every_import() -> None:
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
               for p in (ROOT / "zoo").rglob("*.py")}

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    edges = {m: {o for n in _imports(p) if (o := owner(n)) and o != m
                 # a package's __init__ gathering its own modules is no cycle of design
                 and not o.startswith(m + ".")}
             for m, p in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in modules:
        if module not in index:
            visit(module)
    assert cycles == []
    assert len(modules) > 80 and sum(map(len, edges.values())) > 300  # the walk saw the code


def test_modules_stay_small_and_the_package_shows_its_parts() -> None:
    long = {str(p.relative_to(ROOT)): n for p in [*(ROOT / "zoo").rglob("*.py"),
                                                  *(ROOT / "plugins").rglob("*.py")]
            if (n := len(p.read_text().splitlines())) > 410}
    assert long == {}
    packages = sorted(p.name for p in (ROOT / "zoo").iterdir() if (p / "__init__.py").is_file())
    assert packages == ["analysis", "builtin", "bundles", "cli", "deploy", "exporter", "host",
                        "models", "serve", "spec", "trainer", "util"]


def test_the_facades_lazy_names_are_listed_and_stay_functions() -> None:
    import zoo.exporter.write
    import zoo.trainer.loop

    assert {"train", "export", "load", "verify", "evaluate", "OnnxClassifier",
            "TrainConfig"} <= set(dir(zoo))
    assert set(zoo.__all__) <= set(dir(zoo))
    assert callable(zoo.train) and zoo.train is zoo.trainer.loop.train
    assert callable(zoo.export) and zoo.export is zoo.exporter.write.export


def test_the_old_module_paths_warn_and_give_the_same_objects() -> None:
    from zoo.spec.dataset import DatasetSpec
    from zoo.spec.weights import read_weights_file

    for name in ("zoo.datasets", "zoo.weights", "zoo.manifest"):
        sys.modules.pop(name, None)
    with pytest.warns(FutureWarning, match=r"^zoo.datasets is deprecated and will be removed in "
                                           r"zoo 0.3; import zoo.spec.dataset instead$"):
        from zoo.datasets import DatasetSpec as Old  # type: ignore[import-not-found]
    assert Old is DatasetSpec
    with pytest.warns(FutureWarning, match="import zoo.spec.weights instead"):
        import zoo.weights  # type: ignore[import-not-found]
    assert zoo.weights.read_weights_file is read_weights_file
    with pytest.warns(FutureWarning), pytest.raises(ImportError, match="no_such_name"):
        from zoo.manifest import no_such_name  # type: ignore[import-not-found]  # noqa: F401
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from zoo.exporter import export  # the package paths themselves stay, silently

        assert export is zoo.export


def test_the_old_tool_paths_still_run(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "zoo.modeltable", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--check README" in proc.stdout
    assert "zoo.modeltable is deprecated" in proc.stderr
    out = subprocess.run([sys.executable, "-m", "zoo.bundles.weightsync", "--write",
                          str(tmp_path / "w.json"), "--package", "zoo_chapter8.weights"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    declared = json.loads((tmp_path / "w.json").read_text())
    assert declared == json.loads((ROOT / "plugins" / "zoo_chapter8" / "weights.json").read_text())
