"""The ``zoo`` entry point: a command is required, ``-p no:NAME``, command groups a build
may leave out, and how interruptions and closed pipes end a command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
from conftest import MakeDist

import zoo.cli as cli
from zoo.cli import main
from zoo.host.registry import Registry


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main([])
    assert done.value.code == 2
    assert "the following arguments are required: COMMAND" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["no:", "chapter8", "yes:chapter8"])
def test_p_takes_no_colon_and_a_name(option: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-p", option, "list"]) == 1
    assert capsys.readouterr().err == (f"zoo: error: -p takes 'no:NAME' to block a plugin, got "
                                       f"{option!r}\n")


def test_a_one_letter_plugin_name_can_be_blocked(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-p", "no:x", "list"]) == 0
    assert "-p no:x: no installed plugin is named 'x'" in capsys.readouterr().err


def _commands(parser: argparse.ArgumentParser) -> list[str]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(action.choices)


def test_a_command_group_left_out_of_the_build_is_skipped_and_a_broken_one_is_not(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "zoo_test_broken_cmds.py").write_text("import zoo_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    shipped = _commands(cli.build_parser())
    monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "zoo.cli.not_shipped"))
    assert _commands(cli.build_parser()) == shipped
    monkeypatch.setattr(cli, "COMMAND_MODULES",
                        (*cli.COMMAND_MODULES, "zoo_test_broken_cmds"))
    with pytest.raises(ModuleNotFoundError, match="zoo_no_such_dependency"):
        cli.build_parser()
    sys.modules.pop("zoo_test_broken_cmds", None)


@pytest.mark.parametrize(("raised", "code", "err"), [
    (KeyboardInterrupt, 130, "zoo: interrupted\n"),
    (BrokenPipeError, 0, ""),  # `zoo list | head -1`: the reader left; not an error
])
def test_how_an_interrupted_command_ends(monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str],
                                         raised: type[BaseException], code: int, err: str) -> None:
    def handler(args: argparse.Namespace, registry: Registry) -> int:
        raise raised()

    real = cli.build_parser

    def parser_with_handler() -> argparse.ArgumentParser:
        parser = real()
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        action.choices["list"].set_defaults(handler=handler)
        return parser

    monkeypatch.setattr(cli, "build_parser", parser_with_handler)
    assert main(["list"]) == code
    assert capsys.readouterr().err == err


@pytest.mark.parametrize(("argv", "code"), [(["completion", "bash"], 0), (["plugins"], 1)])
def test_commands_about_plugins_themselves_do_not_warn_of_them(
        argv: list[str], code: int, make_dist: MakeDist,
        capsys: pytest.CaptureFixture[str]) -> None:
    make_dist("broken-quiet", "broken_quiet", "raise ValueError('broken on import')\n")
    assert main(["list"]) == 0
    assert "broken-quiet" in capsys.readouterr().err  # the others warn
    assert main(argv) == code  # zoo plugins: 1, it lists the failure itself
    assert "zoo: warning" not in capsys.readouterr().err


def test_new_plugin_does_not_warn_of_installed_plugins(
        make_dist: MakeDist, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    make_dist("broken-quiet", "broken_quiet", "raise ValueError('broken on import')\n")
    monkeypatch.chdir(tmp_path)
    assert main(["new-plugin", "quietnet"]) == 0
    assert "zoo: warning" not in capsys.readouterr().err
