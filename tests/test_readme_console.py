"""The README's console examples are run and their shown output compared: it cannot drift.

Every ```console block is read as ``$ COMMAND`` lines, each followed by the output
the README shows for it. A command followed by output is run (in a fresh temporary
folder per block, with private cache and user data folders) and its stdout and
stderr together must match what is shown, where:

- a ``...`` stands for any text (within a line, or whole lines when on its own line),
  for what must vary (timings, digests, paths) or what the README leaves out;
- a Python traceback is reduced to its last line, as the README shows errors;
- trailing spaces are ignored.

A command with no output shown is not run. A block that needs what a test cannot
have (another distribution installed, a real dataset, a running job) is marked by
``<!-- doctest: skip (why) -->`` on the line before it.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from zoo.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"
SKIP = re.compile(r"<!--\s*doctest:\s*skip\s*\((?P<why>[^)]+)\)\s*-->")
#: Shell syntax that needs a real shell (pipes, redirections, variables).
SHELL_SYNTAX = re.compile(r"[|<>;&$`]")


@dataclass
class Block:
    line: int  # of the ```console fence, 1-based
    skip: str | None
    commands: list[tuple[str, list[str]]] = field(default_factory=list)


def console_blocks(text: str) -> list[Block]:
    """The README's console blocks: their commands and the output shown for each."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() != "```console":
            i += 1
            continue
        before = next((line for line in reversed(lines[:i]) if line.strip()), "")
        marker = SKIP.search(before)
        block = Block(line=i + 1, skip=marker.group("why") if marker else None)
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            if lines[i].startswith("$ "):
                block.commands.append((lines[i][2:], []))
            elif block.commands:
                block.commands[-1][1].append(lines[i])
            i += 1
        blocks.append(block)
        i += 1
    return blocks


def matches(shown: list[str], output: str) -> bool:
    """Whether ``output`` is what the README shows (``...``: any text)."""
    lines = [line.rstrip() for line in output.rstrip("\n").splitlines()]
    if "Traceback (most recent call last):" in lines:
        lines = lines[-1:]
    expected = "\n".join(line.rstrip() for line in shown).strip("\n")
    pattern = ".*?".join(re.escape(part) for part in expected.split("..."))
    return re.fullmatch(pattern, "\n".join(lines), flags=re.DOTALL) is not None


def run(command: str, cwd: Path) -> str:
    """stdout and stderr of ``command`` together, in the order written."""
    words = shlex.split(command, comments=True)
    if words[0] == "zoo" and not SHELL_SYNTAX.search(command.split("#")[0]):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), \
                contextlib.suppress(SystemExit):
            main(words[1:])
        return out.getvalue()
    env = {**os.environ,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=120)
    return done.stdout


BLOCKS = console_blocks(README.read_text(encoding="utf-8"))
#: The blocks run here: not marked, and showing some output (no test is ever skipped).
CHECKED = [b for b in BLOCKS if b.skip is None and any(shown for _, shown in b.commands)]


def test_the_readme_has_checked_console_examples() -> None:
    assert len(CHECKED) >= 5
    assert all(b.skip.strip() for b in BLOCKS if b.skip is not None)  # each says why


def test_matching_rules() -> None:
    assert matches(["a ... c", "..."], "a b c\nmore\nlines\n")
    assert matches(["x: error"], "Traceback (most recent call last):\n  File ...\nx: error\n")
    assert not matches(["a b"], "a c\n")
    assert not matches(["one"], "one\ntwo\n")


@pytest.mark.parametrize("block", CHECKED, ids=[f"README.md:{b.line}" for b in CHECKED])
def test_console_block(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / ".cache"))
    monkeypatch.setenv("COLUMNS", "80")
    for name in ("ZOO_EXPORTS", "ZOO_PLUGINS", "ZOO_BLOCK_PLUGINS",
                 "ZOO_DISABLE_PLUGIN_AUTOLOAD", "ZOO_TRACEBACK"):
        monkeypatch.delenv(name, raising=False)
    for command, shown in block.commands:
        if not shown:
            continue
        output = run(command, tmp_path)
        assert matches(shown, output), (
            f"README.md:{block.line}: '$ {command}' printed\n{output}\ninstead of\n"
            + "\n".join(shown))


def _fenced(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(encoding="utf-8"),
                      flags=re.DOTALL | re.MULTILINE)


def test_the_readme_config_file_is_one_zoo_train_reads(tmp_path: Path) -> None:
    from zoo.spec.training import load_config_file, validate_config

    [text] = [body for body in _fenced("toml") if "--config" in body.splitlines()[0]]
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    config = validate_config(load_config_file(path))
    assert config.dataset == "imagefolder" and config.model


def test_the_readme_deployment_snippet_runs_from_any_folder(tmp_path: Path) -> None:
    [code] = [body for body in _fenced("python") if "OnnxClassifier(" in body]
    done = subprocess.run([sys.executable, "-c", code + "\nimport sys\n"
                           "assert 'torch' not in sys.modules\n"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1  # one image: its most probable class
    assert re.fullmatch(r"sky\.png (airplane|bird) [01]\.\d{3}", lines[0])
