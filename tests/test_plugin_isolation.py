"""Issue 14: a plugin's mistakes stay local, and each one is one clear line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import MakeDist, tiny_plugin

from zoo.cli import main
from zoo.errors import DuplicateNameError, PluginError
from zoo.host.registry import Registry

MORE = '''

@zoo.hookimpl
def zoo_datasets():
    return [zoo.DatasetSpec(name="{module}_data", summary="Data.", loader="{module}:load")]
'''


def two_specs(module: str, second: str, *, second_hparams: str = "TinyHParams") -> str:
    """A plugin with arch ``Good_<module>``, a second arch ``second`` and a dataset."""
    code = tiny_plugin(f"Good_{module}", module) + MORE.replace("{module}", module)
    return code.replace("    )]\n", f'''    ), zoo.ArchitectureSpec(
        name="{second}", summary="Second.", builder="{module}:build",
        hparams={second_hparams}, source="tests")]
''', 1)


def test_a_bad_spec_drops_only_itself(make_dist: MakeDist,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    code = two_specs("halfbad", "Clash", second_hparams="Reserved") + '''
class Reserved(zoo.HParams):
    num_classes: int = 3
'''
    make_dist("half-bad", "halfbad", code, version="0.2")
    reg = Registry()
    assert "Good_halfbad" in reg.list_models() and "Clash" not in reg.list_models()
    assert "halfbad_data" in reg.list_datasets()
    [info] = reg.failed_plugins()
    assert info.status == "partial" and info.architectures == ("Good_halfbad",)
    [problem] = info.problems
    assert "'Clash' (dropped)" in problem and "reserved" in problem
    assert main(["plugins"]) == 1
    out = capsys.readouterr().out
    assert "problem: halfbad: zoo_architectures() returned an invalid spec 'Clash'" in out
    assert main(["plugins", "--json"]) == 1
    records = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert records["halfbad"]["status"] == "partial"
    assert records["chapter8"]["status"] == "loaded"


def test_a_duplicate_name_is_unavailable_and_everything_else_works(
        make_dist: MakeDist, capsys: pytest.CaptureFixture[str]) -> None:
    make_dist("evil-zoo", "evil_dup", two_specs("evil_dup", "Net"), version="6.6")
    reg = Registry()
    assert "Net" not in reg.list_models()
    assert {"NetRes", "Good_evil_dup"} <= set(reg.list_models())
    with pytest.raises(DuplicateNameError) as info:
        reg.get_spec("Net")
    assert "zoo 0.1.0" in str(info.value) and "evil-zoo 6.6" in str(info.value)
    assert reg.create_model("NetRes").training
    # other commands work and warn once, naming both distributions
    assert main(["list", "NetR*", "--json"]) == 0
    captured = capsys.readouterr()
    assert [r["name"] for r in json.loads(captured.out)] == ["NetRes", "NetResDeep"]
    [warning] = captured.err.strip().splitlines()
    assert warning.startswith("zoo: warning: architecture 'Net' is registered by both zoo 0.1.0")
    assert "evil-zoo 6.6" in warning
    assert main(["show", "Net"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("zoo: error: architecture 'Net' is registered by both")
    assert main(["plugins"]) == 1
    out = capsys.readouterr().out
    assert out.count("architecture 'Net' is registered by both") == 1
    assert "\nconflict: architecture 'Net' is registered by both zoo 0.1.0" in out


def test_an_entry_point_named_like_a_builtin_is_refused(make_dist: MakeDist,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    make_dist("squatter", "squat_mod", tiny_plugin("Squat", "squat_mod"),
              entry_points={"chapter8": "squat_mod", "datasets": "squat_mod"})
    reg = Registry()
    assert "Net" in reg.list_models() and "Squat" not in reg.list_models()
    assert "synthetic" in reg.list_datasets()
    refused = [p for p in reg.plugins() if p.distribution == "squatter"]
    assert len(refused) == 2
    assert all(p.status == "error" and p.error is not None and "already taken by the zoo's "
               "built-in plugin" in p.error for p in refused)
    assert main(["list", "Net"]) == 0
    assert "refused" in capsys.readouterr().err
    assert main(["plugins"]) == 1


def test_two_distributions_with_one_entry_point_name(make_dist: MakeDist) -> None:
    make_dist("first-dist", "first_mod", tiny_plugin("First", "first_mod"),
              entry_points={"same": "first_mod"})
    make_dist("second-dist", "second_mod", tiny_plugin("Second", "second_mod"),
              entry_points={"same": "second_mod"})
    reg = Registry()
    names = reg.list_models()
    assert ("First" in names) != ("Second" in names) and "Net" in names
    [refused] = reg.failed_plugins()
    assert refused.error is not None and "entry-point name 'same' is already taken" in refused.error


def test_a_builder_outside_the_plugin_package_is_refused(make_dist: MakeDist) -> None:
    code = tiny_plugin("Shell", "shell_nets").replace('builder="shell_nets:build"',
                                                      'builder="os:system"')
    make_dist("shell-nets", "shell_nets", code)
    reg = Registry()
    assert "Shell" not in reg.list_models()
    [info] = reg.failed_plugins()
    assert "builder 'os:system' is outside the plugin's own package 'shell_nets'" in \
        info.problems[0]


def test_a_hook_that_builds_an_invalid_spec_keeps_the_other_hook(make_dist: MakeDist) -> None:
    code = (tiny_plugin("Bad Name", "badhook") + MORE.replace("{module}", "badhook"))
    make_dist("bad-hook", "badhook", code)
    reg = Registry()
    assert "badhook_data" in reg.list_datasets()
    [info] = reg.failed_plugins()
    assert "invalid ArchitectureSpec: name: String should match pattern" in info.problems[0]


FAULTS = {
    "raises": ("raise ValueError('no such layer')",
               "the builder 'faulty_{i}:build' of architecture 'F{i}' from faulty-{i} 1.0 "
               "(plugin 'faulty_{i}') raised ValueError: no such layer"),
    "not a module": ("return 'a string'",
                     "breaks the model contract: expected a torch.nn.Module mapping (N, C, H, W) "
                     "(2, 3, 32, 32) to (N, num_classes) (2, 2); its builder returned str"),
    "extra logit": ("return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, num_classes + 1))",
                    "to (N, num_classes) (2, 2); seen float32 (2, 3)"),
    "4-d output": ("return nn.Conv2d(3, num_classes, 32)", "seen float32 (2, 2, 1, 1)"),
    "forward fails": ("return nn.Linear(5, num_classes)",
                      "its forward raised RuntimeError: mat1 and mat2 shapes cannot be multiplied"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_builder_mistakes_are_one_plugin_error(make_dist: MakeDist, fault: str) -> None:
    i = list(FAULTS).index(fault)
    body, message = FAULTS[fault]
    module = f"faulty_{i}"
    code = tiny_plugin(f"F{i}", module).replace('''    from torch import nn
    return nn.Sequential(''', f'''    from torch import nn
    {body}
    return nn.Sequential(''')
    make_dist(f"faulty-{i}", module, code)
    reg = Registry()
    with pytest.raises(PluginError) as info:
        reg.create_model(f"F{i}")
    text = str(info.value)
    assert message.replace("{i}", str(i)) in text
    assert f"'F{i}' from faulty-{i} 1.0 (plugin '{module}')" in text
    assert "\n" not in text


def test_wrong_builder_signature(make_dist: MakeDist) -> None:
    code = tiny_plugin("Sig", "sig_nets").replace(
        "def build(hparams, *, input_shape, num_classes):", "def build(hparams, shape):")
    make_dist("sig-nets", "sig_nets", code)
    with pytest.raises(PluginError, match=r"cannot be called as the zoo calls it .*; its "
                                          r"signature is \(hparams, shape\)"):
        Registry().create_model("Sig")


def test_cli_prints_one_line_and_traceback_shows_the_original(make_dist: MakeDist,
                                                              capsys: pytest.CaptureFixture[str]
                                                              ) -> None:
    code = tiny_plugin("Boom", "boom_nets").replace(
        "    from torch import nn\n", "    from torch import nn\n    raise KeyError('deep')\n")
    make_dist("boom-nets", "boom_nets", code)
    assert main(["export", "Boom", "--out", "unused"]) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("zoo: error: the builder 'boom_nets:build' of architecture 'Boom'")
    with pytest.raises(PluginError) as info:
        main(["--traceback", "export", "Boom", "--out", "unused"])
    assert isinstance(info.value.__cause__, KeyError)


def test_listing_warns_about_a_plugin_importing_a_heavy_module(
        make_dist: MakeDist, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # torch is imported in this process already: a stand-in heavy module shows the mechanism
    import zoo.host.plugins

    monkeypatch.setattr(zoo.host.plugins, "HEAVY_MODULES", ("zoo_fake_heavy", "zoo_fake_heavy2"))
    make_dist("fake-heavy", "zoo_fake_heavy", "", entry_points={})
    make_dist("fake-heavy2", "zoo_fake_heavy2", "", entry_points={})
    monkeypatch.delitem(sys.modules, "zoo_fake_heavy", raising=False)
    monkeypatch.delitem(sys.modules, "zoo_fake_heavy2", raising=False)
    make_dist("heavy-nets", "heavy_nets", tiny_plugin("Heavy", "heavy_nets").replace(
        "import zoo\n", "import zoo\nimport zoo_fake_heavy\n"))
    make_dist("heavy-hook", "heavy_hook", tiny_plugin("HeavyHook", "heavy_hook").replace(
        "def zoo_architectures():\n", "def zoo_architectures():\n    import zoo_fake_heavy2\n"))
    assert main(["list", "Heavy*"]) == 0
    warnings = capsys.readouterr().err.strip().splitlines()
    assert warnings == [
        "zoo: warning: heavy-hook 1.0 (plugin 'heavy_hook'): calling zoo_architectures() "
        "imported zoo_fake_heavy2, which slows down 'zoo list' and 'zoo show'; import heavy "
        "modules inside the builder or loader instead (see 'zoo plugins')",
        "zoo: warning: heavy-nets 1.0 (plugin 'heavy_nets'): importing 'heavy_nets' imported "
        "zoo_fake_heavy, which slows down 'zoo list' and 'zoo show'; import heavy modules "
        "inside the builder or loader instead (see 'zoo plugins')"]
    assert main(["plugins"]) == 0  # slow, not broken


@pytest.mark.parametrize(("args", "message"), [
    (["NetDropout", "--set", "dropout=2"], "invalid value 2 for NetDropout hyperparameter "
                                           "'dropout'"),
    (["Net", "--option", "size=1"], "invalid option 'size' for dataset 'synthetic'"),
    (["Net", "--lr", "-1"], "invalid value -1.0 for 'lr'"),
])
def test_train_rejects_bad_values_before_importing_torch(args: list[str], message: str) -> None:
    code = ("import sys\nfrom zoo.cli import main\nrc = main(['train', *sys.argv[1:]])\n"
            "print('torch' in sys.modules)\nraise SystemExit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1
    assert proc.stdout.strip() == "False"
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_traceback_flag_shows_a_failed_plugin_s_own_exception(
        make_dist: MakeDist, capsys: pytest.CaptureFixture[str]) -> None:
    make_dist("broken-tb", "broken_tb", "def helper():\n    raise ValueError('deep down')\n"
                                        "helper()\n")
    assert main(["list", "Net"]) == 0
    [warning] = capsys.readouterr().err.strip().splitlines()
    assert warning == ("zoo: warning: broken-tb 1.0 (plugin 'broken_tb'): failed to import "
                       "'broken_tb': ValueError: deep down (see 'zoo plugins')")
    assert main(["--traceback", "list", "Net"]) == 0
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "in helper" in err
