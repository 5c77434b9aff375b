"""The documentation's console examples are run and their shown output compared: no drift.

The examples live in ``README.md`` and every page of ``docs/`` (test ids are
``PATH:LINE`` of each block). Every ```console block is read as ``$ COMMAND``
lines, each followed by the output the page shows for it. A command followed by
output is run (in a fresh temporary folder per block, with private cache and user
data folders) and its stdout and stderr together must match what is shown, where:

- a ``...`` stands for any text (within a line, or whole lines when on its own line),
  for what must vary (timings, digests, paths) or what the page leaves out;
- a Python traceback is reduced to its last line, as the pages show errors;
- trailing spaces are ignored.

``zoo`` commands run in this process (torch is imported once for all of them);
anything else (``python -c``, pipes) runs in ``bash``. A command with no output
shown is not run. A block that needs what a test cannot have (another distribution
installed, a real dataset, a running job) is marked by
``<!-- doctest: skip (why) -->`` on the line before it; the blocks of the example
plugins are run by tests/test_readme_plugin.py with those plugins installed.

This module also gathers what the other example tests read: the example plugins'
files (``<!-- file: PATH -->`` before a fence) and the fenced blocks of a language.
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

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
SKIP = re.compile(r"<!--\s*doctest:\s*skip\s*\((?P<why>[^)]+)\)\s*-->")
#: Shell syntax that needs a real shell (pipes, redirections, variables).
SHELL_SYNTAX = re.compile(r"[|<>;&$`]")
#: An example plugin's file: the marker, then a fence right after it.
FILE_BLOCK = re.compile(r"<!-- file: (?P<path>\S+) -->\n```\w*\n(?P<body>.*?)```", re.S)
FILE_MARKER = re.compile(r"<!--\s*file:")


def doc_files() -> list[Path]:
    """The pages whose examples are executed: the README, then docs/ in path order."""
    return [README, *sorted(DOCS.rglob("*.md"))]


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@dataclass
class Block:
    path: str  # of the page, relative to the checkout
    line: int  # of the ```console fence, 1-based
    skip: str | None
    commands: list[tuple[str, list[str]]] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def console_blocks(text: str, path: str = "README.md") -> list[Block]:
    """A page's console blocks: their commands and the output shown for each.

    A block indented in a list item is read without its indentation.
    """
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() != "```console":
            i += 1
            continue
        indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
        before = next((line for line in reversed(lines[:i]) if line.strip()), "")
        marker = SKIP.search(before)
        block = Block(path=path, line=i + 1, skip=marker.group("why") if marker else None)
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            line = lines[i].removeprefix(indent)
            if line.startswith("$ "):
                block.commands.append((line[2:], []))
            elif block.commands:
                block.commands[-1][1].append(line)
            i += 1
        blocks.append(block)
        i += 1
    return blocks


def fenced(language: str) -> list[tuple[str, str]]:
    """``(PATH:LINE, body)`` of every fenced block of ``language`` in the pages, but those
    marked ``<!-- doctest: skip (why) -->``."""
    found = []
    for page in doc_files():
        text = page.read_text(encoding="utf-8")
        for m in re.finditer(rf"^[ \t]*```{language}\n(.*?)^[ \t]*```", text,
                             flags=re.DOTALL | re.MULTILINE):
            before = text[:m.start()].rstrip().rpartition("\n")[2]
            if SKIP.search(before):
                continue
            found.append((f"{relative(page)}:{text.count(chr(10), 0, m.start()) + 1}",
                          m.group(1)))
    return found


def example_files() -> dict[str, str]:
    """The example plugins' files (``<!-- file: PATH -->``) of every page, by path."""
    files: dict[str, str] = {}
    for page in doc_files():
        for m in FILE_BLOCK.finditer(page.read_text(encoding="utf-8")):
            assert m["path"] not in files, f"{m['path']} is declared twice ({relative(page)})"
            files[m["path"]] = m["body"]
    return files


def matches(shown: list[str], output: str) -> bool:
    """Whether ``output`` is what the page shows (``...``: any text)."""
    lines = [line.rstrip() for line in output.rstrip("\n").splitlines()]
    if "Traceback (most recent call last):" in lines:
        lines = lines[-1:]
    expected = "\n".join(line.rstrip() for line in shown).strip("\n")
    pattern = ".*?".join(re.escape(part) for part in expected.split("..."))
    return re.fullmatch(pattern, "\n".join(lines), flags=re.DOTALL) is not None


def shell(command: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    """stdout and stderr of ``command`` run by bash, with this Python's scripts first on PATH."""
    env = {**os.environ, **(env or {}),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=120)
    return done.stdout


def in_process(words: list[str]) -> str:
    """stdout and stderr of ``zoo WORDS`` run in this process, in the order written."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), \
            contextlib.suppress(SystemExit):
        main(words)
    return out.getvalue()


def run(command: str, cwd: Path) -> str:
    """stdout and stderr of ``command``: ``zoo`` in this process, anything else in bash."""
    words = shlex.split(command, comments=True)
    if words[0] == "zoo" and not SHELL_SYNTAX.search(command.split("#")[0]):
        return in_process(words[1:])
    return shell(command, cwd)


def isolate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh folder, private caches and no plugin or traceback settings of the user's."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / ".cache"))
    monkeypatch.setenv("COLUMNS", "80")
    for name in ("ZOO_EXPORTS", "ZOO_PLUGINS", "ZOO_BLOCK_PLUGINS",
                 "ZOO_DISABLE_PLUGIN_AUTOLOAD", "ZOO_TRACEBACK"):
        monkeypatch.delenv(name, raising=False)


BLOCKS = [b for page in doc_files()
          for b in console_blocks(page.read_text(encoding="utf-8"), relative(page))]
#: The blocks run here: not marked, and showing some output (no test is ever skipped).
CHECKED = [b for b in BLOCKS if b.skip is None and any(shown for _, shown in b.commands)]


def test_the_pages_have_checked_console_examples() -> None:
    assert len(CHECKED) >= 11  # 6 before the docs moved out of the README
    assert any(b.path == "README.md" for b in CHECKED)
    assert all(b.skip.strip() for b in BLOCKS if b.skip is not None)  # each says why


def test_every_marker_is_read() -> None:
    """A misspelled marker would silently run a block, or leave a file out of a plugin."""
    for page in doc_files():
        text = re.sub(r"`[^`\n]+`", "", page.read_text(encoding="utf-8"))  # not in prose code
        assert len(FILE_MARKER.findall(text)) == len(FILE_BLOCK.findall(text)), relative(page)
        assert len(re.findall(r"<!--\s*doctest", text)) == len(SKIP.findall(text)), (
            relative(page))
    assert example_files()  # and no path is declared twice


def test_matching_rules() -> None:
    assert matches(["a ... c", "..."], "a b c\nmore\nlines\n")
    assert matches(["x: error"], "Traceback (most recent call last):\n  File ...\nx: error\n")
    assert not matches(["a b"], "a c\n")
    assert not matches(["one"], "one\ntwo\n")


def test_indented_blocks_are_read_without_their_indentation() -> None:
    [block] = console_blocks("- item\n\n  ```console\n  $ zoo list\n  NAME\n  ```\n")
    assert block.commands == [("zoo list", ["NAME"])] and block.line == 3


@pytest.mark.parametrize("block", CHECKED, ids=[b.where for b in CHECKED])
def test_console_block(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate(tmp_path, monkeypatch)
    for command, shown in block.commands:
        if not shown:
            continue
        output = run(command, tmp_path)
        assert matches(shown, output), (
            f"{block.where}: '$ {command}' printed\n{output}\ninstead of\n" + "\n".join(shown))


def test_the_config_file_example_is_one_zoo_train_reads(tmp_path: Path) -> None:
    from zoo.spec.training import load_config_file, validate_config

    [(_, text)] = [(where, body) for where, body in fenced("toml")
                   if "--config" in body.splitlines()[0]]
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    config = validate_config(load_config_file(path))
    assert config.dataset == "imagefolder" and config.model


DEPLOYMENT = [(where, body) for where, body in fenced("python") if "OnnxClassifier(" in body]


@pytest.mark.parametrize(("where", "code"), DEPLOYMENT, ids=[w for w, _ in DEPLOYMENT])
def test_the_deployment_snippet_runs_from_any_folder(where: str, code: str,
                                                     tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", code + "\nimport sys\n"
                           "assert 'torch' not in sys.modules\n"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{where}: {done.stderr}"
    lines = done.stdout.splitlines()
    assert len(lines) == 1  # one image: its most probable class
    assert re.fullmatch(r"sky\.png (airplane|bird) [01]\.\d{3}", lines[0])


def test_there_is_a_deployment_snippet() -> None:
    assert DEPLOYMENT
