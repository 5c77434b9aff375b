"""The plugin host: discovery through entry points, validation, provenance and bad input."""

from __future__ import annotations

import json
import sys
import types

import pytest
from conftest import MakeDist, tiny_plugin
from pydantic import ValidationError

import zoo
from zoo.errors import (
    DuplicateNameError,
    HyperparameterError,
    InputShapeError,
    UnknownArchitectureError,
    UnknownDatasetError,
    ZooError,
)
from zoo.host.registry import Registry
from zoo.util.suggest import suggest

#: In the book's (and the plugin's) order.
BOOK_ORDER = ["Net", "NetWidth", "NetDropout", "NetBatchNorm", "NetDepth", "NetRes", "NetResDeep"]
BOOK = ["Net", "NetBatchNorm", "NetDepth", "NetDropout", "NetRes", "NetResDeep", "NetWidth"]


def test_each_plugin_lists_what_it_provides() -> None:
    provides = {p.name: (p.architectures, p.datasets) for p in Registry().plugins()}
    assert provides["chapter8"] == (tuple(BOOK_ORDER), ())
    assert provides["datasets"] == ((), ("synthetic", "imagefolder", "cifar2", "cifar10"))


def test_builtins_come_from_the_entry_point_group_with_provenance() -> None:
    reg = Registry()
    assert reg.list_models() == BOOK
    spec = reg.get_spec("NetRes")
    assert spec.provenance is not None
    assert (spec.provenance.plugin, spec.provenance.distribution) == ("chapter8", "zoo")
    assert spec.provenance.version == zoo.__version__
    assert spec.source.startswith("Deep Learning with PyTorch")
    assert spec.input_shape.as_tuple() == (3, 32, 32)
    assert spec.num_classes == 2


def test_list_models_wildcards_and_tags() -> None:
    assert zoo.list_models("NetRes*") == ["NetRes", "NetResDeep"]
    assert zoo.list_models(["net", "*drop*"]) == ["Net", "NetDropout"]
    assert zoo.list_models(tags=["residual"]) == ["NetRes", "NetResDeep"]
    assert zoo.list_models(tags=["residual", "batchnorm"]) == ["NetResDeep"]
    assert zoo.list_models("Foo*") == []


def test_hparams_schema_has_defaults_bounds_and_descriptions() -> None:
    schema = zoo.hparams_schema("NetResDeep")
    props = schema["properties"]
    assert props["n_blocks"]["default"] == 10
    assert props["n_blocks"]["minimum"] == 1
    assert "description" in props["shared_block"]
    assert props["num_classes"]["default"] == 2
    assert schema["additionalProperties"] is False


def test_resolve_records_everything_needed_to_rebuild() -> None:
    cfg = zoo.resolve("NetWidth", n_chans1=16, num_classes=4, in_height=24)
    assert cfg.architecture == "NetWidth"
    assert cfg.hparams == {"n_hidden": 32, "n_chans1": 16}
    assert cfg.input_shape.as_tuple() == (3, 24, 32)
    assert cfg.num_classes == 4
    # Strings (from the CLI's --set) are converted by the spec's model.
    assert zoo.resolve("NetWidth", n_chans1="8").hparams["n_chans1"] == 8


def test_unknown_architecture_suggests_the_closest_names() -> None:
    with pytest.raises(UnknownArchitectureError, match=r"'NetResDep'.*did you mean 'NetResDeep'"):
        zoo.get_spec("NetResDep")
    with pytest.raises(UnknownArchitectureError, match="did you mean 'Net'"):
        zoo.create_model("net")


@pytest.mark.parametrize(("typed", "said"), [
    ("NetResDep", "; did you mean 'NetResDeep' or 'NetRes' or 'NetDepth'?"),  # at most three
    ("netres", "; did you mean 'NetRes'?"),  # a case-insensitive match alone, first
    ("Netres", "; did you mean 'NetRes' or 'Net' or 'NetResDeep'?"),  # then the close ones
    ("NETRESDEP", "; did you mean 'NetResDeep' or 'NetRes' or 'NetDepth'?"),  # via lower case
    ("resnet50", ""),
])
def test_suggestions_for_a_mistyped_name(typed: str, said: str) -> None:
    assert suggest(typed, BOOK) == said
    # the case-insensitive match and three close ones: still three names
    assert suggest("ab", ["AB", "ab1", "ab2", "ab3"]) == "; did you mean 'AB' or 'ab3' or 'ab2'?"


def test_unknown_hyperparameter_lists_the_accepted_ones() -> None:
    with pytest.raises(HyperparameterError) as info:
        zoo.create_model("Net", n_chans1=8)
    assert str(info.value) == ("Net has no hyperparameter 'n_chans1'; accepted: n_hidden, "
                               "in_channels, in_height, in_width, num_classes")


def test_out_of_range_and_wrong_type_name_the_field_and_bound() -> None:
    with pytest.raises(HyperparameterError, match=r"'n_blocks'.*greater than or equal to 1"):
        zoo.create_model("NetResDeep", n_blocks=0)
    with pytest.raises(HyperparameterError, match=r"'dropout'.*less than 1"):
        zoo.create_model("NetDropout", dropout=1.5)
    with pytest.raises(HyperparameterError, match=r"'abc' for NetWidth hyperparameter 'n_chans1'"):
        zoo.create_model("NetWidth", n_chans1="abc")
    with pytest.raises(HyperparameterError, match="'num_classes'"):
        zoo.create_model("Net", num_classes=1)


def test_input_size_the_architecture_cannot_take() -> None:
    with pytest.raises(InputShapeError, match=r"NetDepth cannot take 6x6 inputs.*at least 8"):
        zoo.create_model("NetDepth", in_height=6, in_width=6)


def test_third_party_plugin_is_found_through_distribution_metadata(make_dist: MakeDist) -> None:
    make_dist("tiny-nets", "tiny_nets", tiny_plugin("TinyNet", "tiny_nets"), version="2.3")
    reg = Registry()
    assert "TinyNet" in reg.list_models()
    spec = reg.get_spec("TinyNet")
    assert spec.provenance is not None
    assert spec.provenance.distribution == "tiny-nets"
    assert spec.provenance.version == "2.3"
    model = reg.create_model("TinyNet", n_filters=6, num_classes=3)
    assert model[0].out_channels == 6
    info = {p.name: p for p in reg.plugins()}["tiny_nets"]
    assert info.architectures == ("TinyNet",)


def test_plugin_that_fails_to_import_is_reported_and_others_work(make_dist: MakeDist) -> None:
    make_dist("broken-nets", "broken_nets", "raise RuntimeError('boom at import')\n")
    reg = Registry()
    assert reg.list_models("Net") == ["Net"]
    [failed] = reg.failed_plugins()
    assert failed.distribution == "broken-nets"
    assert failed.error is not None
    assert "RuntimeError: boom at import" in failed.error


def test_plugin_returning_an_invalid_spec_is_reported(make_dist: MakeDist) -> None:
    code = tiny_plugin("Bad Name!", "bad_nets")
    make_dist("bad-nets", "bad_nets", code)
    reg = Registry()
    [failed] = reg.failed_plugins()
    assert (failed.distribution, failed.status) == ("bad-nets", "partial")
    [problem] = failed.problems
    assert "invalid ArchitectureSpec" in problem and "name" in problem and "Bad Name!" in problem
    assert "NetRes" in reg.list_models()


def test_reserved_hyperparameter_names_are_refused(make_dist: MakeDist) -> None:
    code = tiny_plugin("Clash", "clash_nets").replace("n_filters: int", "num_classes: int")
    make_dist("clash-nets", "clash_nets", code)
    [failed] = Registry().failed_plugins()
    assert failed.problems == (
        "zoo_architectures() returned an invalid spec 'Clash' (dropped): hyperparameter names "
        "['num_classes'] are reserved for the shape keys (in_channels, in_height, in_width, "
        "num_classes)",)


def test_duplicate_names_name_both_distributions(make_dist: MakeDist) -> None:
    make_dist("evil-zoo", "evil_zoo", tiny_plugin("Net", "evil_zoo"), version="6.6")
    make_dist("twin-a", "twin_a", tiny_plugin("Twin", "twin_a"))
    make_dist("twin-b", "twin_b", tiny_plugin("Twin", "twin_b"), version="2.0")
    reg = Registry()
    # a built-in name stays the zoo's: the other plugin's spec is dropped and named
    kept = reg.get_spec("Net")
    assert kept.provenance is not None and kept.provenance.distribution == "zoo"
    [clash] = [c for c in reg.conflicts if c.startswith("architecture 'Net'")]
    assert "zoo 0.1.0 (plugin 'chapter8')" in clash and "evil-zoo 6.6" in clash
    assert reg.plugins_by_key()["evil_zoo"].status == "partial"
    # between two other plugins, the name is nobody's until one goes
    with pytest.raises(DuplicateNameError) as info:
        reg.get_spec("Twin")
    message = str(info.value)
    assert "twin-a 1.0" in message and "twin-b 2.0" in message
    assert "-p no:twin_a or -p no:twin_b" in message
    survivor = Registry(blocked=["twin_a"]).get_spec("Twin")
    assert survivor.provenance is not None and survivor.provenance.distribution == "twin-b"


def test_autoload_can_be_disabled_and_plugins_named(make_dist: MakeDist) -> None:
    make_dist("tiny-nets", "tiny_nets2", tiny_plugin("TinyNet2", "tiny_nets2"))
    off = Registry(environ={"ZOO_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert "TinyNet2" not in off.list_models()
    assert "Net" in off.list_models()  # the zoo's own plugins still load
    named = Registry(environ={"ZOO_DISABLE_PLUGIN_AUTOLOAD": "1", "ZOO_PLUGINS": "tiny_nets2"})
    assert "TinyNet2" in named.list_models()


@pytest.mark.parametrize("first", ["not-named", "blocked", "taken", "broken", "repeated"])
def test_an_entry_point_that_is_skipped_does_not_stop_the_next(make_dist: MakeDist,
                                                               first: str) -> None:
    """Entry points are taken one by one: one that is not loaded (autoload off and not
    named, blocked, a name already taken, an import that fails, the same entry listed
    twice) leaves the distribution's next entry point loading as usual."""
    make_dist("zoo-broken", "broken_mod", "raise ImportError('missing dependency')\n",
              entry_points={})
    make_dist("zoo-early", "early_mod", tiny_plugin("EarlyNet", "early_mod"), entry_points={})
    first_ep = {"not-named": "extra = early_mod", "blocked": "extra = early_mod",
                "taken": "chapter8 = early_mod", "broken": "broken = broken_mod",
                "repeated": "early = early_mod\nearly = early_mod"}[first]
    site = make_dist("zoo-two", "later_mod", tiny_plugin("LaterNet", "later_mod"))
    (site / "zoo_two-1.0.dist-info" / "entry_points.txt").write_text(
        f"[zoo.plugins]\n{first_ep}\nlater = later_mod\n")
    environ = {"ZOO_DISABLE_PLUGIN_AUTOLOAD": "1", "ZOO_PLUGINS": "later"} \
        if first == "not-named" else {}
    reg = Registry(environ=environ, blocked=["extra"] if first == "blocked" else ())
    assert "LaterNet" in reg.list_models()
    assert [p.status for p in reg.plugins() if p.name == "later"] == ["loaded"]
    assert "Net" in reg.list_models()  # the built-in keeps its name
    if first == "repeated":
        assert [p.status for p in reg.plugins() if p.name == "early"] == ["loaded"]
    if first == "taken":
        assert [p.error for p in reg.plugins() if p.name == "chapter8" and p.failed] == [
            "refused: the entry-point name 'chapter8' is already taken by the zoo's built-in "
            "plugin 'chapter8'; rename the entry point"]


HOOK_RETURNS = {
    "invalid": ("zoo.ArchitectureSpec(name=123)", "raised while building an invalid "
                "ArchitectureSpec: name: Input should be a valid string (got 123)"),
    "raises": ("1 / 0", "raised ZeroDivisionError: division by zero"),
    "a string": ("'NetX'", "raised TypeError: zoo_architectures() must return a list, got str"),
    "a dict": ("{'name': 'NetX'}",
               "raised TypeError: zoo_architectures() must return a list, got dict"),
    "None": ("None", None),
}


@pytest.mark.parametrize("returns", sorted(HOOK_RETURNS))
def test_a_hook_that_fails_or_returns_no_list_costs_only_its_plugin(make_dist: MakeDist,
                                                                    returns: str) -> None:
    code, problem = HOOK_RETURNS[returns]
    make_dist("zoo-odd", "odd_mod", f"import zoo\n\n@zoo.hookimpl\ndef zoo_architectures():\n"
              f"    return {code}\n", entry_points={})
    site = make_dist("zoo-two", "later_mod", tiny_plugin("LaterNet", "later_mod"))
    (site / "zoo_two-1.0.dist-info" / "entry_points.txt").write_text(
        "[zoo.plugins]\nodd = odd_mod\nlater = later_mod\n")
    reg = Registry()
    assert "LaterNet" in reg.list_models() and "Net" in reg.list_models()
    odd = {p.name: p for p in reg.plugins()}["odd"]
    if problem is None:  # None is an empty list
        assert (odd.status, odd.problems) == ("loaded", ())
        assert reg.plugin_exception("odd") is None
    else:
        assert odd.status == "partial"
        assert odd.problems == (f"zoo_architectures() {problem}; nothing from this hook "
                                "was registered",)
        assert isinstance(reg.plugin_exception("odd"), Exception)  # for --traceback


def test_hooks_run_once_per_scan_and_a_rescan_starts_clean(make_dist: MakeDist) -> None:
    """Lookups reuse one scan; registering a plugin rescans, and a plugin's problems are
    then reported once, not once per scan."""
    make_dist("zoo-counted", "counted_mod", """
        import zoo

        CALLS = []


        @zoo.hookimpl
        def zoo_architectures():
            CALLS.append(1)
            return [{"name": "Bad", "summary": "no builder"}]
        """)
    reg = Registry()
    calls = sys.modules["counted_mod"].CALLS
    for _ in range(3):
        assert "Net" in reg.list_models()
        reg.get_spec("Net")
    assert len(calls) == 1
    problems = {p.name: p.problems for p in reg.plugins()}["counted_mod"]
    # the first of its three errors, where it is and what was given
    assert problems == ("zoo_architectures() returned an invalid spec 'Bad' (dropped): builder: "
                        "Field required (got {'name': 'Bad', 'summary': 'no builder'})",)
    module = types.ModuleType("inline_plugin2")
    exec(tiny_plugin("Inline2", "inline_plugin2"), module.__dict__)
    sys.modules["inline_plugin2"] = module
    try:
        reg.register(module, name="inline2")
        assert "Inline2" in reg.list_models()
    finally:
        del sys.modules["inline_plugin2"]
    assert len(calls) == 2
    info = {p.name: p for p in reg.plugins()}["counted_mod"]
    assert (info.status, info.problems) == ("partial", problems)


def test_tags_select_models_carrying_all_of_them() -> None:
    reg = Registry()
    tags = reg.get_spec("Net").tags
    assert "Net" in reg.list_models(tags=tags)  # all of a model's own tags select it
    assert "Net" in reg.list_models(tags=[t.upper() for t in tags[:1]])
    assert reg.list_models(tags=[*tags, "no-such-tag"]) == []


def test_lookups_in_an_empty_registry_say_none_is_installed() -> None:
    empty = Registry(entry_points=False)
    with pytest.raises(UnknownArchitectureError,
                       match=r"^unknown architecture 'Net'; known: none installed$"):
        empty.get_spec("Net")
    with pytest.raises(UnknownDatasetError,
                       match=r"^unknown dataset 'cifar2' \(known: none installed\)$"):
        empty.get_dataset("cifar2")


def test_naming_an_installed_plugin_that_autoload_skipped_is_no_typo(make_dist: MakeDist) -> None:
    make_dist("tiny-nets", "tiny_skipped", tiny_plugin("TinySkipped", "tiny_skipped"))
    reg = Registry(environ={"ZOO_DISABLE_PLUGIN_AUTOLOAD": "1"}, blocked=["tiny_skipped"])
    assert "TinySkipped" not in reg.list_models()
    assert reg.unknown_plugin_names() == []


def test_blocking_by_environment_variable() -> None:
    reg = Registry(environ={"ZOO_BLOCK_PLUGINS": "chapter8"})
    assert reg.list_models() == []
    status = {p.name: p.status for p in reg.plugins()}
    assert status["chapter8"] == "blocked"


def test_plugin_registered_directly_for_embedders() -> None:
    import types

    module = types.ModuleType("inline_plugin")
    exec(tiny_plugin("Inline", "inline_plugin"), module.__dict__)
    import sys

    sys.modules["inline_plugin"] = module
    try:
        reg = Registry(entry_points=False)
        reg.register(module, name="inline")
        assert reg.list_models() == ["Inline"]
        assert json.dumps(reg.hparams_schema("Inline"))
        info = {p.name: p for p in reg.plugins()}["inline"]
        # what `zoo plugins --json` shows for it: no distribution, no error, nothing dropped
        assert info.model_dump() == {
            "name": "inline", "distribution": None, "version": None, "status": "loaded",
            "error": None, "problems": (), "warnings": (), "architectures": ("Inline",),
            "datasets": (), "formats": (), "hooks": ("zoo_architectures",), "core": False}
        with pytest.raises(ValidationError):
            info.status = "error"  # read-only: the registry's record, not a scratch copy
        with pytest.raises(DuplicateNameError, match="plugin name 'inline' is used by both "
                                                     "plugin 'inline' and zoo-x 2 "):
            reg.register(module, name="inline", distribution="zoo-x", version="2")
        blocked = Registry(entry_points=False, blocked=["inline"])
        assert blocked.register(module, name="inline") == "inline"
        assert [(p.name, p.status) for p in blocked.plugins() if p.name == "inline"] == [
            ("inline", "blocked")]
        assert "Inline" not in blocked.list_models()
        blocked.register(module, name="inline")  # a blocked name is no duplicate
    finally:
        del sys.modules["inline_plugin"]


def test_without_entry_points_no_plugin_name_is_unknown() -> None:
    """An embedder's registry (no entry points) cannot tell which names are installed."""
    reg = Registry(entry_points=False, blocked=["nosuch"])
    assert reg.unknown_plugin_names() == []
    assert reg.conflicts == []
    with_eps = Registry(blocked=["nosuch"])
    assert [m.startswith("-p no:nosuch: no installed plugin is named 'nosuch'")
            for m in with_eps.unknown_plugin_names()] == [True]


def test_build_revalidates_a_recorded_config() -> None:
    # A config read back from a run or bundle is checked again, e.g. after a plugin update.
    stale = zoo.resolve("NetResDeep").model_copy(update={"hparams": {"n_blocks": 0}})
    with pytest.raises(HyperparameterError, match="'n_blocks'"):
        Registry().build(stale)


def test_plugin_failing_in_its_datasets_hook_keeps_its_architectures(make_dist: MakeDist) -> None:
    code = tiny_plugin("HalfBroken", "half_broken") + (
        "\n@zoo.hookimpl\ndef zoo_datasets():\n    raise RuntimeError('no data today')\n")
    make_dist("half-broken", "half_broken", code)
    reg = Registry()
    assert "HalfBroken" in reg.list_models()
    [failed] = reg.failed_plugins()
    assert failed.status == "partial"
    assert failed.problems == ("zoo_datasets() raised RuntimeError: no data today; nothing "
                               "from this hook was registered",)
    assert isinstance(reg.plugin_exception("half_broken"), RuntimeError)


def test_list_json_with_required_and_factory_defaults(make_dist: MakeDist,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from zoo.cli import main

    code = tiny_plugin("Odd", "odd_nets").replace(
        'n_filters: int = Field(4, ge=1, le=64, description="Channels of the convolution.")',
        'n_filters: int = Field(ge=1, le=64, description="Required.")\n'
        '    kernels: list[int] = Field(default_factory=lambda: [3, 5])')
    make_dist("odd-nets", "odd_nets", code)
    assert main(["list", "Odd", "--json"]) == 0
    [record] = json.loads(capsys.readouterr().out)
    assert record["hparams"] == {"n_filters": None, "kernels": [3, 5]}
    assert main(["show", "Odd"]) == 0
    assert "(required)" in capsys.readouterr().out


def test_builder_that_cannot_be_imported_names_the_plugin(make_dist: MakeDist) -> None:
    from zoo.errors import PluginError

    code = tiny_plugin("Ghost", "ghost_nets").replace('builder="ghost_nets:build"',
                                                      'builder="ghost_nets.missing:build"')
    make_dist("ghost-nets", "ghost_nets", code, version="0.9")
    reg = Registry()
    assert "Ghost" in reg.list_models()  # listing never imports the builder
    with pytest.raises(PluginError, match=r"builder of architecture 'Ghost'.*ghost-nets 0.9"):
        reg.create_model("Ghost")


def test_width_and_height_are_free_hyperparameter_names(make_dist: MakeDist) -> None:
    code = tiny_plugin("TinyVGG", "vgg_nets").replace(
        'n_filters: int = Field(4, ge=1, le=64, description="Channels of the convolution.")',
        'width: int = Field(4, ge=1, le=64, description="Channel width.")\n'
        '    height: int = Field(1, ge=1, le=4)\n    depth: int = 1\n    channels: int = 2',
    ).replace("hparams.n_filters", "hparams.width")
    make_dist("vgg-nets", "vgg_nets", code)
    reg = Registry()
    model = reg.create_model("TinyVGG", width=8, in_width=24)
    assert model[0].out_channels == 8
    config = reg.resolve("TinyVGG", width=8, in_width=24)
    assert config.hparams == {"width": 8, "height": 1, "depth": 1, "channels": 2}
    assert config.input_shape.as_tuple() == (3, 32, 24)


def test_the_old_shape_key_names_point_at_the_new_ones() -> None:
    with pytest.raises(HyperparameterError, match=r"Net has no hyperparameter 'height' \(the "
                                                  r"input's height is 'in_height'\)"):
        zoo.create_model("Net", height=28)


@pytest.mark.parametrize("keyword", [{"pretrained": True}, {"weights": "cifar2"}])
def test_the_registry_builds_untrained_models_only(keyword: dict[str, object]) -> None:
    with pytest.raises(ZooError, match=r"Registry.create_model builds untrained models; load "
                                       r"weights with zoo.create_model\('Net', pretrained=True\)"):
        Registry().create_model("Net", **keyword)
