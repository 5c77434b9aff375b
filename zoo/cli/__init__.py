# PYTHON_ARGCOMPLETE_OK
"""The ``zoo`` command line.

Each command group lives in its own module exposing ``register(subparsers)``;
handlers take ``(args, registry)`` and return an exit code. Command modules
must not import torch at module level: ``zoo list`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence

from zoo.cli import catalog
from zoo.cli.help import ZooArgumentParser
from zoo.errors import ZooError, route_zoo_warnings
from zoo.host.registry import Registry
from zoo.util.version import __version__

ENV_TRACEBACK = "ZOO_TRACEBACK"
COMMAND_MODULES = ("zoo.cli.catalog", "zoo.cli.train", "zoo.cli.export", "zoo.cli.predict",
                   "zoo.cli.evaluate", "zoo.cli.inspect", "zoo.cli.newplugin",
                   "zoo.cli.completion", "zoo.cli.serve")

EPILOG = """\
examples:
  zoo list                              the architectures, one line each
  zoo show NetRes                       one architecture and its hyperparameters
  zoo train Net --epochs 3              train on the synthetic dataset (no download)
  zoo export runs/Net-synthetic-...     a verified ONNX bundle (see zoo export --help)
  zoo predict Net-cifar2 bird.jpg       classify images with a shipped bundle

'zoo COMMAND --help' shows a command's options and their defaults;
'eval "$(zoo completion bash)"' completes them in bash.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = ZooArgumentParser(
        prog="zoo",
        description="A plugin-based PyTorch model zoo: list, train, export and serve CNNs.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"zoo {__version__}")
    parser.add_argument(
        "-p", dest="plugin_options", action="append", default=[], metavar="no:NAME",
        help="block the plugin NAME (repeatable), as pytest's -p no:NAME",
    )
    parser.add_argument("--traceback", action="store_true",
                        help=f"show the Python traceback of errors (or set {ENV_TRACEBACK}=1)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                       title="commands")
    import importlib

    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # a command group not shipped in this build
                continue
            raise
        module.register(subparsers)
    return parser


def _blocked(options: Sequence[str]) -> list[str]:
    blocked = []
    for option in options:
        if not option.startswith("no:") or len(option) <= 3:
            raise ZooError(f"-p takes 'no:NAME' to block a plugin, got {option!r}")
        blocked.append(option[3:])
    return blocked


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``zoo`` console script."""
    parser = build_parser()
    if "_ARGCOMPLETE" in os.environ:  # the shell asks for completions (zoo completion)
        import argcomplete

        argcomplete.autocomplete(parser)
    args = parser.parse_args(argv)
    show_traceback = args.traceback or bool(os.environ.get(ENV_TRACEBACK))
    try:
        registry = Registry(blocked=_blocked(args.plugin_options))
        if getattr(args, "report_plugins", True):
            catalog.warn_failed_plugins(registry, traceback=show_traceback)
            for message in registry.unknown_plugin_names():
                print(f"zoo: warning: {message}", file=sys.stderr)
        with warnings.catch_warnings():  # restores showwarning afterwards
            route_zoo_warnings(lambda text: print(f"zoo: warning: {text}", file=sys.stderr))
            code: int = args.handler(args, registry)
        return code
    except ZooError as exc:
        if show_traceback:
            raise
        print(f"zoo: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("zoo: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


__all__ = ["build_parser", "catalog", "main"]
