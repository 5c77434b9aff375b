"""Long data work shows a status line: decoding images into the cache, hashing files."""

from __future__ import annotations

import io
from pathlib import Path

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
