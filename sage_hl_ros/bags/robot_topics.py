"""A robot's topics as a bag holds them: its contract's streams, recorded in the root namespace.

The recorder (``sage-hl-bag record --model-dir``) subscribes to them and the dataset reads them
(``TopicsConfig.for_robot``), so a robot's topic names are written once, in its contract.
"""

from __future__ import annotations

from ..core.robot import RobotContract
from .topics import DEFAULT_TOPIC_TYPES, DIAGNOSTICS_TOPIC, EPISODE_TOPIC, TEACHER_TOPIC

__all__ = ["RUNTIME_TOPICS", "STREAM_TYPES", "absolute_topic", "camera_topic", "robot_streams", "robot_topic_types"]

#: Message type of each robot stream (a dataset role).
STREAM_TYPES = {
    "camera": "sensor_msgs/msg/Image",
    "camera_compressed": "sensor_msgs/msg/CompressedImage",
    "depth": "sensor_msgs/msg/Image",
    "audio": "std_msgs/msg/Float32MultiArray",
    "tactile": "std_msgs/msg/Float32MultiArray",
    "joint_states": "sensor_msgs/msg/JointState",
    "commands": "std_msgs/msg/Float64MultiArray",
    "joint_trajectory": "trajectory_msgs/msg/JointTrajectory",
    "joint_command": "sensor_msgs/msg/JointState",
    "gripper": "std_msgs/msg/Float64MultiArray",
}
#: Topics of the runtime itself, recorded for every robot (latent, teacher labels, e-stop, episodes).
RUNTIME_TOPICS = ("/sage/latent", TEACHER_TOPIC, "/teacher/joint_trajectory", "/e_stop", EPISODE_TOPIC,
                  DIAGNOSTICS_TOPIC)
_RUNTIME_TYPES = {**DEFAULT_TOPIC_TYPES, "/teacher/joint_trajectory": "trajectory_msgs/msg/JointTrajectory"}
_INTERFACE_STREAM = {"position_array": "commands", "joint_trajectory": "joint_trajectory",
                     "joint_state": "joint_command"}


def absolute_topic(topic: str) -> str:
    """The name a relative topic has in the root namespace ('' stays '')."""
    if not topic or topic.startswith("/"):
        return topic
    return "/" + topic.removeprefix("~/")


def camera_topic(cam) -> str:
    """A camera's recorded topic: its image topic, or ``<topic>/compressed`` where it is compressed."""
    return absolute_topic(cam.topic) + ("/compressed" if cam.compressed else "")


def robot_streams(robot: RobotContract) -> dict[str, str | list[str]]:
    """Dataset role -> recorded topic ('' where the robot has no such stream); ``cameras``: the
    further cameras' topics (``camera_topic``). All three command streams are named (data recorded
    under another interface stays readable)."""
    cam, controller = robot.camera, robot.command.controller
    return {
        "cameras": [camera_topic(c) for c in robot.cameras[1:]],
        "camera": absolute_topic(cam.topic) if cam else "",
        "camera_compressed": absolute_topic(cam.topic) + "/compressed" if cam else "",
        "depth": absolute_topic(cam.depth_topic) if cam else "",
        "audio": absolute_topic(robot.topic("audio")),
        "tactile": absolute_topic(robot.topic("tactile")),
        "joint_states": absolute_topic(robot.joint_states_topic),
        "commands": f"/{controller}/commands",
        "joint_trajectory": f"/{controller}/joint_trajectory",
        "joint_command": absolute_topic(robot.command.joint_command_topic),
        "gripper": absolute_topic(robot.gripper.topic) if robot.gripper else "",
    }


def robot_topic_types(robot: RobotContract) -> dict[str, str]:
    """Topic -> type to record for this robot: the sensors it has (raw camera, or compressed where
    the contract says so), its joint states, the command stream of its interface (and its gripper's),
    and the runtime's."""
    streams = robot_streams(robot)
    roles = [s for s in robot.sensors if s != "camera"] + ["joint_states", _INTERFACE_STREAM[robot.command.interface]]
    if robot.gripper is not None:
        roles.append("gripper")
    if robot.camera is not None:
        roles.insert(0, "camera_compressed" if robot.camera.compressed else "camera")
    out = {streams[r]: STREAM_TYPES[r] for r in roles}
    for cam in robot.cameras[1:]:
        out[camera_topic(cam)] = STREAM_TYPES["camera_compressed" if cam.compressed else "camera"]
    out.update({t: _RUNTIME_TYPES[t] for t in RUNTIME_TOPICS})
    return out
