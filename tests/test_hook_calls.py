"""Hooks go through pluggy: wrappers run, misspelled hooks are refused, failures name the plugin."""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
import zoo_chapter8
from conftest import MakeDist, tiny_plugin

from zoo import ReferenceAccuracy, hookimpl
from zoo.analysis.compare import compare
from zoo.errors import PluginError
from zoo.host.registry import Registry


class Notes:
    def __init__(self) -> None:
        self.seen: list[str] = []

    @hookimpl
    def zoo_train_note(self, run: Any, text: str) -> None:
        self.seen.append(f"note {text}")


class Wrapper:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    @hookimpl(wrapper=True)
    def zoo_train_note(self, run: Any, text: str) -> Generator[None, None, None]:
        self.log.append(f"before {text}")
        result = yield
        self.log.append(f"after {text}")
        return result


def test_a_wrapper_runs_around_the_other_implementations() -> None:
    registry = Registry(entry_points=False, blocked=["progressdisplay"])
    notes = Notes()
    registry.register(notes, name="notes")
    registry.register(Wrapper(notes.seen), name="wrapper")
    assert registry.call_hook("zoo_train_note", run=None, text="hi") == []
    assert notes.seen == ["before hi", "note hi", "after hi"]


def test_first_result_hooks_stop_at_the_first_answer() -> None:
    class Stop:
        @hookimpl
        def zoo_train_should_stop(self, run: Any, metrics: Any) -> str:
            return "stop"

    registry = Registry(entry_points=False, blocked=["earlystop"])
    registry.register(Stop(), name="stop")
    assert registry.call_hook("zoo_train_should_stop", run=None, metrics=None) == "stop"


def test_a_misspelled_hook_refuses_its_plugin_by_name(make_dist: MakeDist) -> None:
    make_dist("typo-nets", "typo_nets", tiny_plugin("TypoNet", "typo_nets") + (
        "\n@zoo.hookimpl\ndef zoo_train_epoch_ended(run, metrics):\n    pass\n"))
    registry = Registry()
    info = registry.plugins_by_key()["typo_nets"]
    assert info.status == "error"
    assert info.error == ("refused: 'zoo_train_epoch_ended' is not a zoo hook; did you mean "
                          "'zoo_train_epoch_end' or 'zoo_train_end' or 'zoo_train_step'? (mark it "
                          "@hookimpl(optionalhook=True) if it is meant for a newer zoo)")
    assert "TypoNet" not in registry.list_models() and "Net" in registry.list_models()


def test_an_optional_hook_for_a_newer_zoo_is_accepted() -> None:
    class Future:
        @hookimpl(optionalhook=True)
        def zoo_train_batch_end(self, run: Any) -> None:
            pass

    registry = Registry(entry_points=False)
    registry.register(Future(), name="future")
    assert registry.plugins_by_key()["future"].status == "loaded"


def test_a_wrapper_on_a_listing_hook_is_refused() -> None:
    class Listing:
        @hookimpl(wrapper=True)
        def zoo_architectures(self) -> Generator[None, None, None]:
            return (yield)

    registry = Registry(entry_points=False)
    registry.register(Listing(), name="listing")
    assert registry.plugins_by_key()["listing"].error == (
        "refused: zoo_architectures() is a listing hook, called once per plugin; it cannot be a "
        "wrapper")


def test_what_an_implementation_raises_names_that_plugin() -> None:
    class Quiet:
        @hookimpl
        def zoo_train_note(self, run: Any, text: str) -> None:
            pass

    class Loud:
        @hookimpl
        def zoo_train_note(self, run: Any, text: str) -> None:
            {}["missing"]

    registry = Registry(entry_points=False, blocked=["progressdisplay"])
    registry.register(Loud(), name="loud", distribution="loud-dist", version="2.0")
    registry.register(Quiet(), name="quiet")
    registry.register(Wrapper([]), name="wrapper")  # the error passes through a wrapper
    with pytest.raises(PluginError) as info:
        registry.call_hook("zoo_train_note", run=None, text="hi")
    assert str(info.value) == ("zoo_train_note() of loud-dist 2.0 (plugin 'loud') raised "
                               "KeyError: 'missing'")
    assert isinstance(info.value.__cause__, KeyError)


def test_a_wrapper_that_raises_is_named_itself() -> None:
    class Broken:
        @hookimpl(wrapper=True)
        def zoo_train_note(self, run: Any, text: str) -> Generator[None, None, None]:
            yield
            raise ValueError("after the call")

    registry = Registry(entry_points=False, blocked=["progressdisplay"])
    registry.register(Notes(), name="notes")
    registry.register(Broken(), name="broken")
    with pytest.raises(PluginError, match=r"^zoo_train_note\(\) of plugin 'broken' raised "
                                          r"ValueError: after the call$"):
        registry.call_hook("zoo_train_note", run=None, text="hi")


def test_reference_accuracies_are_a_hook_of_any_registered_plugin(tmp_path: Path) -> None:
    by_hand = Registry(entry_points=False)
    by_hand.register(zoo_chapter8, name="book")
    refs = by_hand.references(["Net", "NetResDeep"])
    assert {a: r.value for a, r in refs.items()} == {"Net": 0.89, "NetResDeep": 0.86}
    assert refs["Net"].source.startswith("Deep Learning with PyTorch")
    assert Registry(entry_points=False).references() == {}

    class Elsewhere:
        @hookimpl
        def zoo_reference_accuracies(self) -> list[ReferenceAccuracy]:
            return [ReferenceAccuracy(architecture="Net", value=0.99, source="a rumour")]

    registry = Registry()
    registry.register(Elsewhere(), name="elsewhere")
    assert registry.references(["Net"])["Net"].value == 0.89  # only Net's own plugin counts
    [problem] = registry.plugins_by_key()["elsewhere"].problems
    assert problem.endswith("a plugin publishes references for its own architectures only, and "
                            "'Net' is not one of them")
    row = compare(["Net"], registry=by_hand).rows[0]
    assert row.reference == 0.89


def test_a_hook_like_no_zoo_hook_is_refused_with_the_known_ones(make_dist: MakeDist) -> None:
    make_dist("odd-nets", "odd_nets", tiny_plugin("OddNet", "odd_nets") + (
        "\n@zoo.hookimpl\ndef zoo_qqqqqqqqqqqqqqqqqqqqqqq(run):\n    pass\n"))
    info = Registry().plugins_by_key()["odd_nets"]
    assert info.status == "error" and info.error is not None
    assert info.error.startswith("refused: 'zoo_qqqqqqqqqqqqqqqqqqqqqqq' is not a zoo hook; "
                                 "known: zoo_architectures, ")
    assert "zoo_train_epoch_end" in info.error and "did you mean" not in info.error


def test_a_plugin_that_hung_is_skipped_and_the_plugins_after_it_still_count() -> None:
    import threading

    from zoo.spec.exportformat import ExportFormat

    release = threading.Event()

    class Hangs:
        @hookimpl
        def zoo_architectures(self) -> list[Any]:
            release.wait(30)
            return []

        @hookimpl
        def zoo_export_formats(self) -> list[Any]:
            raise AssertionError("a plugin that hung is not called again")

    class After:
        @hookimpl
        def zoo_export_formats(self) -> list[ExportFormat]:
            return [ExportFormat(name="after", summary="registered after a plugin that hung",
                                 files=("after.bin",), writer="test_hook_calls:write",
                                 verifier="test_hook_calls:verify")]

    registry = Registry(entry_points=False, listing_timeout=0.2)
    registry.register(Hangs(), name="hangs")
    registry.register(After(), name="after")
    try:
        assert registry.list_models() == []  # the plugin that hung gave none
        assert "after" in registry.formats() and "onnx" in registry.formats()
        assert registry.plugins_by_key()["hangs"].status == "partial"
    finally:
        release.set()


def test_a_core_plugins_name_stays_reserved_when_it_is_blocked() -> None:
    from zoo.errors import DuplicateNameError

    registry = Registry(entry_points=False, blocked=["earlystop"])
    info = registry.plugins_by_key()["earlystop"]
    assert (info.status, info.core, info.describe()) == ("blocked", True,
                                                         "core plugin 'earlystop'")

    class Other:
        @hookimpl
        def zoo_train_should_stop(self, run: Any, metrics: Any) -> None:
            return None

    with pytest.raises(DuplicateNameError, match="plugin name 'earlystop' is used by both"):
        registry.register(Other(), name="earlystop")
