"""Joint limits in the formats a user's robot already ships: URDF (file or robot_description
string), ros2_control / MoveIt joint_limits.yaml, and their combination (issue 11, point 2)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from sage_hl_ros.safety import JointLimits, LimitsError, SafetyFilter, SafetyStatus
from sage_hl_ros.safety.limits import DEFAULT_ACCELERATION_MAX_RAD_S2

CONFIG = Path(__file__).resolve().parents[1] / "config"
UR = ["shoulder_pan_joint", "shoulder_lift_joint", "elbow_joint", "wrist_1_joint", "wrist_2_joint", "wrist_3_joint"]

# Universal Robots' ur5e joint_limits.yaml layout (ur_description), !degrees tags and all.
UR5E_LIMITS = """\
# joint_limits.yaml for a UR5e: acceleration limits are not publicly available
joint_limits:
  shoulder_pan_joint:
    has_acceleration_limits: false
    has_effort_limits: true
    has_position_limits: true
    has_velocity_limits: true
    max_effort: 150.0
    max_position: !degrees  360.0
    max_velocity: !degrees  180.0
    min_position: !degrees -360.0
  shoulder_lift_joint:
    has_acceleration_limits: false
    has_effort_limits: true
    has_position_limits: true
    has_velocity_limits: true
    max_effort: 150.0
    max_position: !degrees  360.0
    max_velocity: !degrees  180.0
    min_position: !degrees -360.0
  elbow_joint:
    has_acceleration_limits: false
    has_effort_limits: true
    has_position_limits: true
    has_velocity_limits: true
    max_effort: 150.0
    max_position: !degrees  180.0
    max_velocity: !degrees  180.0
    min_position: !degrees -180.0
  wrist_1_joint:
    has_acceleration_limits: false
    has_effort_limits: true
    has_position_limits: true
    has_velocity_limits: true
    max_effort: 28.0
    max_position: !degrees  360.0
    max_velocity: !degrees  180.0
    min_position: !degrees -360.0
  wrist_2_joint:
    has_acceleration_limits: false
    has_effort_limits: true
    has_position_limits: true
    has_velocity_limits: true
    max_effort: 28.0
    max_position: !degrees  360.0
    max_velocity: !degrees  180.0
    min_position: !degrees -360.0
  wrist_3_joint:
    has_acceleration_limits: false
    has_effort_limits: true
    has_position_limits: true
    has_velocity_limits: true
    max_effort: 28.0
    max_position: !degrees  360.0
    max_velocity: !degrees  180.0
    min_position: !degrees -360.0
"""

# MoveIt Setup Assistant style: scaling factors, velocity/acceleration only (positions from URDF).
MOVEIT_LIMITS = """\
default_velocity_scaling_factor: 0.1
default_acceleration_scaling_factor: 0.1
joint_limits:
  shoulder:
    has_velocity_limits: true
    max_velocity: 2.0
    has_acceleration_limits: true
    max_acceleration: 3.75
    has_jerk_limits: false
  wrist:
    has_velocity_limits: true
    max_velocity: 5.0
    has_acceleration_limits: false
    max_acceleration: 0
  slider:
    has_velocity_limits: true
    max_velocity: 0.05
    has_acceleration_limits: true
    max_acceleration: 0.5
"""

# One robot with the three commandable URDF joint types (and a fixed mount and a transmission).
URDF = """<?xml version="1.0"?>
<robot name="arm">
  <link name="base"/><link name="l1"/><link name="l2"/><link name="l3"/><link name="l4"/>
  <joint name="mount" type="fixed"><parent link="base"/><child link="l1"/></joint>
  <joint name="shoulder" type="revolute">
    <parent link="l1"/><child link="l2"/><axis xyz="0 0 1"/>
    <limit lower="-1.5" upper="1.25" velocity="2.5" effort="50"/>
  </joint>
  <joint name="wrist" type="continuous">
    <parent link="l2"/><child link="l3"/><axis xyz="0 0 1"/>
    <limit velocity="3.0" effort="10"/>
  </joint>
  <joint name="slider" type="prismatic">
    <parent link="l3"/><child link="l4"/><axis xyz="1 0 0"/>
    <limit lower="0.0" upper="0.04" velocity="0.1" effort="20"/>
  </joint>
  <transmission name="t1"><joint name="shoulder"><hardwareInterface>x</hardwareInterface></joint></transmission>
</robot>
"""
ARM = ["shoulder", "wrist", "slider"]


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _std(**entry) -> dict:
    """A complete ros2_control entry, overridden by ``entry``."""
    base = {"has_position_limits": True, "min_position": -1.0, "max_position": 1.0,
            "has_velocity_limits": True, "max_velocity": 2.0,
            "has_acceleration_limits": True, "max_acceleration": 5.0}
    base.update(entry)
    return {k: v for k, v in base.items() if v is not None}


# --------------------------------------------------------------------------- URDF only


def test_urdf_only_robot_from_robot_description_string(caplog):
    """robot_description as robot_state_publisher publishes it: revolute, continuous, prismatic."""
    with caplog.at_level(logging.WARNING, logger="sage_hl_ros.safety.limits"):
        lim = JointLimits.from_urdf(URDF, ARM)
    assert lim.names == ARM
    np.testing.assert_array_equal(lim.lower, [-1.5, -np.inf, 0.0])
    np.testing.assert_array_equal(lim.upper, [1.25, np.inf, 0.04])
    np.testing.assert_array_equal(lim.velocity_max, [2.5, 3.0, 0.1])
    np.testing.assert_array_equal(lim.acceleration_max, [DEFAULT_ACCELERATION_MAX_RAD_S2] * 3)
    # URDF has no acceleration limit: the default is stated, per joint, and warned about.
    assert lim.acceleration_defaulted == tuple(ARM)
    assert lim.source.startswith("robot_description (URDF)")
    assert "acceleration limit 10 rad/s^2 (default_acceleration_max_rad_s2) assumed for" in lim.source
    assert str(ARM) in lim.source
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "assumed for" in warned[0] and "set default_acceleration_max_rad_s2" in warned[0]


def test_urdf_default_acceleration_is_configurable(tmp_path, caplog):
    path = _write(tmp_path, "arm.urdf", URDF)
    with caplog.at_level(logging.WARNING, logger="sage_hl_ros.safety.limits"):
        lim = JointLimits.from_urdf(path, ARM, default_acceleration_max_rad_s2=4.0)
    assert lim.acceleration_max.tolist() == [4.0, 4.0, 4.0]
    assert lim.source.startswith(f"{path} (URDF)") and "acceleration limit 4 rad/s^2" in lim.source
    assert "as configured" in caplog.records[-1].getMessage()
    for bad in (0.0, -1.0, math.inf, math.nan, True):
        with pytest.raises(LimitsError, match="default_acceleration_max_rad_s2 must be finite and > 0"):
            JointLimits.from_urdf(path, ARM, default_acceleration_max_rad_s2=bad)


def test_urdf_string_errors_name_robot_description_and_joint():
    no_vel = URDF.replace('velocity="3.0" ', "")
    with pytest.raises(LimitsError, match=r"^robot_description: joint 'wrist': <limit> has no 'velocity'"):
        JointLimits.from_urdf(no_vel, ARM)
    with pytest.raises(LimitsError, match=r"^robot_description: URDF has no joints named \['elbow'\]"):
        JointLimits.from_urdf(URDF, ["shoulder", "elbow"])
    with pytest.raises(LimitsError, match=r"^robot_description: malformed URDF XML"):
        JointLimits.from_urdf(URDF[:150], ARM)
    zero_vel = URDF.replace('velocity="0.1"', 'velocity="0"')
    with pytest.raises(LimitsError, match=r"^robot_description: joint 'slider'.*velocity_max_rad_s must be .*> 0"):
        JointLimits.from_urdf(zero_vel, ARM)
    with pytest.raises(LimitsError, match=r"^robot_description: joint 'mount': type 'fixed'"):
        JointLimits.from_urdf(URDF, ["mount"])


def test_continuous_urdf_joint_is_velocity_limited_through_the_filter():
    lim = JointLimits.from_urdf(URDF, ARM)
    dt = 0.002
    f = SafetyFilter(lim, period_s=dt, latent_timeout_s=0.2, joint_state_timeout_s=0.05)
    measured = np.array([0.0, 50.0, 0.02])  # the continuous joint is 8 turns in: no range to leave
    target = np.array([0.0, 60.0, 0.02])
    previous = measured.copy()
    t = 1.0
    steps = []
    for _ in range(2000):
        t += dt
        out = f.step(t, target, t, t, measured, True)
        assert out.status is SafetyStatus.OK
        steps.append(abs(out.command[1] - previous[1]))
        previous = out.command
    # Never faster than the URDF velocity, reaches top speed, and goes where no revolute range would.
    assert max(steps) <= 3.0 * dt + 1e-12
    assert max(steps) >= 3.0 * dt * (1 - 1e-9)
    assert previous[1] > 52.0
    np.testing.assert_allclose(previous[[0, 2]], [0.0, 0.02])


# --------------------------------------------------------------------------- ros2_control / MoveIt YAML


def test_ur5e_joint_limits_yaml_loads_as_is(tmp_path, caplog):
    path = _write(tmp_path, "joint_limits.yaml", UR5E_LIMITS)
    with caplog.at_level(logging.WARNING, logger="sage_hl_ros.safety.limits"):
        lim = JointLimits.from_yaml(path, UR)
    two_pi, pi = 2 * math.pi, math.pi
    np.testing.assert_allclose(lim.lower, [-two_pi, -two_pi, -pi, -two_pi, -two_pi, -two_pi])
    np.testing.assert_allclose(lim.upper, [two_pi, two_pi, pi, two_pi, two_pi, two_pi])
    np.testing.assert_allclose(lim.velocity_max, [pi] * 6)
    # has_acceleration_limits: false -> not refused: the documented default applies, said so.
    np.testing.assert_array_equal(lim.acceleration_max, [DEFAULT_ACCELERATION_MAX_RAD_S2] * 6)
    assert lim.acceleration_defaulted == tuple(UR)
    assert lim.source.startswith(f"{path} (ros2_control joint_limits format); acceleration limit 10 rad/s^2")
    assert caplog.records and "assumed for" in caplog.records[-1].getMessage()
    # The file may set the default itself; the argument wins over the file.
    with_key = _write(tmp_path, "with_key.yaml", "default_acceleration_max_rad_s2: 6.0\n" + UR5E_LIMITS)
    assert JointLimits.from_yaml(with_key, UR).acceleration_max.tolist() == [6.0] * 6
    assert JointLimits.from_yaml(with_key, UR, default_acceleration_max_rad_s2=3.0).acceleration_max[0] == 3.0


def test_ros_parameter_file_layout(tmp_path):
    doc = {"controller_manager": {"ros__parameters": {"update_rate": 500}},
           "limits_node": {"ros__parameters": {"joint_limits": {"a": _std(), "b": _std(has_position_limits=False)}}}}
    lim = JointLimits.from_yaml(_write(tmp_path, "params.yaml", yaml.safe_dump(doc)), ["a", "b"])
    assert lim.lower.tolist() == [-1.0, -math.inf]
    doc["other_node"] = doc["limits_node"]
    with pytest.raises(LimitsError, match="params2.yaml: 'joint_limits' appears under 2 nodes"):
        JointLimits.from_yaml(_write(tmp_path, "params2.yaml", yaml.safe_dump(doc)), ["a"])


def test_standard_format_rules():
    def load(**entry):
        return JointLimits.from_dict({"joint_limits": {"j": _std(**entry)}}, ["j"], source="lim.yaml")

    # has_position_limits: false = a continuous joint; its min/max (if any) are not read.
    assert load(has_position_limits=False, min_position=None, max_position=None).upper.tolist() == [math.inf]
    assert load(has_position_limits=False, min_position=5.0).lower.tolist() == [-math.inf]
    # A value without its flag is applied, not silently dropped.
    assert load(has_velocity_limits=None, max_velocity=0.5).velocity_max.tolist() == [0.5]
    # One acceleration bound: the tighter of acceleration and deceleration.
    assert load(has_deceleration_limits=True, max_deceleration=2.5).acceleration_max.tolist() == [2.5]
    assert load(has_acceleration_limits=False, max_deceleration=2.5).acceleration_max.tolist() == [2.5]
    # Effort, jerk, soft limits and angle_wraparound are accepted (and not enforced).
    extra = {"has_effort_limits": True, "max_effort": 1.0, "has_jerk_limits": True, "max_jerk": 100.0,
             "angle_wraparound": False, "has_soft_limits": True, "k_position": 10.0, "k_velocity": 1.0,
             "soft_lower_limit": -0.9, "soft_upper_limit": 0.9}
    assert load(**extra) == load()
    # Equality is about the numbers, not where they came from.
    assert load() == JointLimits.from_dict({"joint_limits": {"j": {"position_min_rad": -1, "position_max_rad": 1,
                                            "velocity_max_rad_s": 2, "acceleration_max_rad_s2": 5}}}, ["j"])


@pytest.mark.parametrize(
    ("entry", "pattern"),
    [
        ({"has_velocity_limits": False}, r"joint 'j': no velocity limit \(lim.yaml says has_velocity_limits: false\)"),
        ({"has_velocity_limits": None, "max_velocity": None}, r"joint 'j': no velocity limit \(no velocity"),
        ({"max_velocity": None}, r"joint 'j': has_velocity_limits is true but \['max_velocity'\] not given"),
        ({"has_position_limits": None, "min_position": None, "max_position": None},
         r"joint 'j': no position limits .*has_position_limits: false for a continuous joint"),
        ({"has_position_limits": None, "max_position": None}, r"joint 'j': \['min_position'\] given without"),
        ({"max_position": -2.0}, r"joint 'j': position_min_rad \(-1.0\) must be < position_max_rad \(-2.0\)"),
        ({"max_velocity": 0.0}, r"joint 'j': velocity_max_rad_s must be finite and > 0"),
        ({"max_acceleration": -1.0}, r"joint 'j': acceleration_max_rad_s2 must be finite and > 0"),
        ({"max_velocity": "fast"}, r"joint 'j': max_velocity must be a number"),
        ({"max_velocity": math.inf}, r"joint 'j': max_velocity must be finite"),
        ({"has_velocity_limits": "yes"}, r"joint 'j': has_velocity_limits must be true or false"),
        ({"max_jerk": "big"}, r"joint 'j': max_jerk must be a number"),
        ({"max_velocty": 1.0}, r"joint 'j': unknown keys \['max_velocty'\]"),
        ({"velocity_max_rad_s": 1.0}, r"joint 'j': unknown keys .*belong to the ros2_control joint_limits format"),
    ],
)
def test_standard_format_errors_name_file_and_joint(entry, pattern):
    with pytest.raises(LimitsError, match=r"^lim.yaml.*" + pattern):
        JointLimits.from_dict({"joint_limits": {"j": _std(**entry)}}, ["j"], source="lim.yaml")


def test_moveit_scaling_factors_are_checked_not_applied():
    table = {"joint_limits": {"j": _std()}}
    lim = JointLimits.from_dict({"default_velocity_scaling_factor": 0.1, **table}, ["j"])
    assert lim.velocity_max.tolist() == [2.0]
    for bad in (0.0, 1.5, "half"):
        with pytest.raises(LimitsError, match="default_acceleration_scaling_factor"):
            JointLimits.from_dict({"default_acceleration_scaling_factor": bad, **table}, ["j"])


def test_bad_tag_names_the_file(tmp_path):
    path = _write(tmp_path, "tagged.yaml", "joint_limits:\n  j: {max_velocity: !degrees pi}\n")
    with pytest.raises(LimitsError, match=r"tagged.yaml: invalid YAML.*!degrees 'pi'"):
        JointLimits.from_yaml(path, ["j"])


# --------------------------------------------------------------------------- both sources


def test_moveit_yaml_completed_by_urdf(tmp_path, caplog):
    """MoveIt's file has no positions: alone it is refused, with the URDF it is complete."""
    yaml_path = _write(tmp_path, "joint_limits.yaml", MOVEIT_LIMITS)
    with pytest.raises(LimitsError, match=r"joint_limits.yaml.*joint 'shoulder': no position limits"):
        JointLimits.from_yaml(yaml_path, ARM)
    with caplog.at_level(logging.WARNING, logger="sage_hl_ros.safety.limits"):
        lim = JointLimits.from_sources(ARM, yaml_path=yaml_path, urdf=URDF)
    np.testing.assert_array_equal(lim.lower, [-1.5, -np.inf, 0.0])  # from the URDF
    np.testing.assert_array_equal(lim.upper, [1.25, np.inf, 0.04])
    np.testing.assert_array_equal(lim.velocity_max, [2.0, 3.0, 0.05])  # tighter of both
    np.testing.assert_array_equal(lim.acceleration_max, [3.75, 10.0, 0.5])  # YAML; wrist: neither
    assert lim.acceleration_defaulted == ("wrist",)
    assert lim.source.startswith(f"{yaml_path} (ros2_control joint_limits format) + robot_description (URDF)")
    assert "assumed for ['wrist']" in lim.source
    assert sum("assumed for ['wrist']" in r.getMessage() for r in caplog.records) == 1


def test_from_sources_errors(tmp_path):
    with pytest.raises(LimitsError, match="no limits source"):
        JointLimits.from_sources(ARM)
    # A URDF joint without <limit velocity> is an error of the URDF, whatever the YAML says.
    entry = {"has_position_limits": False, "has_velocity_limits": False}
    yaml_path = _write(tmp_path, "lim.yaml", yaml.safe_dump({"joint_limits": {"wrist": entry}}))
    no_vel = URDF.replace('velocity="3.0" ', "")
    with pytest.raises(LimitsError, match=r"^robot_description: joint 'wrist': <limit> has no 'velocity'"):
        JointLimits.from_sources(["wrist"], yaml_path=yaml_path, urdf=no_vel)
    # Velocity declared off and no URDF: refused, quoting what the file said.
    with pytest.raises(LimitsError, match=r"lim.yaml .*: joint 'wrist': no velocity limit \(.*lim.yaml says"):
        JointLimits.from_sources(["wrist"], yaml_path=yaml_path)
    # ... and with the URDF, its velocity completes the YAML.
    assert JointLimits.from_sources(["wrist"], yaml_path=yaml_path, urdf=URDF).velocity_max.tolist() == [3.0]
    # The URDF alone through from_sources equals from_urdf.
    assert JointLimits.from_sources(ARM, urdf=URDF) == JointLimits.from_urdf(URDF, ARM)
    # Disjoint ranges are named as such.
    far = _write(tmp_path, "far.yaml", yaml.safe_dump({"joint_limits": {"shoulder": _std(min_position=2.0,
                                                                                          max_position=3.0)}}))
    with pytest.raises(LimitsError, match=r"joint 'shoulder': position ranges do not overlap"):
        JointLimits.from_sources(["shoulder"], yaml_path=far, urdf=URDF)


def test_tightened_by_keeps_the_default_mark_only_where_it_is_in_force():
    urdf = JointLimits.from_urdf(URDF, ARM)  # all accelerations defaulted (10)
    task = JointLimits.from_dict({"joint_limits": {
        "shoulder": _std(min_position=-2.0, max_position=2.0, max_acceleration=4.0),
        "wrist": _std(has_position_limits=False, max_acceleration=20.0),
        "slider": _std(min_position=0.0, max_position=1.0, has_acceleration_limits=False)}}, ARM, source="task.yaml")
    both = urdf.tightened_by(task)
    np.testing.assert_array_equal(both.acceleration_max, [4.0, 10.0, 10.0])
    assert both.acceleration_defaulted == ("wrist", "slider")
    assert both.source.startswith("robot_description (URDF) tightened by task.yaml (ros2_control joint_limits format)")


def test_shipped_config_loads():
    names = [f"joint{i}" for i in range(1, 8)]
    lim = JointLimits.from_yaml(CONFIG / "joint_limits.yaml", names)
    assert lim.names == names and lim.acceleration_defaulted == ()
    assert np.all(np.isfinite(lim.lower)) and np.all(lim.velocity_max > 0)
