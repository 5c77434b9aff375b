"""A pytest fork server for mutation testing: torch is imported once, not once per mutant.

``python forkserver.py serve SOCKET`` imports the heavy third-party modules (torch,
torchvision, onnx, onnxruntime, ...) and waits on a Unix socket. ``python forkserver.py
run SOCKET -- PYTEST-ARGS`` hands its working directory, environment and standard
streams to the server, which forks; the child runs ``pytest.main(PYTEST-ARGS)`` and the
client exits with its status. Each mutant's test run then costs its tests, not the
five seconds of imports before them. Where the environment names a file
``ZOO_MUTATION_KILLS``, the child appends each failing test's node id to it.

The server never imports this project's own modules (``zoo``, the plugins): every child
imports them from disk, so it sees the mutant mutmut has just written. PYTHONPATH is
fixed when the server starts, so start it with the environment the tests need.

When no server answers, the client runs pytest itself (the same result, only slower),
so a dead server can make a run slow but never wrong.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import select
import signal
import socket
import struct
import sys
import time
from typing import Any

#: Imported by the server before it forks: third-party only, never the code under test.
PRELOAD = (
    "numpy", "PIL.Image", "pydantic", "pluggy", "platformdirs", "tomli_w", "filelock",
    "torch", "torch.nn", "torch.onnx", "torch.utils.data", "torchvision",
    "torchvision.transforms", "onnx", "onnxruntime", "matplotlib", "matplotlib.pyplot",
    "pytest", "_pytest.pytester",
)
_STATUS = struct.Struct("!i")


def _preload() -> None:
    os.environ.setdefault("MPLBACKEND", "Agg")
    for name in PRELOAD:
        with contextlib.suppress(ImportError):  # an optional one: the child imports it itself
            importlib.import_module(name)
    leaked = sorted(n for n in sys.modules if n.split(".")[0] in ("zoo", "zoo_chapter8",
                                                                   "zoo_datasets"))
    if leaked:  # a preloaded module imported the code under test: mutants would not be seen
        raise SystemExit(f"the fork server must not import the code under test: {leaked}")


class _Kills:
    """A pytest plugin: appends the node id of each failing test to a file (the tests that
    kill mutants, which ``mutmut_config.py`` then runs first for the module's next ones)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.failed:
            with open(self.path, "a") as out:
                out.write(report.nodeid + "\n")


def _child(request: dict[str, Any], fds: list[int]) -> None:
    """Become the test run: the client's streams, directory and environment; never return."""
    code = 3
    try:
        for target, fd in zip((0, 1, 2), fds, strict=True):
            os.dup2(fd, target)
        for fd in fds:
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = ["pytest", *request["args"]]
        signal.signal(signal.SIGINT, signal.default_int_handler)
        import pytest

        kills = request["env"].get("ZOO_MUTATION_KILLS")  # read before the tests clear ZOO_*
        code = int(pytest.main(list(request["args"]), plugins=[_Kills(kills)] if kills else []))
    except BaseException as exc:  # the status is all the client gets
        print(f"fork server child: {exc!r}", file=sys.stderr)
        code = 3
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _handle(conn: socket.socket) -> None:
    message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
    if not message or len(fds) != 3:  # a probe, or a client that died before asking
        for fd in fds:
            os.close(fd)
        return
    request = json.loads(message.decode())
    pid = os.fork()
    if pid == 0:
        os.setpgid(0, 0)  # its own group: a timeout kills the tests' subprocesses too
        conn.close()
        _child(request, fds)
    with contextlib.suppress(OSError):  # the child got there first
        os.setpgid(pid, pid)
    for fd in fds:
        os.close(fd)
    # a mutant can make a test wait forever (a deadline that never fires): past its own
    # deadline the run is stopped and counts as failed, the mutant as killed
    deadline = time.monotonic() + float(request["env"].get("ZOO_MUTATION_DEADLINE") or 600)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            break
        readable, _, _ = select.select([conn], [], [], 0.05)
        if readable and not conn.recv(1):  # the client is gone (mutmut's timeout killed it)
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return
        if time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            print(f"fork server: tests past their deadline, stopped: {request['args']}",
                  file=sys.stderr, flush=True)
            code = 1
            break
    with contextlib.suppress(OSError):  # the client is gone: nobody to tell
        conn.sendall(_STATUS.pack(code if code >= 0 else 128 - code))


def serve(path: str) -> None:
    """Preload, then run one forked pytest per connection, one at a time, until killed."""
    _preload()
    if os.path.exists(path):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server.bind(path)
    server.listen(4)
    print(f"fork server ready on {path} (pid {os.getpid()})", flush=True)
    while True:
        conn, _ = server.accept()
        with conn:
            _handle(conn)


def run(path: str, args: list[str]) -> int:
    """Run pytest with ``args`` in the server (or here, when none answers); its status."""
    request = json.dumps({"cwd": os.getcwd(), "env": dict(os.environ), "args": args}).encode()
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        conn.connect(path)
    except OSError:
        os.execv(sys.executable, [sys.executable, "-m", "pytest", *args])
    with conn:
        socket.send_fds(conn, [request], [0, 1, 2])
        data = conn.recv(_STATUS.size)
    if len(data) != _STATUS.size:  # the server died mid-run: run the tests here instead
        os.execv(sys.executable, [sys.executable, "-m", "pytest", *args])
    return int(_STATUS.unpack(data)[0])


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "serve":
        serve(argv[1])
        return 0
    if len(argv) >= 2 and argv[0] == "run":
        rest = argv[2:]
        return run(argv[1], rest[1:] if rest[:1] == ["--"] else rest)
    print("usage: forkserver.py serve SOCKET | run SOCKET -- PYTEST-ARGS", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
