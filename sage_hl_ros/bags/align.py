"""Zero-order-hold alignment of irregular, stamped streams onto a fixed-rate grid. Pure numpy.

Times are integer nanoseconds (exact: a sample stamped exactly on a grid time is "at or before"
it, with no float round-off). For each grid time ``t`` the held sample is the latest one with
``stamp <= t``; its age is ``t - stamp``; it counts as missing when there is none or the age
exceeds ``max_age_s``. Everything is one ``np.searchsorted`` per stream.

Worked example (rate 10 Hz from t=0; stamps in seconds 0.00, 0.13, 0.20, 0.95; max age 0.3 s):

    grid     0.0  0.1  0.2  0.3  0.4  0.5 ... 0.9  1.0
    index     0    0    2    2    2    2  ...  2    3
    age      0.0  0.1  0.0  0.1  0.2  0.3 ... 0.7  0.05
    valid     T    T    T    T    T    T  ...  F    T       (0.3 <= 0.3 is still valid)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Held", "audio_windows", "grid_times", "hold", "seconds_to_ns"]

NS = 1_000_000_000


def seconds_to_ns(seconds: float) -> int:
    return int(round(seconds * NS))


def grid_times(start_ns: int, end_ns: int, rate_hz: float) -> np.ndarray:
    """Grid times ``start + g / rate`` (int64 ns) for every g with time <= ``end_ns``.

    Each time is rounded to the nanosecond from the exact product, so there is no drift over long
    episodes (10 Hz from 0 gives exactly 0, 100000000, 200000000, ... ns).
    """
    if rate_hz <= 0:
        raise ValueError(f"rate_hz must be > 0, got {rate_hz}")
    if end_ns < start_ns:
        return np.zeros(0, dtype=np.int64)
    n = int(np.floor((end_ns - start_ns) * rate_hz / NS + 1e-9)) + 1
    offsets = np.rint(np.arange(n, dtype=np.float64) * (NS / rate_hz)).astype(np.int64)
    times = start_ns + offsets
    return times[times <= end_ns]


@dataclass
class Held:
    """Result of ``hold``: per grid time, the held sample's index (into the *given* order), age, validity."""

    index: np.ndarray  # (G,) int64; -1 where nothing is held
    age_s: np.ndarray  # (G,) float64; inf where nothing is held
    valid: np.ndarray  # (G,) bool: something held and age <= max_age_s

    def take(self, values: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """``values[index]`` with ``fill`` where invalid; ``values`` is (N, ...)."""
        values = np.asarray(values)
        out = np.full((self.index.size, *values.shape[1:]), fill, dtype=values.dtype if values.size else np.float64)
        if values.shape[0]:
            out[self.valid] = values[self.index[self.valid]]
        return out


def hold(stamps_ns: np.ndarray, grid_ns: np.ndarray, max_age_s: float) -> Held:
    """Zero-order hold of samples stamped ``stamps_ns`` (any order) at times ``grid_ns``.

    Ties (several samples with the same stamp) resolve to the last one in the given order, i.e. the
    one received last. Returned indices refer to the given order, so callers index their own arrays.
    """
    stamps = np.asarray(stamps_ns, dtype=np.int64)
    grid = np.asarray(grid_ns, dtype=np.int64)
    g = grid.size
    if stamps.size == 0:
        return Held(np.full(g, -1, dtype=np.int64), np.full(g, np.inf), np.zeros(g, dtype=bool))
    order = np.argsort(stamps, kind="stable")
    sorted_stamps = stamps[order]
    pos = np.searchsorted(sorted_stamps, grid, side="right") - 1
    have = pos >= 0
    safe = np.maximum(pos, 0)
    index = np.where(have, order[safe], -1)
    delta_ns = grid - sorted_stamps[safe]
    age = np.where(have, delta_ns / NS, np.inf)
    # Compare in integer ns so "age == max_age" is exactly valid, not lost to float round-off.
    valid = have & (delta_ns <= seconds_to_ns(max_age_s))
    return Held(index.astype(np.int64), age, valid)


def audio_windows(frame_stamps_ns: np.ndarray, frame_sizes: np.ndarray, frame_index: np.ndarray,
                  window: int, max_gap_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Sample ranges ``[start, end)`` into the concatenated frames for each held frame index.

    The window is the last ``window`` samples up to and including the held frame, like the
    runtime's ``AudioWindow``: frames are concatenated, and a gap of more than ``max_gap_s``
    between consecutive frames restarts it (no splicing of audio from seconds ago). Frames must be
    in receive order (``frame_stamps_ns`` non-decreasing). ``frame_index`` < 0 gives an empty range.
    """
    stamps = np.asarray(frame_stamps_ns, dtype=np.int64)
    sizes = np.asarray(frame_sizes, dtype=np.int64)
    idx = np.asarray(frame_index, dtype=np.int64)
    ends = np.cumsum(sizes)
    starts = ends - sizes
    n = stamps.size
    if n == 0:
        z = np.zeros(idx.size, dtype=np.int64)
        return z, z.copy()
    gap = np.zeros(n, dtype=bool)
    gap[1:] = np.abs(np.diff(stamps)) > seconds_to_ns(max_gap_s)
    # First frame of the gap-free run each frame belongs to.
    run_first = np.maximum.accumulate(np.where(gap, np.arange(n), 0))
    safe = np.maximum(idx, 0)
    end = ends[safe]
    start = np.maximum(starts[run_first[safe]], end - window)
    none = idx < 0
    end[none] = 0
    start[none] = 0
    return start, end
