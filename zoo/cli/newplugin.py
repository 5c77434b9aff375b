"""``zoo new-plugin NAME``: write a ready plugin distribution (no torch import)."""

from __future__ import annotations

import argparse
from pathlib import Path

from zoo.host.registry import Registry


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "new-plugin", help="write a ready plugin distribution",
        description="Write a plugin distribution for the zoo: pyproject.toml with the "
                    "entry point, a spec module, a builder module, a test using the "
                    "conformance kit (zoo.testing) and a README.")
    p.add_argument("plugin", metavar="NAME",
                   help="plugin name: lower-case letters, digits and underscores")
    p.add_argument("--dir", type=Path, metavar="DIR",
                   help="where to write it (default: ./zoo-NAME); must not exist")
    p.set_defaults(handler=new_plugin_command, report_plugins=False)


def new_plugin_command(args: argparse.Namespace, registry: Registry) -> int:
    from zoo.cli.scaffold import names, new_plugin

    values = names(args.plugin)
    dest = new_plugin(args.plugin, args.dir)
    print(f"wrote {values['distribution']} (plugin {values['plugin']!r}, architecture "
          f"{values['architecture']!r}) to {dest}")
    print(f"next: pip install -e {dest} && zoo show {values['architecture']} && "
          f"python -m pytest {dest}")
    return 0
