"""Bring up the SAGE H<->L runtime: the context (H) node and the control (L) node.

    ros2 launch sage_hl_ros sage_hl.launch.py model_dir:=/path/to/checkpoint
    ros2 launch sage_hl_ros sage_hl.launch.py model_dir:=... command_interface:=joint_trajectory enable_control:=true
    ros2 launch sage_hl_ros sage_hl.launch.py model_dir:=... namespace:=arm_left     # one of several robots

Nodes and executables come from sage_hl_ros.launch_table (the same table the pure-Python
bring-up `sage_hl_bringup` uses). Both nodes configure and activate themselves (autostart).
A non-boolean enable_control / use_sim_time or an unknown command_interface stops the launch with
one clear message before any node starts.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from sage_hl_ros.launch_table import PACKAGE, RUNTIME_NODES, LaunchArgumentError, launch_bool

ARGUMENTS = {
    "params_file": (PathJoinSubstitution([FindPackageShare(PACKAGE), "config", "sage_hl.yaml"]),
                    "ROS parameter file for sage_context and sage_control"),
    "model_dir": ("", "checkpoint directory (config.json + model.safetensors + normalizer.json)"),
    "namespace": ("", "ROS namespace of both nodes: their relative topics (the robot contract's, sage/latent, "
                      "the controller's) resolve in it, so robots side by side do not cross-talk"),
    "use_sim_time": ("false", "follow /clock (simulators, bag replay)"),
    "command_interface": ("", "position_array | joint_trajectory | joint_state; '' = the checkpoint's robot contract"),
    "enable_control": ("false", "publish commands (false: run everything but publish nothing)"),
    "joint_limits_file": ("", "joint limits YAML enforced by the safety filter; '' = the checkpoint's robot "
                              "contract's (joint_limits / urdf)"),
}


def runtime_nodes(params_file, use_sim_time, overrides):
    """One Node action per runtime node, parameters layered: file, then launch arguments."""
    common = {"model_dir": LaunchConfiguration("model_dir"),
              "use_sim_time": ParameterValue(use_sim_time, value_type=bool),
              "autostart": True}
    nodes = []
    for spec in RUNTIME_NODES:
        params = [params_file, dict(common, **overrides.get(spec.name, {}))]
        nodes.append(Node(package=PACKAGE, executable=spec.executable, name=spec.name,
                          namespace=LaunchConfiguration("namespace"), parameters=params, output="screen",
                          emulate_tty=True))
    return nodes


def checked_nodes(context):
    """The nodes, once the arguments are valid; raising here stops the launch before any starts."""
    from sage_hl_ros.ros.commands import COMMAND_INTERFACES

    cfg = context.launch_configurations
    for name in ("enable_control", "use_sim_time"):
        launch_bool(name, cfg[name])
    if cfg["command_interface"] and cfg["command_interface"] not in COMMAND_INTERFACES:
        raise LaunchArgumentError(f"launch argument command_interface:={cfg['command_interface']!r}: "
                                  f"choose one of {', '.join(COMMAND_INTERFACES)}")
    control = {
        "command_interface": LaunchConfiguration("command_interface"),
        "enable_control": ParameterValue(LaunchConfiguration("enable_control"), value_type=bool),
        "joint_limits_file": LaunchConfiguration("joint_limits_file"),
    }
    nodes = runtime_nodes(LaunchConfiguration("params_file"), LaunchConfiguration("use_sim_time"),
                          {"sage_control": control})
    return nodes


def generate_launch_description():
    declared = [DeclareLaunchArgument(name, default_value=default, description=doc)
                for name, (default, doc) in ARGUMENTS.items()]
    return LaunchDescription(declared + [OpaqueFunction(function=checked_nodes)])
