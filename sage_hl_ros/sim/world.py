"""An arm reaching for a randomised target on a table, in MuJoCo: the CPU stand-in for Isaac Sim.

Pure (no rclpy): the bridge node (``sage_hl_ros.ros.sim_bridge_node``) turns it into Isaac-style
topics, the scripted expert (``sim.expert``) and the tests use it directly. The arm is one of
``sim.robots`` (``SimConfig.robot``: the 7-DoF ``sim_arm7``, with the joint names and limits of
``config/joint_limits.yaml``, or the 6-DoF UR-style ``sim_ur6``); position servos (PD on each
joint, gravity compensated) take joint-position targets, and a fixed camera sees the arm, the
table and the red target sphere, so the target's position is in the image and nowhere else the
policy looks (``sim_ur6`` also has a wrist camera on its last link).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.config import ConfigError, SelfValidating, load_yaml, require_positive
from .robots import DEFAULT_ROBOT, SIM_ROBOTS, SimCamera, SimJoint, SimRobot, sim_robot

TAXEL_SITES = ("tip_front", "tip_back", "tip_left", "tip_right")


@dataclass
class SimConfig(SelfValidating):
    """World, episode and sensor settings; lengths in metres, times in seconds."""

    physics_dt_s: float = 0.002
    servo_kp: float = 120.0  # N m / rad, every joint
    servo_kv: float = 12.0  # N m s / rad
    episode_duration_s: float = 3.0
    success_tolerance_m: float = 0.05  # fingertip centre to target centre at the episode's end
    target_x_range_m: list[float] = field(default_factory=lambda: [0.35, 0.6])
    target_y_range_m: list[float] = field(default_factory=lambda: [-0.25, 0.25])
    target_radius_m: float = 0.04
    home_noise_rad: float = 0.05  # uniform noise on the home pose at each reset
    # Between episodes the servos carry the arm home on a minimum-jerk path (then settle for a fifth
    # of this time) instead of teleporting it: a controller's command stream stays continuous, as on
    # a real arm. 0 = teleport.
    homing_duration_s: float = 1.0
    image_width_px: int = 64
    image_height_px: int = 64
    camera_fovy_deg: float = 38.0
    audio_sample_rate_hz: int = 16000
    seed: int = 0
    robot: str = DEFAULT_ROBOT  # which arm (sim.robots.SIM_ROBOTS): sim_arm7 | sim_ur6

    def validate(self, where: str) -> None:
        require_positive(self, where, "physics_dt_s", "servo_kp", "servo_kv", "episode_duration_s",
                  "success_tolerance_m", "target_radius_m", "camera_fovy_deg", "audio_sample_rate_hz")
        for key in ("target_x_range_m", "target_y_range_m"):
            lo_hi = getattr(self, key)
            if len(lo_hi) != 2 or lo_hi[0] > lo_hi[1]:
                raise ConfigError(f"{where}.{key}: expected [min, max], got {lo_hi}")
        for key in ("home_noise_rad", "homing_duration_s"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{where}.{key}: must be >= 0, got {getattr(self, key)}")
        for key in ("image_width_px", "image_height_px"):
            if getattr(self, key) < 16:
                raise ConfigError(f"{where}.{key}: must be >= 16, got {getattr(self, key)}")
        if self.robot not in SIM_ROBOTS:
            raise ConfigError(f"{where}.robot: one of {list(SIM_ROBOTS)}, got {self.robot!r}")

    @classmethod
    def from_yaml(cls, path: str | Path, section: str = "sim") -> SimConfig:
        return load_yaml(cls, path, section)


def _joint_xml(joint: SimJoint) -> str:
    limit = f' range="{joint.range_rad[0]} {joint.range_rad[1]}"' if joint.range_rad else ""  # none: continuous
    return f'<joint name="{joint.name}" axis="{joint.axis}"{limit} damping="0.5" armature="0.05"/>'


def _camera_xml(cam: SimCamera, config: SimConfig) -> str:
    return (f'<camera name="{cam.name}" pos="{cam.pos}" xyaxes="{cam.xyaxes}" '
            f'fovy="{cam.fovy_deg or config.camera_fovy_deg}"/>')


def _chain_xml(robot: SimRobot, config: SimConfig) -> str:
    """The robot's links nested parent to child, the fingertip (with its taxel sites) in the last one."""
    quat = f' quat="{robot.tip_quat}"' if robot.tip_quat else ""
    inner = f"""<body name="tip" pos="{robot.tip_pos}"{quat} gravcomp="1">
  <geom name="tip" type="sphere" size="0.02" rgba="0.1 0.75 0.3 1" mass="0.05"/>
  <site name="tip_center" pos="0 0 0" size="0.005"/>
  <site name="tip_front" pos="0.012 0 0.008" size="0.014"/>
  <site name="tip_back" pos="-0.012 0 0.008" size="0.014"/>
  <site name="tip_left" pos="0 0.012 0.008" size="0.014"/>
  <site name="tip_right" pos="0 -0.012 0.008" size="0.014"/>
</body>"""
    for link in reversed(robot.links):
        parts = [_joint_xml(link.joint)] if link.joint is not None else []
        parts += [link.geoms]
        parts += [_camera_xml(c, config) for c in robot.cameras if c.link == link.name]
        parts += [inner]
        grav = ' gravcomp="1"' if link.gravcomp else ""
        body = "\n".join(parts).replace("\n", "\n  ")
        inner = f'<body name="{link.name}" pos="{link.pos}"{grav}>\n  {body}\n</body>'
    return inner.replace("\n", "\n    ")


def arm_mjcf(config: SimConfig) -> str:
    """The world as MJCF text: table, the arm ``config.robot`` names (sim.robots), fingertip taxels,
    target, cameras."""
    robot = sim_robot(config.robot)
    actuators = []
    for j in robot.joints:  # a continuous joint's servo has no control range
        ctrl = f'ctrlrange="{j.range_rad[0]} {j.range_rad[1]}" ' if j.range_rad else ""
        actuators.append(f'<position name="{j.name}" joint="{j.name}" kp="{config.servo_kp}" kv="{config.servo_kv}" '
                         f'{ctrl}forcerange="-80 80"/>')
    touch = "\n".join(f'<touch name="{s}" site="{s}"/>' for s in TAXEL_SITES)
    fixed = "\n    ".join(_camera_xml(c, config) for c in robot.cameras if not c.link)
    r = config.target_radius_m
    return f"""
<mujoco model="sage_reach">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{config.physics_dt_s}" integrator="implicitfast"/>
  <visual><quality shadowsize="0"/><global offwidth="640" offheight="480"/></visual>
  <default>
    <!-- arm geoms: contype 0, conaffinity 1 -> they touch the table, never each other -->
    <geom contype="0" conaffinity="1" friction="0.8 0.02 0.001"/>
  </default>
  <worldbody>
    <light pos="0.4 0 2.0" dir="0 0 -1" castshadow="false" diffuse="0.8 0.8 0.8"/>
    <light pos="1.5 0 1.5" dir="-1 0 -1" castshadow="false" diffuse="0.3 0.3 0.3"/>
    <geom name="floor" type="plane" pos="0 0 -0.75" size="3 3 0.1" rgba="0.35 0.35 0.38 1" contype="1"/>
    <geom name="table" type="box" pos="0.4 0 -0.02" size="0.55 0.6 0.02" rgba="0.75 0.72 0.66 1"
          contype="1" conaffinity="1"/>
    {_chain_xml(robot, config)}
    <body name="target" mocap="true" pos="0.45 0 {r}">
      <geom name="target" type="sphere" size="{r}" rgba="0.9 0.1 0.1 1" contype="0" conaffinity="0"/>
    </body>
    {fixed}
  </worldbody>
  <actuator>
{chr(10).join(actuators)}
  </actuator>
  <sensor>
{touch}
  </sensor>
</mujoco>
"""


def joint_indices(model, joint_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(qpos addresses, dof addresses) of ``joint_names`` in a model built from ``arm_mjcf``."""
    return (np.array([model.joint(n).qposadr[0] for n in joint_names]),
            np.array([model.joint(n).dofadr[0] for n in joint_names]))


def ensure_gl_backend() -> None:
    # Offscreen rendering without a display: EGL (Mesa llvmpipe on a CPU-only machine) unless the
    # user chose a backend. Must be set before mujoco creates its first context.
    os.environ.setdefault("MUJOCO_GL", "egl")


class ReachWorld:
    """The simulated arm (``config.robot``), target and sensors; advance with ``step``, read with the
    accessors. Joint arrays are in ``joint_names`` order; cameras are ``camera_names``."""

    def __init__(self, config: SimConfig | None = None):
        ensure_gl_backend()
        import mujoco

        self._mj = mujoco
        self.config = config or SimConfig()
        self.robot: SimRobot = sim_robot(self.config.robot)
        self.model = mujoco.MjModel.from_xml_string(arm_mjcf(self.config))
        self.data = mujoco.MjData(self.model)
        # Episodes (home noise, targets) draw from their own stream, so the targets of a seed do not
        # depend on how much audio was synthesized: an in-process baseline sees the bridge's targets.
        self.rng = np.random.default_rng(self.config.seed)
        self._noise_rng = np.random.default_rng([self.config.seed, 1])
        self._qpos_idx, self._qvel_idx = joint_indices(self.model, self.robot.joint_names)
        self._lower, self._upper = self.robot.lower_rad, self.robot.upper_rad
        self._tip_site = self.model.site("tip_center").id
        self._target_mocap = self.model.body("target").mocapid[0]
        self._touch_adr = np.array([self.model.sensor(s).adr[0] for s in TAXEL_SITES])
        self._renderer = None
        self._depth_renderer = None
        self._actuator_ids = np.array([self.model.actuator(n).id for n in self.robot.joint_names])
        self.episode_start_s = 0.0
        self.episode_index = -1
        self._audio_phase = 0.0
        self._last_touch = np.zeros(len(TAXEL_SITES))
        self.reset()

    @property
    def joint_names(self) -> list[str]:
        return self.robot.joint_names

    @property
    def camera_names(self) -> list[str]:
        return self.robot.camera_names

    # ------------------------------------------------------------------ episode
    def draw_episode(self) -> tuple[np.ndarray, np.ndarray]:
        """The next episode's start pose (home + noise) and target (m), from the episode RNG."""
        cfg = self.config
        home = np.array(self.robot.home_rad)
        q = home + self.rng.uniform(-cfg.home_noise_rad, cfg.home_noise_rad, home.size)
        target_xy = (self.rng.uniform(*cfg.target_x_range_m), self.rng.uniform(*cfg.target_y_range_m))
        return np.clip(q, self._lower, self._upper), np.array([target_xy[0], target_xy[1], cfg.target_radius_m])

    def reset(self, target_xy: tuple[float, float] | None = None) -> np.ndarray:
        """Teleport to the next start pose and begin an episode; returns the target (m, world frame)."""
        q, target = self.draw_episode()
        if target_xy is not None:
            target[:2] = target_xy
        self.teleport(q)
        return self.start_episode(target)

    def teleport(self, q: np.ndarray) -> None:
        """Put the arm at ``q`` at rest, servos holding it there."""
        self.data.qpos[self._qpos_idx] = q
        self.data.qvel[:] = 0.0
        self.data.ctrl[self._actuator_ids] = q
        self._mj.mj_forward(self.model, self.data)

    def start_episode(self, target_m: np.ndarray) -> np.ndarray:
        """Place the target and start the episode clock, the arm where it is (after ``homing_command``)."""
        self.data.mocap_pos[self._target_mocap] = np.asarray(target_m, dtype=np.float64)
        self._mj.mj_forward(self.model, self.data)
        self.episode_start_s = float(self.data.time)
        self.episode_index += 1
        return self.target_position()

    def homing_command(self, start: np.ndarray, goal: np.ndarray, elapsed_s: float) -> np.ndarray | None:
        """Servo target ``elapsed_s`` into the homing move from ``start`` to ``goal``; None when done."""
        total = self.config.homing_duration_s
        if elapsed_s >= total:
            return None
        s = min(1.0, elapsed_s / (0.8 * total))  # move for 80% of the time, then settle
        blend = 10 * s**3 - 15 * s**4 + 6 * s**5  # minimum jerk, zero velocity at both ends
        return start + (goal - start) * blend

    @property
    def time_s(self) -> float:
        return float(self.data.time)

    def episode_elapsed_s(self) -> float:
        return self.time_s - self.episode_start_s

    def episode_over(self) -> bool:
        return self.episode_elapsed_s() >= self.config.episode_duration_s - 1e-9

    def distance_m(self) -> float:
        return float(np.linalg.norm(self.tip_position() - self.target_position()))

    def success(self) -> bool:
        return self.distance_m() <= self.config.success_tolerance_m

    # ------------------------------------------------------------------ physics
    def set_command(self, positions_rad: np.ndarray) -> None:
        """Joint-position targets for the servos, ``joint_names`` order (clamped to the joint ranges;
        a continuous joint's target is taken as is)."""
        q = np.asarray(positions_rad, dtype=np.float64)
        n = self.robot.dof
        if q.shape != (n,) or not np.all(np.isfinite(q)):
            raise ValueError(f"command must be {n} finite joint positions, got shape {q.shape}")
        self.data.ctrl[self._actuator_ids] = np.clip(q, self._lower, self._upper)

    def step(self, duration_s: float) -> None:
        n = max(1, int(round(duration_s / self.config.physics_dt_s)))
        self._mj.mj_step(self.model, self.data, nstep=n)

    # ------------------------------------------------------------------ state
    def joint_positions(self) -> np.ndarray:
        return self.data.qpos[self._qpos_idx].copy()

    def joint_velocities(self) -> np.ndarray:
        return self.data.qvel[self._qvel_idx].copy()

    def joint_efforts(self) -> np.ndarray:
        return self.data.actuator_force[self._actuator_ids].copy()

    def tip_position(self) -> np.ndarray:
        return self.data.site_xpos[self._tip_site].copy()

    def target_position(self) -> np.ndarray:
        return self.data.mocap_pos[self._target_mocap].copy()

    def command(self) -> np.ndarray:
        return self.data.ctrl[self._actuator_ids].copy()

    # ------------------------------------------------------------------ sensors
    def tactile(self) -> np.ndarray:
        """Normal contact force on each fingertip taxel (N), order ``TAXEL_SITES``."""
        return self.data.sensordata[self._touch_adr].astype(np.float32)

    def audio(self, n_samples: int) -> np.ndarray:
        """``n_samples`` of a synthesized microphone: motor whine rising with joint speed, a click
        when a taxel's force jumps (contact onset), and a little noise. Float32 in [-1, 1]."""
        rate = self.config.audio_sample_rate_hz
        t = np.arange(n_samples) / rate
        speed = float(np.abs(self.joint_velocities()).sum())
        hum_amp = min(0.3, 0.05 * speed)
        freq = 180.0 + 60.0 * speed
        phase = self._audio_phase + 2 * np.pi * freq * t
        self._audio_phase = float((phase[-1] + 2 * np.pi * freq / rate) % (2 * np.pi))
        signal = hum_amp * np.sin(phase)
        touch = self.tactile().astype(np.float64)
        onset = float(np.clip((touch - self._last_touch).max(initial=0.0), 0.0, None))
        self._last_touch = touch
        if onset > 0.05:
            signal += min(0.8, 0.1 * onset) * np.exp(-t * 60.0) * np.sin(2 * np.pi * 2400.0 * t)
        signal += self._noise_rng.normal(0.0, 0.003, n_samples)
        return np.clip(signal, -1.0, 1.0).astype(np.float32)

    def _renderers(self):
        if self._renderer is None:
            cfg = self.config
            self._renderer = self._mj.Renderer(self.model, cfg.image_height_px, cfg.image_width_px)
            self._depth_renderer = self._mj.Renderer(self.model, cfg.image_height_px, cfg.image_width_px)
            self._depth_renderer.enable_depth_rendering()
        return self._renderer, self._depth_renderer

    def _camera(self, camera: str | None) -> str:
        if camera is None:
            return self.robot.cameras[0].name
        self.robot.camera(camera)  # KeyError naming the robot's cameras
        return camera

    def render_rgb(self, camera: str | None = None) -> np.ndarray:
        """(H, W, 3) uint8 from ``camera`` (one of ``camera_names``; None = the first, the fixed front one)."""
        rgb, _ = self._renderers()
        rgb.update_scene(self.data, self._camera(camera))
        return rgb.render()

    def render_depth(self, camera: str | None = None) -> np.ndarray:
        """(H, W) float32 metres along ``camera``'s optical axis (Isaac's depth helper convention)."""
        _, depth = self._renderers()
        depth.update_scene(self.data, self._camera(camera))
        return depth.render().astype(np.float32)

    def camera_intrinsics(self, camera: str | None = None) -> tuple[float, float, float, float]:
        """(fx, fy, cx, cy) in pixels of the pinhole camera that ``render_rgb(camera)`` uses."""
        cfg = self.config
        fovy = self.robot.camera(self._camera(camera)).fovy_deg or cfg.camera_fovy_deg
        fy = 0.5 * cfg.image_height_px / np.tan(np.deg2rad(fovy) / 2)
        return fy, fy, (cfg.image_width_px - 1) / 2, (cfg.image_height_px - 1) / 2

    def close(self) -> None:
        for r in (self._renderer, self._depth_renderer):
            if r is not None:
                r.close()
        self._renderer = self._depth_renderer = None
