"""Latest-message cache per modality: value, header stamp, arrival time, validity and reject reasons.

Pure Python (no rclpy): the context node's callbacks ``put``/``reject`` into it and the H step
takes a ``snapshot`` of ``Reading``s from it. Freshness is ``core.context_step.freshness``: age by
header stamp and by arrival, both on the node clock (so it is also right under ``use_sim_time``);
the diagnostics here use the same function, so they name the same clock as the H step's masks.
An unstamped message (stamp 0) counts by arrival only, so a sensor driver that forgets to stamp
still works (its ``unstamped`` count shows it).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.context_step import ContextStepConfig, Freshness, Reading, freshness

__all__ = ["AudioWindow", "SensorCache", "Slot", "classify_reason"]

# Reject categories reported in diagnostics as ``rejected.<category>``.
_CATEGORIES = (
    ("out of range", "out_of_range"),
    ("encoding", "wrong_encoding"),
    ("missing configured joints", "missing_joint"),
    ("more than once", "duplicate_joint"),
    ("non-finite", "non_finite"),
    ("image size", "wrong_size"),
    ("expected", "wrong_size"),
    ("layout", "malformed"),
    ("decode", "decode_error"),
)


def classify_reason(reason: str) -> str:
    """Short category for a rejection message (first keyword match, else ``malformed``)."""
    low = reason.lower()
    for keyword, category in _CATEGORIES:
        if keyword in low:
            return category
    return "malformed"


@dataclass
class Slot:
    """Latest accepted value of one modality and the history of what was rejected."""

    name: str
    value: Any = None
    stamp_s: float | None = None  # header stamp of the accepted value (None if unstamped)
    stamp_msg: Any = None  # the header stamp message itself (exact, for re-stamping outputs)
    arrival_s: float | None = None
    received: int = 0
    accepted: int = 0
    rejected: int = 0
    unstamped: int = 0
    reasons: Counter = field(default_factory=Counter)
    last_reason: str = ""
    last_reject_arrival_s: float | None = None

    def freshness(self, now_s: float, cfg: ContextStepConfig) -> Freshness | None:
        """None when nothing was ever accepted."""
        if self.arrival_s is None:
            return None
        return freshness(self.arrival_s, self.stamp_s, now_s, cfg)

    def state(self, now_s: float, cfg: ContextStepConfig) -> tuple[str, str]:
        """(ok | missing | stale | future | invalid, clock): invalid = the newest message was
        rejected and nothing fresh is held; clock names what made it stale or future."""
        f = self.freshness(now_s, cfg)
        if f is not None and f.ok:
            return "ok", ""
        if self.last_reject_arrival_s is not None and (
            self.arrival_s is None or self.last_reject_arrival_s >= self.arrival_s
        ):
            return "invalid", ""
        if f is None:
            return "missing", ""
        return f.state, f.clock

    def reading(self) -> Reading | None:
        if self.arrival_s is None:
            return None
        return Reading(self.value, self.arrival_s, self.stamp_s, self.stamp_msg)


class SensorCache:
    def __init__(self, names):
        self.slots: dict[str, Slot] = {n: Slot(n) for n in names}

    def put(self, name: str, value: Any, stamp_msg, arrival_s: float) -> None:
        slot = self.slots[name]
        slot.received += 1
        slot.accepted += 1
        stamp_s = None
        if stamp_msg is not None:
            stamp_s = stamp_msg.sec + stamp_msg.nanosec * 1e-9
        if not stamp_s:
            slot.unstamped += 1
            stamp_s, stamp_msg = None, None
        slot.value, slot.stamp_s, slot.stamp_msg, slot.arrival_s = value, stamp_s, stamp_msg, arrival_s

    def reject(self, name: str, reason: str, arrival_s: float) -> int:
        """Count a rejected message; returns the modality's total rejections."""
        slot = self.slots[name]
        slot.received += 1
        slot.rejected += 1
        slot.reasons[classify_reason(reason)] += 1
        slot.last_reason = reason
        slot.last_reject_arrival_s = arrival_s
        return slot.rejected

    def snapshot(self) -> dict[str, Reading | None]:
        """The latest accepted reading of every modality (None: nothing accepted yet)."""
        return {name: slot.reading() for name, slot in self.slots.items()}

    def clear(self) -> None:
        for name in list(self.slots):
            self.slots[name] = Slot(name)


class AudioWindow:
    """Sliding window of the most recent ``size`` samples, filled frame by frame.

    Audio arrives in frames of any length; the model wants the last N samples, so frames are
    concatenated (preallocated ring, no per-frame allocation beyond the shift). A gap longer
    than ``max_gap_s`` between frames restarts the window so silence-then-speech is not spliced
    onto audio from seconds ago.
    """

    def __init__(self, size: int, max_gap_s: float):
        self.size = int(size)
        self.max_gap_s = max_gap_s
        self._buf = np.zeros(self.size, dtype=np.float32)
        self._filled = 0
        self._last_s: float | None = None

    def add(self, frame: np.ndarray, stamp_s: float) -> None:
        if self._last_s is not None and abs(stamp_s - self._last_s) > self.max_gap_s:
            self._buf[:] = 0.0
            self._filled = 0
        self._last_s = stamp_s
        n = frame.size
        if n >= self.size:
            self._buf[:] = frame[-self.size:]
        elif n:
            self._buf[:-n] = self._buf[n:]
            self._buf[-n:] = frame
        self._filled = min(self.size, self._filled + n)

    def samples(self) -> np.ndarray:
        """Copy of the filled part of the window (the schema left-pads a short window)."""
        return self._buf[self.size - self._filled:].copy()
