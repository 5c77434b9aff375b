"""``zoo serve Net`` from a wheel installed outside the checkout, with torch not importable.

The wheel is built from a copy of the source tree and installed (``--no-deps``) into a
fresh virtual environment whose dependencies are links to the running interpreter's
packages, without torch and the other packages serving does not need (torchvision,
onnx, matplotlib, ...). From a folder outside the checkout the installed ``zoo serve
Net`` answers an image, then exits 0 on SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
from serve_support import call, encoded, pixels

ROOT = Path(__file__).resolve().parents[1]
OWN = ("zoo", "zoo_chapter8", "zoo_datasets")
#: Top-level names serving must do without (prefixes of site-packages entries).
LEFT_OUT = ("torch", "functorch", "torchgen", "triton", "nvidia", "onnx", "onnxscript",
            "onnx_ir", "matplotlib", "mpl_toolkits", "tensorboard", "tritonclient", "playwright")

pytestmark = pytest.mark.slow


def source_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, capture_output=True, check=True, timeout=60).stdout
    return [f for f in out.decode().split("\0") if f and (ROOT / f).is_file()]


def left_out(name: str) -> bool:
    base = name.split("-")[0].split(".")[0].lower()
    return base in LEFT_OUT or base.startswith(("nvidia", "torch"))


def dependency_links(dest: Path) -> Path:
    """Links to the running interpreter's packages, but this zoo and what serving leaves out."""
    dest.mkdir()
    stdlib = {Path(sysconfig.get_paths()[key]).resolve() for key in ("stdlib", "platstdlib")}
    for entry in sys.path:
        place = Path(entry or ".").resolve()
        if (not place.is_dir() or place in stdlib
                or (place.parent in stdlib and place.name != "site-packages")
                # the checkout itself, but not a virtual environment kept inside it
                or ((place == ROOT or ROOT in place.parents)
                    and place.name not in ("site-packages", "dist-packages"))):
            continue
        for item in place.iterdir():
            name = item.name
            own = (name in OWN or name.startswith(("zoo-", "zoo.", "__editable__"))
                   or name.endswith(".pth") or name == "__pycache__")
            if not own and not left_out(name) and not (dest / name).exists():
                (dest / name).symlink_to(item)
    return dest


def test_zoo_serve_runs_from_a_wheel_without_torch(tmp_path: Path) -> None:
    import shutil

    source = tmp_path / "source"
    for rel in source_files():
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, source / rel)
    dist = tmp_path / "dist"
    code = ("from setuptools import build_meta\n"
            f"print('BUILT', build_meta.build_wheel({str(dist)!r}))\n")
    dist.mkdir()
    built = subprocess.run([sys.executable, "-c", code], cwd=source, capture_output=True,
                           text=True, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    wheel = dist / built.stdout.split("BUILT ")[-1].strip()
    with zipfile.ZipFile(wheel) as zf:
        members = set(zf.namelist())
    assert {"zoo/cli/serve.py", "zoo/serve/app.py", "zoo/serve/static/index.html",
            "zoo/serve/static/app.js", "zoo/serve/static/style.css"} <= members

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; "
                                "print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "zz_dependencies.pth").write_text(f"{dependency_links(tmp_path / 'deps')}\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("ZOO_")}
    env.update(ZOO_CACHE_DIR=str(tmp_path / "cache"), PYTHONNOUSERSITE="1")
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                           "--no-deps", "--no-index", "--no-compile", "--disable-pip-version-check",
                           "--quiet", str(wheel)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    probe = subprocess.run([str(python), "-c", "import torch"], capture_output=True, env=env,
                           cwd=outside)
    assert probe.returncode != 0  # torch is not importable there

    server = subprocess.Popen([str(env_dir / "bin" / "zoo"), "serve", "Net", "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                              cwd=outside)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert " at http://127.0.0.1:" in line, line + (server.stderr.read() if server.poll()
                                                        is not None else "")
        url = line.split(" at ")[1].split()[0]
        assert call(f"{url}v2/health/ready").json() == {"ready": True}
        reply = call(f"{url}zoo/models/Net/classify", "POST", encoded(pixels(1)),
                     {"Content-Type": "image/png"})
        assert reply.status == 200, reply.body
        assert reply.json()["predictions"][0]["label"] in ("airplane", "bird")
        cards = call(f"{url}zoo/models").json()["models"]
        assert Path(cards[0]["name"]).name == "Net"
        assert call(url).status == 200  # the page, from the installed package data
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()
