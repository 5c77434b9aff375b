"""``zoo list``, ``zoo show`` and ``zoo plugins``: what is installed (no torch import)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from zoo.registry import Registry
from zoo.spec import ArchitectureSpec


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("list", help="list the installed architectures")
    p.add_argument("patterns", nargs="*", metavar="PATTERN",
                   help="shell-style patterns, e.g. 'NetRes*' (case-insensitive)")
    p.add_argument("--tag", action="append", default=[], metavar="T",
                   help="only architectures carrying tag T (repeatable: all must match)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=list_command)

    p = subparsers.add_parser("show", help="show one architecture and its hyperparameters")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--schema", action="store_true",
                   help="print the JSON Schema of its hyperparameters")
    p.add_argument("--json", action="store_true", help="print the spec as JSON")
    p.set_defaults(handler=show_command)

    p = subparsers.add_parser("plugins",
                              help="list the plugins, their versions and what they provide")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=plugins_command)


def warn_failed_plugins(registry: Registry) -> None:
    for info in registry.failed_plugins():
        print(f"zoo: warning: plugin {info.name!r} from {info.provenance.describe()} failed: "
              f"{info.error} (see 'zoo plugins')", file=sys.stderr)


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
    warn_failed_plugins(registry)
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
    infos = registry.plugins()
    if args.json:
        print(json.dumps([i.model_dump() for i in infos], indent=2))
    else:
        rows = []
        for i in infos:
            if i.status == "loaded":
                provides = ", ".join([*i.architectures, *(f"dataset:{d}" for d in i.datasets)])
                detail = provides or "(nothing)"
            elif i.status == "blocked":
                detail = "blocked"
            else:
                detail = f"ERROR: {i.error}"
            rows.append([i.name, i.distribution or "-", i.version or "-", i.status, detail])
        print(_table(rows, ["PLUGIN", "DISTRIBUTION", "VERSION", "STATUS", "PROVIDES"]))
        for conflict in registry.conflicts:
            print(f"conflict: {conflict}")
    return 0
