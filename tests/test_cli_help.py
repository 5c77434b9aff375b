"""The CLI explains itself: help with defaults, groups, --print-config, completion, warnings."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from zoo.cli import build_parser, main
from zoo.spec.training import TrainConfig, load_config_file, validate_config


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[name] = sub
                found.update({f"{name} {k}": v for k, v in _subparsers(sub).items()})
    return found


def _option_help(out: str) -> dict[str, str]:
    """Each option's help block (its lines joined), by its first flag."""
    blocks: dict[str, str] = {}
    flag = ""
    for line in out.splitlines():
        if line.startswith("  -"):
            flag = line.split()[0].rstrip(",")
            blocks[flag] = line
        elif line.startswith("   ") and flag:
            blocks[flag] += " " + line.strip()
        else:
            flag = ""
    return {k: " ".join(v.split()) for k, v in blocks.items()}


def test_every_option_of_every_command_has_help() -> None:
    commands = _subparsers(build_parser())
    assert {"train", "export", "predict", "completion", "datasets show"} <= set(commands)
    missing = [f"{name} {'/'.join(action.option_strings) or action.dest}"
               for name, sub in commands.items() for action in sub._actions
               if not action.help and not isinstance(action, argparse._SubParsersAction)]
    assert missing == []


def test_train_help_shows_groups_and_trainconfig_defaults(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for group in ("configuration:", "model:", "data:", "recipe:", "hardware:", "output:"):
        assert f"\n{group}\n" in out
    lines = _option_help(out)
    assert lines["--epochs"].endswith("(default: 12)")
    assert lines["--lr"].endswith(f"(default: {TrainConfig().lr})")
    assert lines["--val-split"].endswith("(default: 0.1)")
    assert lines["--schedule"].endswith("(default: onecycle)")
    assert "(default: off)" not in lines["--book"]


def test_export_help_shows_argparse_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    lines = _option_help(capsys.readouterr().out)
    assert lines["--checkpoint"].endswith("(default: best)")
    assert "default" not in lines["--force"]


def test_top_level_help_lists_commands_one_line_each_and_examples(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "\ncommands:\n" in out and "\nexamples:\n" in out
    assert "  zoo train Net --epochs 3" in out
    listing = out.split("\n  COMMAND\n")[1].split("\n\n")[0].splitlines()
    names = [line.split()[0] for line in listing]
    assert {"list", "train", "export", "predict", "evaluate", "new-plugin", "completion"} <= set(
        names)
    assert all(line.startswith("    ") and len(line.split()) > 1 and len(line) <= 80
               for line in listing)  # a name and its help on one line, no continuation lines


def test_print_config_round_trips_through_config(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # NetResDeep's recipe lowers lr to 0.05; a flag and --set are kept as given
    assert main(["train", "NetResDeep", "--print-config", "--epochs", "3",
                 "--set", "n_blocks=2", "--data-dir", "some/dir"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# TrainConfig of 'zoo train NetResDeep'")
    path = tmp_path / "run.toml"
    path.write_text(text)
    config = validate_config(load_config_file(path))
    assert config.lr == 0.05 and config.epochs == 3 and config.model == {"n_blocks": 2}
    assert config.data_dir == Path("some/dir") and config.out is None
    assert config == TrainConfig(lr=0.05, epochs=3, model={"n_blocks": 2},
                                 data_dir=Path("some/dir"))
    # what --config reads back prints the same file again
    assert main(["train", "NetResDeep", "--config", str(path), "--print-config"]) == 0
    assert capsys.readouterr().out == text


def test_print_config_of_the_book_recipe(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "Net", "--book", "--print-config"]) == 0
    path = tmp_path / "book.toml"
    path.write_text(capsys.readouterr().out)
    config = validate_config(load_config_file(path))
    book = TrainConfig.book()
    assert config.grad_clip == 0.0 and book.grad_clip is None  # both off; TOML has no None
    assert config.model_dump(exclude={"grad_clip"}) == book.model_dump(exclude={"grad_clip"})


def test_print_config_refuses_bad_values_and_needs_a_name(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "Net", "--print-config", "--val-split", "2"]) == 1
    assert "'val_split'" in capsys.readouterr().err
    assert main(["train", "--print-config"]) == 1
    assert "--print-config needs an architecture NAME" in capsys.readouterr().err


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_prints_the_activation_snippet(shell: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", shell]) == 0
    out = capsys.readouterr().out
    assert "_ARGCOMPLETE" in out and "zoo" in out
    if shell == "bash":
        assert "complete " in out


def _complete(line: str) -> list[str]:
    """What ``zoo`` answers the shell code (argcomplete's protocol) for the words of ``line``.

    In a child process: argcomplete writes to file descriptors of its own (8 and 9).
    """
    env = {**os.environ, "_ARGCOMPLETE": "1", "COMP_LINE": line, "COMP_POINT": str(len(line)),
           "_ARGCOMPLETE_IFS": "\n", "_ARGCOMPLETE_STDOUT_FILENAME": "/dev/stdout"}
    done = subprocess.run([sys.executable, "-m", "zoo"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return sorted(done.stdout.split())


def test_completion_answers_the_shell() -> None:
    assert _complete("zoo exp") == ["export"]
    assert _complete("zoo train --ep") == ["--epochs"]
    assert _complete("zoo train --schedule o") == ["onecycle"]


def test_unknown_plugin_names_are_warned_about(capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOO_PLUGINS", "chapter8,chapter9")
    assert main(["-p", "no:datasets", "-p", "no:dataset", "list", "Net"]) == 0
    err = capsys.readouterr().err.splitlines()
    installed = ("(installed: chapter8, curveplot, datasets, earlystop, formats, metricsfiles, "
                 "progressdisplay, tensorboard)")
    assert err == [
        f"zoo: warning: ZOO_PLUGINS: no installed plugin is named 'chapter9', so it changes "
        f"nothing {installed}",
        f"zoo: warning: -p no:dataset: no installed plugin is named 'dataset', so it changes "
        f"nothing {installed}",
    ]


def test_known_plugin_names_are_quiet(capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOO_PLUGINS", "chapter8")
    assert main(["-p", "no:datasets", "list", "Net"]) == 0
    assert capsys.readouterr().err == ""
    # the trainer's own writers are plugins too: blocking one is not a typo
    assert main(["-p", "no:metricsfiles", "list", "Net"]) == 0
    assert capsys.readouterr().err == ""
