"""WorkerProcess: run one function in a persistent helper process, so its work never holds this
process's interpreter.

Why a process and not a thread: with the loader on a thread, the control thread of the same
interpreter waits for the GIL whenever it wakes during a reload. Even with a 0.5 ms switch interval
a pure-Python worker thread delays a 1 ms sleeper by up to 5-9 ms on this 2-core machine (measured
p99 3.6 ms, max 8.8 ms), so a 200 Hz loop missed deadlines in reload windows (CI: 4 of 177 ticks).
In a helper process the load, its validation and its warm-up run on another interpreter; this
process only unpickles the result (a few small arrays and config objects, well under a millisecond).

The helper runs at a lower CPU priority (nice +19): on a busy machine the control loop comes first
and the load waits. It starts on the first call (its imports cost ~0.5 s of CPU that the node should
not pay at start-up when it never reloads), stays up for the next calls, and exits when this
process closes it or dies (its stdin reaches end of file). A helper that crashes or stops answering
is reported by the call that needed it and replaced on the next one.

Wire format (stdin/stdout of the helper, nothing else uses them): 8-byte big-endian length, then a
pickle. Request: the call's positional arguments (a tuple). Reply: ``("ok", result)`` or
``("error", exception)``. The helper first sends ``("ready", pid)`` once its target imported.
"""

from __future__ import annotations

import importlib
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

_HEADER = struct.Struct(">Q")
_NICE = 19
_START_TIMEOUT_S = 60.0


class WorkerError(RuntimeError):
    """The helper process could not be started, crashed or did not answer in time."""


class WorkerProcess:
    """``call(*args)`` runs ``target(*args)`` in the helper and returns its result (or raises its
    exception). One call at a time (callers serialise: the nodes' BackgroundLoader runs one job)."""

    def __init__(self, target: str, name: str, timeout_s: float = 120.0) -> None:
        module, _, func = target.partition(":")
        if not module or not func:
            raise ValueError(f"target must be 'package.module:function', got {target!r}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.target, self.name, self.timeout_s = target, name, float(timeout_s)
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self.calls = 0
        self.starts = 0

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def call(self, *args: Any) -> Any:
        with self._lock:
            proc = self._proc if self._proc is not None and self._proc.poll() is None else self._start()
            try:
                _send(proc.stdin, args)
                kind, value = self._receive(proc, self.timeout_s)
            except (OSError, EOFError, pickle.PickleError, WorkerError) as exc:
                self._kill()
                raise WorkerError(f"{self.name}: {exc}") from None
            self.calls += 1
        if kind == "error":
            raise value
        return value

    def close(self) -> None:
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.stdin.close()  # end of file: the helper's loop returns
            proc.wait(timeout=2.0)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()

    # ------------------------------------------------------------------ internals
    def _start(self) -> subprocess.Popen:
        self._kill()
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])  # the directory holding the sage_hl_ros package
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        try:
            proc = subprocess.Popen([sys.executable, "-m", __name__, self.target], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, env=env, close_fds=True)
        except OSError as exc:
            raise WorkerError(f"{self.name}: cannot start a helper process ({sys.executable}): {exc}") from None
        self._proc = proc
        self.starts += 1
        try:
            kind, value = self._receive(proc, _START_TIMEOUT_S)
        except (OSError, EOFError, pickle.PickleError, WorkerError) as exc:
            self._kill()
            raise WorkerError(f"{self.name}: helper process did not start: {exc}") from None
        if kind != "ready":
            self._kill()
            raise WorkerError(f"{self.name}: helper process failed to import {self.target}: {value}")
        return proc

    def _receive(self, proc: subprocess.Popen, timeout_s: float) -> tuple[str, Any]:
        deadline = time.monotonic() + timeout_s
        header = _read_exact(proc, _HEADER.size, deadline)
        (size,) = _HEADER.unpack(header)
        return pickle.loads(_read_exact(proc, size, deadline))

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()


def _send(stream, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _read_exact(proc: subprocess.Popen, n: int, deadline: float) -> bytes:
    fd = proc.stdout.fileno()
    chunks, got = [], 0
    while got < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WorkerError("no answer in time; helper process killed")
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            try:
                code = proc.wait(timeout=2.0)  # end of file comes just before the exit is reaped
            except subprocess.TimeoutExpired:
                raise EOFError("helper closed its pipe") from None
            raise EOFError(f"helper process exited (code {code})")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _serve(target: str) -> int:
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    sys.stdout = sys.stderr  # a stray print must not corrupt the replies
    stdin = sys.stdin.buffer
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent decides
    try:
        os.nice(_NICE)
    except OSError:
        pass
    module, _, func = target.partition(":")
    try:
        fn = getattr(importlib.import_module(module), func)
    except Exception as exc:  # reported to the parent, which names the target
        _send(out, ("import_error", f"{type(exc).__name__}: {exc}"))
        return 1
    _send(out, ("ready", os.getpid()))
    while True:
        header = stdin.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return 0  # the parent closed the pipe or exited
        (size,) = _HEADER.unpack(header)
        args = pickle.loads(stdin.read(size))
        try:
            reply = ("ok", fn(*args))
        except Exception as exc:
            reply = ("error", exc)
        try:
            _send(out, reply)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:  # an unpicklable result or exception
            _send(out, ("error", RuntimeError(f"{type(reply[1]).__name__}: {reply[1]} (not transferable: {exc})")))


if __name__ == "__main__":
    sys.exit(_serve(sys.argv[1]))
