"""``zoo list``, ``zoo show``, ``zoo plugins`` and ``zoo datasets``: what is installed (no torch).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from zoo.cli import completers
from zoo.host.plugins import LISTING_HOOKS
from zoo.host.registry import Registry
from zoo.spec.architecture import ArchitectureSpec
from zoo.spec.dataset import USER_OPTIONS, DatasetSpec


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("list", help="list the installed architectures")
    p.add_argument("patterns", nargs="*", metavar="PATTERN",
                   help="shell-style patterns, e.g. 'NetRes*' (case-insensitive)")
    p.add_argument("--tag", action="append", default=[], metavar="T",
                   help="only architectures carrying tag T (repeatable: all must match)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=list_command)

    p = subparsers.add_parser("show", help="show one architecture and its hyperparameters")
    completers.attach(p.add_argument("name", metavar="NAME",
                                     help="an architecture, see 'zoo list'"),
                      completers.architectures)
    p.add_argument("--schema", action="store_true",
                   help="print the JSON Schema of its hyperparameters")
    p.add_argument("--json", action="store_true", help="print the spec as JSON")
    p.set_defaults(handler=show_command)

    p = subparsers.add_parser("plugins",
                              help="list the plugins, their versions and what they provide")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=plugins_command, report_plugins=False)

    p = subparsers.add_parser("datasets", help="list the installed datasets, or show one",
                              description="List the installed datasets; 'zoo datasets show NAME' "
                                          "shows one with its options.")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=datasets_command, dataset_name=None, schema=False)
    sub = p.add_subparsers(dest="datasets_command", metavar="show")
    s = sub.add_parser("show", help="show one dataset and its options")
    completers.attach(s.add_argument("dataset_name", metavar="NAME",
                                     help="a dataset, see 'zoo datasets'"), completers.datasets)
    s.add_argument("--schema", action="store_true", help="print the JSON Schema of its options")
    s.add_argument("--json", action="store_true", help="print the spec as JSON")


def warn_failed_plugins(registry: Registry, traceback: bool = False) -> None:
    """Warn on stderr, once per registry, of each plugin failure, problem and warning."""
    conflicts = set(registry.conflicts)  # these name both plugins already
    for info, message in registry.unreported():
        who = "" if message in conflicts else f"{info.provenance.describe()}: "
        print(f"zoo: warning: {who}{message} (see 'zoo plugins')", file=sys.stderr)
        exc = registry.plugin_exception(info.name)
        if traceback and exc is not None and info.status != "blocked":
            import traceback as tb

            tb.print_exception(exc, file=sys.stderr)


def spec_record(spec: ArchitectureSpec, pretrained: str | None = None) -> dict[str, Any]:
    """A JSON-ready description of a spec (``pretrained``: its default weight set's tag)."""
    prov = spec.provenance
    return {
        "name": spec.name,
        "summary": spec.summary,
        "tags": list(spec.tags),
        "input_shape": list(spec.input_shape.as_tuple()),
        "num_classes": spec.num_classes,
        "min_input_size": spec.min_input_size,
        "source": spec.source,
        "recipe": spec.recipe.model_dump(exclude_none=True),
        "builder": spec.builder,
        "hparams": {name: _default(field) for name, field in spec.hparams.model_fields.items()},
        "plugin": prov.plugin if prov else None,
        "distribution": prov.distribution if prov else None,
        "version": prov.version if prov else None,
        "pretrained": pretrained,
        "weights": [w.model_dump(mode="json", exclude_none=True) for w in spec.weights],
    }


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in [header, *rows]]
    return "\n".join(lines)


def list_command(args: argparse.Namespace, registry: Registry) -> int:
    names = registry.list_models(args.patterns or "*", tags=args.tag)
    specs = [registry.get_spec(n) for n in names]
    if args.json:
        print(json.dumps([spec_record(s, _default_tag(s)) for s in specs], indent=2,
                         default=str))
        return 0
    if not specs:
        print("no architecture matches", file=sys.stderr)
        return 1
    rows = [[s.name, s.summary, ",".join(s.tags), s.provenance.plugin if s.provenance else "-",
             ",".join(w.tag for w in s.weights) or "-"] for s in specs]
    print(_table(rows, ["NAME", "SUMMARY", "TAGS", "PLUGIN", "PRETRAINED"]))
    return 0


def _default(field: Any) -> Any:
    """A field's default (a default_factory called), or None for a required field."""
    return None if field.is_required() else field.get_default(call_default_factory=True)


def _bounds(field: Any) -> str:
    parts = []
    for meta in field.metadata:
        for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            value = getattr(meta, attr, None)
            if value is not None:
                parts.append(f"{sym}{value}")
    return " ".join(parts) or "-"


def _default_tag(spec: ArchitectureSpec) -> str | None:
    return spec.weights[0].tag if spec.weights else None


def _weights_lines(spec: ArchitectureSpec) -> list[str]:
    """Each declared weight set: its metrics naming their split, its data and where it is."""
    if not spec.weights:
        return ["none declared"]
    lines = []
    for i, w in enumerate(spec.weights):
        default = " (default)" if i == 0 else ""
        lines += [f"{w.tag}{default}: {w.describe_metrics()}",
                  f"  trained on {w.dataset}, classes {', '.join(w.classes)}; {w.location} "
                  f"(sha256 {w.sha256[:12]}...)"]
    lines.append(f"create_model({spec.name!r}, pretrained=True), zoo predict {spec.name} IMAGE")
    return lines


def show_command(args: argparse.Namespace, registry: Registry) -> int:
    spec = registry.get_spec(args.name)
    if args.schema:
        print(json.dumps(spec.hparams_schema(), indent=2))
        return 0
    if args.json:
        print(json.dumps(spec_record(spec, _default_tag(spec)), indent=2, default=str))
        return 0
    prov = spec.provenance
    shape = spec.input_shape
    print(f"{spec.name}: {spec.summary}")
    print(f"  source:       {spec.source}")
    print(f"  tags:         {', '.join(spec.tags) or '-'}")
    print(f"  provided by:  {prov.describe() if prov else '-'}")
    print(f"  builder:      {spec.builder}")
    print(f"  input:        {shape.channels}x{shape.height}x{shape.width} "
          f"(at least {spec.min_input_size}x{spec.min_input_size})")
    print(f"  classes:      {spec.num_classes}")
    recipe = spec.recipe.model_dump(exclude_none=True)
    print(f"  recipe:       "
          f"{', '.join(f'{k} {v}' for k, v in recipe.items()) or 'the default'}")
    weights = _weights_lines(spec)
    print(f"  pretrained:   {weights[0]}")
    for line in weights[1:]:
        print(f"                {line}")
    model = spec.config_model()
    rows = [[name, getattr(field.annotation, "__name__", str(field.annotation)),
             "(required)" if field.is_required() else repr(_default(field)), _bounds(field),
             field.description or ""]
            for name, field in model.model_fields.items()]
    print("  hyperparameters (set with key=value):")
    table = _table(rows, ["NAME", "TYPE", "DEFAULT", "BOUNDS", "DESCRIPTION"])
    print("\n".join("    " + line for line in table.splitlines()))
    return 0


def plugins_command(args: argparse.Namespace, registry: Registry) -> int:
    """The plugins table (or JSON); exit 1 when any plugin failed, as a whole or in part."""
    infos = registry.plugins()
    if args.json:
        print(json.dumps([i.model_dump() for i in infos], indent=2))
    else:
        rows = []
        for i in infos:
            if i.status == "blocked":
                detail = "blocked"
            elif i.status == "error":
                detail = f"ERROR: {i.error}"
            else:
                provides = ", ".join([*i.architectures, *(f"dataset:{d}" for d in i.datasets),
                                      *(f"format:{f}" for f in i.formats)])
                hooks = [h.removeprefix("zoo_") for h in i.hooks if h not in LISTING_HOOKS]
                detail = ", ".join(filter(None, [provides, "hooks: " + " ".join(hooks)
                                                 if hooks else ""])) or "(nothing)"
            rows.append([i.name, i.distribution or "-", i.version or "-", i.status, detail])
        print(_table(rows, ["PLUGIN", "DISTRIBUTION", "VERSION", "STATUS", "PROVIDES"]))
        conflicts = registry.conflicts
        for i in infos:
            for problem in i.problems:
                if problem not in conflicts:
                    print(f"problem: {i.name}: {problem}")
        for conflict in conflicts:
            print(f"conflict: {conflict}")
        for i in infos:
            for warning in i.warnings:
                print(f"warning: {i.name}: {warning}")
    return 1 if any(i.failed for i in infos) else 0


def dataset_record(spec: DatasetSpec) -> dict[str, Any]:
    """A JSON-ready description of a dataset spec."""
    prov = spec.provenance
    return {
        "name": spec.name,
        "summary": spec.summary,
        "loader": spec.loader,
        "needs_data_dir": spec.needs_data_dir,
        "downloads": spec.downloads,
        "num_classes": spec.num_classes,
        "uses": list(spec.uses) if spec.uses is not None else None,
        "options": {name: _default(field) for name, field in spec.options.model_fields.items()},
        "plugin": prov.plugin if prov else None,
        "distribution": prov.distribution if prov else None,
        "version": prov.version if prov else None,
    }


def datasets_command(args: argparse.Namespace, registry: Registry) -> int:
    """``zoo datasets``: the table of datasets; ``zoo datasets show NAME``: one of them."""
    if args.dataset_name is None:
        specs = [registry.get_dataset(n) for n in registry.list_datasets()]
        if args.json:
            print(json.dumps([dataset_record(d) for d in specs], indent=2, default=str))
            return 0
        rows = [[d.name, d.summary, d.provenance.plugin if d.provenance else "-"] for d in specs]
        print(_table(rows, ["NAME", "SUMMARY", "PLUGIN"]))
        return 0
    spec = registry.get_dataset(args.dataset_name)
    if args.schema:
        print(json.dumps(spec.options.model_json_schema(), indent=2))
        return 0
    if args.json:
        print(json.dumps(dataset_record(spec), indent=2, default=str))
        return 0
    prov = spec.provenance
    uses = ("not declared" if spec.uses is None
            else ", ".join(USER_OPTIONS[u] for u in spec.uses) or "none")
    print(f"{spec.name}: {spec.summary}")
    print(f"  provided by:  {prov.describe() if prov else '-'}")
    print(f"  loader:       {spec.loader}")
    print(f"  data dir:     {'required (--data-dir DIR)' if spec.needs_data_dir else 'optional'}")
    print(f"  downloads:    {'yes (unless --no-download)' if spec.downloads else 'no'}")
    print(f"  classes:      {spec.num_classes or 'from the data'}")
    print(f"  uses:         {uses}")
    rows = [[name, getattr(field.annotation, "__name__", str(field.annotation)),
             "(required)" if field.is_required() else repr(_default(field)), _bounds(field),
             field.description or ""]
            for name, field in spec.options.model_fields.items()]
    if not rows:
        print("  options:      none")
        return 0
    print("  options (set with --option key=value):")
    table = _table(rows, ["NAME", "TYPE", "DEFAULT", "BOUNDS", "DESCRIPTION"])
    print("\n".join("    " + line for line in table.splitlines()))
    return 0
