"""Long data work shows a status line: decoding images into the cache, hashing files."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import pytest
import zoo_datasets.status as status_module
from PIL import Image
from zoo_datasets.status import StatusLine

from zoo import DatasetRequest, Registry
from zoo.host.contract import load_dataset


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _folder(root: Path, per_class: int) -> Path:
    for label, colour in (("cat", (200, 0, 0)), ("dog", (0, 0, 200))):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (12, 10), colour).save(root / label / f"{i}.png")
    return root


def test_quick_work_prints_nothing() -> None:
    stream = io.StringIO()
    with StatusLine("decoding", 100, "images", stream=stream) as status:
        for done in range(1, 101):
            status.update(done)
    assert stream.getvalue() == ""


def test_terminal_line_is_redrawn_in_place_then_summarized(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(status_module, "QUIET_S", 0.0)
    monkeypatch.setattr(status_module, "REDRAW_S", 0.0)
    stream = Terminal()
    with StatusLine("decoding", 4, "images of 'data'", stream=stream) as status:
        for done in range(1, 5):
            status.update(done)
    text = stream.getvalue()
    draws = text.split("\r")[1:-1]
    assert len(draws) == 4
    assert draws[0].startswith("decoding images of 'data' [#######.......")
    assert "1/4" in draws[0] and "4/4" in draws[3] and "[" + "#" * 30 + "]" in draws[3]
    assert "\n" not in "".join(draws)
    assert text.split("\r")[-1].startswith("\033[Kzoo: decoded 4 images of 'data' in ")
    assert text.endswith(" s\n")


def test_log_gets_a_start_and_an_end_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(status_module, "QUIET_S", 0.0)
    stream = io.StringIO()
    with StatusLine("hashing", 3000, "files of 'data'", stream=stream) as status:
        for done in range(1, 3001):
            status.update(done)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "zoo: hashing 3,000 files of 'data'..."
    assert lines[1].startswith("zoo: hashed 3,000 files of 'data' in ")
    assert len(lines) == 2 and "\r" not in stream.getvalue()


def test_failure_erases_the_line_without_a_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(status_module, "QUIET_S", 0.0)
    stream = Terminal()
    with pytest.raises(KeyError), StatusLine("decoding", 2, "images", stream=stream) as status:
        status.update(1)
        raise KeyError("x")
    assert stream.getvalue().endswith("\r\033[K")


def test_imagefolder_shows_decoding_once_then_reads_the_cache(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(status_module, "QUIET_S", 0.0)
    root = _folder(tmp_path / "data", per_class=40)
    spec = Registry().get_dataset("imagefolder")
    request = DatasetRequest(data_dir=root, image_size=(8, 8), cache_dir=tmp_path / "cache")
    load_dataset(spec, request)
    err = capsys.readouterr().err.splitlines()
    assert f"zoo: decoding 80 images of {str(root)!r}..." in err
    assert f"zoo: hashing 80 files of {str(root)!r}..." in err
    assert any(line.startswith(f"zoo: decoded 80 images of {str(root)!r} in ") for line in err)
    load_dataset(spec, request)  # cached: the files' digests and images are not computed again
    assert capsys.readouterr().err == ""
    load_dataset(spec, request.model_copy(update={"cache_dir": tmp_path / "other", "quiet": True}))
    assert capsys.readouterr().err == ""


# -- on a clock the test moves ----------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(status_module, "time", SimpleNamespace(perf_counter=fake))
    return fake


def test_a_log_gets_a_start_line_one_every_ten_seconds_and_a_summary(clock: Clock) -> None:
    out = io.StringIO()
    line = StatusLine("decoding", 10, "images of data", stream=out)
    for at, done in ((0.3, 1), (0.45, 2)):
        clock.now = 100.0 + at
        line.update(done)
    assert out.getvalue() == ""  # within the first half second: silent
    clock.now = 100.6
    line.update(3)
    assert out.getvalue() == "zoo: decoding 10 images of data...\n"
    for at, done in ((5.0, 4), (10.5, 5)):  # under ten seconds after the start line
        clock.now = 100.0 + at
        line.update(done)
    clock.now = 110.6
    line.update(6)
    clock.now = 115.0
    line.update(7)
    assert out.getvalue().splitlines()[1:] == ["zoo: decoding images of data: 6/10 after 11 s"]
    clock.now = 112.25 + 10
    line.update(10)
    line.close()
    line.close()  # a second close adds nothing
    assert out.getvalue().splitlines()[2:] == ["zoo: decoding images of data: 10/10 after 22 s",
                                               "zoo: decoded 10 images of data in 22.2 s"]


def test_short_work_prints_nothing_even_at_its_end(clock: Clock) -> None:
    out = io.StringIO()
    with StatusLine("hashing", 3, "files", stream=out) as line:
        clock.now = 100.49
        line.update(3)
    assert out.getvalue() == ""


def test_a_terminal_gets_a_throttled_bar_erased_at_the_end(clock: Clock) -> None:
    out = Terminal()
    with StatusLine("reading", 4, "splits", stream=out) as line:
        for at, done in ((0.6, 1), (0.65, 2), (0.76, 3)):  # redrawn at most every 0.1 s
            clock.now = 100.0 + at
            line.update(done)
        clock.now = 100.8
        line.update(4)  # the last is always drawn
    draws = out.getvalue().split("\r")
    assert draws[1:4] == ["reading splits [#######.......................] 1/4 0.6s",
                          "reading splits [######################........] 3/4 0.8s",
                          "reading splits [##############################] 4/4 0.8s"]
    assert draws[4:] == ["\x1b[Kzoo: read 4 splits in 0.8 s\n"]


def test_nothing_to_do_draws_an_empty_bar(clock: Clock) -> None:
    out = Terminal()
    line = StatusLine("reading", 0, "splits", stream=out)
    clock.now = 101.0
    line.update(0)
    assert out.getvalue() == "\rreading splits [..............................] 0/0 1.0s"
    log = io.StringIO()
    line = StatusLine("reading", -3, "splits", stream=log)
    clock.now = 102.0
    line.update(0)
    assert log.getvalue() == "zoo: reading 0 splits...\n"


def test_a_failure_ends_the_line_without_a_summary(clock: Clock) -> None:
    out = io.StringIO()
    with pytest.raises(OSError), StatusLine("decoding", 5, "images", stream=out) as line:
        clock.now = 101.0
        line.update(1)
        raise OSError("disk gone")
    assert out.getvalue() == "zoo: decoding 5 images...\n"
