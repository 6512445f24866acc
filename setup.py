"""ament_python package for sage_hl_ros (also pip-installable for machines without colcon)."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "sage_hl_ros"

# Every entry point here exists in the package; `ros2 run sage_hl_ros <name>` uses the same table.
CONSOLE_SCRIPTS = [
    "sage-hl = sage_hl_ros.cli:main",
    "sage_context_node = sage_hl_ros.ros.context_node:main",
    "sage_control_node = sage_hl_ros.ros.control_node:main",
    "sage_synthetic_sensors = sage_hl_ros.ros.synthetic_sensors_node:main",
    "sage_loopback_robot = sage_hl_ros.ros.loopback_robot_node:main",
    "sage_sim_bridge = sage_hl_ros.ros.sim_bridge_node:main",
    "sage_sim_expert = sage_hl_ros.ros.sim_expert_node:main",
    "sage_hl_bringup = sage_hl_ros.tools.bringup:main",
    "sage_recorder = sage_hl_ros.ros.recorder_node:main",
    "sage_replay = sage_hl_ros.ros.replay_node:main",
    "sage_groot_teacher = sage_hl_ros.ros.groot_teacher_node:main",
    "sage_sleeper = sage_hl_ros.ros.sleeper_node:main",
    "sage-hl-bag = sage_hl_ros.tools.bag_cli:entry_point",
    "sage-hl-sleep = sage_hl_ros.tools.sleep_cli:entry_point",
    "sleep_train = sage_hl_ros.tools.sleep_cli:entry_point",
]

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*", "bench"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.urdf") + glob("config/*.xml")),
        (f"share/{PACKAGE}/config/groot", glob("config/groot/*.yaml")),
        (f"share/{PACKAGE}/config/robots", glob("config/robots/*.yaml")),
        (f"share/{PACKAGE}/models", glob("models/*.md")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="sage_hl_ros maintainers",
    maintainer_email="maintainers@sage-hl-ros.dev",
    description="SAGE V2 H-L controller for ROS 2: 4096-D context, 16x compression, learned joint control.",
    license="Apache-2.0",
    tests_require=["pytest"],
    python_requires=">=3.10",
    entry_points={"console_scripts": CONSOLE_SCRIPTS},
)
