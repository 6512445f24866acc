"""The package's node table: one source of truth for launch files, the pure-Python bring-up and tests.

Pure data (no rclpy, no launch): ``launch/*.launch.py`` build their ``Node`` actions from it, and
``sage_hl_ros.tools.bringup`` starts the same executables with the same parameter files.
"""

from __future__ import annotations

from dataclasses import dataclass

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
