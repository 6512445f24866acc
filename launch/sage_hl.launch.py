"""Bring up the SAGE H<->L runtime: the context (H) node and the control (L) node.

    ros2 launch sage_hl_ros sage_hl.launch.py model_dir:=/path/to/checkpoint
    ros2 launch sage_hl_ros sage_hl.launch.py model_dir:=... command_interface:=joint_trajectory enable_control:=true
    ros2 launch sage_hl_ros sage_hl.launch.py model_dir:=... namespace:=arm_left     # one of several robots
    ros2 launch sage_hl_ros sage_hl.launch.py model_dir:=... profile:=jetson_orin_nano  # deployment profile

Nodes and executables come from sage_hl_ros.launch_table (the same table the pure-Python
bring-up `sage_hl_bringup` uses). Both nodes configure and activate themselves (autostart).
A non-boolean enable_control / use_sim_time, an unknown command_interface or an unknown profile
stops the launch with one clear message before any node starts.

``profile:=<name>`` (sage_hl_ros.launch_table.PROFILES) adds ``config/<name>.yaml`` after
``params_file`` (later parameter files override earlier ones) and sets the profile's environment
(e.g. the large-data Fast DDS profile) for both node processes.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from sage_hl_ros.launch_table import PACKAGE, PROFILES, RUNTIME_NODES, LaunchArgumentError, launch_bool, profile

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
    "profile": ("", f"deployment profile: {' | '.join(sorted(PROFILES))}; adds config/<profile>.yaml after "
                    "params_file (its keys win) and the profile's environment; '' = none"),
}


def _share_config(name):
    return PathJoinSubstitution([FindPackageShare(PACKAGE), "config", name])


def runtime_nodes(params_files, use_sim_time, overrides, env=None):
    """One Node action per runtime node, parameters layered: the files in order, then launch arguments."""
    common = {"model_dir": LaunchConfiguration("model_dir"),
              "use_sim_time": ParameterValue(use_sim_time, value_type=bool),
              "autostart": True}
    nodes = []
    for spec in RUNTIME_NODES:
        params = [*params_files, dict(common, **overrides.get(spec.name, {}))]
        extra = {"additional_env": dict(env)} if env else {}
        nodes.append(Node(package=PACKAGE, executable=spec.executable, name=spec.name,
                          namespace=LaunchConfiguration("namespace"), parameters=params, output="screen",
                          emulate_tty=True, **extra))
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
    files, env = [LaunchConfiguration("params_file")], {}
    chosen = profile(cfg.get("profile", ""))
    if chosen is not None:
        files.append(_share_config(chosen.params_file))
        env = {var: _share_config(name) for var, name in chosen.env_config_files}
    nodes = runtime_nodes(files, LaunchConfiguration("use_sim_time"), {"sage_control": control}, env)
    return nodes


def generate_launch_description():
    declared = [DeclareLaunchArgument(name, default_value=default, description=doc)
                for name, (default, doc) in ARGUMENTS.items()]
    return LaunchDescription(declared + [OpaqueFunction(function=checked_nodes)])
