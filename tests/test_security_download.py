"""Weight downloads are bounded in time and size, and archives unpack within limits (issue 26).

Hostile servers on 127.0.0.1 (raw sockets, so that they can misbehave at will): one that
sends forever, one that drips its body or its headers a byte at a time, one that
announces more than it may, and archives that are bombs, hold too many members, members
the manifest does not list, encrypted or oddly compressed members. Every failure is one
:class:`DownloadError` line and leaves nothing in the cache; deadlines and caps are set
small through parameters, so nothing here waits for long.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import socket
import socketserver
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from zoo.bundles.hub import fetch_weights
from zoo.bundles.integrity import bundle_sha256, read_manifest
from zoo.spec.manifest import MANIFEST_FILE
from zoo.spec.weights import WeightSet
from zoo.util import download as download_module
from zoo.util.archive import ArchiveLimits
from zoo.util.download import DownloadError

Route = Callable[[socket.socket, threading.Event], None]
SHIPPED = Path(__file__).resolve().parents[1] / "exports" / "Net-cifar2"


class Hostile:
    """A loopback HTTP server whose routes write raw bytes to the socket."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.stop = threading.Event()
        routes, stop = self.routes, self.stop

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = self.request.recv(4096)
                    if not chunk:
                        return
                    request += chunk
                path = request.split(b" ")[1].decode()
                with contextlib.suppress(OSError):  # the client hung up: what the tests want
                    routes[path.lstrip("/")](self.request, stop)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,),
                                       daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{name}"

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


def serve(data: bytes) -> Route:
    def route(sock: socket.socket, stop: threading.Event) -> None:
        sock.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(data) + data)
    return route


def endless(sock: socket.socket, stop: threading.Event) -> None:
    sock.sendall(b"HTTP/1.0 200 OK\r\n\r\n")
    block = b"\0" * (1 << 16)
    while not stop.is_set():
        sock.sendall(block)


def drip_body(sock: socket.socket, stop: threading.Event) -> None:
    sock.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 100000\r\n\r\n")
    while not stop.wait(0.02):
        sock.sendall(b"x")


def drip_headers(sock: socket.socket, stop: threading.Event) -> None:
    for byte in b"HTTP/1.0 200 OK\r\nX-Padding: " + b"a" * 100000:
        if stop.wait(0.02):
            return
        sock.sendall(bytes([byte]))


def announce(size: int) -> Route:
    def route(sock: socket.socket, stop: threading.Event) -> None:
        sock.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        stop.wait(5)
    return route


@pytest.fixture
def server() -> Iterator[Hostile]:
    srv = Hostile()
    yield srv
    srv.close()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "weights"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(shutil.copytree(SHIPPED,
                                tmp_path_factory.mktemp("dl") / "Net-cifar2"))


def weight_set(bundle: Path, url: str, archive: bytes | None = None,
               **changes: object) -> WeightSet:
    manifest = read_manifest(bundle)
    fields: dict[str, object] = {
        "tag": "cifar2", "location": url, "sha256": bundle_sha256(bundle),
        "archive_sha256": hashlib.sha256(archive or b"").hexdigest(),
        "dataset": "cifar2", "split": "all", "classes": manifest.classes,
        "mean": manifest.normalization.mean, "std": manifest.normalization.std}
    return WeightSet.model_validate({**fields, **changes})


def zip_bundle(bundle: Path, extra: dict[str, bytes] | None = None,
               compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as zf:
        for path in sorted(bundle.iterdir()):
            zf.write(path, f"Net-cifar2/{path.name}")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return out.getvalue()


def fails(declared: WeightSet, match: str, cache: Path, **kwargs: object) -> str:
    """Fetch ``declared``: a one-line DownloadError matching ``match``, nothing left behind."""
    with pytest.raises(DownloadError, match=match) as info:
        fetch_weights("Net", declared, progress=False, **kwargs)  # type: ignore[arg-type]
    text = str(info.value)
    assert "\n" not in text
    assert not cache.exists() or list(cache.iterdir()) == []
    return text


# -- the download ---------------------------------------------------------------------------


def test_an_endless_body_stops_at_the_declared_size_and_at_the_default_cap(
        bundle: Path, server: Hostile, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server.routes["endless.zip"] = endless
    start = time.monotonic()
    fails(weight_set(bundle, server.url("endless.zip"), archive_size=1000),
          r"the server sent more than the 66536 bytes accepted \(its declared archive_size "
          r"plus a margin\)", cache)
    monkeypatch.setattr(download_module, "MAX_DOWNLOAD_BYTES", 300_000)
    fails(weight_set(bundle, server.url("endless.zip")),
          r"more than the 300000 bytes accepted \(declare the weight set's archive_size", cache)
    assert time.monotonic() - start < 10


def test_an_announced_size_over_the_cap_is_refused_before_the_body(
        bundle: Path, server: Hostile, cache: Path) -> None:
    server.routes["big.zip"] = announce(10 << 30)
    fails(weight_set(bundle, server.url("big.zip")),
          r"the server announces 10737418240 bytes, more than the 1073741824 accepted", cache)


@pytest.mark.parametrize("route", [drip_body, drip_headers])
def test_a_server_dripping_bytes_is_cut_off_at_the_deadline(
        bundle: Path, server: Hostile, cache: Path, route: Route) -> None:
    """One byte every 20 ms never trips the per-read timeout; the overall deadline stops it."""
    server.routes["slow.zip"] = route
    start = time.monotonic()
    fails(weight_set(bundle, server.url("slow.zip")),
          r"the download of Net weights 'cifar2' from http://127\.0\.0\.1:\d+/slow\.zip took "
          r"longer than its 0\.4 s deadline \(\d+ KiB received\)", cache, deadline_s=0.4)
    assert time.monotonic() - start < 3


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_at_the_staging_file_is_one_line(
        bundle: Path, server: Hostile, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = zip_bundle(bundle)
    server.routes["net.zip"] = serve(archive)
    monkeypatch.setattr(download_module, "_create",
                        lambda path: open("/dev/full", "wb"))  # noqa: SIM115
    fails(weight_set(bundle, server.url("net.zip"), archive),
          r"cannot write the download of Net weights 'cifar2' to .*: the disk is full; nothing "
          r"was kept", cache)


# -- the archive ----------------------------------------------------------------------------


def test_only_the_files_the_manifest_lists_are_kept(bundle: Path, server: Hostile,
                                                    cache: Path) -> None:
    archive = zip_bundle(bundle, {"Net-cifar2/junk.bin": b"j" * 1000,
                                  "Net-cifar2/sub/more.txt": b"m", ".hidden": b"h"})
    server.routes["net.zip"] = serve(archive)
    path = fetch_weights("Net", weight_set(bundle, server.url("net.zip"), archive,
                                           archive_size=len(archive)), progress=False)
    listed = {MANIFEST_FILE, *read_manifest(bundle).files}
    assert {p.name for p in path.iterdir()} == listed
    assert list(cache.iterdir()) == [path]  # no archive, no staging folder


def _patch(data: bytes, member: str, field: str, value: int) -> bytes:
    """The zip with ``member``'s ``field`` ("flags" or "method") set to ``value`` in both its
    local header and its central directory entry."""
    local, central = {"flags": (6, 8), "method": (8, 10)}[field]
    raw = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        offset = zf.getinfo(member).header_offset
    raw[offset + local:offset + local + 2] = value.to_bytes(2, "little")
    at = raw.find(b"PK\x01\x02")
    while at != -1:
        length = int.from_bytes(raw[at + 28:at + 30], "little")
        if raw[at + 46:at + 46 + length] == member.encode():
            raw[at + central:at + central + 2] = value.to_bytes(2, "little")
        at = raw.find(b"PK\x01\x02", at + 4)
    return bytes(raw)


def _many(bundle: Path) -> bytes:
    return zip_bundle(bundle, {f"Net-cifar2/junk/{i}": b"" for i in range(1200)},
                      compression=zipfile.ZIP_STORED)


def _tar_bomb(bundle: Path) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tf:
        for path in sorted(bundle.iterdir()):
            tf.add(path, f"Net-cifar2/{path.name}")
        info = tarfile.TarInfo("Net-cifar2/bomb.bin")
        info.size = 3 << 20
        tf.addfile(info, io.BytesIO(bytes(info.size)))
    return out.getvalue()


ARCHIVES: dict[str, tuple[Callable[[Path], bytes], str, str, ArchiveLimits | None]] = {
    "zip bomb": (lambda b: zip_bundle(b, {"Net-cifar2/bomb.bin": bytes(2 << 20)}), "zip",
                 r"member 'Net-cifar2/bomb\.bin' expands from \d+ to 2097152 bytes, more than "
                 r"100 times \(a zip bomb\?\)", None),
    "tar bomb": (_tar_bomb, "tar.gz", r"its members add up to more than 2000000 bytes unpacked",
                 ArchiveLimits(max_bytes=2_000_000)),
    "many members": (_many, "zip", r"it holds 1206 members, more than 1000", None),
    "encrypted": (lambda b: _patch(zip_bundle(b), "Net-cifar2/README.md", "flags", 1), "zip",
                  r"member 'Net-cifar2/README\.md' is encrypted", None),
    "unsupported method": (lambda b: _patch(zip_bundle(b), "Net-cifar2/README.md", "method", 99),
                           "zip", r"member 'Net-cifar2/README\.md' is compressed with method "
                           r"99; accepted: stored or deflated", None),
    "symbolic link": (lambda b: _symlinked(b), "tar.gz",
                      r"member 'Net-cifar2/model\.pt' is not a plain file or folder", None),
}


def _symlinked(bundle: Path) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tf:
        info = tarfile.TarInfo("Net-cifar2/model.pt")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(info)
    return out.getvalue()


@pytest.mark.parametrize("kind", list(ARCHIVES))
def test_hostile_archives_are_refused_before_they_are_unpacked(
        bundle: Path, server: Hostile, cache: Path, kind: str) -> None:
    make, suffix, message, limits = ARCHIVES[kind]
    archive = make(bundle)
    server.routes[f"net.{suffix}"] = serve(archive)
    text = fails(weight_set(bundle, server.url(f"net.{suffix}"), archive), message, cache,
                 limits=limits)
    assert text.startswith(f"refusing archive bundle.{suffix}: ")


def test_stale_staging_folders_of_dead_fetches_are_removed(
        bundle: Path, server: Hostile, cache: Path) -> None:
    archive = zip_bundle(bundle)
    server.routes["net.zip"] = serve(archive)
    declared = weight_set(bundle, server.url("net.zip"), archive)
    dead = next(pid for pid in range(4_000_000, 4_100_000) if not _alive(pid))
    name = f"Net-cifar2-{declared.sha256[:16]}"
    cache.mkdir(parents=True)
    stale = cache / f".{name}.zoo-{dead}-abc.tmp"
    (stale / "unpacked").mkdir(parents=True)
    (stale / "bundle.zip").write_bytes(b"half a download")
    running = cache / f".{name}.zoo-{os.getppid()}-def.tmp"  # a live process's fetch
    running.mkdir()
    path = fetch_weights("Net", declared, progress=False)
    assert sorted(p.name for p in cache.iterdir()) == sorted([path.name, running.name])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def test_archive_size_belongs_to_url_weight_sets(bundle: Path) -> None:
    with pytest.raises(ValueError, match="archive_size applies to a URL, not to package "
                                         "resource 'pkg:dir'"):
        weight_set(bundle, "pkg:dir", archive_sha256=None, archive_size=10)
    with pytest.raises(ValueError, match="archive_size"):
        weight_set(bundle, "https://example.org/n.zip", archive_size=0)


# -- the exact limits: what is at a cap passes, one byte more does not --------------------

def _body(data: bytes, *, announce_length: bool) -> Route:
    def route(sock: socket.socket, stop: threading.Event) -> None:
        head = b"HTTP/1.0 200 OK\r\n" + (b"Content-Length: %d\r\n" % len(data)
                                        if announce_length else b"") + b"\r\n"
        sock.sendall(head + data)
    return route


@pytest.mark.parametrize("announce_length", [True, False], ids=["announced", "streamed"])
def test_a_body_of_exactly_the_cap_is_accepted_and_one_byte_more_refused(
        server: Hostile, tmp_path: Path, announce_length: bool) -> None:
    from zoo.util.download import DownloadError, download

    cap = 3 * (1 << 16) + 5  # a few reads' worth, not a multiple of one
    data = bytes(range(256)) * (cap // 256) + b"x" * (cap % 256)
    server.routes["cap"] = _body(data, announce_length=announce_length)
    server.routes["over"] = _body(data + b"y", announce_length=announce_length)
    digest = hashlib.sha256(data).hexdigest()
    got = download(server.url("cap"), tmp_path / "cap.bin", sha256=digest, what="the test",
                   progress=False, max_bytes=cap)
    assert got.read_bytes() == data
    with pytest.raises(DownloadError, match=f"more than the {cap}|than the {cap} bytes"):
        download(server.url("over"), tmp_path / "over.bin",
                 sha256=hashlib.sha256(data + b"y").hexdigest(), what="the test",
                 progress=False, max_bytes=cap)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cap.bin"]


def test_the_cap_is_the_declared_size_and_an_eighth_at_least_64_kib() -> None:
    from zoo.util.download import MAX_DOWNLOAD_BYTES, download_limit

    assert download_limit(None) == MAX_DOWNLOAD_BYTES == 1 << 30
    assert download_limit(0) == 1 << 16
    assert download_limit(8 << 20) == (8 << 20) + (1 << 20)  # an eighth
    assert download_limit(100_003) == 100_003 + (1 << 16)  # an eighth is less than 64 KiB
    assert download_limit(1_000_001) == 1_000_001 + 125_000


@pytest.mark.parametrize(("n", "text"), [
    (0, "0 KiB"), (1022976, "999 KiB"), ((1 << 20) - 1, "1024 KiB"), (1 << 20, "1.0 MiB"),
    ((3 << 20) + (1 << 19), "3.5 MiB"), ((1 << 30) - 1, "1024.0 MiB"), (1 << 30, "1.0 GiB"),
    ((5 << 30) + (1 << 29), "5.5 GiB"),
])
def test_sizes_are_shown_in_binary_units(n: int, text: str) -> None:
    from zoo.util.download import _size

    assert _size(n) == text


def test_an_unreachable_server_names_the_reason(tmp_path: Path) -> None:
    from zoo.util.download import DownloadError, download

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DownloadError) as caught:
        download(f"http://127.0.0.1:{port}/x", tmp_path / "x", sha256="0" * 64,
                 what="the test", progress=False)
    assert re.search(r"cannot download the test from http://127\.0\.0\.1:\d+/x: "
                     r"\[Errno \d+\] Connection refused \(no network\?", str(caught.value))


# -- the weights cache and the weight sets --------------------------------------------------

def test_a_modified_cached_bundle_is_swapped_for_a_fresh_download(
        bundle: Path, server: Hostile, cache: Path) -> None:
    archive = zip_bundle(bundle)
    server.routes["net.zip"] = serve(archive)
    declared = weight_set(bundle, server.url("net.zip"), archive)
    first = fetch_weights("Net", declared, progress=False)
    manifest = first / MANIFEST_FILE  # the bundle's identity: its manifest's SHA-256
    manifest.write_bytes(manifest.read_bytes() + b" ")
    again = fetch_weights("Net", declared, progress=False)
    assert again == first and bundle_sha256(again) == declared.sha256
    assert manifest.read_bytes() == (bundle / MANIFEST_FILE).read_bytes()
    assert sorted(p.name for p in cache.iterdir()) == [first.name]  # no staging left


def test_an_archive_whose_only_folder_holds_no_manifest_is_not_a_bundle(
        bundle: Path, server: Hostile, cache: Path) -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("Net-cifar2/model.onnx", b"x")
    server.routes["empty.zip"] = serve(out.getvalue())
    declared = weight_set(bundle, server.url("empty.zip"), out.getvalue())
    with pytest.raises(Exception, match=r"the archive holds no bundle \(manifest.json at its "
                                        r"top or in its only folder\)"):
        fetch_weights("Net", declared, progress=False)


def test_weight_sets_are_picked_by_tag_and_true_or_none_is_the_first() -> None:
    import zoo
    from zoo.bundles.hub import WeightsError, select_weights

    spec = zoo.get_spec("Net")
    assert select_weights(spec) is select_weights(spec, True) is spec.weights[0]
    assert select_weights(spec, "cifar2").tag == "cifar2"
    with pytest.raises(WeightsError, match="Net has no weight set False; declared: cifar2"):
        select_weights(spec, False)


def test_a_missing_package_resource_says_where_the_package_is() -> None:
    from zoo.bundles.hub import WeightsError, resource_dir

    with pytest.raises(WeightsError) as caught:
        resource_dir("zoo_chapter8:no/such/folder", "the test")
    import zoo_chapter8

    package_dir = str(Path(zoo_chapter8.__file__).parent)
    assert str(caught.value) == (f"the test: 'zoo_chapter8:no/such/folder' does not exist "
                                 f"(package 'zoo_chapter8' is at {package_dir})")
    with pytest.raises(WeightsError, match=r"package 'zoo_no_such_package' is at nowhere "
                                           r"\(it is not an installed package\)"):
        resource_dir("zoo_no_such_package:weights", "the test")
