"""zoo.cli.help: how help pages are laid out (defaults, epilogs, tails, sub-commands)."""

from __future__ import annotations

import argparse

import pytest

from zoo.cli.help import ZooArgumentParser, set_help_tail, train_default


def _parser(**kwargs: object) -> ZooArgumentParser:
    return ZooArgumentParser(prog="demo", **kwargs)  # type: ignore[arg-type]


def test_options_show_their_default_unless_unset_false_or_already_said() -> None:
    parser = _parser()
    parser.add_argument("--size", default=3, help="how big")
    parser.add_argument("--name", help="unset by default")
    parser.add_argument("--flag", action="store_true", help="a switch")
    parser.add_argument("--many", action="append", default=[], help="repeatable")
    parser.add_argument("--mode", default="x", help="the mode (default: x, or y)")
    parser.add_argument("where", nargs="?", default="here", help="a positional")
    text = " ".join(parser.format_help().split())
    assert "--size SIZE how big (default: 3)" in text
    assert "--name NAME unset by default --flag" in text
    assert "--flag a switch --many" in text
    assert "--many MANY repeatable --mode" in text
    assert text.endswith("--mode MODE the mode (default: x, or y)")
    assert "where a positional " in text and "(default: here)" not in text


def test_epilogs_wrap_paragraphs_and_keep_indented_lines() -> None:
    epilog = ("A sentence that is\nwritten across lines.\n\n"
              "  $ zoo train Net   # kept as written\n"
              "A second paragraph.")
    parser = _parser(epilog=epilog)
    out = parser.format_help()
    tail = out[out.index("A sentence"):].splitlines()
    assert tail == ["A sentence that is written across lines.", "",
                    "  $ zoo train Net   # kept as written", "A second paragraph."]


def test_a_help_tail_is_computed_when_printed_and_its_failure_is_shown() -> None:
    plain = _parser(description="plain")
    assert plain.format_help().endswith("--help  show this help message and exit\n")
    calls: list[int] = []

    def tail() -> str:
        calls.append(1)
        return "installed: a, b\n"

    with_tail = _parser()
    set_help_tail(with_tail, tail)
    assert calls == []
    assert with_tail.format_help().endswith("exit\n\ninstalled: a, b\n") and calls == [1]

    def broken() -> str:
        raise RuntimeError("a plugin failed")

    set_help_tail(with_tail, broken)
    assert with_tail.format_help().endswith(
        "\n\n(cannot list them: RuntimeError: a plugin failed)\n")
    with pytest.raises(TypeError, match="needs a ZooArgumentParser, got ArgumentParser"):
        set_help_tail(argparse.ArgumentParser(), tail)


def test_long_sub_command_names_keep_their_help_on_the_same_line() -> None:
    from zoo.cli import build_parser

    lines = build_parser().format_help().splitlines()
    assert "    new-plugin    write a ready plugin distribution" in lines, lines
    assert "    list          list the installed architectures" in lines


@pytest.mark.parametrize(("field", "shown"), [
    ("epochs", "12"), ("flip", "on"), ("strict", "off"), ("data_dir", "none"),
    ("channels_last", "auto"), ("batch_split", "auto"), ("num_threads", "auto"),
    ("loggers", "[]"), ("progress", "auto"),
])
def test_train_defaults_as_the_help_shows_them(field: str, shown: str) -> None:
    assert train_default(field) == f"(default: {shown})"
