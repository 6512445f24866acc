"""The robot contract: the one place a robot's joints, URDF, command interface and sensors are named.

Why one place: joint names written in six config files, and topics in four, meant that a user with
another arm edited copies of the package's files until something stopped complaining. A contract is
a file of its own (``config/robots/<name>.yaml``, or anywhere), the model config points at it
(``robot: robots/sim_arm7.yaml`` in model.yaml), and from then on:

- the model's observation schema comes from it: joint names, which sensors exist, tactile taxels,
  audio sample rate (a model config that also states one of them must agree, or it is an error
  naming both values);
- the checkpoint stores it (config.json, inline), so a checkpoint says which robot it drives;
- the nodes take their topics and joints from the checkpoint's contract where a parameter is left
  empty, so nothing is repeated in the launch parameter files.

Topic names are used as written: a relative one (``camera/image_raw``) resolves in the node's
namespace, an absolute one (``/camera/image_raw``) does not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .validated import ConfigError, SelfValidating, from_dict, read_yaml, require_positive

__all__ = ["COMMAND_INTERFACES", "GRIPPER_MODES", "ROBOT_DESCRIPTION", "ROBOT_OBSERVATION_KEYS", "AudioSpec",
           "CameraSpec", "CommandSpec", "GripperSpec", "RobotContract", "TactileSpec", "camera_input",
           "check_observation", "implied_robot", "load_robot", "observation_from_robot", "observation_values",
           "robot_from_mapping"]

#: Command interfaces the control node speaks (ros/commands.py builds their messages).
COMMAND_INTERFACES = ("position_array", "joint_trajectory", "joint_state")
#: ``urdf`` value meaning "the URDF robot_state_publisher publishes" (parameter / topic), known only
#: on the running robot.
ROBOT_DESCRIPTION = "robot_description"
# ROS 2 topic names: tokens of letters, digits and underscores, not starting with a digit, separated
# by '/'; a leading '/' makes the name absolute.
_TOPIC = re.compile(r"^/?[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*$")  # no '~/': a robot's, not a node's
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")


def _check_topic(where: str, key: str, topic: str) -> None:
    if not _TOPIC.match(topic):
        raise ConfigError(f"{where}.{key}: {topic!r} is not a ROS topic name (letters, digits, '_' in "
                          "'/'-separated tokens; a leading '/' makes it absolute)")


@dataclass
class CameraSpec(SelfValidating):
    """One RGB camera (sensor_msgs/Image) and, optionally, its aligned depth image."""

    name: str = "camera"
    topic: str = "camera/image_raw"
    encoding: str = "rgb8"  # what the camera publishes; decoded to RGB either way
    compressed: bool = False  # subscribe <topic>/compressed (sensor_msgs/CompressedImage) instead
    depth_topic: str = ""  # this camera's depth image (32FC1 m or 16UC1 mm); '' = no depth

    def validate(self, where: str) -> None:
        if not _NAME.match(self.name):
            raise ConfigError(f"{where}.name: letters, digits and '_', got {self.name!r}")
        _check_topic(where, "topic", self.topic)
        if self.depth_topic:
            _check_topic(where, "depth_topic", self.depth_topic)
        if self.encoding not in _ENCODINGS:
            raise ConfigError(f"{where}.encoding: one of {list(_ENCODINGS)}, got {self.encoding!r}")


@dataclass
class AudioSpec(SelfValidating):
    """A microphone: PCM frames in [-1, 1] as std_msgs/Float32MultiArray."""

    topic: str = "audio/frames"
    sample_rate_hz: int = 16000  # the model's audio_sample_rate_hz is this (its mel filters assume it)

    def validate(self, where: str) -> None:
        _check_topic(where, "topic", self.topic)
        require_positive(self, where, "sample_rate_hz")


@dataclass
class TactileSpec(SelfValidating):
    """A tactile array: one float per taxel as std_msgs/Float32MultiArray."""

    topic: str = "tactile/array"
    taxels: int = 16

    def validate(self, where: str) -> None:
        _check_topic(where, "topic", self.topic)
        require_positive(self, where, "taxels")


@dataclass
class CommandSpec(SelfValidating):
    """How commands reach the robot: ros2_control's controllers, or a JointState topic (Isaac Sim)."""

    interface: str = "position_array"  # position_array | joint_trajectory | joint_state
    controller: str = "forward_position_controller"  # topic /<controller>/commands or /joint_trajectory
    joint_command_topic: str = "joint_command"  # the joint_state interface's topic

    def validate(self, where: str) -> None:
        if self.interface not in COMMAND_INTERFACES:
            raise ConfigError(f"{where}.interface: one of {list(COMMAND_INTERFACES)}, got {self.interface!r}")
        if self.interface != "joint_state" and not _NAME.match(self.controller):
            raise ConfigError(f"{where}.controller: the ros2_control controller's name, got {self.controller!r}")
        _check_topic(where, "joint_command_topic", self.joint_command_topic)


#: How a gripper is commanded: a position in its joint's range, or open / closed only.
GRIPPER_MODES = ("position", "open_close")


@dataclass
class GripperSpec(SelfValidating):
    """A gripper whose joint the model observes and predicts like any other, but whose command goes
    to its own controller (std_msgs/Float64MultiArray, one value, as ros2_control's forward command
    controllers take it) instead of the arm's command. Its joint is one of ``joints`` (so its limits
    are in the limits file like the others), and the arm's command leaves it out."""

    joint: str = ""
    topic: str = "gripper_controller/commands"
    mode: str = "position"  # position | open_close
    # open_close: the command is open_position or closed_position, whichever the model's position is
    # nearer; position ignores both.
    open_position: float = 0.04
    closed_position: float = 0.0

    def validate(self, where: str) -> None:
        if not self.joint.strip():
            raise ConfigError(f"{where}.joint: the gripper's joint (one of the robot's joints)")
        _check_topic(where, "topic", self.topic)
        if self.mode not in GRIPPER_MODES:
            raise ConfigError(f"{where}.mode: one of {list(GRIPPER_MODES)}, got {self.mode!r}")
        if self.mode == "open_close" and self.open_position == self.closed_position:
            raise ConfigError(f"{where}: open_position and closed_position are both {self.open_position}: "
                              "an open/close gripper needs two positions")


@dataclass
class RobotContract(SelfValidating):
    """A robot as the package sees it. ``sensors`` (derived) is the model's ``observation.sensors``."""

    name: str = "robot"
    # Commanded joints in the order the model sees them. [] = the URDF file's movable joints
    # (revolute, prismatic, continuous) in file order, resolved when the contract is loaded.
    joints: list[str] = field(default_factory=list)
    # URDF for joints and limits: a file (relative to the contract file), "robot_description" (what
    # robot_state_publisher publishes: pass that XML as sage_control's urdf_file), or "" (limits
    # then come from the joint_limits YAML).
    urdf: str = ""
    # Joint limits YAML (ros2_control / MoveIt joint_limits.yaml, or the package's format), relative
    # to the contract file; "" = the URDF's limits only. The control node enforces the tighter of both.
    joint_limits: str = ""
    joint_states_topic: str = "joint_states"
    command: CommandSpec = field(default_factory=CommandSpec)
    cameras: list[CameraSpec] = field(default_factory=list)
    audio: AudioSpec | None = None
    tactile: TactileSpec | None = None
    gripper: GripperSpec | None = None  # a gripper joint commanded on its own topic

    def validate(self, where: str) -> None:
        if not _NAME.match(self.name):
            raise ConfigError(f"{where}.name: letters, digits and '_', got {self.name!r}")
        if not self.joints:
            raise ConfigError(f"{where}.joints: list the commanded joints, or leave it empty with urdf a URDF "
                              "file to take them from it")
        bad = [j for j in self.joints if not isinstance(j, str) or not j.strip()]
        if bad or len(set(self.joints)) != len(self.joints):
            raise ConfigError(f"{where}.joints: distinct non-empty names, got {self.joints}")
        _check_topic(where, "joint_states_topic", self.joint_states_topic)
        self.command.validate(f"{where}.command")
        names = [c.name for c in self.cameras]
        if len(set(names)) != len(names):
            raise ConfigError(f"{where}.cameras: camera names must differ, got {names}")
        for i, cam in enumerate(self.cameras):
            cam.validate(f"{where}.cameras[{i}]")
        from .config import MAX_CAMERAS  # config imports this module

        if len(self.cameras) > MAX_CAMERAS:
            raise ConfigError(f"{where}.cameras: at most {MAX_CAMERAS} cameras, got {len(self.cameras)}")
        for i, cam in enumerate(self.cameras[1:], start=1):
            if cam.depth_topic:  # one depth slice in the context: the first camera's
                raise ConfigError(f"{where}.cameras[{i}].depth_topic: depth is read from the first camera only "
                                  f"({self.cameras[0].name!r}); put the depth camera first or leave this empty")
        for key in ("audio", "tactile", "gripper"):
            spec = getattr(self, key)
            if spec is not None:
                spec.validate(f"{where}.{key}")
        if self.gripper is not None:
            if self.gripper.joint not in self.joints:
                raise ConfigError(f"{where}.gripper.joint: {self.gripper.joint!r} is not one of joints {self.joints}")
            if len(self.joints) < 2:
                raise ConfigError(f"{where}.gripper: the gripper is the only joint: leave gripper out and command "
                                  "it as the arm")
            topics = {self.gripper.topic, self.command.joint_command_topic}
            if len(topics) < 2:
                raise ConfigError(f"{where}.gripper.topic: {self.gripper.topic!r} is also the arm's command topic")

    @property
    def sensors(self) -> list[str]:
        """``observation.sensors`` of a model for this robot (SENSORS order)."""
        out = []
        if self.cameras:
            out.append("camera")
            if self.cameras[0].depth_topic:
                out.append("depth")
        if self.audio is not None:
            out.append("audio")
        if self.tactile is not None:
            out.append("tactile")
        return out

    @property
    def arm_joints(self) -> list[str]:
        """The joints of the arm's command: ``joints`` without the gripper's."""
        return [j for j in self.joints if self.gripper is None or j != self.gripper.joint]

    @property
    def camera(self) -> CameraSpec | None:
        return self.cameras[0] if self.cameras else None

    def topic(self, stream: str) -> str:
        """Topic of ``camera``, ``camera_<k>`` (the k-th further camera), ``depth``, ``audio``,
        ``tactile`` or ``joint_states``; '' = none."""
        cam = self.camera
        topics = {"camera": cam.topic if cam else "", "depth": cam.depth_topic if cam else "",
                  **{camera_input(k): c.topic for k, c in enumerate(self.cameras) if k},
                  "audio": self.audio.topic if self.audio else "",
                  "tactile": self.tactile.topic if self.tactile else "",
                  "joint_states": self.joint_states_topic}
        if stream not in topics:
            raise KeyError(f"no stream {stream!r} in a robot contract (known: {sorted(topics)})")
        return topics[stream]


def camera_input(k: int) -> str:
    """The input name of view ``k`` (0-based, contract order): ``camera``, then ``camera_1``, ..."""
    return "camera" if k == 0 else f"camera_{k}"


def implied_robot(observation: Any, name: str = "robot") -> RobotContract:
    """The contract of a model config that names none: its joints and sensors on the default topics
    (a second camera and on: ``camera_<k>/image_raw``)."""
    sensors = set(observation.sensors)
    cameras = [CameraSpec(depth_topic="camera/depth/image_raw" if "depth" in sensors else "")] \
        if "camera" in sensors else []
    if cameras:
        cameras += [CameraSpec(name=f"camera_{k}", topic=f"camera_{k}/image_raw")
                    for k in range(1, observation.num_cameras)]
    return RobotContract(
        name=name, joints=list(observation.joint_names), cameras=cameras,
        audio=AudioSpec(sample_rate_hz=observation.audio_sample_rate_hz) if "audio" in sensors else None,
        tactile=TactileSpec(taxels=observation.tactile_taxels) if "tactile" in sensors else None)


#: Observation keys the contract owns: a model config naming a robot takes them from it.
ROBOT_OBSERVATION_KEYS = ("joint_names", "sensors", "num_cameras", "tactile_taxels", "audio_sample_rate_hz")


def observation_values(robot: RobotContract) -> dict[str, Any]:
    values: dict[str, Any] = {"joint_names": list(robot.joints), "sensors": robot.sensors,
                              "num_cameras": max(1, len(robot.cameras))}
    if robot.tactile is not None:
        values["tactile_taxels"] = robot.tactile.taxels
    if robot.audio is not None:
        values["audio_sample_rate_hz"] = robot.audio.sample_rate_hz
    return values


def observation_from_robot(observation: dict[str, Any], robot: RobotContract, source: str) -> dict[str, Any]:
    """The observation section with the contract's keys filled in; one it also states must agree."""
    out = dict(observation)
    for key, value in observation_values(robot).items():
        if key in out and _differs(key, out[key], value):
            raise ConfigError(f"{source}: observation.{key} {out[key]!r} differs from robot '{robot.name}' "
                              f"({value!r}); the robot contract states it: drop the key or fix the contract")
        out[key] = value
    return out


def check_observation(observation: Any, robot: RobotContract, where: str) -> None:
    """Raise unless an ObservationConfig matches the contract (direct construction, replace)."""
    for key, value in observation_values(robot).items():
        if _differs(key, getattr(observation, key), value):
            raise ConfigError(f"{where}.observation.{key}: {getattr(observation, key)!r} differs from robot "
                              f"'{robot.name}' ({value!r})")


def _differs(key: str, a: Any, b: Any) -> bool:
    if key == "sensors":
        return sorted(a) != sorted(b)
    return a != b


def load_robot(path: str | Path) -> RobotContract:
    """Read a robot contract file (top-level ``robot:`` section); joints [] are read from its URDF file."""
    path = Path(path)
    data = read_yaml(path, "robot contract")
    if not isinstance(data, dict) or not isinstance(data.get("robot"), dict):
        raise ConfigError(f"{path}: a robot contract has a top-level 'robot:' mapping")
    return robot_from_mapping(data["robot"], path)


def robot_from_mapping(mapping: dict, path: str | Path) -> RobotContract:
    """A contract from its ``robot:`` mapping, read from ``path`` (a contract file, or a model YAML
    that writes it inline): files relative to that file, joints [] from the URDF file."""
    path = Path(path)
    body = dict(mapping)
    for key in ("urdf", "joint_limits"):  # files are relative to the contract
        value = body.get(key, "")
        if isinstance(value, str) and value and value != ROBOT_DESCRIPTION and not Path(value).is_absolute():
            body[key] = str((path.parent / value).resolve())
    if not body.get("joints"):
        body["joints"] = _joints_from_urdf(path, body.get("urdf", ""))
    return from_dict(RobotContract, body, str(path))


def _joints_from_urdf(path: Path, urdf: Any) -> list[str]:
    if not urdf:
        raise ConfigError(f"{path}: joints: list the commanded joints (or give urdf: a URDF file to take them from)")
    if not isinstance(urdf, str) or urdf == ROBOT_DESCRIPTION:
        raise ConfigError(f"{path}: joints: empty takes the joints from the URDF, which needs urdf to be a URDF "
                          f"file (got {urdf!r}; robot_description is only known on the running robot): "
                          "list the joints or give the file")
    from ..safety.limits import LimitsError, urdf_joint_names  # safety imports core: keep core importable alone

    try:
        return urdf_joint_names(urdf)
    except LimitsError as exc:
        raise ConfigError(f"{path}: urdf: {exc}") from None
