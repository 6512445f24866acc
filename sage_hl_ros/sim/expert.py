"""Scripted reaching expert: Jacobian (damped-least-squares) IK to a goal pose, then a joint-space servo.

For each target the expert solves IK once, from the home pose, with a null-space pull toward home:
the goal joint configuration is then a smooth function of the target alone, the same in every
demonstration, which is what a policy that sees the target only in its camera can learn. Each
command moves a fixed fraction of the remaining joint-space error (step norm bounded): a state
feedback law, so it labels any state, including states the learned policy visits (teacher labels).
The IK is generic in the arm's DoF (``SimConfig.robot``: 7 or 6 joints); a continuous joint has no
bound to clip at.

``hold_within_m`` (off by default) makes the expert hold still once the fingertip is that close to
the aim point, so that on the learned policy's own rollouts (DAgger) it labels "stop" where the task
is done instead of a step toward its own IK solution, whose direction is the policy's perception
error. Measured in the demo it was not enough: round 1 still learned to keep moving late in the
wrong direction (bench/RESULTS.md, "DAgger").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core.config import ConfigError, SelfValidating, require_positive
from .robots import sim_robot
from .world import SimConfig, arm_mjcf, ensure_gl_backend, joint_indices


@dataclass
class ExpertConfig(SelfValidating):
    """IK and servo gains. ``gain_per_s`` x ``step_horizon_s`` is the fraction of the remaining joint
    error each command asks for; ``max_step_rad`` bounds the step's largest joint."""

    gain_per_s: float = 3.0
    step_horizon_s: float = 0.1  # a target is where the joints should be this far ahead
    max_step_rad: float = 0.12
    ik_iterations: int = 200
    ik_damping_m: float = 0.02
    ik_null_gain: float = 0.2  # pull toward the home pose in the Jacobian's null space
    ik_tolerance_m: float = 1e-4
    aim_offset_m: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # aim point - target centre
    hold_within_m: float = 0.0  # > 0: the command is the current position once the fingertip is this close

    def validate(self, where: str) -> None:
        require_positive(self, where, "gain_per_s", "step_horizon_s", "max_step_rad", "ik_iterations", "ik_damping_m",
                  "ik_tolerance_m")
        if not self.hold_within_m >= 0:
            raise ConfigError(f"{where}.hold_within_m: must be >= 0 (0 = never hold), got {self.hold_within_m}")
        if self.ik_null_gain < 0:
            raise ConfigError(f"{where}.ik_null_gain: must be >= 0, got {self.ik_null_gain}")
        if len(self.aim_offset_m) != 3:
            raise ConfigError(f"{where}.aim_offset_m: expected [x, y, z], got {self.aim_offset_m}")


class ReachExpert:
    """``command(q, target)`` -> joint-position target (rad, ``joint_names`` order), for the arm
    ``sim_config.robot`` names."""

    def __init__(self, config: ExpertConfig | None = None, sim_config: SimConfig | None = None):
        ensure_gl_backend()  # mujoco fixes its GL backend at import: a later ReachWorld must render
        import mujoco

        self._mj = mujoco
        self.config = config or ExpertConfig()
        sim_config = sim_config or SimConfig()
        self.robot = sim_robot(sim_config.robot)
        self.model = mujoco.MjModel.from_xml_string(arm_mjcf(sim_config))
        self.data = mujoco.MjData(self.model)
        self._qpos_idx, self._qvel_idx = joint_indices(self.model, self.robot.joint_names)
        self._lower, self._upper = self.robot.lower_rad, self.robot.upper_rad
        self._tip = self.model.site("tip_center").id
        self._home = np.array(self.robot.home_rad)
        self._goal_cache: tuple[tuple[float, ...], np.ndarray] | None = None

    @property
    def joint_names(self) -> list[str]:
        return self.robot.joint_names

    def tip_position(self, q: np.ndarray) -> np.ndarray:
        self.data.qpos[self._qpos_idx] = q
        self._mj.mj_kinematics(self.model, self.data)
        return self.data.site_xpos[self._tip].copy()

    def _jacobian(self) -> np.ndarray:
        self._mj.mj_comPos(self.model, self.data)
        jacp = np.zeros((3, self.model.nv))
        self._mj.mj_jacSite(self.model, self.data, jacp, None, self._tip)
        return jacp[:, self._qvel_idx]

    def goal_configuration(self, target_m: np.ndarray) -> np.ndarray:
        """Joint configuration that puts the fingertip on the target (IK from home; cached per target)."""
        cfg = self.config
        aim = np.asarray(target_m, dtype=np.float64) + np.asarray(cfg.aim_offset_m)
        key = tuple(np.round(aim, 9))
        if self._goal_cache is not None and self._goal_cache[0] == key:
            return self._goal_cache[1]
        q = self._home.copy()
        eye, null_eye = np.eye(3), np.eye(self._home.size)
        for _ in range(cfg.ik_iterations):
            err = aim - self.tip_position(q)
            jac = self._jacobian()
            if np.linalg.norm(err) < cfg.ik_tolerance_m:
                break
            dq = jac.T @ np.linalg.solve(jac @ jac.T + cfg.ik_damping_m**2 * eye, err)
            pinv = jac.T @ np.linalg.inv(jac @ jac.T + 1e-6 * eye)
            dq += (null_eye - pinv @ jac) @ (cfg.ik_null_gain * (self._home - q))
            q = np.clip(q + dq, self._lower, self._upper)
        self._goal_cache = (key, q)
        return q

    def command(self, q: np.ndarray, target_m: np.ndarray) -> np.ndarray:
        cfg = self.config
        q = np.asarray(q, dtype=np.float64)
        if cfg.hold_within_m > 0:
            aim = np.asarray(target_m, dtype=np.float64) + np.asarray(cfg.aim_offset_m)
            if np.linalg.norm(self.tip_position(q) - aim) <= cfg.hold_within_m:
                return q.copy()
        step = (self.goal_configuration(target_m) - q) * min(1.0, cfg.gain_per_s * cfg.step_horizon_s)
        largest = np.abs(step).max()
        if largest > cfg.max_step_rad:
            step *= cfg.max_step_rad / largest  # keep the direction: a straight line in joint space
        return np.clip(q + step, self._lower, self._upper)
