"""ControlStep: everything one control tick does, as a pure function of explicit inputs.

The control node is parameters, topics and a deadline thread; the tick itself lives here so the
safety properties are tested without a ROS graph or wall-clock timing (hypothesis drives it with
arbitrary input sequences and tick times in test/test_control_step.py):

    latest latent (+ header stamp, arrival time)      -\\
    latest joint state (+ header stamp, arrival time)  --> staleness --> L step (policy) --> smoother
    e-stop latch, heartbeat arrival, enable gate, now -/                       --> SafetyFilter --> command | hold

Staleness uses both clocks: ``age = max(now - arrival, now - header stamp)``, so a message that
arrives now but carries an old stamp (a late or replayed message) is stale. A header stamp more
than ``clock_skew_tolerance_s`` in the future is rejected (a publisher on another clock, or a sim
reset). An all-zero stamp means "unstamped": judged by arrival time unless ``require_stamps``.
The reason a tick held, and which clock made an input stale, come back with the result.

Action chunks: with ``chunk_dt_s > 0`` and a policy predicting K > 1 steps, the L step runs once
per new latent (on the joint state of that tick) and the chunk is played between latents,
time-indexed from the latent's header stamp (arrival time when unstamped) and cross-faded into
the next chunk (core/chunk_player.py). With ``chunk_dt_s = 0`` (or K = 1) every tick runs the L
step on the latest latent and joint state and takes its first point (receding horizon). Either
way the target goes through the same smoother and SafetyFilter.

The e-stop heartbeat (a dead-man): with ``e_stop_heartbeat_timeout_s > 0`` the tick latches the
e-stop whenever no heartbeat arrived within the timeout (counted from activation until the first
one). Only an explicit reset releases it, as for any e-stop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..core.chunk_player import ChunkPlayer
from ..core.freshness import freshness
from ..core.smoothing import ActionSmoother
from .estop import EStopLatch
from .filter import SafetyFilter, SafetyStatus
from .limits import JointLimits

__all__ = ["ControlStep", "ControlStepConfig", "JointInput", "LatentInput", "LoadedPolicy", "TickResult"]


@dataclass(frozen=True)
class ControlStepConfig:
    """Timing rules of the tick (seconds on the node clock; validated on construction)."""

    period_s: float
    latent_timeout_s: float = 0.5
    joint_state_timeout_s: float = 0.1
    clock_skew_tolerance_s: float = 0.05
    e_stop_heartbeat_timeout_s: float = 0.0  # 0 = no heartbeat required
    require_stamps: bool = False
    smoothing_alpha: float = 1.0
    max_step_periods: float = 2.0
    chunk_dt_s: float = 0.0  # spacing of a K-step chunk's points; 0 = receding horizon (first point only)
    trajectory_preview: bool = False  # also return the played chunk's remaining points, safety-filtered

    def __post_init__(self) -> None:
        for key in ("period_s", "latent_timeout_s", "joint_state_timeout_s"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{key} must be a finite number > 0, got {value!r}")
        for key in ("clock_skew_tolerance_s", "e_stop_heartbeat_timeout_s", "chunk_dt_s"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{key} must be a finite number >= 0, got {value!r}")
        if not 0.0 < self.smoothing_alpha <= 1.0:
            raise ValueError(f"smoothing_alpha must be in (0, 1], got {self.smoothing_alpha!r}")
        if not (math.isfinite(self.max_step_periods) and self.max_step_periods >= 1.0):
            raise ValueError(f"max_step_periods must be >= 1, got {self.max_step_periods!r}")


@dataclass(frozen=True)
class LoadedPolicy:
    """A loaded L step and what depends on it, swapped as one object between ticks (hot reload)."""

    fast: object  # NumpyLPolicy-like: act(z, position, velocity) -> (K, J) absolute targets
    model_dir: str
    sha256: str
    model_names: tuple  # checkpoint joint order (model input/output order)
    perm: np.ndarray | None  # command order = model order [perm]; None when identical
    latent_dim: int
    load_ms: float = 0.0
    input_ranges: object = None  # the checkpoint's plausible joint ranges (core.config.InputRanges)


@dataclass(frozen=True)
class LatentInput:
    z: np.ndarray  # (D,) float32
    stamp_s: float  # header stamp (newest observation used); 0 = unstamped
    arrival_s: float  # node clock at arrival


@dataclass(frozen=True)
class JointInput:
    position: np.ndarray  # (J,) model order
    velocity: np.ndarray  # (J,) model order
    measured: np.ndarray  # (J,) float64 command order
    stamp_s: float
    arrival_s: float


@dataclass(frozen=True)
class TickResult:
    """One tick's decision. ``command is None``: publish nothing this tick."""

    command: np.ndarray | None
    velocity: np.ndarray | None
    status: SafetyStatus
    reason: str
    stale_clock: str  # "arrival" | "stamp" | "" : which clock made an input stale
    # With trajectory_preview and a chunk playing: the chunk's remaining points after this command,
    # (M, J) positions and velocities at now + m * chunk_dt_s (m = 1..M), limited point to point.
    preview_positions: np.ndarray | None = None
    preview_velocities: np.ndarray | None = None


def _staleness(now_s: float, stamp_s: float, arrival_s: float, timeout_s: float, skew_s: float,
               require_stamps: bool, name: str) -> tuple[str, str]:
    """('', '') when fresh, else (reason, clock that made it stale). A zero stamp is "unstamped"."""
    if stamp_s == 0.0 and require_stamps:
        return "has no header stamp (require_stamps is true)", "stamp"
    f = freshness(arrival_s, None if stamp_s == 0.0 else stamp_s, now_s, timeout_s, skew_s, name)
    return ("", "") if f.ok else (f.reason, f.clock)


class ControlStep:
    """One control tick: policy -> joint permutation -> smoother -> safety filter."""

    def __init__(self, cfg: ControlStepConfig, limits: JointLimits | None, estop: EStopLatch | None = None):
        self.cfg = cfg
        self.estop = estop if estop is not None else EStopLatch()
        self.limits = limits
        # The filter does its own (arrival-style) timeout check on the effective stamps we pass; we
        # pass ``now`` for fresh inputs, so its check never fires twice with another answer.
        self.filter = None if limits is None else SafetyFilter(
            limits, cfg.period_s, cfg.latent_timeout_s, cfg.joint_state_timeout_s, self.estop,
            max_step_periods=cfg.max_step_periods)
        self._smoother = ActionSmoother(cfg.smoothing_alpha)
        self._active_since: float | None = None
        self._player = ChunkPlayer(cfg.chunk_dt_s) if cfg.chunk_dt_s > 0 else None
        self._played: tuple[object, object] | None = None  # (latent, policy) the current chunk came from

    def reset(self) -> None:
        """Activation: the first command starts from the measured position; the heartbeat clock restarts."""
        if self.filter is not None:
            self.filter.reset()
        self._smoother.reset()
        self._reset_chunks()
        self._active_since = None

    def _reset_chunks(self) -> None:
        if self._player is not None:
            self._player.reset()
        self._played = None

    def _target(self, now_s: float, policy: LoadedPolicy, latent: LatentInput, joints: JointInput):
        """The unsmoothed (J,) target in command order, or None when the L step fails."""
        player, played = self._player, self._played
        # Identity, not equality: a new latent message starts a new chunk even if its values repeat.
        if played is not None and played[0] is latent and played[1] is policy:
            return player.sample(now_s)  # between latents: play the chunk
        try:
            chunk = policy.fast.act(latent.z, joints.position, joints.velocity)
        except (ValueError, FloatingPointError):
            return None
        chunk = np.asarray(chunk)
        if chunk.ndim != 2 or chunk.shape[0] < 1:
            return None
        if policy.perm is not None:
            if chunk.shape[1] != len(policy.perm):
                return None
            chunk = chunk[:, policy.perm]
        if player is None or chunk.shape[0] == 1:
            return chunk[0]
        player.push(chunk, latent.stamp_s if latent.stamp_s != 0.0 else latent.arrival_s, now_s)
        self._played = (latent, policy)
        return player.sample(now_s)

    def _check_heartbeat(self, now_s: float, heartbeat_s: float | None) -> None:
        timeout = self.cfg.e_stop_heartbeat_timeout_s
        if timeout <= 0.0:
            return
        if self._active_since is None:
            self._active_since = now_s
        since = heartbeat_s if heartbeat_s is not None else self._active_since
        silent = now_s - since
        if not silent <= timeout:  # also catches NaN
            self.estop.trigger(f"e-stop heartbeat missing for {silent:.3f} s (timeout {timeout:g} s)"
                               if heartbeat_s is not None else
                               f"no e-stop heartbeat within {timeout:g} s of activation")

    def step(self, now_s: float, policy: LoadedPolicy | None, latent: LatentInput | None,
             joints: JointInput | None, enabled: bool, heartbeat_s: float | None = None) -> TickResult:
        self._check_heartbeat(now_s, heartbeat_s)
        cfg = self.cfg
        latent_problem, latent_clock = ("never received", "") if latent is None else _staleness(
            now_s, latent.stamp_s, latent.arrival_s, cfg.latent_timeout_s, cfg.clock_skew_tolerance_s,
            cfg.require_stamps, "latent_timeout_s")
        joint_problem, joint_clock = ("never received", "") if joints is None else _staleness(
            now_s, joints.stamp_s, joints.arrival_s, cfg.joint_state_timeout_s, cfg.clock_skew_tolerance_s,
            cfg.require_stamps, "joint_state_timeout_s")
        target = None
        if policy is not None and not latent_problem and not joint_problem:
            if latent.z.shape == (policy.latent_dim,) and joints.position.shape == (len(policy.model_names),):
                step = self._target(now_s, policy, latent, joints)
                if step is not None:
                    target = self._smoother(step)
        filt = self.filter
        if filt is None:
            return TickResult(None, None, SafetyStatus.DISABLED, "dry run: no joint limits configured", "")
        res = filt.step(now_s, target, now_s, now_s, joints.measured if joints is not None else None, enabled,
                        joint_problem=joint_problem, latent_problem=latent_problem)
        if res.status is not SafetyStatus.OK:
            self._smoother.reset()
            self._reset_chunks()
        clock = ""
        if res.status is SafetyStatus.HOLD_STALE_JOINTS:
            clock = joint_clock
        elif res.status is SafetyStatus.HOLD_STALE_LATENT:
            clock = latent_clock
        preview = (None, None)
        if cfg.trajectory_preview and res.status is SafetyStatus.OK and self._played is not None:
            preview = self._preview(now_s)
        return TickResult(res.command, res.velocity, res.status, res.reason, clock, *preview)

    def _preview(self, now_s: float):
        """The played chunk's points still ahead, smoothed and limited as the ticks would be."""
        player, dt = self._player, self.cfg.chunk_dt_s
        m = player.remaining_points(now_s)
        if m == 0:
            return None, None
        smoother = self._smoother.fork()
        targets = np.array([smoother(player.peek(now_s + k * dt)) for k in range(1, m + 1)])
        return self.filter.preview(now_s, targets, dt)
