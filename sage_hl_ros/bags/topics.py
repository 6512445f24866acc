"""The runtime's topics and their types (DESIGN §4), and which of them replay must not republish.

The recorder subscribes to :data:`DEFAULT_TOPIC_TYPES` before anything is advertised, the dataset
and ``info`` find episodes on :data:`EPISODE_TOPIC` and teacher labels on :data:`TEACHER_TOPIC`,
and replay asks :func:`replay_hazard`. Pure Python: no rclpy.
"""

from __future__ import annotations

__all__ = [
    "COMMAND_TOPICS",
    "DEFAULT_TOPIC_TYPES",
    "DIAGNOSTICS_TOPIC",
    "EPISODE_TOPIC",
    "E_STOP_TOPICS",
    "SENSOR_TOPICS",
    "SENSOR_TYPES",
    "TEACHER_TOPIC",
    "is_sensor_stream",
    "replay_hazard",
]

EPISODE_TOPIC = "/sage/episode"
TEACHER_TOPIC = "/teacher/joint_command"
TEACHER_NAMESPACE = "/teacher/"

# Topics whose messages move or stop the robot, or speak for its health: republishing them from a
# bag would drive the robot past the live safety filter (a recorded command reaches the controller
# as if sage_control had sent it), latch or release the e-stop, or fake the diagnostics operators
# and monitors rely on. Replay skips them unless asked (``replay_hazard``).
COMMAND_TOPICS = ("/forward_position_controller/commands", "/forward_position_controller/joint_trajectory",
                  "/joint_command")
E_STOP_TOPICS = ("/e_stop", "/e_stop/reset")
DIAGNOSTICS_TOPIC = "/diagnostics"
COMMAND_TYPES = ("trajectory_msgs/msg/JointTrajectory",)

# Sensor streams: published best-effort (DESIGN §4), so the recorder subscribes to them best-effort
# from the start (that matches reliable publishers too), not reliable-until-discovered, which a
# best-effort camera refuses as "incompatible QoS" until the next discovery tick.
SENSOR_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage", "sensor_msgs/msg/PointCloud2",
                "sensor_msgs/msg/LaserScan", "sensor_msgs/msg/CameraInfo")
SENSOR_TOPICS = ("/camera/image_raw", "/camera/image_raw/compressed", "/camera/depth/image_raw", "/audio/frames",
                 "/tactile/array")

# The runtime's topics (DESIGN §4) and their types, so the recorder can subscribe before anything
# is advertised (no discovery delay, first messages kept).
DEFAULT_TOPIC_TYPES: dict[str, str] = {
    "/camera/image_raw": "sensor_msgs/msg/Image",
    "/camera/depth/image_raw": "sensor_msgs/msg/Image",
    "/audio/frames": "std_msgs/msg/Float32MultiArray",
    "/tactile/array": "std_msgs/msg/Float32MultiArray",
    "/joint_states": "sensor_msgs/msg/JointState",
    "/sage/latent": "sensor_msgs/msg/Image",
    "/forward_position_controller/commands": "std_msgs/msg/Float64MultiArray",
    "/forward_position_controller/joint_trajectory": "trajectory_msgs/msg/JointTrajectory",
    "/joint_command": "sensor_msgs/msg/JointState",
    TEACHER_TOPIC: "sensor_msgs/msg/JointState",
    "/e_stop": "std_msgs/msg/Bool",
    EPISODE_TOPIC: "std_msgs/msg/String",
    DIAGNOSTICS_TOPIC: "diagnostic_msgs/msg/DiagnosticArray",
}


def replay_hazard(topic: str, msgtype: str = "") -> str:
    """Why republishing ``topic`` could act on a live robot ("" if it cannot): command outputs
    (the runtime's three, any ``/<controller>/commands`` or ``/<controller>/joint_trajectory``,
    any JointTrajectory), the e-stop topics and /diagnostics. Teacher labels (``/teacher/...``,
    e.g. ``/teacher/joint_trajectory``) are training data no controller listens to: not a hazard."""
    if topic.startswith(TEACHER_NAMESPACE) and topic not in COMMAND_TOPICS:
        return ""
    if topic in COMMAND_TOPICS or msgtype in COMMAND_TYPES or topic.endswith(("/commands", "/joint_trajectory")):
        return "robot command"
    if topic in E_STOP_TOPICS or topic.endswith(("/e_stop", "/e_stop/reset")):
        return "e-stop"
    if topic == DIAGNOSTICS_TOPIC:
        return "diagnostics"
    return ""


def is_sensor_stream(topic: str, msgtype: str) -> bool:
    return msgtype in SENSOR_TYPES or topic in SENSOR_TOPICS
