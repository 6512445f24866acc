"""SAGE H<->L against Isaac Sim's ROS 2 bridge: sim time, Isaac topic names, JointState commands.

    ros2 launch sage_hl_ros isaac_sim.launch.py model_dir:=/path/to/checkpoint

Isaac publishes /joint_states, /rgb, /depth and /clock and subscribes /joint_command
(sensor_msgs/JointState position targets); config/isaac_sim.yaml holds those names.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from sage_hl_ros.launch_table import PACKAGE, RUNTIME_NODES

ARGUMENTS = {
    "params_file": (PathJoinSubstitution([FindPackageShare(PACKAGE), "config", "isaac_sim.yaml"]),
                    "ROS parameter file with Isaac Sim bridge topic names"),
    "model_dir": ("", "checkpoint directory"),
    "joint_limits_file": (PathJoinSubstitution([FindPackageShare(PACKAGE), "config", "joint_limits.yaml"]),
                          "joint limits YAML enforced by the safety filter"),
}


def generate_launch_description():
    declared = [DeclareLaunchArgument(name, default_value=default, description=doc)
                for name, (default, doc) in ARGUMENTS.items()]
    common = {"model_dir": LaunchConfiguration("model_dir"), "use_sim_time": True, "autostart": True}
    per_node = {"sage_control": {"joint_limits_file": LaunchConfiguration("joint_limits_file"),
                                 "command_interface": "joint_state"}}
    nodes = [Node(package=PACKAGE, executable=spec.executable, name=spec.name, output="screen",
                  parameters=[LaunchConfiguration("params_file"), dict(common, **per_node.get(spec.name, {}))])
             for spec in RUNTIME_NODES]
    return LaunchDescription(declared + nodes)
