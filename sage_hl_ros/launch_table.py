"""The package's node table: one source of truth for launch files, the pure-Python bring-up and tests.

Pure data (no rclpy, no launch): ``launch/*.launch.py`` build their ``Node`` actions from it, and
``sage_hl_ros.tools.bringup`` starts the same executables with the same parameter files. The guards
at the end refuse argument combinations that would make two nodes command one arm, for both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PACKAGE = "sage_hl_ros"


@dataclass(frozen=True)
class NodeSpec:
    name: str  # ROS node name (the key in parameter files)
    executable: str  # console script, i.e. `ros2 run sage_hl_ros <executable>`
    module: str  # python -m entry, used where the console script is not on PATH
    role: str


RUNTIME_NODES = (
    NodeSpec("sage_context", "sage_context_node", "sage_hl_ros.ros.context_node",
             "H side: sensors -> 4096-D context -> 256-D latent on /sage/latent"),
    NodeSpec("sage_control", "sage_control_node", "sage_hl_ros.ros.control_node",
             "L side: latent + joint states -> safety-filtered joint commands"),
)

# Stand-ins for a robot, used by the demo, benchmarks and tests (not by the robot launch files).
STAND_IN_NODES = (
    NodeSpec("synthetic_sensors", "sage_synthetic_sensors", "sage_hl_ros.ros.synthetic_sensors_node",
             "camera/depth/audio/tactile streams from the synthetic reaching task"),
    NodeSpec("loopback_robot", "sage_loopback_robot", "sage_hl_ros.ros.loopback_robot_node",
             "simulated position-controlled arm: commands in, /joint_states out"),
)

# The MuJoCo stand-in for Isaac Sim (launch/mujoco_sim.launch.py). Kept out of STAND_IN_NODES: the
# bridge publishes /joint_states itself, so it cannot run next to the loopback robot, and the demo
# and `sage_hl_bringup --stand-ins` start every STAND_IN_NODES entry.
SIM_NODES = (
    NodeSpec("sim_bridge", "sage_sim_bridge", "sage_hl_ros.ros.sim_bridge_node",
             "MuJoCo reaching world with Isaac Sim's bridge topics: /clock, /joint_states, /rgb, /depth, "
             "/camera_info in, /joint_command out; episodes, results and the privileged /sim/target"),
    NodeSpec("sim_expert", "sage_sim_expert", "sage_hl_ros.ros.sim_expert_node",
             "scripted reaching expert: teacher labels on /teacher/joint_command, optionally drives /joint_command"),
)

# Tools: the experience recorder and the bag replayer (not part of the robot launch files' defaults).
TOOL_NODES = (
    NodeSpec("sage_recorder", "sage_recorder", "sage_hl_ros.ros.recorder_node",
             "records the runtime topics (raw CDR) into a rosbag2 bag; episode services"),
    NodeSpec("sage_replay", "sage_replay", "sage_hl_ros.ros.replay_node",
             "replays a bag with its original timing and publishes /clock for use_sim_time nodes"),
)

ALL_NODES = RUNTIME_NODES + STAND_IN_NODES + SIM_NODES + TOOL_NODES


# --------------------------------------------------------------------------- deployment profiles
# ``profile:=<name>`` on sage_hl.launch.py: a parameter file under config/ layered after the base
# one (ROS applies parameter files in order: the profile's keys win) and environment variables for
# both runtime node processes (values naming a file are under config/). A small explicit table, so
# a typo is refused with the choices instead of silently launching the base configuration.


@dataclass(frozen=True)
class Profile:
    name: str
    params_file: str  # under config/
    env_config_files: tuple[tuple[str, str], ...]  # (variable, file under config/)
    doc: str


PROFILES = {p.name: p for p in (
    Profile("jetson_orin_nano", "jetson_orin_nano.yaml",
            (("FASTDDS_DEFAULT_PROFILES_FILE", "fastdds_large_data.xml"),),
            "Jetson Orin Nano: onnxruntime FP16 export on TensorRT -> CUDA -> CPU providers, engine cache "
            "under the export, 200 Hz control with SCHED_FIFO 10, large-data Fast DDS profile"),
)}


def profile(name: str) -> Profile | None:
    """The profile ``name`` (None for ""); LaunchArgumentError listing the profiles otherwise."""
    name = str(name).strip()
    if not name:
        return None
    if name not in PROFILES:
        raise LaunchArgumentError(f"launch argument profile:={name!r}: no such profile; choose one of "
                                  f"{', '.join(sorted(PROFILES))} (or '' for none)")
    return PROFILES[name]


# --------------------------------------------------------------------------- launch argument guards
# Shared by launch/*.launch.py (inside an OpaqueFunction, before any node exists) and sage_hl_bringup,
# so a contradictory combination is refused the same way by both.


class LaunchArgumentError(ValueError):
    """Launch arguments that are invalid or contradict each other (e.g. two nodes commanding one arm)."""


_TRUE, _FALSE = ("true", "1"), ("false", "0")  # what launch's IfCondition accepts


def launch_bool(name: str, value) -> bool:
    """A boolean launch argument, parsed as ``IfCondition`` does (true/false/1/0, any case)."""
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise LaunchArgumentError(f"launch argument {name}:={value!r} is not a boolean (true or false)")


def node_parameter(params_file, node: str, name: str, default):
    """``name`` of ``node`` in a ROS parameter file (``<node>: ros__parameters: ...``), else ``default``."""
    import yaml  # only when a guard needs a file, so importing the table stays free

    path = Path(params_file)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise LaunchArgumentError(f"{path}: cannot read parameter file ({exc})") from None
    section = data.get(node) if isinstance(data, dict) else None
    params = section.get("ros__parameters") if isinstance(section, dict) else None
    return params.get(name, default) if isinstance(params, dict) else default


def check_one_driver_per_topic(drivers: list[tuple[str, str]], hint: str) -> None:
    """Refuse two nodes publishing commands on one topic: the arm would follow whichever message
    came last, alternating between two controllers. ``drivers`` is [(node, command topic)]."""
    by_topic: dict[str, list[str]] = {}
    for node, topic in drivers:
        by_topic.setdefault(topic, []).append(node)
    clashes = [f"{' and '.join(nodes)} would both command {topic}"
               for topic, nodes in by_topic.items() if len(nodes) > 1]
    if clashes:
        raise LaunchArgumentError(f"{'; '.join(clashes)} (two drivers for one arm); {hint}")


def sim_command_drivers(*, sage: bool, expert_drives: bool, sim_params_file, sage_params_file) -> list[tuple[str, str]]:
    """Who commands what in the MuJoCo stand-in: the SAGE control node (joint_state interface, as
    ``isaac_sim.launch.py`` sets it) and, with drive on, the expert; topics from their parameter files."""
    drivers = []
    if sage:
        drivers.append(("sage_control", str(node_parameter(sage_params_file, "sage_control", "joint_command_topic",
                                                           "/joint_command"))))
    if expert_drives:
        drivers.append(("sim_expert", str(node_parameter(sim_params_file, "sim_expert", "joint_command_topic",
                                                         "/joint_command"))))
    return drivers
