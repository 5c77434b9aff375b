"""The zoo as a user installs it: an sdist and a wheel, the wheel installed (not editable).

The sdist is built from a copy of the source tree, the wheel from the unpacked
sdist (so the sdist provably holds what the wheel needs), both without a
deprecation warning. The wheel goes into a fresh virtual environment whose
dependencies (torch, onnxruntime, ...) are the running interpreter's, shared
through a ``.pth`` file that points at links to them, with every trace of this
checkout's own zoo left out; then, from a folder outside the checkout, the
installed ``zoo`` lists, predicts, evaluates and loads pretrained weights.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
OWN = ("zoo", "zoo_chapter8", "zoo_datasets")
BUNDLE_FILES = ("manifest.json", "model.onnx", "model.pt")
ARCHITECTURES = ("Net", "NetWidth", "NetDropout", "NetBatchNorm", "NetDepth", "NetRes",
                 "NetResDeep")

pytestmark = pytest.mark.slow


def source_files() -> list[str]:
    """The checkout's files (tracked and new, not ignored), or all of them outside git."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard"], cwd=ROOT, capture_output=True, check=True,
                             timeout=60).stdout
        return [f for f in out.decode().split("\0") if f and (ROOT / f).is_file()]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".nox", "build", "dist", "runs", "__pycache__", ".pytest_cache"}
        return [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
                if p.is_file() and not skip & set(p.relative_to(ROOT).parts)]


def build(kind: str, source: Path, out: Path) -> tuple[Path, str]:
    """Run setuptools' PEP 517 hook ``build_<kind>`` in ``source``; (artifact, its output)."""
    code = (f"from setuptools import build_meta\n"
            f"print('BUILT', build_meta.build_{kind}({str(out)!r}))\n")
    proc = subprocess.run([sys.executable, "-W", "default", "-c", code], cwd=source,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    name = proc.stdout.split("BUILT ")[-1].strip()
    return out / name, proc.stdout + proc.stderr


def dependency_links(dest: Path) -> Path:
    """Links to every package of the running interpreter's site folders but this zoo."""
    dest.mkdir()
    # the standard library and its lib-dynload, but not a venv's site-packages, which lies
    # under its platstdlib (sys.exec_prefix/lib/pythonX.Y)
    stdlib = {Path(sysconfig.get_paths()[key]).resolve() for key in ("stdlib", "platstdlib")}
    # this interpreter's own environment may lie inside the checkout (nox's .nox/dev)
    prefix = Path(sys.prefix).resolve()
    for entry in sys.path:
        place = Path(entry or ".").resolve()
        in_checkout = (place == ROOT or ROOT in place.parents) and not (
            place == prefix or prefix in place.parents)
        if (not place.is_dir() or place in stdlib
                or (place.parent in stdlib and place.name != "site-packages") or in_checkout):
            continue
        for item in place.iterdir():
            name = item.name
            own = (name in OWN or name.startswith(("zoo-", "zoo.", "__editable__"))
                   or name.endswith(".pth") or name == "__pycache__")
            if not own and not (dest / name).exists():
                (dest / name).symlink_to(item)
    return dest


def make_images(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for cls in ("airplane", "bird"):
        for i in range(3):
            data = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            (root / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(data).save(root / cls / f"{i}.png")
    return root


def test_sdist_and_wheel_install_and_run_outside_the_checkout(tmp_path: Path) -> None:
    import setuptools

    major = int(setuptools.__version__.split(".")[0])
    assert major >= 77, (f"building the zoo needs setuptools >= 77 (SPDX license metadata), "
                         f"this environment has {setuptools.__version__}: pip install -e '.[dev]'")
    source = tmp_path / "source"
    for rel in source_files():
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, source / rel)
    dist = tmp_path / "dist"
    dist.mkdir()
    sdist, log = build("sdist", source, dist)
    assert "Deprecat" not in log, log
    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
        if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4
            tf.extractall(tmp_path / "unpacked", filter="data")
        else:
            tf.extractall(tmp_path / "unpacked")  # our own sdist
    required = {"pyproject.toml", "README.md", "LICENSE", "zoo/cli/__init__.py",
                "zoo/cli/evaluate.py", "zoo/spec/manifest.schema.json",
                "plugins/zoo_chapter8/fused.c", "plugins/zoo_chapter8/fused_bn.c",
                "plugins/zoo_chapter8/fused_head.c",
                "plugins/zoo_chapter8/fused_simd.h", "plugins/zoo_chapter8/fused_conv.h",
                "plugins/zoo_chapter8/fused_stem.h", "plugins/zoo_chapter8/weights.json",
                "exports/__init__.py", "tests/conftest.py", "noxfile.py",
                *(f"exports/{a}-cifar2/{f}" for a in ARCHITECTURES for f in BUNDLE_FILES)}
    assert required <= names, sorted(required - names)
    wheel, log = build("wheel", tmp_path / "unpacked" / sdist.name.removesuffix(".tar.gz"), dist)
    assert "Deprecat" not in log, log
    with zipfile.ZipFile(wheel) as zf:
        members = set(zf.namelist())
    required = {"zoo/cli/__init__.py", "zoo/cli/predict.py", "zoo/spec/manifest.schema.json",
                "zoo/py.typed", "zoo_chapter8/fused.c", "zoo_chapter8/fused_bn.c",
                "zoo_chapter8/fused_head.c",
                "zoo_chapter8/fused_simd.h", "zoo_chapter8/fused_conv.h",
                "zoo_chapter8/fused_stem.h", "zoo_chapter8/weights.json",
                "zoo-0.1.0.dist-info/licenses/LICENSE",
                *(f"zoo_chapter8/weights/{a}-cifar2/{f}" for a in ARCHITECTURES
                  for f in BUNDLE_FILES)}
    assert required <= members, sorted(required - members)
    assert not any(m.startswith(("tests/", "exports/", "plugins/")) for m in members)
    print(f"wheel {wheel.name}: {wheel.stat().st_size / 2**20:.2f} MiB")

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; "
                                "print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "zz_dependencies.pth").write_text(f"{dependency_links(tmp_path / 'deps')}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ZOO_EXPORTS")}
    env.update(ZOO_CACHE_DIR=str(tmp_path / "cache"), PYTHONNOUSERSITE="1")
    # this interpreter's pip installs into the new venv (which has none of its own)
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                           "--no-deps", "--no-index",
                           "--no-compile", "--disable-pip-version-check", "--quiet", str(wheel)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    outside = tmp_path / "elsewhere"
    images = make_images(outside / "val")

    def run(*args: str) -> str:
        proc = subprocess.run(list(args), capture_output=True, text=True, env=env,
                              cwd=outside, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    zoo_cmd = str(env_dir / "bin" / "zoo")
    listed = run(zoo_cmd, "list").splitlines()
    assert [line.split()[0] for line in listed[1:]] == sorted(ARCHITECTURES, key=str.lower)
    assert all(line.split()[-1] == "cifar2" for line in listed[1:])
    predicted = run(zoo_cmd, "predict", "Net", str(images / "bird" / "0.png"))
    assert predicted.split("\t")[1].split()[0] in ("airplane", "bird")
    evaluated = run(zoo_cmd, "evaluate", "Net", "val")
    assert evaluated.startswith("Net-cifar2 (Net) on val, onnxruntime: 6 images")
    code = ("import zoo, zoo_chapter8, torch\n"
            "print(zoo.__file__)\nprint(zoo_chapter8.__file__)\n"
            "for name in zoo.list_models():\n"
            "    m = zoo.create_model(name, pretrained=True)\n"
            "    ref = zoo.load(name)\n"
            "    x = torch.rand(2, 3, 32, 32)\n"
            "    assert torch.equal(m.eval()(x), ref(x)), name\n"
            "print(zoo.bundles.store.resolve_bundle('NetRes'))\n")
    lines = run(str(python), "-c", code).splitlines()
    for line in lines:
        assert Path(line).is_relative_to(site), lines  # the wheel's files, not the checkout's
