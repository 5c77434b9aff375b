"""No unrestricted unpickling: a guard around every read of a pickle-based file (torch-free).

Nothing the zoo reads may run code when it is unpickled. Weights and checkpoints are
read with ``torch.load(weights_only=True)``, whose unpickler accepts tensors and plain
data only; CIFAR-10's batches with :func:`load_restricted`, whose unpickler accepts
numpy arrays only. Libraries can still fall back to a full ``pickle.load`` of their
own accord (``torch.export.load`` does when ``weights_only=True`` fails), so every
such read also runs inside :func:`strict_unpickling`: a process-wide audit hook
(:pep:`578`), installed on first use and active only in the thread and context that
entered the guard, refuses every global an unpickler resolves (the
``pickle.find_class`` event, raised before any module is imported or callable
found) except those the caller allows, and the process-spawning events (``os.system``,
``subprocess.Popen``, ``os.exec*``, ``os.posix_spawn``, ``os.spawn*``). A payload's
``__reduce__`` therefore never reaches its callable: the unpickler stops at the
name with :class:`UnpicklingRefused`.

Defence in depth, not a sandbox: C extensions that unpickle without CPython's
unpickler raise no audit event (the zoo refuses the archives members that would
reach one, see :mod:`zoo.exporter.pt2`).
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import pickle
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import IO, Any

#: Audit events refused while the guard is active, besides ``pickle.find_class``.
SPAWN_EVENTS = frozenset({"os.system", "subprocess.Popen", "os.exec", "os.posix_spawn",
                          "os.spawn", "os.fork", "os.forkpty", "pty.spawn"})
_FIND_CLASS = "pickle.find_class"
_WATCHED = SPAWN_EVENTS | {_FIND_CLASS}

#: The globals a pickled numpy array needs (numpy 1 and 2 module names, protocols 2 to 5).
NUMPY_ARRAY_GLOBALS = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # bytes pickled with protocol 2
})

_active: contextvars.ContextVar[frozenset[tuple[str, str]] | None] = contextvars.ContextVar(
    "zoo_strict_unpickling", default=None)
_installed = False
_install_lock = threading.Lock()


class UnpicklingRefused(pickle.UnpicklingError):
    """A pickle that names a global (or spawns a process) the guard does not allow."""


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if event not in _WATCHED:
        return
    allowed = _active.get()
    if allowed is None:
        return
    if event == _FIND_CLASS:
        name = (str(args[0]), str(args[1])) if len(args) >= 2 else ("?", "?")
        if name in allowed:
            return
        raise UnpicklingRefused(f"refusing to unpickle global {name[0]}.{name[1]}: the zoo "
                                "never unpickles anything but tensors, arrays and plain data")
    raise UnpicklingRefused(f"refusing {event} while reading an untrusted file")


def _install() -> None:
    global _installed
    with _install_lock:
        if not _installed:
            sys.addaudithook(_hook)
            _installed = True


@contextlib.contextmanager
def strict_unpickling(allow: Iterable[tuple[str, str]] = ()) -> Iterator[None]:
    """Within the block (this thread and context only), an unpickler may resolve only the
    globals in ``allow`` (none by default) and no process may be spawned; anything
    else raises :class:`UnpicklingRefused` where it is attempted."""
    _install()
    token = _active.set(frozenset(allow))
    try:
        yield
    finally:
        _active.reset(token)


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes], allowed: frozenset[tuple[str, str]],
                 encoding: str) -> None:
        super().__init__(file, encoding=encoding)
        self._allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._allowed:
            raise UnpicklingRefused(f"refusing to unpickle global {module}.{name}: only "
                                    "numpy arrays and plain data are accepted")
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise UnpicklingRefused("refusing a pickle with persistent ids")


def load_restricted(file: IO[bytes] | bytes, allow: Iterable[tuple[str, str]] = NUMPY_ARRAY_GLOBALS,
                    *, encoding: str = "ASCII") -> Any:
    """Unpickle ``file`` accepting only plain data and the globals in ``allow`` (numpy arrays
    by default); anything else is :class:`UnpicklingRefused` before it is resolved."""
    allowed = frozenset(allow)
    stream = io.BytesIO(file) if isinstance(file, bytes) else file
    with strict_unpickling(allowed):
        return _RestrictedUnpickler(stream, allowed, encoding).load()


__all__ = ["NUMPY_ARRAY_GLOBALS", "SPAWN_EVENTS", "UnpicklingRefused", "load_restricted",
           "strict_unpickling"]
