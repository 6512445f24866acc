"""Safety filter between the policy and the robot (DESIGN §4).

Every command the policy proposes passes through :meth:`SafetyFilter.step`, which either
returns a command that respects position, velocity and acceleration limits, or holds.

Why these rules:

- "Stop" means *hold the last command*, never zeros: zero is a real joint position, and
  commanding it from anywhere else is a full-speed jump.
- Stale inputs hold within one step: a policy acting on an old observation or an old latent is
  acting on a world that no longer exists.
- The rate limits are applied to the step from the previous *command* (not the measured
  position), so the command stream itself is smooth whatever the tracking error.
- Near a position limit the velocity is also capped so the joint can still brake to a stop
  inside the limit at the acceleration limit. Without that, a fast approach would overshoot and
  the final position clamp would cause an unbounded deceleration.
- A target out of reach in one tick is approached on a braking profile (relative to the
  target's own motion), so a far target is reached without ringing around it, while a smooth
  target stream that respects the limits passes through bit-exact.
- Holding zeroes the commanded velocity, so resuming ramps up from rest at the acceleration limit.
- Every command published (OK or hold) lies within the position limits.

- Limits hold per *elapsed time* between published commands, not per nominal period. The loop
  keeps absolute deadlines, so a late tick is followed by a short one; a step sized for the nominal
  period after a short gap exceeded velocity_max by up to 6.7x between command stamps under load.
  Each step is sized for ``dt`` = time since the last published command, capped at
  ``max_step_periods`` nominal periods (after a stall the next step is no bigger than two normal
  ones: the realised speed is then lower, the safe side). A tick with ``dt`` ~ 0 (same time or a
  clock that went backwards) repeats the last command (its velocity carries on).
  Velocity: ``|step| <= velocity_max * dt``; acceleration: ``|step/dt - previous velocity| <= acceleration_max * dt``.
"""

from __future__ import annotations

import copy
import enum
import math
from dataclasses import dataclass

import numpy as np

from .estop import EStopLatch
from .limits import JointLimits

__all__ = ["SafetyFilter", "SafetyOutput", "SafetyStatus"]


class SafetyStatus(enum.Enum):
    """Why this tick's command is what it is. HOLD_NO_INPUT is not produced by the filter itself
    (missing inputs map to the stale/invalid states); nodes may report it before any input arrives."""

    OK = "ok"
    DISABLED = "disabled"
    ESTOP = "estop"
    HOLD_STALE_LATENT = "hold_stale_latent"
    HOLD_STALE_JOINTS = "hold_stale_joints"
    HOLD_INVALID_TARGET = "hold_invalid_target"
    HOLD_NO_INPUT = "hold_no_input"


@dataclass
class SafetyOutput:
    """One filter decision. ``command is None`` means publish nothing this tick."""

    command: np.ndarray | None
    velocity: np.ndarray | None
    status: SafetyStatus
    clamped: bool
    reason: str


def _fresh(now_s: float, stamp_s: float | None, timeout_s: float) -> tuple[bool, str]:
    """Fresh when |now - stamp| <= timeout; a stamp far in the future means a clock jump (sim reset)."""
    if stamp_s is None:
        return False, "never received"
    age = now_s - stamp_s
    if not math.isfinite(age):
        return False, "non-finite stamp"
    if abs(age) > timeout_s:
        return False, f"age {age * 1e3:.1f} ms exceeds {timeout_s * 1e3:.1f} ms"
    return True, ""


class SafetyFilter:
    """Clamp, rate-limit and hold joint position commands at control rate (500 Hz)."""

    def __init__(
        self,
        limits: JointLimits,
        period_s: float,
        latent_timeout_s: float,
        joint_state_timeout_s: float,
        estop: EStopLatch | None = None,
        max_step_periods: float = 2.0,
    ) -> None:
        for key, value in (
            ("period_s", period_s),
            ("latent_timeout_s", latent_timeout_s),
            ("joint_state_timeout_s", joint_state_timeout_s),
        ):
            if not math.isfinite(value) or value <= 0.0:
                raise ValueError(f"SafetyFilter: {key} must be finite and > 0 (got {value})")
        if not (math.isfinite(max_step_periods) and max_step_periods >= 1.0):
            raise ValueError(f"SafetyFilter: max_step_periods must be >= 1 (got {max_step_periods})")
        self.limits = limits
        self.period_s = float(period_s)
        self.latent_timeout_s = float(latent_timeout_s)
        self.joint_state_timeout_s = float(joint_state_timeout_s)
        self.estop = estop if estop is not None else EStopLatch()

        n = len(limits.joints)
        self._n = n
        self._shape = (n,)
        self._max_dt = self.period_s * float(max_step_periods)
        self._min_dt = 1e-3 * self.period_s  # below this a step would be rounding noise
        # numpy copies for validation/holds, float lists for the per-joint loop in _limit().
        self._lower_np = limits.lower
        self._upper_np = limits.upper
        self._lower = self._lower_np.tolist()
        self._upper = self._upper_np.tolist()
        self._vmax = limits.velocity_max.tolist()
        self._amax = limits.acceleration_max.tolist()

        self._last = [0.0] * n  # last published command (meaningful only if _has_last)
        self._has_last = False
        self._last_t: float | None = None  # when it was published (None: no previous command)
        self._vel_prev = [0.0] * n  # velocity of the last commanded step [rad/s]; 0 at start and after a hold
        self._target_prev: list[float] | None = None  # last (position-clamped) target, for its motion

    # ------------------------------------------------------------------ public
    @property
    def last_command(self) -> np.ndarray | None:
        return np.array(self._last) if self._has_last else None

    def reset(self) -> None:
        """Forget the last command (deactivate/disable) so the next one starts from the measured position."""
        self._has_last = False
        self._last_t = None
        self._vel_prev = [0.0] * self._n
        self._target_prev = None

    def step(
        self,
        now_s: float,
        target: np.ndarray | None,
        latent_stamp_s: float | None,
        joint_stamp_s: float | None,
        measured_position: np.ndarray | None,
        enabled: bool,
        joint_problem: str = "",
        latent_problem: str = "",
    ) -> SafetyOutput:
        """Decide this tick's command.

        ``*_stamp_s`` are the inputs' effective times (the caller folds header stamps and arrival
        times into them); a non-empty ``*_problem`` marks that input stale with that reason (e.g. a
        header stamp in the future). Priority: DISABLED > ESTOP > STALE_JOINTS > STALE_LATENT >
        INVALID_TARGET.
        """
        if not enabled:
            self.reset()
            return SafetyOutput(None, None, SafetyStatus.DISABLED, False, "control disabled")

        measured = self._valid(measured_position)
        joints_ok, joints_why = _fresh(now_s, joint_stamp_s, self.joint_state_timeout_s)
        if joint_problem:
            joints_ok, joints_why = False, joint_problem
        if measured is None:
            joints_ok = False
            joints_why = joints_why or "measured position missing, wrong length or non-finite"
        # A stale measurement is never used as a hold point: the robot may have moved since.
        fresh_measured = measured if joints_ok else None

        if self.estop.latched:
            return self._hold(SafetyStatus.ESTOP, f"e-stop latched: {self.estop.reason}", fresh_measured, now_s)
        if not joints_ok:
            return self._hold(SafetyStatus.HOLD_STALE_JOINTS, f"joint state {joints_why}", None, now_s)
        latent_ok, latent_why = _fresh(now_s, latent_stamp_s, self.latent_timeout_s)
        if latent_problem:
            latent_ok, latent_why = False, latent_problem
        if not latent_ok:
            return self._hold(SafetyStatus.HOLD_STALE_LATENT, f"latent {latent_why}", fresh_measured, now_s)
        tgt = self._valid(target)
        if tgt is None:
            return self._hold(
                SafetyStatus.HOLD_INVALID_TARGET,
                "target missing, wrong length or non-finite",
                fresh_measured,
                now_s,
            )
        return self._limit(now_s, tgt, measured)

    def preview(self, start_s: float, targets: np.ndarray, dt_s: float) -> tuple[np.ndarray, np.ndarray]:
        """Look-ahead points for a trajectory command: ``targets`` (M, J) meant for ``start_s + (m+1)
        * dt_s`` -> (positions, velocities), each (M, J), limited as if the filter stepped through
        them after the last command (position clamp, speed, acceleration and braking by ``dt_s``).

        The filter's own state is left untouched: the next tick still starts from the last real
        command. Call only after an OK step (there is a last command to continue from).
        """
        if not self._has_last or not (math.isfinite(dt_s) and dt_s > 0.0):
            raise ValueError("preview needs a last command and a finite dt_s > 0")
        targets = np.asarray(targets, dtype=np.float64)
        if targets.ndim != 2 or targets.shape[1] != self._n:
            raise ValueError(f"preview targets must be (M, {self._n}), got {targets.shape}")
        ghost = copy.copy(self)  # the lists it rebinds in _limit are replaced, never mutated in place
        ghost._max_dt = max(self._max_dt, dt_s)  # points are dt_s apart by construction
        ghost._last_t = start_s
        positions = np.empty_like(targets)
        velocities = np.empty_like(targets)
        prev = np.array(self._last)
        for m in range(targets.shape[0]):
            x = self._valid(targets[m])
            if x is None:  # a non-finite look-ahead target: the rest of the trajectory holds
                positions[m:], velocities[m:] = prev, 0.0
                break
            out = ghost._limit(start_s + (m + 1) * dt_s, x, prev)
            positions[m], velocities[m] = out.command, out.velocity
            prev = out.command
        return positions, velocities

    # ------------------------------------------------------------------ internals
    def _valid(self, x: np.ndarray | None) -> np.ndarray | None:
        """The array as float64 if it has one finite value per configured joint, else None."""
        if x is None:
            return None
        try:
            arr = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError):
            return None
        if arr.shape != self._shape or not np.isfinite(arr).all():
            return None
        return arr

    def _hold(self, status: SafetyStatus, reason: str, measured: np.ndarray | None, now_s: float) -> SafetyOutput:
        """Repeat the last command; with none yet, latch the (fresh) measured position as the hold point."""
        self._vel_prev = [0.0] * self._n
        self._target_prev = None
        if not self._has_last:
            if measured is None:
                return SafetyOutput(None, None, status, False, reason)
            # Latch it so later holds repeat one fixed point instead of following a sagging arm.
            self._last = np.minimum(np.maximum(measured, self._lower_np), self._upper_np).tolist()
            self._has_last = True
        self._last_t = now_s
        return SafetyOutput(np.array(self._last), np.zeros(self._n), status, False, reason)

    def _limit(self, now_s: float, target: np.ndarray, measured: np.ndarray) -> SafetyOutput:
        """Clamp to position limits, then bound the step by speed, acceleration and braking distance.

        All bounds are for this step's elapsed time ``dt`` (see the module docstring). A plain
        per-joint float loop: for arm-sized joint counts it is faster than chaining numpy ufuncs on
        tiny arrays (each call costs ~1 us of overhead), and it reads like the maths.
        """
        if self._has_last:
            prev = self._last
            dt = self.period_s if self._last_t is None else min(now_s - self._last_t, self._max_dt)
            if not dt >= self._min_dt:  # (almost) no time since the last command, or the clock went back
                self._last_t = now_s  # repeat it; the motion continues from here next tick
                return SafetyOutput(np.array(prev), np.array(self._vel_prev), SafetyStatus.OK, True,
                                    "no time elapsed since the last command")
        else:
            prev = measured.tolist()  # first command after (re)start: start where the arm is
            dt = self.period_s
        tgt = target.tolist()
        xprev = self._target_prev
        lower, upper, vmax, amax = self._lower, self._upper, self._vmax, self._amax
        vprev = self._vel_prev
        sqrt = math.sqrt
        n = self._n
        cmd = [0.0] * n
        vel = [0.0] * n
        clipped = [0.0] * n
        clamped = False
        for i in range(n):
            lo, up = lower[i], upper[i]
            a = amax[i] * dt * dt  # max change of this step vs the previous velocity's step
            vstep = vmax[i] * dt  # max |step|
            p = prev[i]
            p = lo if p < lo else (up if p > up else p)  # a measured start may sit just past a limit
            x = tgt[i]
            x = lo if x < lo else (up if x > up else x)
            clipped[i] = x
            # Hard bounds on this step (all in position change over dt):
            # speed, acceleration vs the last velocity, and braking distance to each position limit,
            # i.e. the largest step after which the joint can still stop inside the limit.
            # From v^2/(2a) + v*dt <= distance:  step <= sqrt(a^2 + 2*a*distance) - a, a = amax*dt^2.
            # Landing exactly on the limit is also allowed when one braking step (<= a) stops
            # it. A continuous joint has infinite distance, so its braking bound is inf.
            du = up - p
            brake_up = max(sqrt(a * a + 2.0 * a * du) - a, min(du, a))
            dl = p - lo
            brake_lo = max(sqrt(a * a + 2.0 * a * dl) - a, min(dl, a))
            d0 = vprev[i] * dt
            step_hi = min(vstep, d0 + a, brake_up)
            step_lo = max(-vstep, d0 - a, -brake_lo)
            e = x - p
            if not step_lo <= e <= step_hi:
                # Out of reach this tick. Steering straight at the target would overshoot it at
                # speed and oscillate around it forever (acceleration-limited bang-bang). Instead
                # close the gap on a braking profile relative to the target's own motion: follow
                # the target's step g, plus what still lets us stop at it. Tracking of smooth
                # streams stays exact, and a far step target is approached without ringing.
                g = x - xprev[i] if xprev is not None else 0.0
                r = e - g
                if r >= 0.0:
                    s = g + sqrt(a * a + 2.0 * a * r) - a
                else:
                    s = g - sqrt(a * a - 2.0 * a * r) + a
                s = step_lo if s < step_lo else (step_hi if s > step_hi else s)
                x = p + s
                x = lo if x < lo else (up if x > up else x)  # hard guarantee against rounding
                clamped = True
            elif x != tgt[i]:
                clamped = True  # only the position clamp changed it
            cmd[i] = x
            vel[i] = (x - p) / dt
        self._last = cmd
        self._last_t = now_s
        self._vel_prev = vel
        self._target_prev = clipped
        self._has_last = True
        return SafetyOutput(np.array(cmd), np.array(vel), SafetyStatus.OK, clamped, "")
