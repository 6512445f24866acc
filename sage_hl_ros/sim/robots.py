"""The arms of the MuJoCo stand-in: a pure spec (no mujoco) of each robot's joints, body chain and cameras.

``sim.world`` builds the MJCF from a :class:`SimRobot` (the table, the target and the fingertip with
its taxel sites are shared), ``sim.expert`` solves IK on it, and the sim nodes take their joint names
and cameras from it. Each robot also names its robot contract (``config/robots/<name>.yaml``: the
topics the bridge publishes) and the model config the demo trains for it.

- ``sim_arm7``: the 7-DoF Franka-like arm the stand-in always had (joint1..joint7, the limits of
  ``config/joint_limits.yaml``), one fixed camera (``front``; the contract calls it ``camera``).
- ``sim_ur6``: a 6-DoF UR5e-like arm (Universal Robots joint names, link offsets and joint ranges;
  ``wrist_3_joint`` continuous: no range in the MJCF, no servo control range), a fixed ``front``
  camera and a ``wrist`` camera riding on ``wrist_3_link``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SimJoint:
    """A hinge; ``range_rad`` None = continuous (unlimited in the MJCF, its servo unclamped)."""

    name: str
    axis: str  # MJCF axis in the link frame, "x y z"
    range_rad: tuple[float, float] | None


@dataclass(frozen=True)
class SimLink:
    """One body of the chain; each link is the child of the one before it."""

    name: str
    pos: str  # in the parent link's frame
    geoms: str  # MJCF <geom/> elements in this link's frame
    joint: SimJoint | None = None  # None: welded to the parent (the base)
    gravcomp: bool = True  # MuJoCo gravity compensation: position servos then hold the arm


@dataclass(frozen=True)
class SimCamera:
    """An MJCF camera: fixed in the world (``link`` "") or riding on a link of the chain."""

    name: str  # the MJCF camera's name (world.render_rgb(camera=...))
    pos: str
    xyaxes: str  # MJCF camera frame: x right, y up, looking along -z
    link: str = ""  # "" = fixed in the world, else the link it is mounted on
    fovy_deg: float = 0.0  # 0 = SimConfig.camera_fovy_deg
    contract_name: str = ""  # the robot contract's name for it; "" = ``name``


@dataclass(frozen=True)
class SimRobot:
    name: str
    links: tuple[SimLink, ...]
    home_rad: tuple[float, ...]  # start pose of every episode (plus noise) and the IK's null-space pull
    tip_pos: str  # the fingertip body in the last link's frame; its local +z points out of the tool
    cameras: tuple[SimCamera, ...]
    contract: str  # robot contract, relative to the package's config/
    model_config: str  # the demo's model config for this robot, relative to config/
    tip_quat: str = ""  # the fingertip body's orientation in the last link ("" = the link's)

    def __post_init__(self):
        if len(self.home_rad) != len(self.joints):
            raise ValueError(f"sim robot {self.name}: {len(self.home_rad)} home angles for {len(self.joints)} joints")
        names = [c.name for c in self.cameras]
        links = {link.name for link in self.links}
        if len(set(names)) != len(names) or any(c.link and c.link not in links for c in self.cameras):
            raise ValueError(f"sim robot {self.name}: camera names must differ and ride on its links")

    @property
    def joints(self) -> tuple[SimJoint, ...]:
        return tuple(link.joint for link in self.links if link.joint is not None)

    @property
    def joint_names(self) -> list[str]:
        return [j.name for j in self.joints]

    @property
    def dof(self) -> int:
        return len(self.joints)

    @property
    def lower_rad(self) -> np.ndarray:
        """Lower joint bounds; -inf for a continuous joint (np.clip leaves it free)."""
        return np.array([j.range_rad[0] if j.range_rad else -np.inf for j in self.joints])

    @property
    def upper_rad(self) -> np.ndarray:
        return np.array([j.range_rad[1] if j.range_rad else np.inf for j in self.joints])

    @property
    def camera_names(self) -> list[str]:
        return [c.name for c in self.cameras]

    def camera(self, name: str) -> SimCamera:
        for cam in self.cameras:
            if cam.name == name:
                return cam
        raise KeyError(f"sim robot {self.name} has no camera {name!r} (cameras: {self.camera_names})")

    def camera_for_contract(self, contract_name: str) -> SimCamera:
        """The camera a robot contract's ``cameras[].name`` means."""
        for cam in self.cameras:
            if (cam.contract_name or cam.name) == contract_name:
                return cam
        known = [c.contract_name or c.name for c in self.cameras]
        raise KeyError(f"sim robot {self.name} has no camera the contract could call {contract_name!r} "
                       f"(its cameras: {known})")


def camera_info_topic(image_topic: str) -> str:
    """The CameraInfo topic next to an image topic, as Isaac's camera helper names it: ``rgb`` ->
    ``camera_info``, ``/front/rgb`` -> ``/front/camera_info``."""
    head, sep, _ = image_topic.rpartition("/")
    return f"{head}{sep}camera_info"


# --------------------------------------------------------------------------- sim_arm7

_GREY, _DARK, _BLUE = "0.92 0.92 0.92 1", "0.25 0.25 0.28 1", "0.2 0.45 0.85 1"
_FRONT = SimCamera("front", "0.95 0 0.85", "0 1 0 -0.862 0 0.507")


def _hinge(name: str, axis: str, lo: float, hi: float) -> SimJoint:
    return SimJoint(name, axis, (lo, hi))


# Limits match config/joint_limits.yaml (rad).
SIM_ARM7 = SimRobot(
    name="sim_arm7",
    links=(
        SimLink("link0", "0 0 0", '<geom type="cylinder" size="0.07 0.05" pos="0 0 0.05" rgba="0.9 0.9 0.9 1" '
                                  'contype="0" conaffinity="0"/>', gravcomp=False),
        SimLink("link1", "0 0 0.1", f'<geom type="capsule" fromto="0 0 0 0 0 0.233" size="0.055" rgba="{_GREY}" '
                                    'mass="2.5" contype="0" conaffinity="0"/>',
                _hinge("joint1", "0 0 1", -2.8, 2.8), gravcomp=False),
        SimLink("link2", "0 0 0.233", f'<geom type="sphere" size="0.06" rgba="{_DARK}" mass="1.0" contype="0" '
                                      'conaffinity="0"/>', _hinge("joint2", "0 1 0", -1.7, 1.7)),
        SimLink("link3", "0 0 0", f'<geom type="capsule" fromto="0 0 0 0 0 0.316" size="0.05" rgba="{_GREY}" '
                                  'mass="2.0"/>', _hinge("joint3", "0 0 1", -2.8, 2.8)),
        SimLink("link4", "0 0 0.316", f'<geom type="sphere" size="0.055" rgba="{_DARK}" mass="0.8" contype="0" '
                                      'conaffinity="0"/>', _hinge("joint4", "0 -1 0", -3.0, 0.0)),
        SimLink("link5", "0 0 0", f'<geom type="capsule" fromto="0 0 0 0 0 0.384" size="0.045" rgba="{_GREY}" '
                                  'mass="1.5"/>', _hinge("joint5", "0 0 1", -2.8, 2.8)),
        SimLink("link6", "0 0 0.384", f'<geom type="sphere" size="0.045" rgba="{_DARK}" mass="0.5" contype="0" '
                                      'conaffinity="0"/>', _hinge("joint6", "0 1 0", -0.1, 3.7)),
        SimLink("link7", "0 0 0", f'<geom type="capsule" fromto="0 0 0 0 0 0.09" size="0.035" rgba="{_BLUE}" '
                                  'mass="0.4"/>', _hinge("joint7", "0 0 1", -2.8, 2.8)),
    ),
    home_rad=(0.0, 0.35, 0.0, -2.1, 0.0, 2.45, 0.0),  # fingertip 35 cm above the table, in front of the base
    tip_pos="0 0 0.11",
    cameras=(SimCamera("front", _FRONT.pos, _FRONT.xyaxes, contract_name="camera"),),
    contract="robots/sim_arm7.yaml",
    model_config="sim_model.yaml",
)


# --------------------------------------------------------------------------- sim_ur6

# UR5e link offsets (m; Universal Robots' kinematics, as MuJoCo Menagerie's ur5e model lays them
# out), at full scale: the arm reaches 0.85 m, which covers the target area (x 0.35-0.6 m,
# y +-0.25 m on the table) from above with the tool pointing down. In the zero pose the upper arm
# and forearm point along +x; shoulder_lift, elbow and wrist_1 turn about +y (positive = down).
_UR = {"shoulder_z": 0.163, "shoulder_y": 0.138, "upper_arm": 0.425, "elbow_y": -0.131, "forearm": 0.392,
       "wrist_1_y": 0.127, "wrist_2_z": 0.1, "flange_y": 0.1}
_TWO_PI = 2 * math.pi  # UR: +-360 deg
_PI = math.pi  # UR elbow: +-180 deg


def _ur_links() -> tuple[SimLink, ...]:
    u = _UR
    off = 'contype="0" conaffinity="0"'
    return (
        SimLink("base_link", "0 0 0", f'<geom type="cylinder" size="0.075 0.045" pos="0 0 0.045" '
                                      f'rgba="0.9 0.9 0.9 1" {off}/>', gravcomp=False),
        SimLink("shoulder_link", f"0 0 {u['shoulder_z']}",
                f'<geom type="cylinder" size="0.06 0.06" rgba="{_GREY}" mass="2.5" {off}/>'
                f'<geom type="cylinder" size="0.06 0.06" pos="0 0.07 0" quat="0.7071068 0.7071068 0 0" '
                f'rgba="{_DARK}" mass="0.5" {off}/>',
                SimJoint("shoulder_pan_joint", "0 0 1", (-_TWO_PI, _TWO_PI)), gravcomp=False),
        SimLink("upper_arm_link", f"0 {u['shoulder_y']} 0",
                f'<geom type="capsule" fromto="0 0 0 {u["upper_arm"]} 0 0" size="0.05" rgba="{_GREY}" mass="2.0"/>',
                SimJoint("shoulder_lift_joint", "0 1 0", (-_TWO_PI, _TWO_PI))),
        SimLink("forearm_link", f"{u['upper_arm']} {u['elbow_y']} 0",
                f'<geom type="sphere" size="0.055" rgba="{_DARK}" mass="0.4" {off}/>'
                f'<geom type="capsule" fromto="0 0 0 {u["forearm"]} 0 0" size="0.04" rgba="{_GREY}" mass="1.2"/>',
                SimJoint("elbow_joint", "0 1 0", (-_PI, _PI))),
        SimLink("wrist_1_link", f"{u['forearm']} 0 0",
                f'<geom type="capsule" fromto="0 0 0 0 {u["wrist_1_y"]} 0" size="0.038" rgba="{_DARK}" mass="0.5"/>',
                SimJoint("wrist_1_joint", "0 1 0", (-_TWO_PI, _TWO_PI))),
        SimLink("wrist_2_link", f"0 {u['wrist_1_y']} 0",
                f'<geom type="capsule" fromto="0 0 0 0 0 {u["wrist_2_z"]}" size="0.038" rgba="{_GREY}" mass="0.5"/>',
                SimJoint("wrist_2_joint", "0 0 1", (-_TWO_PI, _TWO_PI))),
        SimLink("wrist_3_link", f"0 0 {u['wrist_2_z']}",
                f'<geom type="cylinder" fromto="0 0 0 0 0.04 0" size="0.04" rgba="{_DARK}" mass="0.2"/>'
                f'<geom type="capsule" fromto="0 0.04 0 0 {u["flange_y"] - 0.01:.3f} 0" size="0.03" rgba="{_BLUE}" '
                'mass="0.3"/>',
                SimJoint("wrist_3_joint", "0 1 0", None)),  # continuous, as UR's tool flange can be
    )


SIM_UR6 = SimRobot(
    name="sim_ur6",
    links=_ur_links(),
    # Elbow up, tool pointing straight down, fingertip 28 cm above the table at x 0.4 m.
    home_rad=(-0.342, -1.722, 2.238, 1.056, -1.571, 0.0),
    tip_pos=f"0 {_UR['flange_y'] + 0.01:.3f} 0",
    tip_quat="0.7071068 -0.7071068 0 0",  # fingertip +z along the flange axis (wrist_3_link +y)
    cameras=(
        _FRONT,
        # On the flange, beside the tool, looking along it (down at home): the fingertip at the
        # image's lower edge and the table and target below it.
        SimCamera("wrist", "0 0.03 -0.07", "-1 0 0 0 0 -1", link="wrist_3_link", fovy_deg=70.0),
    ),
    contract="robots/sim_ur6.yaml",
    model_config="sim_ur6_model.yaml",
)

SIM_ROBOTS: dict[str, SimRobot] = {r.name: r for r in (SIM_ARM7, SIM_UR6)}
DEFAULT_ROBOT = SIM_ARM7.name


def sim_robot(name: str) -> SimRobot:
    try:
        return SIM_ROBOTS[name]
    except KeyError:
        raise KeyError(f"no sim robot {name!r} (known: {', '.join(SIM_ROBOTS)})") from None


def check_contract(robot: SimRobot, contract, audio_sample_rate_hz: int, taxels: int, where: str) -> None:
    """Raise ConfigError unless robot contract ``contract`` (core.robot.RobotContract) describes the
    sim robot: its joints in order, the joint_state command interface, cameras the robot has, and
    audio / tactile as the world synthesizes them (``where`` names the contract in the message)."""
    from ..core.validated import ConfigError

    if list(contract.joints) != robot.joint_names:
        raise ConfigError(f"{where}: joints {list(contract.joints)} are not sim robot {robot.name}'s "
                          f"{robot.joint_names}")
    if contract.command.interface != "joint_state":
        raise ConfigError(f"{where}: command.interface {contract.command.interface!r}: the sim bridge follows "
                          "sensor_msgs/JointState targets (joint_state), as Isaac Sim does")
    if contract.gripper is not None:
        raise ConfigError(f"{where}: gripper: sim robot {robot.name} has no gripper")
    for i, cam in enumerate(contract.cameras):
        try:
            robot.camera_for_contract(cam.name)
        except KeyError as exc:
            raise ConfigError(f"{where}: cameras[{i}]: {exc.args[0]}") from None
        if cam.compressed or cam.encoding != "rgb8":
            raise ConfigError(f"{where}: cameras[{i}] ({cam.name}): the sim bridge publishes raw rgb8 images "
                              "(compressed: false, encoding: rgb8)")
    if contract.audio is not None and contract.audio.sample_rate_hz != audio_sample_rate_hz:
        raise ConfigError(f"{where}: audio.sample_rate_hz {contract.audio.sample_rate_hz} differs from the sim's "
                          f"sim.audio_sample_rate_hz {audio_sample_rate_hz}")
    if contract.tactile is not None and contract.tactile.taxels != taxels:
        raise ConfigError(f"{where}: tactile.taxels {contract.tactile.taxels}: the sim fingertip has {taxels}")
