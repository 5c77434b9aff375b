"""A plugin's weights file, from its bundles' manifests (``python -m zoo.bundles.weightsync``).

::

    python -m zoo.bundles.weightsync --write FILE --package PACKAGE [--exports DIR]
    python -m zoo.bundles.weightsync --check plugins/zoo_chapter8/weights.json \
        --package zoo_chapter8.weights

``--write`` regenerates the package-resource entries (``zoo_chapter8.weights:Net-cifar2``)
from the bundles in ``exports/`` (``--exports DIR``) and keeps the other entries (URLs);
``--check`` exits 1 when the file differs from what the bundles say: a bundle
re-exported without updating the declarations. Torch-free.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from zoo.bundles.integrity import bundle_sha256, open_bundle
from zoo.bundles.store import bundle_dirs, source_exports_dir
from zoo.errors import ZooError
from zoo.spec.weights import WeightSet, dump_weights, read_weights_file, unique_tags
from zoo.util.fsutil import atomic_write_text

Declared = dict[str, tuple[WeightSet, ...]]


def generate(exports: Path, package: str, keep: Declared | None = None) -> Declared:
    """Declarations of the trained bundles in ``exports`` as resources of ``package``.

    A bundle ``<Arch>-<tag>`` becomes weight set ``tag`` of ``Arch``, listed first;
    the entries of ``keep`` that are not resources of ``package`` (URLs) follow it.
    """
    out: dict[str, list[WeightSet]] = {}
    for bundle in bundle_dirs(exports):
        manifest = open_bundle(bundle)
        training = manifest.training
        if training is None:
            continue  # an untrained bundle is nobody's pretrained weights
        arch = manifest.architecture
        measured = training.exported
        prefix = f"{arch}-"
        tag = bundle.name[len(prefix):] if bundle.name.startswith(prefix) else "default"
        out.setdefault(arch, []).append(WeightSet(
            tag=tag.lower(), location=f"{package}:{bundle.name}", sha256=bundle_sha256(bundle),
            dataset=training.dataset, split=training.accuracy_split,
            metrics={"val_acc": measured.val_acc} if measured else {},
            classes=manifest.classes, mean=manifest.normalization.mean,
            std=manifest.normalization.std))
    for arch, sets in (keep or {}).items():
        others = [w for w in sets if not w.location.startswith(f"{package}:")]
        if others:
            out.setdefault(arch, []).extend(others)
    return {arch: unique_tags(tuple(sets)) for arch, sets in out.items()}


def main(argv: list[str] | None = None) -> int:
    """``python -m zoo.bundles.weightsync --write|--check FILE --package PACKAGE [--exports D]``."""
    parser = argparse.ArgumentParser(
        prog="python -m zoo.bundles.weightsync",
        description="Generate or check a plugin's weights file from its shipped bundles.")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", metavar="FILE", type=Path, help="regenerate FILE")
    mode.add_argument("--check", metavar="FILE", type=Path,
                      help="exit 1 if FILE differs from the bundles")
    parser.add_argument("--package", required=True,
                        help="the package the bundles install as, e.g. zoo_chapter8.weights")
    parser.add_argument("--exports", type=Path, default=None,
                        help="the bundles' directory (default: the shipped exports/)")
    args = parser.parse_args(argv)
    target: Path = args.write or args.check
    exports = args.exports or source_exports_dir()
    if not exports.is_dir():  # a mistyped folder must not declare that nothing is shipped
        print(f"zoo: error: --exports {str(exports)!r} is not a folder of bundles",
              file=sys.stderr)
        return 1
    try:
        current = read_weights_file(target) if target.exists() else {}
        text = dump_weights(generate(exports, args.package, keep=current))
        old = target.read_text(encoding="utf-8") if target.exists() else None
    except (OSError, ZooError) as exc:
        print(f"zoo: error: {exc}", file=sys.stderr)
        return 1
    if args.write:
        if text != old:
            atomic_write_text(target, text)
        print(f"{target}: weight sets of {len(json.loads(text))} architectures from {exports}")
        return 0
    if text != old:
        print(f"zoo: error: {target} does not match the bundles in {exports} (re-exported "
              f"without updating it?); run python -m zoo.bundles.weightsync --write {target} "
              f"--package {args.package}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
