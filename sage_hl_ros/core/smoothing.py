"""Caller-owned smoothing of joint targets (torch-free: the control node uses it every tick)."""

from __future__ import annotations

import numpy as np

__all__ = ["ActionSmoother"]


class ActionSmoother:
    """First-order low-pass on joint targets. One per episode/controller, never shared.

    ``alpha`` = 1 passes targets through; smaller values smooth more. ``reset`` at episode start
    (or after a hold) so the filter never drags the arm toward a stale target.
    """

    def __init__(self, alpha: float = 1.0):
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"smoothing alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self._last: np.ndarray | None = None

    def reset(self, value: np.ndarray | None = None) -> None:
        self._last = None if value is None else np.array(value, dtype=np.float64)

    def fork(self) -> ActionSmoother:
        """An independent copy in the same state (to look ahead without touching this one)."""
        twin = ActionSmoother(self.alpha)
        twin.reset(self._last)
        return twin

    def __call__(self, target: np.ndarray) -> np.ndarray:
        if self._last is None or self.alpha >= 1.0:
            self._last = np.array(target, dtype=np.float64)
        else:
            self._last += self.alpha * (target - self._last)
        return self._last.copy()
