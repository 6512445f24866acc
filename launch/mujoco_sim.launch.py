"""SAGE H<->L against the MuJoCo stand-in for Isaac Sim: the sim bridge, the scripted expert, and the
runtime nodes exactly as launch/isaac_sim.launch.py starts them (included, not copied).

    ros2 launch sage_hl_ros mujoco_sim.launch.py model_dir:=/path/to/checkpoint
    ros2 launch sage_hl_ros mujoco_sim.launch.py sage:=false drive:=true noise_rad:=0.05   # expert demos

The bridge publishes Isaac's topics (/clock, /joint_states, /rgb, /depth, /camera_info) plus
/tactile/array and /audio/frames, and follows /joint_command. The expert always publishes teacher
labels on /teacher/joint_command; with drive:=true it also commands the arm, so then run it with
sage:=false: `drive:=true sage:=true` (two nodes commanding one arm) is refused before any node
starts, naming both nodes and the topic.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, OpaqueFunction
from launch.conditions import IfCondition
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from sage_hl_ros.launch_table import (
    PACKAGE,
    SIM_NODES,
    check_one_driver_per_topic,
    launch_bool,
    sim_command_drivers,
)

ARGUMENTS = {
    "sim_params_file": (PathJoinSubstitution([FindPackageShare(PACKAGE), "config", "mujoco_sim.yaml"]),
                        "ROS parameter file of sim_bridge and sim_expert"),
    "sim_config_file": (PathJoinSubstitution([FindPackageShare(PACKAGE), "config", "sim.yaml"]),
                        "world and expert config (sim: and expert: sections)"),
    "model_dir": ("", "checkpoint directory for the SAGE nodes"),
    "sage": ("true", "start the SAGE runtime nodes (isaac_sim.launch.py); false for expert-only runs"),
    "drive": ("false", "the expert commands the arm (true) or only publishes teacher labels (false)"),
    "noise_rad": ("0.0", "exploration noise on the expert's executed command [rad]"),
    "real_time_factor": ("1.0", "sim speed: 1 real time, 0 as fast as possible"),
    "episodes": ("0", "episodes per batch, 0 = forever"),
    "autostart": ("true", "start episodes at once; false: paused until /sim_bridge/start"),
}

# Per-node launch-argument overrides, layered over sim_params_file.
OVERRIDES = {
    "sim_bridge": {
        "sim_config_file": LaunchConfiguration("sim_config_file"),
        "real_time_factor": ParameterValue(LaunchConfiguration("real_time_factor"), value_type=float),
        "episodes": ParameterValue(LaunchConfiguration("episodes"), value_type=int),
        "autostart": ParameterValue(LaunchConfiguration("autostart"), value_type=bool),
    },
    "sim_expert": {
        "sim_config_file": LaunchConfiguration("sim_config_file"),
        "drive": ParameterValue(LaunchConfiguration("drive"), value_type=bool),
        "noise_rad": ParameterValue(LaunchConfiguration("noise_rad"), value_type=float),
        "use_sim_time": True,
    },
}


# The SAGE nodes' parameter file: isaac_sim.launch.py's default (it is included without params_file).
SAGE_PARAMS = PathJoinSubstitution([FindPackageShare(PACKAGE), "config", "isaac_sim.yaml"])


def checked_nodes(context):
    """The nodes, once the arguments are consistent; raising here stops the launch before any starts."""
    cfg = context.launch_configurations
    drivers = sim_command_drivers(sage=launch_bool("sage", cfg["sage"]),
                                  expert_drives=launch_bool("drive", cfg["drive"]),
                                  sim_params_file=cfg["sim_params_file"],
                                  sage_params_file=SAGE_PARAMS.perform(context))
    check_one_driver_per_topic(drivers, "for expert-driven runs use sage:=false drive:=true; with the SAGE nodes "
                                        "keep drive:=false (the expert then only labels)")
    sim = [Node(package=PACKAGE, executable=spec.executable, name=spec.name, output="screen",
                parameters=[LaunchConfiguration("sim_params_file"), OVERRIDES[spec.name]])
           for spec in SIM_NODES]
    sage = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution([FindPackageShare(PACKAGE), "launch",
                                                            "isaac_sim.launch.py"])),
        launch_arguments={"model_dir": LaunchConfiguration("model_dir")}.items(),
        condition=IfCondition(LaunchConfiguration("sage")))
    return sim + [sage]


def generate_launch_description():
    declared = [DeclareLaunchArgument(name, default_value=default, description=doc)
                for name, (default, doc) in ARGUMENTS.items()]
    return LaunchDescription(declared + [OpaqueFunction(function=checked_nodes)])
