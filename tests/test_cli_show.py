"""``zoo show`` of specs that differ from the built-ins where its output differs: no tags,
no recipe of its own, several weight sets, and ``--json`` records without nulls."""

from __future__ import annotations

import argparse
import json
from typing import Any

import pytest

import zoo
from zoo.cli.catalog import _weights_lines, show_command, spec_record
from zoo.spec.architecture import ArchitectureSpec, Recipe


@pytest.fixture(scope="module")
def net() -> ArchitectureSpec:
    return zoo.get_spec("Net")


class One:
    """A registry of one spec, as show_command reads it."""

    def __init__(self, spec: ArchitectureSpec) -> None:
        self.spec = spec

    def get_spec(self, name: str) -> ArchitectureSpec:
        return self.spec


def shown(spec: ArchitectureSpec, capsys: pytest.CaptureFixture[str], **flags: Any) -> str:
    args = argparse.Namespace(name=spec.name, schema=False, json=False, **flags)
    assert show_command(args, One(spec)) == 0  # type: ignore[arg-type]
    return capsys.readouterr().out


def test_a_spec_without_tags_or_a_recipe_says_so(net: ArchitectureSpec,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    bare = net.model_copy(update={"tags": (), "recipe": Recipe()})
    out = shown(bare, capsys)
    assert "  tags:         -\n" in out and "  recipe:       the default\n" in out
    out = shown(net, capsys)
    assert f"  tags:         {', '.join(net.tags)}\n" in out and "the default" not in out


def test_every_weight_set_is_listed_the_first_as_the_default(net: ArchitectureSpec) -> None:
    (first,) = net.weights
    second = first.model_copy(update={"tag": "imagenet", "sha256": "ef" * 32})
    lines = _weights_lines(net.model_copy(update={"weights": (first, second)}))
    assert [line.split(":")[0] for line in lines[::2][:2]] == [f"{first.tag} (default)",
                                                                 "imagenet"]
    assert lines[1].endswith(f"(sha256 {first.sha256[:12]}...)")
    assert lines[3].endswith(f"(sha256 {'ef' * 6}...)")
    assert lines[-1] == "create_model('Net', pretrained=True), zoo predict Net IMAGE"
    assert _weights_lines(net.model_copy(update={"weights": ()})) == ["none declared"]


def test_json_records_hold_no_nulls(net: ArchitectureSpec,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    record = spec_record(net, net.weights[0].tag)

    def nulls(value: Any, where: str = "") -> list[str]:
        if value is None:
            return [where]
        if isinstance(value, dict):
            return [n for k, v in value.items() for n in nulls(v, f"{where}.{k}")]
        if isinstance(value, list):
            return [n for i, v in enumerate(value) for n in nulls(v, f"{where}[{i}]")]
        return []

    assert nulls(record["recipe"]) == [] and nulls(record["weights"]) == []
    args = argparse.Namespace(name="Net", schema=False, json=True)
    assert show_command(args, One(net)) == 0  # type: ignore[arg-type]
    printed = capsys.readouterr().out
    assert json.loads(printed) == json.loads(json.dumps(record, default=str))
    assert printed.startswith('{\n  "')  # indented by two
