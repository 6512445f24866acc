"""Small diagnostics helpers (diagnostic_updater is not pip-installable here).

Loop frequencies, observation ages and inference p50/p99 go to ``/diagnostics`` as
``diagnostic_msgs/DiagnosticArray``. The stats classes are pure numpy and cheap enough to
update from a 500 Hz loop.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

__all__ = ["RollingStats", "RateMeter", "status", "diagnostic_array", "LEVELS"]

HARDWARE_ID = "sage_hl_ros"

LEVELS = {
    "ok": DiagnosticStatus.OK,
    "warn": DiagnosticStatus.WARN,
    "error": DiagnosticStatus.ERROR,
    "stale": DiagnosticStatus.STALE,
}


class RollingStats:
    """Statistics over the last ``capacity`` values, in a preallocated ring buffer.

    ``add`` only writes one slot (no allocation), so it is safe in hot loops; the percentile
    work happens when diagnostics are published (about 1 Hz).
    """

    def __init__(self, capacity: int = 2048):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._buf = np.empty(int(capacity), dtype=np.float64)
        self._capacity = int(capacity)
        self._next = 0
        self._count = 0

    def add(self, value: float) -> None:
        self._buf[self._next] = value
        self._next += 1
        if self._next == self._capacity:
            self._next = 0
        if self._count < self._capacity:
            self._count += 1

    def __len__(self) -> int:
        return self._count

    def _values(self) -> np.ndarray:
        return self._buf[: self._count]

    def percentile(self, q: float) -> float:
        """q in [0, 100] (numpy convention); nan when empty."""
        if self._count == 0:
            return math.nan
        return float(np.percentile(self._values(), q))

    def summary(self) -> dict[str, float]:
        """count, p50, p99, max, mean over the window (nan statistics when empty)."""
        if self._count == 0:
            return {"count": 0, "p50": math.nan, "p99": math.nan, "max": math.nan, "mean": math.nan}
        v = self._values()
        p50, p99 = np.percentile(v, (50.0, 99.0))
        return {
            "count": self._count,
            "p50": float(p50),
            "p99": float(p99),
            "max": float(v.max()),
            "mean": float(v.mean()),
        }

    def clear(self) -> None:
        self._next = 0
        self._count = 0


class RateMeter:
    """Tick rate from monotonic timestamps, averaged over the window since the last read.

    Before the first read the window starts at ``start_s`` if given, else at the first tick
    (which then only marks the start, so N ticks at period T read as 1/T, not N/((N-1)T)).
    """

    def __init__(self, start_s: float | None = None):
        self._start = start_s
        self._count = 0

    def tick(self, t_s: float) -> None:
        if self._start is None:
            self._start = t_s
            return
        self._count += 1

    def read_hz(self, now_s: float) -> float:
        """Ticks per second since the window start; resets the window to ``now_s``.

        0.0 when no time has elapsed (a rate that never arrived reads as 0, which trips
        "too slow" checks; NaN would silently pass them).
        """
        start, count = self._start, self._count
        self._start, self._count = now_s, 0
        if start is None:
            return 0.0
        elapsed = now_s - start
        if elapsed <= 0.0:
            return 0.0
        return count / elapsed


def _fmt(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4g}"
    return str(value)


def status(name: str, level: str, message: str, values: dict) -> DiagnosticStatus:
    """DiagnosticStatus with ``level`` in ok|warn|error|stale and values as short strings."""
    try:
        lvl = LEVELS[level]
    except KeyError:
        raise ValueError(f"unknown diagnostic level {level!r}; choose one of {', '.join(LEVELS)}") from None
    msg = DiagnosticStatus()
    msg.level = lvl
    msg.name = name
    msg.message = message
    msg.hardware_id = HARDWARE_ID
    msg.values = [KeyValue(key=str(k), value=_fmt(v)) for k, v in values.items()]
    return msg


def diagnostic_array(stamp, statuses: Iterable[DiagnosticStatus]) -> DiagnosticArray:
    """DiagnosticArray for ``/diagnostics``."""
    msg = DiagnosticArray()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.status = list(statuses)
    return msg
