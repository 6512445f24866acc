"""Play an L-module action chunk between latents instead of dropping K-1 of its steps.

An L-module with ``action_chunk: K > 1`` predicts K joint targets spaced ``dt`` apart, the first
for the time of the observation the latent was computed from (the dataset builds its chunk
targets that way: the command held at ``t + k * action_chunk_dt_s``). Between latents the control
loop reads the chunk at the time elapsed since that observation, linearly interpolated, so a
4 Hz H path with K = 16 at 0.02 s still sends a moving target at 200 Hz. Past the chunk's end the
last point holds (the latent's own staleness timeout decides when to stop commanding).

A new chunk does not replace the old one at once: the old chunk's value at the switch time is
cross-faded into the new one over ``blend_s`` (linear), so a new prediction that disagrees with
the old one does not make a step (the safety filter would clip that step anyway; blending keeps
the commanded path smooth within the limits).

Pure numpy; times are seconds on the caller's clock. Not thread-safe: one per control loop.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["ChunkPlayer", "sample_chunk"]


def sample_chunk(chunk: np.ndarray, t0_s: float, dt_s: float, now_s: float) -> np.ndarray:
    """(J,) target of a (K, J) chunk at ``now_s``: linear between points, clamped to its ends."""
    k = chunk.shape[0]
    u = (now_s - t0_s) / dt_s
    if not u > 0.0:  # before the first point, or NaN
        return chunk[0].copy()
    if u >= k - 1:
        return chunk[k - 1].copy()
    i = int(math.floor(u))
    w = u - i
    return (1.0 - w) * chunk[i] + w * chunk[i + 1]


class ChunkPlayer:
    """The current chunk (and the one fading out), sampled at tick times."""

    def __init__(self, dt_s: float, blend_s: float | None = None):
        if not (math.isfinite(dt_s) and dt_s > 0.0):
            raise ValueError(f"chunk dt_s must be a finite number > 0, got {dt_s!r}")
        blend = dt_s if blend_s is None else blend_s
        if not (math.isfinite(blend) and blend >= 0.0):
            raise ValueError(f"chunk blend_s must be a finite number >= 0, got {blend_s!r}")
        self.dt_s = float(dt_s)
        self.blend_s = float(blend)
        self.reset()

    def reset(self) -> None:
        """Forget every chunk (after a hold, a reload or activation)."""
        self._chunk: np.ndarray | None = None
        self._t0 = 0.0
        self._old: np.ndarray | None = None
        self._old_t0 = 0.0
        self._switch_s = 0.0
        self.chunks = 0

    @property
    def has_chunk(self) -> bool:
        return self._chunk is not None

    def push(self, chunk: np.ndarray, t0_s: float, now_s: float) -> None:
        """A new (K, J) chunk whose first point is for ``t0_s``, received at ``now_s``."""
        chunk = np.asarray(chunk, dtype=np.float64)
        if chunk.ndim != 2 or chunk.shape[0] < 1:
            raise ValueError(f"a chunk is (K, J), got shape {chunk.shape}")
        if self._chunk is not None and self.blend_s > 0.0 and self._chunk.shape == chunk.shape:
            self._old, self._old_t0, self._switch_s = self._chunk, self._t0, now_s
        else:
            self._old = None
        self._chunk, self._t0 = chunk, float(t0_s)
        self.chunks += 1

    def sample(self, now_s: float) -> np.ndarray | None:
        """The (J,) target at ``now_s``, or None before the first chunk."""
        target = self.peek(now_s)
        if self._old is not None and not (now_s - self._switch_s) / self.blend_s < 1.0:
            self._old = None  # faded out (or NaN): only the new chunk from now on
        return target

    def peek(self, time_s: float) -> np.ndarray | None:
        """The (J,) target at ``time_s`` without changing the player (for look-ahead points)."""
        if self._chunk is None:
            return None
        target = sample_chunk(self._chunk, self._t0, self.dt_s, time_s)
        if self._old is not None:
            w = (time_s - self._switch_s) / self.blend_s
            if w < 1.0:
                w = max(w, 0.0)
                target = w * target + (1.0 - w) * sample_chunk(self._old, self._old_t0, self.dt_s, time_s)
        return target

    def remaining_points(self, now_s: float) -> int:
        """How many of the chunk's ``dt_s``-spaced points still lie ahead of ``now_s`` (0 past its end)."""
        if self._chunk is None:
            return 0
        end = self._t0 + (self._chunk.shape[0] - 1) * self.dt_s
        ahead = (end - now_s) / self.dt_s
        return int(min(max(math.floor(ahead + 1e-9), 0), self._chunk.shape[0] - 1)) if ahead > 0 else 0
