"""A bundle's integrity: its identity, its manifest read and validated, every file checked.

:func:`open_bundle` is the entry point of every reader (the torch loader, the ONNX
predictor, ``zoo verify``): it reads and validates ``manifest.json`` (refusing
another SHA-256 where one is expected), checks that the manifest agrees with
itself, and checks every file it lists against its size and SHA-256.
:func:`read_checked` then gives a reader the very bytes it checked. No torch, no
numpy.

No member is read through a symbolic link (``O_NOFOLLOW`` on every component of its
path, the manifest included): a member that is a link, even to a file inside the
bundle, is refused. The bundle directory itself may be a link (the user named it;
its identity is its manifest's digest, whatever path reaches it). A manifest whose
text holds control characters (a class name with a newline or an escape sequence)
is refused before anything prints it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from zoo.errors import BundleError
from zoo.spec.architecture import NAME_PATTERN
from zoo.spec.exportformat import FILE_PATTERN
from zoo.spec.manifest import (
    BUNDLE_FILES,
    MANIFEST_FILE,
    ONNX_FILE,
    SUPPORTED_FORMAT_VERSIONS,
    WEIGHTS_FILE,
    FileEntry,
    Manifest,
    check_normalization,
    unprintable,
)

_CHUNK = 1 << 20
#: The largest manifest.json read (a real one is a few KiB).
MAX_MANIFEST_BYTES = 16 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def bundle_sha256(bundle_dir: Path) -> str:
    """A bundle's identity: the SHA-256 hex digest of its manifest.json's bytes.

    The manifest lists every other file's SHA-256, so this one digest pins the bundle. The
    manifest is read through no symbolic link (:func:`read_member`).
    """
    return hashlib.sha256(read_member(bundle_dir, MANIFEST_FILE, MAX_MANIFEST_BYTES)).hexdigest()


def file_entry(path: Path) -> FileEntry:
    return FileEntry(size=path.stat().st_size, sha256=sha256_file(path))


def check_expected_sha256(expect_sha256: str) -> str:
    """``expect_sha256`` as 64 lowercase hex digits, or a :class:`BundleError`."""
    if not isinstance(expect_sha256, str):
        raise BundleError(f"expected SHA-256 {expect_sha256!r} is not a string of 64 "
                          "hexadecimal digits (as zoo export and zoo verify print it)")
    text = expect_sha256.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise BundleError(f"expected SHA-256 {expect_sha256!r} is not 64 hexadecimal digits")
    return text


def read_manifest(bundle: Path | str, *, expect_sha256: str | None = None) -> Manifest:
    """Read and validate ``bundle/manifest.json``; files are checked by :func:`open_bundle`.

    With ``expect_sha256``, a manifest whose SHA-256 (:func:`bundle_sha256`) differs
    is refused before it is parsed.
    """
    return _read_manifest(Path(bundle), expect_sha256)[0]


def _read_manifest(bundle: Path, expect_sha256: str | None) -> tuple[Manifest, str]:
    expected = check_expected_sha256(expect_sha256) if expect_sha256 is not None else None
    if not bundle.exists():
        raise BundleError(f"bundle {str(bundle)!r} does not exist")
    if not bundle.is_dir():
        raise BundleError(f"bundle {str(bundle)!r} is not a directory; a bundle is a directory "
                          f"holding {MANIFEST_FILE}, {WEIGHTS_FILE} and {ONNX_FILE}")
    path = bundle / MANIFEST_FILE
    if not path.is_file() and not path.is_symlink():
        raise BundleError(f"{str(bundle)!r} is not a bundle: it has no {MANIFEST_FILE}")
    data = read_member(bundle, MANIFEST_FILE, MAX_MANIFEST_BYTES)  # never through a link
    digest = hashlib.sha256(data).hexdigest()
    if expected is not None and digest != expected:
        raise BundleError(f"bundle {str(bundle)!r} is not the one expected: its manifest's "
                          f"SHA-256 is {digest}, expected {expected}")
    return parse_manifest(data, path), digest


def parse_manifest(data: bytes, path: Path | str) -> Manifest:
    """Validate the bytes of a ``manifest.json`` (read from ``path``): JSON, a supported
    format version, printable text only, the :class:`Manifest` schema."""
    try:
        raw = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON: {exc}") from None
    except RecursionError:
        raise BundleError(f"{path} is not a bundle manifest: it is nested too deeply") from None
    if not isinstance(raw, dict):
        raise BundleError(f"{path} does not hold a JSON object")
    version = raw.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        accepted = ", ".join(str(v) for v in SUPPORTED_FORMAT_VERSIONS)
        raise BundleError(f"{path} has format_version {version!r}, which this zoo cannot read; "
                          f"accepted: {accepted} (upgrade zoo to read newer bundles)")
    _check_printable(raw, path)
    try:
        return Manifest.model_validate(raw)
    except RecursionError:
        raise BundleError(f"{path} is not a bundle manifest: it is nested too deeply") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}"
            for e in exc.errors()[:5])
        raise BundleError(f"{path} does not validate as a bundle manifest: {problems}") from None


def _unprintable_in(value: object, where: str) -> tuple[str, str, str] | None:
    """(JSON path, text, character) of the first text in ``value`` holding a control
    character, keys included; None if there is none."""
    stack: list[tuple[object, str]] = [(value, where)]
    while stack:
        item, at = stack.pop()
        if isinstance(item, str):
            found = unprintable(item)
            if found is not None:
                return at or "(root)", item, found
        elif isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str) and (found := unprintable(key)) is not None:
                    return f"a key of {at or '(root)'}", key, found  # never shown raw
                stack.append((child, f"{at}.{key}".lstrip(".")))
        elif isinstance(item, list):
            stack.extend((child, f"{at}.{i}".lstrip(".")) for i, child in enumerate(item))
    return None


def _check_printable(raw: dict[str, object], path: Path | str) -> None:
    """Refuse control characters anywhere in a manifest's text: printed raw (a class name
    in ``zoo predict``'s output, an architecture in an error) they would forge lines or
    drive the terminal."""
    classes = raw.get("classes")
    for index, name in enumerate(classes if isinstance(classes, list) else []):
        if isinstance(name, str) and (found := unprintable(name)) is not None:
            raise BundleError(f"{path} names class {index} {name!r}, which holds the control "
                              f"character {found!r}; accepted: printable text")
    hit = _unprintable_in(raw, "")
    if hit is not None:
        at, text, found = hit
        raise BundleError(f"{path} holds the control character {found!r} in {at} ({text!r}); "
                          "accepted: printable text")


def check_consistency(bundle: Path | str, manifest: Manifest) -> None:
    """Check that the manifest agrees with itself: classes, shape and a usable normalization."""
    where = f"manifest of {str(bundle)!r}"
    model = manifest.model
    if len(manifest.classes) != model.num_classes:
        raise BundleError(f"{where} names {len(manifest.classes)} classes but its model has "
                          f"{model.num_classes} outputs")
    if not re.fullmatch(NAME_PATTERN, manifest.architecture):
        raise BundleError(f"{where} names architecture {manifest.architecture!r}; accepted: a "
                          "name of letters, digits, '_', '.' and '-' that starts with a letter")
    if manifest.architecture != model.architecture:
        raise BundleError(f"{where} says architecture {manifest.architecture!r} but its model "
                          f"is {model.architecture!r}")
    check_normalization(manifest.normalization, model.input_shape.channels, where)


def _open_member(bundle: Path, name: str) -> int:
    """A file descriptor of bundle member ``name``: a relative path of plain names inside the
    bundle, none of them a symbolic link (a member may not lead out of the bundle)."""
    if not re.fullmatch(FILE_PATTERN, name):
        raise BundleError(f"manifest of {str(bundle)!r} lists {name!r}, which is not a plain "
                          "relative path inside the bundle")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    directory = getattr(os, "O_DIRECTORY", 0)
    parts = name.split("/")
    try:
        fd = os.open(bundle, os.O_RDONLY | directory | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise BundleError(f"cannot open bundle {str(bundle)!r}: {exc.strerror or exc}") from None
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            try:
                child = os.open(part, flags | (0 if last else directory), dir_fd=fd)
            except FileNotFoundError:
                raise BundleError(f"bundle {str(bundle)!r} is missing {name}") from None
            except OSError as exc:  # ELOOP: a symbolic link; ENOTDIR: a file on the way
                raise BundleError(f"bundle member {name!r} of {str(bundle)!r} is not a regular "
                                  f"file inside the bundle ({exc.strerror or exc}); bundles hold "
                                  "no symbolic links") from None
            os.close(fd)
            fd = child
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BundleError(f"bundle member {name!r} of {str(bundle)!r} is not a regular file")
        return fd
    except BaseException:
        os.close(fd)
        raise


def read_member(bundle: Path | str, name: str, max_bytes: int) -> bytes:
    """The bytes of bundle member ``name`` (no hash: for a manifest, or a file not listed
    yet), read through no symbolic link; more than ``max_bytes`` is a :class:`BundleError`."""
    bundle = Path(bundle)
    fd = _open_member(bundle, name)
    try:
        with os.fdopen(fd, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise BundleError(f"cannot read {bundle / name}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise BundleError(f"{bundle / name} is larger than the {max_bytes} bytes accepted")
    return data


def _read_member(bundle: Path, name: str, entry: FileEntry, *, keep: bool) -> bytes:
    """Hash member ``name`` against its entry (its bytes too when ``keep``)."""
    fd = _open_member(bundle, name)
    digest = hashlib.sha256()
    chunks: list[bytes] = []
    size = 0
    try:
        with os.fdopen(fd, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
                if keep:
                    chunks.append(chunk)
                if size > entry.size:
                    break
    except OSError as exc:
        raise BundleError(f"cannot read {bundle / name}: {exc.strerror or exc}") from None
    if size != entry.size or digest.hexdigest() != entry.sha256:
        shown = f"at least {size}" if size > entry.size else str(size)
        raise BundleError(f"{bundle / name} does not match its SHA-256 in the manifest (size "
                          f"{shown}, expected {entry.size}): the file was modified or corrupted")
    return b"".join(chunks)


def read_checked(bundle: Path | str, manifest: Manifest, name: str) -> bytes:
    """The bytes of bundle file ``name``, read once and checked against the manifest.

    Readers use these very bytes: what was checked is what is loaded.
    """
    entry = manifest.files.get(name)
    if entry is None:
        raise BundleError(f"manifest of {str(bundle)!r} does not list {name}")
    return _read_member(Path(bundle), name, entry, keep=True)


def check_files(bundle: Path | str, manifest: Manifest, *,
                skip: Iterable[str] = ()) -> None:
    """Check that every file the manifest lists is present, a regular file inside the bundle,
    of its size and SHA-256 (but those in ``skip``, already checked)."""
    bundle = Path(bundle)
    for required in BUNDLE_FILES:
        if required not in manifest.files:
            raise BundleError(f"manifest of {str(bundle)!r} does not list {required}")
    skipped = set(skip)
    for name, entry in manifest.files.items():
        if name not in skipped:
            _read_member(bundle, name, entry, keep=False)


@dataclass(frozen=True)
class CheckedBundle:
    """A bundle whose manifest and every file were checked: its identity and the bytes of the
    files read while checking them (those a reader asked for), so that what was checked is
    what is loaded."""

    path: Path
    manifest: Manifest
    sha256: str
    data: Mapping[str, bytes]


def check_bundle(bundle: Path | str, *, expect_sha256: str | None = None,
                 read: Iterable[str] = ()) -> CheckedBundle:
    """Read the manifest, check it and every file's SHA-256 once; keep the files in ``read``.

    ``expect_sha256`` pins the bundle: any other manifest (:func:`bundle_sha256`) is refused.
    """
    bundle = Path(bundle)
    manifest, digest = _read_manifest(bundle, expect_sha256)
    check_consistency(bundle, manifest)
    keep = set(read)
    data = {name: read_checked(bundle, manifest, name) for name in manifest.files if name in keep}
    check_files(bundle, manifest, skip=data)
    return CheckedBundle(path=bundle, manifest=manifest, sha256=digest, data=data)


def open_bundle(bundle: Path | str, *, expect_sha256: str | None = None) -> Manifest:
    """Read the manifest and check it and every file's SHA-256: the entry point of every reader.

    ``expect_sha256`` pins the bundle: any other manifest (:func:`bundle_sha256`) is refused.
    """
    return check_bundle(bundle, expect_sha256=expect_sha256).manifest


__all__ = ["MAX_MANIFEST_BYTES", "CheckedBundle", "bundle_sha256", "check_bundle",
           "check_consistency", "check_expected_sha256", "check_files", "file_entry",
           "open_bundle", "parse_manifest", "read_checked", "read_manifest", "read_member",
           "sha256_file"]
