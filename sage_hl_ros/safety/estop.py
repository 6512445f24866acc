"""Latching emergency stop.

A stop that releases itself when the trigger goes quiet is not a stop: a dropped message or a
bouncing button would resume motion. So ``trigger()`` latches and only an explicit ``reset()``
(the ``/e_stop/reset`` service in the ROS layer) releases it.
"""

from __future__ import annotations

import threading

__all__ = ["EStopLatch"]


class EStopLatch:
    """Latching emergency stop: trigger() latches; only reset() releases.

    Thread-safe: triggers arrive on a subscription callback thread while the control loop reads.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latched = False
        self._reason: str | None = None
        self._count = 0

    def trigger(self, reason: str = "e_stop") -> None:
        """Latch. While latched, later triggers are counted but keep the first reason (the root cause)."""
        with self._lock:
            self._count += 1
            if not self._latched:
                self._latched = True
                self._reason = str(reason)

    def reset(self) -> None:
        """Release the latch (an operator decision); the trigger count is kept for diagnostics."""
        with self._lock:
            self._latched = False
            self._reason = None

    @property
    def latched(self) -> bool:
        with self._lock:
            return self._latched

    @property
    def reason(self) -> str | None:
        """Why it latched; None when not latched."""
        with self._lock:
            return self._reason

    @property
    def trigger_count(self) -> int:
        """Total trigger() calls since construction (not cleared by reset)."""
        with self._lock:
            return self._count

    def __repr__(self) -> str:
        with self._lock:
            return (
                f"EStopLatch(latched={self._latched}, reason={self._reason!r}, "
                f"trigger_count={self._count})"
            )
