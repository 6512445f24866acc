"""Streaming statistics of the steps a split's sequences use (count/mean/std/min/max), for the
normaliser and an export's index; no images are read."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .bag_dataset import _Plan

__all__ = ["RunningStats"]


class RunningStats:
    """Streaming per-feature count/mean/std/min/max (Chan et al. merge, float64)."""

    def __init__(self, dim: int):
        self.n = 0
        self.mean = np.zeros(dim)
        self.m2 = np.zeros(dim)
        self.min = np.full(dim, np.inf)
        self.max = np.full(dim, -np.inf)

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64).reshape(-1, self.mean.size)
        m = x.shape[0]
        if m == 0:
            return
        mean_b = x.mean(0)
        m2_b = ((x - mean_b) ** 2).sum(0)
        n = self.n + m
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (m / n)
        self.m2 = self.m2 + m2_b + delta**2 * (self.n * m / n)
        self.n = n
        self.min = np.minimum(self.min, x.min(0))
        self.max = np.maximum(self.max, x.max(0))

    def to_json(self) -> dict[str, Any]:
        if self.n == 0:
            return {"count": 0, "mean": None, "std": None, "min": None, "max": None}
        return {"count": self.n, "mean": self.mean.tolist(), "std": np.sqrt(self.m2 / self.n).tolist(),
                "min": self.min.tolist(), "max": self.max.tolist()}


def _stat_rows(plan: _Plan) -> np.ndarray:
    """Used steps that have proprioception (rows for joint and action statistics)."""
    return plan.used[plan.held["proprio"].valid[plan.used]]


class _StatsAccumulator:
    def __init__(self, joints: int, taxels: int):
        self.stats = {"joint_position": RunningStats(joints), "joint_velocity": RunningStats(joints),
                      "tactile": RunningStats(taxels), "action": RunningStats(joints),
                      "action_delta": RunningStats(joints)}

    def add(self, plan: _Plan) -> None:
        rows = _stat_rows(plan)
        s = self.stats
        s["joint_position"].add(plan.joint_position[rows])
        s["joint_velocity"].add(plan.joint_velocity[rows])
        s["action"].add(plan.action[rows])
        s["action_delta"].add(plan.action[rows] - plan.joint_position[rows][:, None, :])
        s["tactile"].add(plan.tactile[plan.used[plan.held["tactile"].valid[plan.used]]])

    def to_json(self) -> dict[str, dict[str, Any]]:
        return {k: v.to_json() for k, v in self.stats.items()}
