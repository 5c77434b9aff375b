"""``zoo datasets``: list, show with options, schema, JSON (no torch import)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from zoo.cli import main


def test_datasets_lists_every_dataset_with_its_plugin(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["datasets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "SUMMARY", "PLUGIN"]
    assert [line.split()[0] for line in lines[1:]] == ["cifar10", "cifar2", "imagefolder",
                                                        "synthetic"]
    assert main(["datasets", "--json"]) == 0
    records = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert records["imagefolder"]["needs_data_dir"] is True
    assert records["synthetic"]["options"] == {"size": 2000, "num_classes": 4, "noise": 0.1}
    assert records["cifar2"]["uses"] == ["data_dir", "download"]
    assert (records["cifar2"]["distribution"], records["cifar2"]["plugin"]) == ("zoo", "datasets")


def test_datasets_show_options_and_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["datasets", "show", "synthetic"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("synthetic: Coloured shapes")
    assert "  uses:         --val-split\n" in out
    size = next(line for line in out.splitlines() if line.strip().startswith("size"))
    assert size.split()[:4] == ["size", "int", "2000", ">=4"]
    assert main(["datasets", "show", "synthetic", "--schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["properties"]["num_classes"]["maximum"] == 6
    assert main(["datasets", "show", "cifar2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_classes"] == 2
    assert main(["datasets", "show", "synthtic"]) == 1
    assert "did you mean 'synthetic'" in capsys.readouterr().err


def test_datasets_does_not_import_torch() -> None:
    code = ("import sys\nfrom zoo.cli import main\nmain(['datasets', 'show', 'imagefolder'])\n"
            "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "False"
