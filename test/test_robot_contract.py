"""The robot contract (core/robot.py): one file names a robot; the model, checkpoint and nodes follow it."""

from __future__ import annotations

import dataclasses
import json

import pytest

from sage_hl_ros.core.config import ConfigError, SageConfig
from sage_hl_ros.core.robot import CameraSpec, RobotContract, implied_robot, load_robot
from sage_hl_ros.paths import config_file

URDF = """<robot name="ur_like">
  <link name="base"/><link name="l1"/><link name="l2"/><link name="l3"/><link name="tool"/>
  <joint name="shoulder_pan_joint" type="revolute"><parent link="base"/><child link="l1"/>
    <limit lower="-6.28" upper="6.28" velocity="3.14" effort="150"/></joint>
  <joint name="fixed_mount" type="fixed"><parent link="l1"/><child link="l2"/></joint>
  <joint name="elbow_joint" type="revolute"><parent link="l2"/><child link="l3"/>
    <limit lower="-3.14" upper="3.14" velocity="3.14" effort="150"/></joint>
  <joint name="wrist_3_joint" type="continuous"><parent link="l3"/><child link="tool"/>
    <limit velocity="6.28" effort="28"/></joint>
  <transmission name="t"><joint name="elbow_joint"><hardwareInterface>x</hardwareInterface></joint></transmission>
</robot>
"""


def _write(tmp_path, body: str, name: str = "robot.yaml"):
    path = tmp_path / name
    path.write_text(body)
    return path


def test_the_sim_arm_contract_gives_the_sim_model_its_robot():
    robot = load_robot(config_file("robots/sim_arm7.yaml"))
    assert robot.joints == [f"joint{i}" for i in range(1, 8)]
    assert robot.sensors == ["camera", "depth", "audio", "tactile"]
    assert robot.joint_limits == str(config_file("joint_limits.yaml").resolve())
    cfg = SageConfig.from_yaml(config_file("sim_model.yaml"))
    assert cfg.robot == robot
    assert cfg.observation.joint_names == robot.joints and cfg.observation.tactile_taxels == 4
    # Stored inline (config.json) and read back equal, with no path to resolve.
    assert SageConfig.from_dict(json.loads(json.dumps(cfg.to_dict())), "config.json") == cfg


def test_joints_are_taken_from_the_urdf_file_in_file_order(tmp_path):
    (tmp_path / "urdf").mkdir()
    (tmp_path / "urdf" / "arm.urdf").write_text(URDF)
    path = _write(tmp_path, "robot:\n  name: ur_like\n  urdf: urdf/arm.urdf\n"
                  "  cameras: [{name: wrist, topic: wrist/image_raw}]\n")
    robot = load_robot(path)
    assert robot.joints == ["shoulder_pan_joint", "elbow_joint", "wrist_3_joint"]  # fixed one left out
    assert robot.urdf == str((tmp_path / "urdf" / "arm.urdf").resolve()) and robot.sensors == ["camera"]
    model = _write(tmp_path, "robot: robot.yaml\nobservation:\n  image_height_px: 32\n", "model.yaml")
    cfg = SageConfig.from_yaml(model)
    assert cfg.observation.joint_names == robot.joints and cfg.observation.sensors == ["camera"]


@pytest.mark.parametrize("body, problem", [
    ("robot:\n  name: r\n", "joints: list the commanded joints"),
    ("robot:\n  name: r\n  urdf: robot_description\n", "robot_description is only known on the running robot"),
    ("robot:\n  name: r\n  urdf: missing.urdf\n", "cannot read URDF"),
    ("robot:\n  joints: [a, a]\n", "joints: distinct non-empty names"),
    ("robot:\n  joints: [a]\n  joint_states_topic: 'bad topic'\n", "joint_states_topic: 'bad topic' is not a"),
    ("robot:\n  joints: [a]\n  command: {interface: torque}\n", "command.interface: one of"),
    ("robot:\n  joints: [a]\n  cameras: [{name: c, encoding: yuv}]\n", "cameras[0].encoding: one of"),
    ("robot:\n  joints: [a]\n  cameras: [{name: c}, {name: c}]\n", "camera names must differ"),
    ("robot:\n  joints: [a]\n  cameras: [{name: a}, {name: b, depth_topic: b/depth}]\n",
     "cameras[1].depth_topic: depth is read from the first camera only"),
    ("robot:\n  joints: [a]\n  cameras: [" + ", ".join(f"{{name: c{i}}}" for i in range(9)) + "]\n",
     "at most 8 cameras"),
    ("robot:\n  joints: [a, g]\n  gripper: {joint: x}\n", "gripper.joint: 'x' is not one of joints"),
    ("robot:\n  joints: [a, g]\n  gripper: {joint: g, mode: open_close, open_position: 0, closed_position: 0}\n",
     "an open/close gripper needs two positions"),
    ("robot:\n  joints: [a]\n  tactile: {taxels: 0}\n", "tactile.taxels: must be > 0"),
    ("robot:\n  joints: [a]\n  audio: {sample_rate_hz: -1}\n", "audio.sample_rate_hz: must be > 0"),
    ("robot:\n  joints: [a]\n  microphone: {}\n", "unknown key 'microphone'"),
    ("joints: [a]\n", "a top-level 'robot:' mapping"),
])
def test_bad_contracts_are_refused_naming_file_and_key(tmp_path, body, problem):
    path = _write(tmp_path, body)
    with pytest.raises(ConfigError) as err:
        load_robot(path)
    assert str(path) in str(err.value) and problem in str(err.value), str(err.value)


def test_a_model_config_that_disagrees_with_its_robot_is_refused_naming_both(tmp_path):
    _write(tmp_path, "robot:\n  name: arm2\n  joints: [a, b]\n  tactile: {taxels: 8}\n")
    model = _write(tmp_path, "robot: robot.yaml\nobservation:\n  joint_names: [a, c]\n", "model.yaml")
    with pytest.raises(ConfigError, match=r"observation.joint_names \['a', 'c'\] differs from robot 'arm2' "
                                          r"\(\['a', 'b'\]\)"):
        SageConfig.from_yaml(model)
    model.write_text("robot: robot.yaml\nobservation:\n  tactile_taxels: 16\n")
    with pytest.raises(ConfigError, match="observation.tactile_taxels 16 differs from robot 'arm2' \\(8\\)"):
        SageConfig.from_yaml(model)
    model.write_text("robot: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"model.yaml: robot: .*nowhere.yaml: cannot read robot contract"):
        SageConfig.from_yaml(model)
    # Agreeing keys are fine; a replace that breaks the agreement is refused too.
    model.write_text("robot: robot.yaml\nobservation:\n  joint_names: [a, b]\n  sensors: [tactile]\n")
    cfg = SageConfig.from_yaml(model)
    assert cfg.observation.sensors == ["tactile"] and cfg.observation.tactile_taxels == 8
    with pytest.raises(ConfigError, match="SageConfig.observation.sensors"):
        dataclasses.replace(cfg, observation=dataclasses.replace(cfg.observation, sensors=["tactile", "audio"]))


def test_a_model_without_a_contract_implies_one_on_the_default_topics():
    cfg = SageConfig()
    robot = cfg.robot_contract()
    assert robot == implied_robot(cfg.observation) and robot.joints == cfg.observation.joint_names
    assert [robot.topic(s) for s in ("camera", "depth", "audio", "tactile", "joint_states")] == [
        "camera/image_raw", "camera/depth/image_raw", "audio/frames", "tactile/array", "joint_states"]
    camera_only = dataclasses.replace(cfg.observation, sensors=["camera"])
    robot = implied_robot(camera_only)
    assert robot.sensors == ["camera"] and robot.topic("depth") == "" and robot.topic("tactile") == ""
    with pytest.raises(KeyError, match="no stream 'lidar'"):
        robot.topic("lidar")


def test_direct_construction_validates():
    with pytest.raises(ConfigError, match=r"^CameraSpec.topic: '/camera//x'"):
        CameraSpec(topic="/camera//x")
    with pytest.raises(ConfigError, match=r"^RobotContract.joints"):
        RobotContract(joints=[])
    assert RobotContract(joints=["a"], cameras=[CameraSpec(topic="/abs/image", compressed=True)]).sensors == ["camera"]


def test_a_robot_is_recorded_on_its_contracts_topics(tmp_path, monkeypatch):
    """``sage-hl-bag record --model-dir`` subscribes the checkpoint robot's streams with their types."""
    from ros_harness import make_checkpoint

    from sage_hl_ros.bags.robot_topics import robot_streams, robot_topic_types
    from sage_hl_ros.ros import recorder_node
    from sage_hl_ros.tools import bag_cli

    robot = {"name": "ur6", "joints": ["a", "b"], "command": {"interface": "joint_trajectory", "controller": "arm"},
             "cameras": [{"name": "wrist", "topic": "wrist/image_raw", "compressed": True}]}
    make_checkpoint(tmp_path / "m", ["a", "b"], robot=robot)
    contract = SageConfig.from_dict({"robot": robot}).robot
    types = robot_topic_types(contract)
    assert {t: ty for t, ty in types.items() if not t.startswith(("/sage", "/teacher", "/e_stop", "/diag"))} == {
        "/wrist/image_raw/compressed": "sensor_msgs/msg/CompressedImage",
        "/joint_states": "sensor_msgs/msg/JointState",
        "/arm/joint_trajectory": "trajectory_msgs/msg/JointTrajectory"}
    assert robot_streams(contract)["depth"] == "" and robot_streams(contract)["commands"] == "/arm/commands"
    seen = {}
    monkeypatch.setattr(recorder_node, "run", lambda argv: seen.setdefault("argv", argv) and 0)
    assert bag_cli.main(["record", str(tmp_path / "bag"), "--model-dir", str(tmp_path / "m")]) == 0
    argv = " ".join(seen["argv"])
    assert "/wrist/image_raw/compressed:sensor_msgs/msg/CompressedImage" in argv and "/arm/joint_trajectory" in argv
    assert "/camera/image_raw" not in argv


def test_a_model_yaml_may_write_its_robot_inline(tmp_path):
    """Inline, the contract's files are still relative to the YAML and joints [] come from its URDF;
    the dataset finds the observation of a model YAML that has only a robot section."""
    from sage_hl_ros.bags.dataset_config import _observation_config

    (tmp_path / "arm.urdf").write_text(URDF)
    model = _write(tmp_path, "robot:\n  name: inline\n  urdf: arm.urdf\n  joints: []\n", "model.yaml")
    cfg = SageConfig.from_yaml(model)
    assert cfg.robot.urdf == str((tmp_path / "arm.urdf").resolve())
    assert cfg.observation.joint_names == ["shoulder_pan_joint", "elbow_joint", "wrist_3_joint"]
    dataset = _write(tmp_path, "model_config: model.yaml\ndataset: {}\n", "dataset.yaml")
    obs, robot = _observation_config(dataset)
    assert obs.joint_names == cfg.observation.joint_names and robot == cfg.robot
    with pytest.raises(ConfigError, match="is not a ROS topic name"):  # a robot's topic is never node-private
        RobotContract(joints=["a"], joint_states_topic="~/joint_states")
