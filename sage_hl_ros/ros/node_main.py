"""Process plumbing shared by the sage nodes: ``main()``, the deadline loop, background reloads.

- :func:`run_node`: init rclpy, build the node, optionally configure+activate it (``autostart``),
  spin a ``SingleThreadedExecutor`` until SIGINT/SIGTERM, then stop loops and exit 0.
- :func:`stop_on_signals`: SIGINT/SIGTERM set an event instead of raising, for every node process.
  (A ``MultiThreadedExecutor`` was measured to drop 14% of a 500 Hz JointState stream on this
  2-core machine and to add latency, so every node spins single-threaded and puts its few
  long-running jobs on plain threads instead.)
- :class:`ClockLoop`: calls ``fn(now_ns)`` every period from a dedicated thread, sleeping to
  absolute deadlines on the node clock. With ``use_sim_time`` it waits for ``/clock`` to reach
  each deadline (woken by a clock-jump callback registered once, not per tick).
- :class:`BackgroundLoader`: runs one checkpoint load at a time on a worker thread and hands
  the result back through an ``rclpy.task.Future`` that an ``async`` service callback awaits,
  so a 100 ms+ load never blocks the executor (and the subscriptions feeding the loops).
- :class:`Throttle`: at most one log line per key per period (per-modality warnings).

Only rclpy APIs that ROS 2 Humble has are used.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.clock import ClockChange, JumpThreshold
from rclpy.duration import Duration
from rclpy.executors import SingleThreadedExecutor
from rclpy.task import Future

try:  # Humble has it; keep a fallback so an older rclpy still exits cleanly.
    from rclpy.executors import ExternalShutdownException
except ImportError:  # pragma: no cover
    class ExternalShutdownException(Exception):  # type: ignore[no-redef]
        pass

__all__ = ["BackgroundLoader", "ClockLoop", "Throttle", "check_checkpoint_dir", "run_node", "stop_on_signals"]


def check_checkpoint_dir(path: str) -> str:
    """Cheap pre-check of a new ``model_dir`` parameter value ('' when plausible)."""
    if not path:
        return "model_dir is empty"
    if not os.path.isdir(path):
        return f"{path}: not a directory"
    if not os.path.isfile(os.path.join(path, "config.json")):
        return f"{path}: no config.json (not a checkpoint directory)"
    return ""


class Throttle:
    """``allow(key)`` is True at most once per ``period_s`` per key (wall-clock, not sim time)."""

    def __init__(self, period_s: float = 5.0):
        self.period_s = period_s
        self._last: dict[str, float] = {}

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.period_s:
            return False
        self._last[key] = now
        return True


class DeclaredParams:
    """Mixin for nodes: declare each parameter with its description (shown by ``ros2 param describe``)
    and read it back. List defaults are dynamically typed so ``[]`` can be overridden by any list."""

    def _param(self, name, default, description):
        kw = {"dynamic_typing": True} if isinstance(default, list) else {}
        return self.declare_parameter(name, default, ParameterDescriptor(description=description, **kw))

    def _get(self, name):
        return self.get_parameter(name).value


class ClockLoop:
    """Run ``fn(now_ns)`` at a fixed period on the node clock, from its own thread.

    Why a thread and not an rclpy timer: measured at 500 Hz with a 500 Hz JointState stream
    into the same node on a 2-core machine, a dedicated thread sleeping to absolute deadlines
    had the lowest period p99 (see the control node docstring for the numbers); a timer in a
    MultiThreadedExecutor could not even sustain 500 Hz.

    Deadlines are absolute (``next += period``), so the rate does not drift. A tick that is more
    than one period late skips the deadlines it missed (no burst of catch-up ticks, which would
    send a controller several commands at once) and counts them in ``skipped``. If the clock
    jumps backwards (simulation reset) or ROS time is switched on/off, the schedule restarts.
    ``fn`` exceptions are counted and the last one kept (``errors``, ``last_error``); the loop
    never dies from one, because a silent control thread is worse than a counted fault.
    """

    def __init__(self, node, period_s: float, fn: Callable[[int], None], name: str = "loop",
                 rt_priority: int = 0):
        if not period_s > 0.0:
            raise ValueError(f"period must be > 0, got {period_s}")
        self._rt_priority = int(rt_priority)
        self.rt_status = "normal scheduling"
        self._clock = node.get_clock()
        self._period_ns = int(round(period_s * 1e9))
        self._fn = fn
        self._name = name
        self._wake = threading.Event()
        self._stop = False
        self._restart = False
        self._thread: threading.Thread | None = None
        self._jump_handle = None
        self.skipped = 0
        self.errors = 0
        self.last_error = ""
        self._clock_steps: deque[int] = deque(maxlen=64)  # sim time advanced per /clock update [ns]

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running:
            return
        self._stop = False
        self._wake.clear()
        threshold = JumpThreshold(min_forward=Duration(nanoseconds=1), min_backward=Duration(nanoseconds=-1),
                                  on_clock_change=True)
        self._jump_handle = self._clock.create_jump_callback(threshold, post_callback=self._on_jump)
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop = True
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
        handle, self._jump_handle = self._jump_handle, None
        if handle is not None:
            try:
                handle.unregister()
            except Exception:  # clock already gone at shutdown
                pass

    @property
    def clock_step_s(self) -> float:
        """Median sim time a /clock update advances (0 = unknown or not on sim time). A loop cannot
        tick more often than the clock moves: at most once per update."""
        steps = sorted(self._clock_steps)
        return steps[len(steps) // 2] * 1e-9 if len(steps) >= 8 and self._ros_time_active() else 0.0

    def _on_jump(self, jump) -> None:
        # Called from the executor thread on every /clock update when ROS time is active.
        if jump.clock_change in (ClockChange.ROS_TIME_ACTIVATED, ClockChange.ROS_TIME_DEACTIVATED) \
                or jump.delta.nanoseconds < 0:
            self._restart = True
            self._clock_steps.clear()
        elif jump.delta.nanoseconds > 0:
            self._clock_steps.append(jump.delta.nanoseconds)
        self._wake.set()

    def _ros_time_active(self) -> bool:
        return bool(getattr(self._clock, "ros_time_is_active", False))

    def _set_priority(self) -> None:
        """SCHED_FIFO for this thread only (needs CAP_SYS_NICE or an rtprio limit)."""
        if self._rt_priority <= 0:
            return
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(self._rt_priority))
            self.rt_status = f"SCHED_FIFO priority {self._rt_priority}"
        except (AttributeError, OSError) as exc:
            self.rt_status = f"SCHED_FIFO {self._rt_priority} refused ({exc}); normal scheduling"

    def _run(self) -> None:
        self._set_priority()
        clock, period, wake = self._clock, self._period_ns, self._wake
        sim = self._ros_time_active()
        next_ns = clock.now().nanoseconds + period
        while not self._stop:
            wake.clear()  # clear before reading the clock: a /clock update after this wakes us
            if self._restart:
                self._restart = False
                sim = self._ros_time_active()
                next_ns = clock.now().nanoseconds + period
            now = clock.now().nanoseconds
            remaining = next_ns - now
            if remaining > 0:
                if remaining > 2 * period:  # clock went backwards without a jump event
                    next_ns = now + period
                    continue
                # Sim time: /clock updates wake us (cap keeps us responsive if /clock stops).
                wake.wait(0.1 if sim else remaining * 1e-9)
                continue
            late = -remaining
            if late >= period:
                missed = late // period
                self.skipped += missed
                next_ns += missed * period
            next_ns += period
            try:
                self._fn(now)
            except Exception as exc:  # keep the loop alive, count the fault
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                if not rclpy.ok():
                    return  # context shut down under us (Ctrl-C): publishing fails, just exit


class BackgroundLoader:
    """One load job at a time on a worker thread; the result arrives through an rclpy Future.

    ``job(arg)`` returns a message string on success and raises on failure (the exception text
    becomes the failure message). ``on_done(ok, message)`` runs on the worker thread after every
    job (also those nobody awaits, e.g. a reload started by a parameter change). ``start``
    returns None when a job is already running.

    The service whose ``async`` callback awaits the Future must be created in its own callback
    group: an executing coroutine keeps its group busy until it returns, so in the node's default
    (mutually exclusive) group it would stall every subscription for the whole load (measured:
    a 116 ms gap in a 100 Hz JointState stream, enough to trip the 100 ms stale-joint hold).
    """

    def __init__(self, node, job: Callable[[Any], str], on_done: Callable[[bool, str], None] | None = None,
                 name: str = "loader"):
        self._node = node
        self._job = job
        self._on_done = on_done
        self._name = name
        self._lock = threading.Lock()
        self._busy = False

    @property
    def busy(self) -> bool:
        return self._busy

    def start(self, arg: Any) -> Future | None:
        with self._lock:
            if self._busy:
                return None
            self._busy = True
        future = Future()
        threading.Thread(target=self._work, args=(arg, future), name=self._name, daemon=True).start()
        return future

    def _work(self, arg: Any, future: Future) -> None:
        try:
            result = (True, self._job(arg))
        except Exception as exc:  # every failure becomes a clear message
            text = str(exc) or type(exc).__name__
            if not isinstance(exc, (ValueError, OSError, RuntimeError)):
                text = f"{type(exc).__name__}: {text}\n{traceback.format_exc(limit=3)}"
            result = (False, text)
        if self._on_done is not None:
            try:
                self._on_done(*result)
            except Exception:  # reporting must not lose the result
                pass
        with self._lock:
            self._busy = False
        future.set_result(result)
        executor = getattr(self._node, "executor", None)
        if executor is not None:
            try:
                executor.wake()  # resume the awaiting service callback now
            except Exception:  # executor shutting down
                pass


def _lifecycle_autostart(node) -> bool:
    """configure + activate when the node's ``autostart`` parameter is true; False on failure."""
    if not node.has_parameter("autostart") or not node.get_parameter("autostart").value:
        return True
    from rclpy.lifecycle import TransitionCallbackReturn

    log = node.get_logger()
    if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
        log.error("autostart: configure failed (see the error above); exiting")
        return False
    if node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
        log.error("autostart: activate failed (see the error above); exiting")
        return False
    log.info("autostart: configured and active")
    return True


def stop_on_signals() -> threading.Event:
    """Make SIGINT and SIGTERM set the returned event; call it after ``rclpy.init``.

    Why not rclpy's handlers: they end in a ``KeyboardInterrupt`` raised wherever the main thread
    happens to be. Raised inside a finaliser (seen: ``rclpy.task.Future.__del__`` on a loaded
    machine) it is printed as "Exception ignored ... Traceback" and swallowed; raised in the middle
    of cleanup it skips the rest. With an event the process stops between executor turns, releases
    its loops with the context still valid, and exits 0, the same on Humble and later.
    """
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return stop


def run_node(node_factory: Callable[[], Any], args: list[str] | None = None) -> int:
    """Entry-point body: returns the process exit code (0 on a clean Ctrl-C / SIGTERM)."""
    rclpy.init(args=args)
    stop = stop_on_signals()
    node = None
    executor = SingleThreadedExecutor()
    code = 0
    try:
        node = node_factory()
        executor.add_node(node)
        if not stop.is_set() and not _lifecycle_autostart(node):
            code = 1
        else:
            while not stop.is_set() and rclpy.ok():
                executor.spin_once(timeout_sec=0.1)
    except ExternalShutdownException:
        pass
    except Exception:
        # A shutdown of the context under a running callback makes its publish raise: that is a
        # clean exit. Anything raised while the context is still up is a real error.
        if rclpy.ok():
            raise
    finally:
        if node is not None:
            release = getattr(node, "release", None)
            if release is not None:
                try:
                    release()  # stop loops/threads; lifecycle transitions need a live context
                except Exception as exc:  # best effort at exit
                    print(f"[{node.get_name()}] release failed at shutdown: {exc}", flush=True)
            try:
                executor.remove_node(node)
            except Exception:
                pass
            node.destroy_node()
        executor.shutdown(timeout_sec=1.0)
        rclpy.try_shutdown()
    return code
