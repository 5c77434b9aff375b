"""Weight sets declared in specs: the shipped ones match their bundles, and they load.

The URL tests serve bundle archives from an ``http.server`` on 127.0.0.1 started
here: downloaded once into ``$ZOO_CACHE_DIR/weights``, a tampered or wrongly
pinned download refused, and nothing left in the cache after any failure.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import re
import shutil
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from zoo_chapter8 import specs as chapter8_specs
from zoo_chapter8.specs import BOOK_VAL_ACC

import zoo
from zoo.bundles.hub import WeightsError, fetch_weights
from zoo.bundles.integrity import bundle_sha256, open_bundle, read_manifest
from zoo.bundles.store import resolve_bundle, source_exports_dir
from zoo.bundles.weightsync import main as weightsync
from zoo.host.registry import Registry
from zoo.models.pretrained import create_pretrained
from zoo.spec.manifest import MANIFEST_FILE, WEIGHTS_FILE
from zoo.spec.weights import WeightSet, parse_weights
from zoo.util.download import DownloadError

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS_JSON = ROOT / "plugins" / "zoo_chapter8" / "weights.json"
PACKAGE = "zoo_chapter8.weights"
BOOK = sorted(BOOK_VAL_ACC)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the shipped declarations ------------------------------------------------------------


@pytest.mark.parametrize("arch", BOOK)
def test_declaration_matches_the_shipped_bundle(arch: str) -> None:
    [declared] = zoo.get_spec(arch).weights
    bundle = source_exports_dir() / f"{arch}-cifar2"
    manifest = open_bundle(bundle)
    assert manifest.training is not None and manifest.training.best is not None
    assert declared.tag == "cifar2"
    assert declared.location == f"{PACKAGE}:{arch}-cifar2"
    assert declared.sha256 == bundle_sha256(bundle) == sha256(bundle / MANIFEST_FILE)
    assert declared.classes == manifest.classes == ("airplane", "bird")
    assert (declared.mean, declared.std) == (manifest.normalization.mean,
                                             manifest.normalization.std)
    exported = manifest.training.exported
    assert exported is not None and declared.metrics == {"val_acc": exported.val_acc}
    assert declared.split == manifest.training.accuracy_split == \
        "10% of the training images, seed 0"
    assert fetch_weights(arch, declared) == resolve_bundle(arch)


def test_weights_file_is_generated_from_the_manifests(tmp_path: Path) -> None:
    assert weightsync(["--check", str(WEIGHTS_JSON), "--package", PACKAGE]) == 0
    # a bundle re-exported without regenerating the declarations fails the check
    exports = tmp_path / "exports"
    shutil.copytree(source_exports_dir(), exports,
                    ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    manifest = exports / "NetRes-cifar2" / MANIFEST_FILE
    raw = json.loads(manifest.read_text())
    raw["created"] = "2030-01-01T00:00:00Z"
    manifest.write_text(json.dumps(raw, indent=2) + "\n")
    args = ["--package", PACKAGE, "--exports", str(exports)]
    assert weightsync(["--check", str(WEIGHTS_JSON), *args]) == 1
    copy = tmp_path / "weights.json"
    shutil.copy(WEIGHTS_JSON, copy)
    assert weightsync(["--write", str(copy), *args]) == 0
    assert weightsync(["--check", str(copy), *args]) == 0
    old, new = json.loads(WEIGHTS_JSON.read_text()), json.loads(copy.read_text())
    assert new["NetRes"][0]["sha256"] == bundle_sha256(manifest.parent) != \
        old["NetRes"][0]["sha256"]
    assert {k: v for k, v in new.items() if k != "NetRes"} == \
        {k: v for k, v in old.items() if k != "NetRes"}


def test_weightsync_keeps_url_entries(tmp_path: Path) -> None:
    data = json.loads(WEIGHTS_JSON.read_text())
    url_set = {**data["Net"][0], "tag": "mirror", "location": "https://example.org/net.tar.gz",
               "archive_sha256": "a" * 64}
    data["Net"].append(url_set)
    copy = tmp_path / "weights.json"
    copy.write_text(json.dumps(data, indent=2) + "\n")
    assert weightsync(["--write", str(copy), "--package", PACKAGE]) == 0
    assert json.loads(copy.read_text())["Net"][1] == url_set


def test_create_model_pretrained_loads_the_shipped_weights() -> None:
    expected = torch.load(source_exports_dir() / "Net-cifar2" / WEIGHTS_FILE, weights_only=True)
    for model in (zoo.create_model("Net", pretrained=True),
                  zoo.create_model("Net", weights="cifar2", n_hidden=32, num_classes=2)):
        assert model.training  # like any create_model result
        state = model.state_dict()
        assert state.keys() == expected.keys()
        assert all(torch.equal(state[k], expected[k]) for k in expected)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(zoo.create_model("Net", pretrained=True).eval()(x),
                           zoo.load("Net")(x))
    fresh = zoo.create_model("Net")
    assert not torch.equal(fresh.state_dict()["fc2.weight"], expected["fc2.weight"])


def test_pretrained_errors_name_the_bad_value() -> None:
    with pytest.raises(WeightsError, match="Net has no weight set 'imagenet'; declared: cifar2"):
        zoo.create_model("Net", weights="imagenet")
    with pytest.raises(zoo.ZooError, match=r"the 'cifar2' weights of NetWidth fix n_chans1=32, "
                                           r"got n_chans1=16"):
        zoo.create_model("NetWidth", pretrained=True, n_chans1=16)
    with pytest.raises(zoo.ZooError, match="fix num_classes=2, got num_classes=10"):
        zoo.create_model("Net", pretrained=True, num_classes=10)
    with pytest.raises(zoo.ZooError, match="Net has no hyperparameter 'n_chans1'"):
        zoo.create_model("Net", pretrained=True, n_chans1=16)


# -- weight sets of one's own ------------------------------------------------------------


def weight_set(bundle: Path, location: str, **changes: object) -> WeightSet:
    manifest = read_manifest(bundle)
    fields: dict[str, object] = {
        "tag": "cifar2", "location": location, "sha256": bundle_sha256(bundle),
        "dataset": "imagefolder", "split": "10% of the training images, seed 0",
        "metrics": {"val_acc": 0.9}, "classes": manifest.classes,
        "mean": manifest.normalization.mean, "std": manifest.normalization.std}
    return WeightSet.model_validate({**fields, **changes})


def registry_with(weights: tuple[WeightSet, ...]) -> Registry:
    """A registry holding the chapter-8 specs, Net's weights replaced by ``weights``."""

    class Plugin:
        @zoo.hookimpl
        def zoo_architectures(self) -> list[zoo.ArchitectureSpec]:
            return [s.model_copy(update={"weights": weights if s.name == "Net" else ()})
                    for s in chapter8_specs.ARCHITECTURES]

    registry = Registry(entry_points=False)
    registry.register(Plugin(), name="test", package="zoo_chapter8")
    return registry


@pytest.fixture
def net_bundle(tmp_path: Path) -> Path:
    return Path(shutil.copytree(source_exports_dir() / "Net-cifar2", tmp_path / "Net-cifar2"))


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "weights"


def test_package_resource_weights_are_pinned(net_bundle: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "pkgs" / "zoo_test_weights"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    shutil.copytree(net_bundle, package / "Net-cifar2")
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    declared = weight_set(net_bundle, "zoo_test_weights:Net-cifar2")
    registry = registry_with((declared,))
    model = create_pretrained(registry, "Net")
    assert torch.equal(model.state_dict()["fc2.bias"],
                       torch.load(net_bundle / WEIGHTS_FILE, weights_only=True)["fc2.bias"])
    # a modified weights file: the manifest still has its pinned digest, open_bundle refuses
    with open(package / "Net-cifar2" / WEIGHTS_FILE, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(zoo.ZooError, match=r"model\.pt does not match its SHA-256"):
        create_pretrained(registry, "Net")
    # a modified manifest: refused before anything reads it
    manifest = package / "Net-cifar2" / MANIFEST_FILE
    manifest.write_text(manifest.read_text() + " ")
    with pytest.raises(WeightsError, match=r"Net weights 'cifar2': the bundle at .* has SHA-256 "
                                           r"[0-9a-f]{64}, not the [0-9a-f]{64} its spec declares"):
        create_pretrained(registry, "Net")
    missing = weight_set(net_bundle, "zoo_test_weights:Nothing-here")
    with pytest.raises(WeightsError, match="'zoo_test_weights:Nothing-here' does not exist"):
        create_pretrained(registry_with((missing,)), "Net")
    with pytest.raises(WeightsError, match="NetWidth declares no pretrained weights"):
        create_pretrained(registry, "NetWidth")


class Server:
    """A static HTTP server on 127.0.0.1 serving ``root``, counting the GET requests."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        requests = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                requests.append(self.path)
                super().do_GET()

            def log_message(self, format: str, *args: object) -> None:
                pass

        handler = functools.partial(Handler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "srv"
    root.mkdir()
    srv = Server(root)
    yield srv
    srv.close()


def tar_gz(bundle: Path, dest: Path, arcname: str | None) -> Path:
    with tarfile.open(dest, "w:gz") as tf:
        for f in sorted(bundle.iterdir()):
            tf.add(f, arcname=f"{arcname}/{f.name}" if arcname else f.name)
    return dest


def test_url_weights_download_once_into_the_cache(net_bundle: Path, server: Server, cache: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    archive = tar_gz(net_bundle, server.root / "net.tar.gz", "Net-cifar2")
    declared = weight_set(net_bundle, server.url("net.tar.gz"), archive_sha256=sha256(archive))
    registry = registry_with((declared,))
    model = create_pretrained(registry, "Net", weights="cifar2")
    expected = torch.load(net_bundle / WEIGHTS_FILE, weights_only=True)
    assert torch.equal(model.state_dict()["conv1.weight"], expected["conv1.weight"])
    err = capsys.readouterr().err
    assert "downloading Net weights 'cifar2'" in err and "downloaded Net weights" in err
    [cached] = list(cache.iterdir())  # the bundle, and nothing else (no archive, no temp)
    assert cached.name == f"Net-cifar2-{declared.sha256[:16]}"
    assert sorted(p.name for p in cached.iterdir()) == sorted(p.name for p in net_bundle.iterdir())
    assert bundle_sha256(cached) == declared.sha256
    assert server.requests == ["/net.tar.gz"]
    server.close()  # offline from now on: the cache serves
    assert resolve_bundle("Net", registry=registry) == cached
    assert resolve_bundle("Net-cifar2", registry=registry) == cached
    create_pretrained(registry, "Net")
    assert server.requests == ["/net.tar.gz"]
    # a modified cached copy is replaced by a fresh download, not used
    (cached / MANIFEST_FILE).write_text("{}")
    with pytest.raises(DownloadError, match="cannot download Net weights 'cifar2'"):
        create_pretrained(registry, "Net")


def test_zip_archives_with_the_bundle_at_the_top(net_bundle: Path, server: Server,
                                                 cache: Path) -> None:
    archive = server.root / "net.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in net_bundle.iterdir():
            zf.write(f, f.name)
    declared = weight_set(net_bundle, server.url("net.zip"), archive_sha256=sha256(archive))
    path = fetch_weights("Net", declared, progress=False)
    assert path.parent == cache and bundle_sha256(path) == declared.sha256


def assert_cache_empty(cache: Path) -> None:
    assert not cache.exists() or list(cache.iterdir()) == []


def test_tampered_download_is_refused_and_nothing_is_kept(net_bundle: Path, server: Server,
                                                          cache: Path) -> None:
    archive = tar_gz(net_bundle, server.root / "net.tar.gz", None)
    declared = weight_set(net_bundle, server.url("net.tar.gz"), archive_sha256=sha256(archive))
    raw = archive.read_bytes()
    archive.write_bytes(raw[:-10] + bytes(10))  # what the server now sends is not what is pinned
    with pytest.raises(DownloadError, match=r"refusing the download of Net weights 'cifar2' "
                                            r"from http://127\.0\.0\.1:\d+/net\.tar\.gz: its "
                                            r"SHA-256 is [0-9a-f]{64}, not the pinned"):
        fetch_weights("Net", declared, progress=False)
    assert_cache_empty(cache)


def test_wrong_bundle_hash_is_refused_and_nothing_is_kept(net_bundle: Path, server: Server,
                                                          cache: Path) -> None:
    archive = tar_gz(net_bundle, server.root / "net.tar.gz", "b")
    declared = weight_set(net_bundle, server.url("net.tar.gz"), archive_sha256=sha256(archive),
                          sha256="0" * 64)
    with pytest.raises(WeightsError, match=f"has SHA-256 {bundle_sha256(net_bundle)}, not the "
                                           f"{'0' * 64} its spec declares"):
        fetch_weights("Net", declared, progress=False)
    assert_cache_empty(cache)
    # an archive whose files do not match its own manifest
    with open(net_bundle / WEIGHTS_FILE, "ab") as fh:
        fh.write(b"\0")
    archive = tar_gz(net_bundle, server.root / "bad.tar.gz", None)
    declared = weight_set(net_bundle, server.url("bad.tar.gz"), archive_sha256=sha256(archive))
    with pytest.raises(zoo.ZooError, match=r"model\.pt does not match its SHA-256"):
        fetch_weights("Net", declared, progress=False)
    assert_cache_empty(cache)


def test_unsafe_archive_members_are_refused(net_bundle: Path, server: Server,
                                            cache: Path) -> None:
    archive = server.root / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        data = b"owned"
        info = tarfile.TarInfo("../evil.txt")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    declared = weight_set(net_bundle, server.url("evil.tar.gz"), archive_sha256=sha256(archive))
    with pytest.raises(DownloadError, match=r"member '\.\./evil\.txt' would be written outside"):
        fetch_weights("Net", declared, progress=False)
    assert_cache_empty(cache)
    assert not (cache.parent / "evil.txt").exists()


def test_offline_and_http_errors_are_clear(net_bundle: Path, server: Server,
                                           cache: Path) -> None:
    missing = weight_set(net_bundle, server.url("missing.tar.gz"), archive_sha256="1" * 64)
    with pytest.raises(DownloadError, match="the server answered HTTP 404"):
        fetch_weights("Net", missing, progress=False)
    url = missing.location
    server.close()
    offline = weight_set(net_bundle, url, archive_sha256="1" * 64)
    with pytest.raises(DownloadError, match=r"cannot download Net weights 'cifar2' from "
                                            r"http://127\.0\.0\.1:\d+/missing\.tar\.gz: .*no "
                                            r"network\?"):
        fetch_weights("Net", offline, progress=False)
    assert_cache_empty(cache)


# -- validation ---------------------------------------------------------------------------


def test_weight_set_validation(net_bundle: Path) -> None:
    ok = weight_set(net_bundle, "https://example.org/w/net.tar.gz", archive_sha256="2" * 64)
    assert ok.is_url
    assert ok.describe_metrics() == "val accuracy 0.900 (10% of the training images, seed 0)"
    bad = {
        "http://example.org/net.tar.gz": "must use https://",
        "https://example.org/net.rar": "must name an archive ending in .zip",
        "/abs/path": "neither an https:// URL nor a package resource",
        "pkg:../up": "neither an https:// URL nor a package resource",
    }
    for location, message in bad.items():
        with pytest.raises(ValueError, match=re.escape(message)):
            weight_set(net_bundle, location, archive_sha256="2" * 64)
    with pytest.raises(ValueError, match="needs the archive's archive_sha256"):
        weight_set(net_bundle, "https://example.org/net.zip")
    with pytest.raises(zoo.ZooError, match=r"Net\.0\.sha256"):
        parse_weights({"Net": [{**ok.model_dump(), "sha256": "xyz"}]}, "Net's weights")
    with pytest.raises(zoo.ZooError, match="tags must be unique, got cifar2 twice"):
        parse_weights({"Net": [ok.model_dump(), ok.model_dump()]})


def test_readme_weight_set_example_validates() -> None:
    readme = (ROOT / "README.md").read_text()
    [snippet] = [m for m in re.findall(r"```python\n(.*?)```", readme, re.S)
                 if m.startswith("zoo.WeightSet(")]
    declared = eval(snippet, {"zoo": zoo})
    assert isinstance(declared, WeightSet) and declared.is_url
    assert declared.classes == tuple("0123456789")
    spec = zoo.get_spec("Net").model_copy(update={"weights": (declared,)})
    assert zoo.ArchitectureSpec.model_validate(spec.model_dump()).weights == (declared,)


def test_download_progress_is_one_line_on_a_terminal() -> None:
    from zoo.util.download import DownloadProgress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    bar = DownloadProgress("Net weights 'cifar2'", 300 * 1024, screen)
    bar.update(150 * 1024)
    bar.close(300 * 1024)
    text = screen.getvalue()
    assert "\n" not in text[:-1]  # redrawn in place, one final line
    assert text.startswith("\rdownloading Net weights 'cifar2' [" + "#" * 15 + "." * 15 + "]  50% "
                           "150 KiB of 300 KiB")
    assert re.search(r"\r\033\[Kdownloaded Net weights 'cifar2': 300 KiB in \d+\.\d s\n$", text)
    plain = io.StringIO()
    DownloadProgress("w", None, plain).close(2 * 2**20)
    assert plain.getvalue().startswith("downloading w\ndownloaded w: 2.0 MiB in ")


def test_the_first_declared_weight_set_is_the_default(net_bundle: Path) -> None:
    from zoo.bundles.store import declared_names

    first = weight_set(net_bundle, "zoo_a:Net-cifar2", tag="first")
    second = weight_set(net_bundle, "zoo_b:Net-cifar2", tag="second")
    names = declared_names(registry_with((first, second)))
    assert names["Net"][1] is first
    assert names["Net-first"][1] is first and names["Net-second"][1] is second
    assert "NetWidth" not in names  # no weights declared: no name


def test_weightsync_skips_untrained_bundles_and_needs_its_arguments(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from zoo.bundles.weightsync import generate
    from zoo.exporter.write import export

    exports = tmp_path / "exports"
    export("NetWidth", out=exports / "Aaa-untrained")  # first by name, untrained
    shutil.copytree(source_exports_dir() / "Net-cifar2", exports / "Net-cifar2")
    declared = generate(exports, "pkg")
    assert list(declared) == ["Net"] and declared["Net"][0].location == "pkg:Net-cifar2"
    for args in ([], ["--write", str(tmp_path / "w.json")], ["--package", "pkg"]):
        with pytest.raises(SystemExit) as info:
            weightsync(args)
        assert info.value.code == 2
    capsys.readouterr()
    missing = ["--write", str(tmp_path / "w.json"), "--package", "pkg", "--exports",
               str(tmp_path / "nowhere")]
    assert weightsync(missing) == 1
    assert capsys.readouterr().err.startswith("zoo: error: ")
    assert not (tmp_path / "w.json").exists()
    (tmp_path / "w.json").write_text("{not json")  # the file to check is unreadable
    assert weightsync(["--check", str(tmp_path / "w.json"), "--package", "pkg",
                       "--exports", str(exports)]) == 1
    assert capsys.readouterr().err.startswith("zoo: error: ")
