"""``zoo list``, ``zoo show`` and ``zoo plugins``: output, exit codes, and no torch import."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import MakeDist, tiny_plugin

from zoo.cli import main

BOOK = ["Net", "NetBatchNorm", "NetDepth", "NetDropout", "NetRes", "NetResDeep", "NetWidth"]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zoo", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_list_shows_the_seven(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["NAME", "SUMMARY"]
    assert [line.split()[0] for line in out[1:]] == BOOK


def test_list_patterns_tags_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "NetRes*", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in records] == ["NetRes", "NetResDeep"]
    assert records[1]["hparams"]["n_blocks"] == 10
    assert records[1]["distribution"] == "zoo"
    assert main(["list", "--tag", "dropout", "--json"]) == 0
    assert [r["name"] for r in json.loads(capsys.readouterr().out)] == ["NetDropout"]
    assert main(["list", "Nothing*"]) == 1


def test_show_and_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", "NetResDeep"]) == 0
    out = capsys.readouterr().out
    assert "n_blocks" in out and ">=1 <=200" in out and "zoo 0.1.0" in out
    assert main(["show", "NetResDeep", "--schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["properties"]["shared_block"]["default"] is False


def test_plugins_lists_distribution_version_and_architectures(
        capsys: pytest.CaptureFixture[str], make_dist: MakeDist) -> None:
    make_dist("broken-nets", "broken_nets_cli", "import does_not_exist_anywhere\n", version="0.3")
    assert main(["plugins"]) == 1  # a plugin failed
    out = capsys.readouterr().out
    chapter8 = next(line for line in out.splitlines() if line.startswith("chapter8"))
    assert "zoo" in chapter8 and "0.1.0" in chapter8 and "NetResDeep" in chapter8
    broken = next(line for line in out.splitlines() if line.startswith("broken_nets_cli"))
    assert "broken-nets" in broken and "0.3" in broken and "does_not_exist_anywhere" in broken
    # The others keep working, with a warning pointing at `zoo plugins`.
    assert main(["list", "Net"]) == 0
    captured = capsys.readouterr()
    assert "broken_nets_cli" in captured.err and "zoo plugins" in captured.err


@pytest.mark.parametrize(("args", "message"), [
    (["show", "NetResDep"], "unknown architecture 'NetResDep'; did you mean 'NetResDeep'"),
    (["-p", "chapter8", "list"], "-p takes 'no:NAME'"),
])
def test_bad_input_is_one_line_without_traceback(
        capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.strip() == f"zoo: error: {err.strip().removeprefix('zoo: error: ')}"
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_duplicate_registration_makes_only_that_name_fail(
        capsys: pytest.CaptureFixture[str], make_dist: MakeDist) -> None:
    make_dist("evil-zoo", "evil_zoo_cli", tiny_plugin("NetRes", "evil_zoo_cli"), version="6.6")
    assert main(["list"]) == 0
    assert main(["show", "NetRes"]) == 0  # the zoo's own, warned about once per command
    err = capsys.readouterr().err
    assert err.count("architecture 'NetRes' is the zoo's own") == 2
    assert "zoo 0.1.0 (plugin 'chapter8')" in err and "evil-zoo 6.6 (plugin 'evil_zoo_cli')" in err
    assert main(["plugins"]) == 1  # evil_zoo_cli lost a spec: partial
    assert main(["-p", "no:chapter8", "show", "NetRes", "--json"]) == 0
    assert '"plugin": "evil_zoo_cli"' in capsys.readouterr().out


def test_console_script_exit_code_and_no_torch_import() -> None:
    proc = run_cli("show", "Nope")
    assert proc.returncode == 1
    assert proc.stderr.startswith("zoo: error: unknown architecture 'Nope'")
    assert "Traceback" not in proc.stderr
    probe = subprocess.run(
        [sys.executable, "-c",
         "import sys; from zoo.cli import main; main(['list']); main(['show', 'NetRes']); "
         "print('TORCH', 'torch' in sys.modules)"],
        capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    assert "TORCH False" in probe.stdout


def test_traceback_on_request() -> None:
    proc = run_cli("show", "Nope", env={"ZOO_TRACEBACK": "1"})
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "UnknownArchitectureError" in proc.stderr
