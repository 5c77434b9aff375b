"""``zoo serve``'s options in process: the documented defaults, each limit at its edges,
the settings they become, and what reaches the server (no server is started)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import pytest

from zoo.cli import build_parser, main
from zoo.cli.serve import _settings
from zoo.errors import ZooError

ROOT = Path(__file__).resolve().parents[1]


def _serve_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices["serve"]


def _number(text: str) -> float:
    text = text.replace("`", "").strip()
    if text.endswith(" MiB"):
        return float(text[:-4]) * 2**20
    if "×" in text:
        a, b = text.split("×")
        return float(a) * float(b)
    return float(text)


def test_the_documented_defaults_are_the_defaults() -> None:
    """docs/serving.md's option table, row by row, against the parser."""
    table = [line for line in (ROOT / "docs" / "serving.md").read_text().splitlines()
             if line.startswith("| `--")]
    defaults = {a.dest: a.default for a in _serve_parser()._actions}
    checked = []
    for row in table:
        flags, default = [cell.strip() for cell in row.strip("|").split("|")][:2]
        names = re.findall(r"`(--[a-z0-9-]+)", flags)
        values = [v.strip() for v in default.split(",")] if len(names) > 1 else [default]
        for flag, value in zip(names, values, strict=True):
            dest = flag[2:].replace("-", "_")
            actual = defaults[dest]
            if flag == "--no-access-log":
                assert value == "on" and actual is False, row  # the log is on unless given
            elif isinstance(actual, int | float) and not isinstance(actual, bool):
                assert _number(value) == actual, row
            else:
                assert value.strip("`") == actual, row
            checked.append(flag)
    assert len(checked) == 16 and "--workers" in checked and "--max-image-pixels" in checked


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", "Net", *argv])


@pytest.mark.parametrize(("argv", "refused"), [
    (["--max-batch-size", "1"], None),
    (["--max-batch-size", "0"], "--max-batch-size must be at least 1, got 0"),
    (["--max-body-bytes", "1024"], None),
    (["--max-body-bytes", "1023"], "--max-body-bytes must be at least 1024, got 1023"),
    (["--max-image-pixels", "1"], None),
    (["--max-image-pixels", "0"], "--max-image-pixels must be at least 1, got 0"),
    (["--top-k", "1"], None),
    (["--top-k", "0"], "--top-k must be at least 1, got 0"),
    (["--max-batch-size", "8", "--max-queue-size", "8"], None),
    (["--max-batch-size", "8", "--max-queue-size", "7"],
     "--max-queue-size (7) must be at least --max-batch-size (8)"),
    (["--max-queue-delay-ms", "10000", "--max-queue-wait-ms", "0"], None),
    (["--max-queue-delay-ms", "10000.5", "--max-queue-wait-ms", "0"],
     "--max-queue-delay-ms must be from 0 to 10000, got 10000.5"),
    (["--max-queue-delay-ms", "-1"], "--max-queue-delay-ms must be from 0 to 10000, got -1"),
    (["--max-loop-lag-ms", "0"], None),
    (["--max-loop-lag-ms", "60000"], None),
    (["--max-loop-lag-ms", "60000.5"], "--max-loop-lag-ms must be from 0 to 60000, got 60000.5"),
    (["--max-loop-lag-ms", "-0.5"], "--max-loop-lag-ms must be from 0 to 60000, got -0.5"),
    (["--max-queue-wait-ms", "60000"], None),
    (["--max-queue-wait-ms", "60001"], "--max-queue-wait-ms must be from 0 to 60000, got 60001"),
    (["--max-queue-delay-ms", "5", "--max-queue-wait-ms", "0"], None),  # 0: never refused
    (["--max-queue-delay-ms", "5", "--max-queue-wait-ms", "5.5"], None),
    (["--max-queue-delay-ms", "5", "--max-queue-wait-ms", "5"],
     "--max-queue-wait-ms (5) must exceed --max-queue-delay-ms (5), or be 0"),
    (["--max-queue-delay-ms", "0.5", "--max-queue-wait-ms", "0.5"],
     "--max-queue-wait-ms (0.5) must exceed --max-queue-delay-ms (0.5), or be 0"),
    (["--timeout", "0.5"], None),
    (["--timeout", "3600"], None),
    (["--timeout", "3600.5"], "--timeout must be above 0 and at most 3600 seconds, got 3600.5"),
    (["--timeout", "0"], "--timeout must be above 0 and at most 3600 seconds, got 0"),
    (["--port", "0"], None),
    (["--port", "65535"], None),
    (["--port", "65536"], "--port must be from 0 to 65535, got 65536"),
    (["--port", "-1"], "--port must be from 0 to 65535, got -1"),
])
def test_each_limit_at_its_edges(argv: list[str], refused: str | None) -> None:
    if refused is None:
        _settings(_args(*argv))
    else:
        with pytest.raises(ZooError) as error:
            _settings(_args(*argv))
        assert str(error.value) == refused


def test_milliseconds_become_seconds() -> None:
    settings = _settings(_args("--max-queue-delay-ms", "4", "--max-loop-lag-ms", "30",
                               "--max-queue-wait-ms", "60", "--max-batch-size", "16",
                               "--max-queue-size", "32", "--timeout", "7", "--top-k", "3",
                               "--max-body-bytes", "4096", "--max-image-pixels", "100",
                               "--threads", "1", "--graph", "int8"))
    assert (settings.max_queue_delay_s, settings.max_loop_lag_s, settings.max_queue_wait_s) \
        == pytest.approx((0.004, 0.03, 0.06))
    assert (settings.max_batch_size, settings.max_queue_rows, settings.timeout_s, settings.top_k,
            settings.max_body_bytes, settings.max_image_pixels, settings.threads,
            settings.graph) == (16, 32, 7.0, 3, 4096, 100, 1, "int8")


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """The server entry points replaced: each records how it was called, announces, returns 0."""
    from zoo.serve import server, workers

    calls: list[tuple[str, dict[str, Any]]] = []

    def fake(name: str) -> Any:
        def start(first: Any, settings: Any, **kwargs: Any) -> int:
            calls.append((name, {"first": first, **kwargs}))
            kwargs["announce"]("http://127.0.0.1:8000/")
            return 0
        return start

    monkeypatch.setattr(server, "serve", fake("serve"))
    monkeypatch.setattr(workers, "serve_workers", fake("serve_workers"))
    return calls


def test_one_worker_serves_the_loaded_models_in_process(
        started: list[tuple[str, dict[str, Any]]], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "Net", "--port", "0"]) == 0
    [(name, kwargs)] = started
    assert name == "serve" and kwargs["log_access"] is True and kwargs["port"] == 0
    [model] = kwargs["first"]
    assert capsys.readouterr().out == (f"zoo serve: Net ({model.version}) at "
                                       "http://127.0.0.1:8000/ (SIGTERM or Ctrl-C stops)\n")


@pytest.mark.parametrize("workers", [2, 64])
def test_several_workers_get_references_not_sessions(
        workers: int, started: list[tuple[str, dict[str, Any]]],
        capsys: pytest.CaptureFixture[str]) -> None:
    from zoo.serve.workers import BundleRef

    assert main(["serve", "Net", "--workers", str(workers), "--no-access-log"]) == 0
    [(name, kwargs)] = started
    assert name == "serve_workers" and kwargs["workers"] == workers
    assert kwargs["log_access"] is False
    [ref] = kwargs["first"]
    assert isinstance(ref, BundleRef)
    assert capsys.readouterr().out.endswith(f" at http://127.0.0.1:8000/ with {workers} "
                                            "workers (SIGTERM or Ctrl-C stops)\n")


@pytest.mark.parametrize("workers", ["0", "65"])
def test_the_worker_count_is_bounded(workers: str, started: list[tuple[str, dict[str, Any]]],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "Net", "--workers", workers]) == 1
    assert capsys.readouterr().err == (f"zoo: error: --workers must be from 1 to 64, got "
                                       f"{workers}\n")
    assert started == []


def test_a_triton_repository_needs_a_batch_of_at_least_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "Net", "--triton-repository", str(tmp_path / "m"),
                 "--max-batch-size", "0"]) == 1
    assert capsys.readouterr().err == "zoo: error: --max-batch-size must be at least 1, got 0\n"
    assert not (tmp_path / "m").exists()
    assert main(["serve", "Net", "--triton-repository", str(tmp_path / "m"),
                 "--max-batch-size", "1"]) == 0
    assert "max_batch_size: 1" in (tmp_path / "m" / "Net" / "config.pbtxt").read_text()


@pytest.mark.filterwarnings("ignore:Please use `import python_multipart`")
def test_either_multipart_module_satisfies_the_serve_extra(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """python-multipart is imported as python_multipart since 0.0.13, as multipart before."""
    from zoo.cli import serve

    real = serve.importlib.import_module

    def old_multipart(name: str) -> Any:
        if name == "python_multipart":
            raise ImportError(name)
        return real(name)

    monkeypatch.setattr(serve.importlib, "import_module", old_multipart)
    serve.require_serve_extra()  # multipart alone is enough
