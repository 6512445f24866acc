"""Scripted reaching expert: damped-least-squares IK on the fingertip position.

It is a state feedback law (joint positions + target -> next joint-position target), so it can
label any state, including states the learned policy visits: the same function drives the arm
while demonstrations are recorded and publishes teacher labels while the learned policy drives.
A null-space pull toward the home pose keeps the redundant 7th degree of freedom, and with it the
joint configuration for a given target, the same from one demonstration to the next.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sage_hl_ros.core.config import ConfigError, _positive
from sage_hl_ros.sim.world import HOME_RAD, JOINT_RANGES_RAD, SimConfig, arm_mjcf


@dataclass
class ExpertConfig:
    """Gains of the reaching law; ``max_step_rad`` bounds each joint's step per command."""

    gain: float = 2.5  # 1/s: fingertip velocity per metre of error, as a joint-target step over step_horizon_s
    step_horizon_s: float = 0.1  # a target is where the joints should be this far ahead
    damping: float = 0.05  # DLS damping (m)
    null_gain: float = 0.5  # pull toward the home pose in the Jacobian's null space
    max_step_rad: float = 0.12
    aim_offset_m: list[float] = None  # fingertip aim point relative to the target centre

    def __post_init__(self):
        if self.aim_offset_m is None:
            self.aim_offset_m = [0.0, 0.0, 0.0]

    def validate(self, where: str) -> None:
        _positive(self, where, "gain", "step_horizon_s", "damping", "max_step_rad")
        if self.null_gain < 0:
            raise ConfigError(f"{where}.null_gain: must be >= 0, got {self.null_gain}")
        if len(self.aim_offset_m) != 3:
            raise ConfigError(f"{where}.aim_offset_m: expected [x, y, z], got {self.aim_offset_m}")


class ReachExpert:
    """``command(q, target)`` -> joint-position target (rad), for the arm of ``sim.world``."""

    def __init__(self, config: ExpertConfig | None = None, sim_config: SimConfig | None = None):
        import mujoco

        self._mj = mujoco
        self.config = config or ExpertConfig()
        self.model = mujoco.MjModel.from_xml_string(arm_mjcf(sim_config or SimConfig()))
        self.data = mujoco.MjData(self.model)
        self._qpos_idx = np.array([self.model.joint(f"joint{i}").qposadr[0] for i in range(1, 8)])
        self._qvel_idx = np.array([self.model.joint(f"joint{i}").dofadr[0] for i in range(1, 8)])
        self._tip = self.model.site("tip_center").id
        self._lo = np.array([r[0] for r in JOINT_RANGES_RAD])
        self._hi = np.array([r[1] for r in JOINT_RANGES_RAD])
        self._home = np.array(HOME_RAD)

    def tip_position(self, q: np.ndarray) -> np.ndarray:
        self.data.qpos[self._qpos_idx] = q
        self._mj.mj_kinematics(self.model, self.data)
        return self.data.site_xpos[self._tip].copy()

    def command(self, q: np.ndarray, target_m: np.ndarray) -> np.ndarray:
        cfg = self.config
        q = np.asarray(q, dtype=np.float64)
        tip = self.tip_position(q)
        self._mj.mj_comPos(self.model, self.data)
        jacp = np.zeros((3, self.model.nv))
        self._mj.mj_jacSite(self.model, self.data, jacp, None, self._tip)
        jac = jacp[:, self._qvel_idx]
        err = np.asarray(target_m, dtype=np.float64) + np.asarray(cfg.aim_offset_m) - tip
        velocity = cfg.gain * err  # desired fingertip velocity (m/s)
        jjt = jac @ jac.T + cfg.damping**2 * np.eye(3)
        dq = jac.T @ np.linalg.solve(jjt, velocity)
        pinv = jac.T @ np.linalg.inv(jac @ jac.T + 1e-6 * np.eye(3))
        null = np.eye(7) - pinv @ jac
        dq = dq + null @ (cfg.null_gain * (self._home - q))
        step = np.clip(dq * cfg.step_horizon_s, -cfg.max_step_rad, cfg.max_step_rad)
        return np.clip(q + step, self._lo, self._hi)
