"""``zoo serve`` as a process: torch never imported, SIGTERM drains and exits 0, the serve
extra imported only by ``zoo serve`` (and named when missing), options checked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from serve_support import call, post_json

from zoo.bundles.integrity import bundle_sha256
from zoo.bundles.store import resolve_bundle
from zoo.cli import main

ROOT = Path(__file__).resolve().parents[1]
#: Run the zoo CLI with some modules made unimportable (sys.modules[name] = None).
BLOCKED_MAIN = ("import sys\nfor name in sys.argv.pop(1).split(','):\n"
                "    sys.modules[name] = None\n"
                "from zoo.cli import main\nsys.exit(main())\n")
SERVE_EXTRA = ("starlette", "uvicorn", "prometheus_client", "orjson", "zoo.serve.app")


def env() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ZOO_")}
    clean["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "plugins")])
    return clean


def zoo(*args: str, blocked: str = "", timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BLOCKED_MAIN, blocked or "_none_", *args],
                          capture_output=True, text=True, env=env(), timeout=timeout)


def test_sigterm_drains_in_flight_requests_and_exits_0_without_torch() -> None:
    sha = bundle_sha256(resolve_bundle("Net"))
    proc = subprocess.Popen(
        [sys.executable, "-c", BLOCKED_MAIN, "torch", "serve", "Net", "--port", "0",
         "--max-queue-delay-ms", "1000", "--max-queue-wait-ms", "0",
         "--expect-sha256", f"Net={sha}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"Net ({sha[:12]}) at http://127.0.0.1:" in line, proc.stderr.read() if \
            proc.poll() is not None else line
        url = line.split(" at ")[1].split()[0]
        data = {"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32",
                            "data": [0.0] * 3072}]}
        replies: list[int] = []
        threads = [threading.Thread(target=lambda: replies.append(
            post_json(f"{url}v2/models/Net/infer", data).status)) for _ in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while 'zoo_serve_queue_rows{model="Net"} 4.0' not in call(f"{url}metrics").body.decode():
            assert time.monotonic() < deadline, "the requests never reached the queue"
            time.sleep(0.02)  # they wait there for the 1 s queue delay
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(timeout=20)
        assert proc.wait(timeout=20) == 0
        assert replies == [200, 200, 200, 200]
        with pytest.raises(OSError):
            call(f"{url}v2/health/live", timeout=2)
        logs = [json.loads(line) for line in proc.stderr.read().splitlines() if line]
        messages = [entry.get("message", "") for entry in logs]
        assert any(m.startswith("SIGTERM: draining") for m in messages), messages
        assert sum(entry.get("path") == "/v2/models/Net/infer" for entry in logs) == 4
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_serving_never_imports_torch() -> None:
    code = ("import sys\n"
            "import zoo.cli.serve, zoo.serve.app, zoo.serve.server, zoo.deploy.triton\n"
            "from zoo.serve.repository import load_models, parse_sources\n"
            "from zoo.serve.models import ServeSettings\n"
            "from zoo.serve.app import ServeApp\n"
            "models = load_models(parse_sources(['Net', 'NetRes']), ServeSettings())\n"
            "ServeApp(models, ServeSettings())\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'torchvision', 'matplotlib')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env(), timeout=60, check=True).stdout
    assert out.strip() == "[]"


def test_zoo_list_does_not_import_the_serve_extra() -> None:
    code = ("import sys\nfrom zoo.cli import main\nmain(['list'])\n"
            f"print(sorted(m for m in {SERVE_EXTRA!r} if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env(), timeout=60, check=True).stdout
    assert out.splitlines()[-1] == "[]"


def test_serve_without_the_extra_says_how_to_install_it() -> None:
    proc = zoo("serve", "Net", blocked="starlette,uvicorn")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        'zoo: error: zoo serve needs starlette, uvicorn: pip install "zoo[serve]"']


@pytest.mark.parametrize(("args", "message"), [
    (["Net", "--max-batch-size", "0"], "--max-batch-size must be at least 1, got 0"),
    (["Net", "--max-queue-size", "8"], "--max-queue-size (8) must be at least --max-batch-size"),
    (["Net", "--timeout", "0"], "--timeout must be above 0"),
    (["Net", "--max-queue-delay-ms", "60"], "--max-queue-wait-ms (50) must exceed"),
    (["Net", "--threads", "0"], "--threads must be an integer from 1"),
    (["Net", "--port", "70000"], "--port must be from 0 to 65535"),
    (["Net", "Net=NetRes"], "two bundles ('Net' and 'NetRes') would be served as 'Net'"),
    (["bad name=Net"], "cannot serve a model named 'bad name'"),
    (["Net", "NetRes", "--expect-sha256", "0" * 64], "names no model, and 2 bundles are served"),
    (["Net", "--expect-sha256", "Other=" + "0" * 64], "pins 'Other', which is not served"),
    (["Net", "--expect-sha256", "0" * 64], "is not the one expected"),
    (["NoSuchBundle"], "no bundle 'NoSuchBundle'"),
])
def test_bad_options_are_one_line_errors(args: list[str], message: str,
                                         capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    for key in [k for k in os.environ if k.startswith("ZOO_")]:
        monkeypatch.delenv(key)
    assert main(["serve", *args, "--log-level", "error"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_in_use_or_an_unknown_host_is_one_line(workers: str,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        port = taken.getsockname()[1]
        assert main(["serve", "Net", "--port", str(port), "--workers", workers,
                     "--log-level", "error"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"zoo: error: cannot listen on 127.0.0.1:{port}: address already in "
                       "use; accepted: a free port (--port 0 picks one)"]
    finally:
        taken.close()
    assert main(["serve", "Net", "--host", "no-such-host.invalid", "--workers", workers,
                 "--log-level", "error"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot listen on 'no-such-host.invalid'" in err[0], err
