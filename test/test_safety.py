"""Tests for sage_hl_ros.safety: limits loading, the e-stop latch, and the safety filter (no ROS)."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml

from sage_hl_ros.safety import (
    EStopLatch,
    JointLimit,
    JointLimits,
    LimitsError,
    SafetyFilter,
    SafetyOutput,
    SafetyStatus,
)

NAMES = ["joint1", "joint2", "joint3"]
DT = 0.002
VMAX = 2.0
AMAX = 10.0
VSTEP = VMAX * DT  # 0.004 rad per tick
ASTEP = AMAX * DT * DT  # 4e-5 rad per tick^2
TOL = 1e-12


def _entry(lo=-2.9, hi=2.9, v=VMAX, a=AMAX):
    return {
        "position_min_rad": lo,
        "position_max_rad": hi,
        "velocity_max_rad_s": v,
        "acceleration_max_rad_s2": a,
    }


def _write_yaml(tmp_path: Path, table: dict, name: str = "limits.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"controller": {"rate_hz": 500}, "joint_limits": table}))
    return path


def _limits(names=NAMES, lo=-2.9, hi=2.9) -> JointLimits:
    return JointLimits([JointLimit(n, lo, hi, VMAX, AMAX) for n in names])


def _filter(limits=None, estop=None) -> SafetyFilter:
    return SafetyFilter(
        limits or _limits(),
        period_s=DT,
        latent_timeout_s=0.2,
        joint_state_timeout_s=0.05,
        estop=estop,
    )


def _ok_step(f: SafetyFilter, target, measured=None, now=None) -> SafetyOutput:
    """A tick with fresh inputs, one nominal period after the previous one (unless ``now`` is given)."""
    if now is None:
        now = getattr(f, "_test_now", 1.0 - DT) + DT
    f._test_now = now
    if measured is None:
        measured = np.zeros(len(f.limits.joints))
    return f.step(now, np.asarray(target, dtype=float), now, now, np.asarray(measured, dtype=float), True)


# --------------------------------------------------------------------------- YAML


def test_yaml_round_trip_in_configured_order(tmp_path):
    table = {
        "joint3": _entry(-1.0, 1.0, 1.5, 5.0),
        "joint1": _entry(-2.0, 2.5, 2.0, 10.0),
        "joint2": _entry(-0.5, 0.5, 1.0, 3.0),
        "gripper": _entry(0.0, 0.04, 0.1, 1.0),  # extra joints are ignored
    }
    path = _write_yaml(tmp_path, table)
    lim = JointLimits.from_yaml(path, NAMES)
    assert lim.names == NAMES
    np.testing.assert_array_equal(lim.lower, [-2.0, -0.5, -1.0])
    np.testing.assert_array_equal(lim.upper, [2.5, 0.5, 1.0])
    np.testing.assert_array_equal(lim.velocity_max, [2.0, 1.0, 1.5])
    np.testing.assert_array_equal(lim.acceleration_max, [10.0, 3.0, 5.0])
    for arr in (lim.lower, lim.upper, lim.velocity_max, lim.acceleration_max):
        assert arr.dtype == np.float64
    # The project's own format: every limit is data, nothing assumed.
    assert lim.source == str(path) and lim.acceleration_defaulted == ()
    # Round trip: dump what we loaded and load it again.
    dumped = {j.name: _entry(j.position_min_rad, j.position_max_rad, j.velocity_max_rad_s,
                             j.acceleration_max_rad_s2) for j in lim.joints}
    again = JointLimits.from_yaml(_write_yaml(tmp_path, dumped, "again.yaml"), NAMES)
    assert again == lim


def test_yaml_accepts_integers(tmp_path):
    path = _write_yaml(tmp_path, {n: _entry(-3, 3, 2, 10) for n in NAMES})
    lim = JointLimits.from_yaml(path, NAMES)
    assert lim.upper.tolist() == [3.0, 3.0, 3.0]


@pytest.mark.parametrize(
    ("mutate", "pattern"),
    [
        (lambda t: t.pop("joint2") and t.pop("joint3"), r"missing configured joints \['joint2', 'joint3'\]"),
        (lambda t: t["joint2"].update(position_min_rad=1.0, position_max_rad=1.0),
         r"joint 'joint2'.*position_min_rad \(1.0\) must be < position_max_rad"),
        (lambda t: t["joint2"].update(position_min_rad=2.0, position_max_rad=1.0),
         r"joint 'joint2'.*must be <"),
        (lambda t: t["joint3"].update(velocity_max_rad_s=-1.0), r"joint 'joint3'.*velocity_max_rad_s.*> 0"),
        (lambda t: t["joint3"].update(velocity_max_rad_s=0.0), r"joint 'joint3'.*velocity_max_rad_s.*> 0"),
        (lambda t: t["joint1"].update(acceleration_max_rad_s2=0), r"joint 'joint1'.*acceleration_max_rad_s2"),
        (lambda t: t["joint1"].update(max_effort=3.0), r"joint 'joint1'.*unknown keys \['max_effort'\]"),
        (lambda t: t["joint1"].update(position_max_rad=math.nan), r"'joint1'.*position_max_rad.*finite"),
        (lambda t: t["joint1"].update(position_max_rad=math.inf), r"'joint1'.*position_max_rad.*finite"),
        (lambda t: t["joint1"].update(velocity_max_rad_s=float("inf")), r"joint 'joint1'.*finite"),
        (lambda t: t["joint1"].update(velocity_max_rad_s="fast"), r"joint 'joint1'.*must be a number"),
        (lambda t: t["joint1"].update(velocity_max_rad_s=True), r"joint 'joint1'.*must be a number"),
        (lambda t: t["joint1"].pop("acceleration_max_rad_s2"), r"joint 'joint1'.*missing keys"),
        (lambda t: t.update(joint1=[1, 2, 3, 4]), r"joint 'joint1'.*must be a mapping"),
    ],
)
def test_yaml_errors_name_file_and_joint(tmp_path, mutate, pattern):
    table = {n: _entry() for n in NAMES}
    mutate(table)
    path = _write_yaml(tmp_path, table)
    with pytest.raises(LimitsError, match=pattern) as err:
        JointLimits.from_yaml(path, NAMES)
    assert str(path) in str(err.value)


def test_yaml_bad_file_names_the_file(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("joint_limits: {joint1: [unclosed\n")
    with pytest.raises(LimitsError, match="broken.yaml.*invalid YAML"):
        JointLimits.from_yaml(bad, NAMES)
    with pytest.raises(LimitsError, match="nope.yaml.*cannot read"):
        JointLimits.from_yaml(tmp_path / "nope.yaml", NAMES)
    no_key = tmp_path / "no_key.yaml"
    no_key.write_text("controller: {rate_hz: 500}\n")
    with pytest.raises(LimitsError, match="no_key.yaml.*'joint_limits'"):
        JointLimits.from_yaml(no_key, NAMES)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(LimitsError, match="scalar.yaml.*mapping"):
        JointLimits.from_yaml(scalar, NAMES)


def test_from_dict_source_and_name_checks():
    data = {"joint_limits": {n: _entry() for n in NAMES}}
    assert JointLimits.from_dict(data, NAMES).names == NAMES
    with pytest.raises(LimitsError, match=r"^<dict>: .*'joint_limits'"):
        JointLimits.from_dict({}, NAMES)
    with pytest.raises(LimitsError, match=r"^cfg: .*duplicate joint names \['joint1'\]"):
        JointLimits.from_dict(data, ["joint1", "joint1"], source="cfg")
    with pytest.raises(LimitsError, match="empty"):
        JointLimits.from_dict(data, [])
    with pytest.raises(LimitsError, match="not a string"):
        JointLimits.from_dict(data, "joint1")


def test_joint_limits_constructor_validates():
    with pytest.raises(LimitsError, match="joint 'j'"):
        JointLimits([JointLimit("j", 1.0, 0.0, 1.0, 1.0)])
    with pytest.raises(LimitsError, match="duplicate"):
        JointLimits([JointLimit("j", 0.0, 1.0, 1.0, 1.0)] * 2)
    with pytest.raises(LimitsError, match="position limits must be numbers"):
        JointLimits([JointLimit("j", math.nan, 1.0, 1.0, 1.0)])


# --------------------------------------------------------------------------- URDF

URDF = """<?xml version="1.0"?>
<robot name="arm">
  <link name="base"/><link name="l1"/><link name="l2"/><link name="l3"/><link name="l4"/>
  <joint name="fixed_mount" type="fixed"><parent link="base"/><child link="l1"/></joint>
  <joint name="shoulder" type="revolute">
    <parent link="l1"/><child link="l2"/>
    <limit lower="-1.5" upper="1.25" velocity="2.5" effort="50"/>
  </joint>
  <joint name="wrist" type="continuous">
    <parent link="l2"/><child link="l3"/>
    <limit velocity="3.0" effort="10"/>
  </joint>
  <joint name="slider" type="prismatic">
    <parent link="l3"/><child link="l4"/>
    <limit lower="0.0" upper="0.04" velocity="0.1" effort="20"/>
  </joint>
  <transmission name="t1">
    <joint name="shoulder"><hardwareInterface>x</hardwareInterface></joint>
  </transmission>
</robot>
"""


def test_urdf_parse(tmp_path):
    path = tmp_path / "arm.urdf"
    path.write_text(URDF)
    lim = JointLimits.from_urdf(path, ["slider", "shoulder", "wrist"])
    assert lim.names == ["slider", "shoulder", "wrist"]
    np.testing.assert_array_equal(lim.lower, [0.0, -1.5, -np.inf])
    np.testing.assert_array_equal(lim.upper, [0.04, 1.25, np.inf])
    np.testing.assert_array_equal(lim.velocity_max, [0.1, 2.5, 3.0])
    np.testing.assert_array_equal(lim.acceleration_max, [10.0, 10.0, 10.0])
    assert lim.acceleration_defaulted == ("slider", "shoulder", "wrist") and "assumed for" in lim.source
    lim2 = JointLimits.from_urdf(path, ["shoulder"], default_acceleration_max_rad_s2=4.0)
    assert lim2.acceleration_max.tolist() == [4.0]
    # The same URDF as the robot_description string gives the same limits.
    assert JointLimits.from_urdf(URDF, ["slider", "shoulder", "wrist"]) == lim


def test_urdf_errors(tmp_path):
    path = tmp_path / "arm.urdf"
    path.write_text(URDF)
    with pytest.raises(LimitsError, match=r"arm.urdf.*no joints named \['elbow'\]"):
        JointLimits.from_urdf(path, ["shoulder", "elbow"])
    with pytest.raises(LimitsError, match=r"arm.urdf.*joint 'fixed_mount'.*type 'fixed'"):
        JointLimits.from_urdf(path, ["fixed_mount"])
    with pytest.raises(LimitsError, match="default_acceleration"):
        JointLimits.from_urdf(path, ["shoulder"], default_acceleration_max_rad_s2=0.0)

    no_limit = tmp_path / "no_limit.urdf"
    no_limit.write_text(URDF.replace('<limit lower="-1.5" upper="1.25" velocity="2.5" effort="50"/>', ""))
    with pytest.raises(LimitsError, match=r"no_limit.urdf.*joint 'shoulder'.*missing <limit>"):
        JointLimits.from_urdf(no_limit, ["shoulder"])

    no_vel = tmp_path / "no_vel.urdf"
    no_vel.write_text(URDF.replace('velocity="3.0" ', ""))
    with pytest.raises(LimitsError, match=r"no_vel.urdf.*joint 'wrist'.*'velocity'"):
        JointLimits.from_urdf(no_vel, ["wrist"])

    bad_num = tmp_path / "bad_num.urdf"
    bad_num.write_text(URDF.replace('upper="1.25"', 'upper="${pi/2}"'))
    with pytest.raises(LimitsError, match=r"bad_num.urdf.*joint 'shoulder'.*not a number"):
        JointLimits.from_urdf(bad_num, ["shoulder"])

    inverted = tmp_path / "inverted.urdf"
    inverted.write_text(URDF.replace('lower="-1.5" upper="1.25"', 'lower="1.25" upper="-1.5"'))
    with pytest.raises(LimitsError, match=r"inverted.urdf.*joint 'shoulder'.*must be <"):
        JointLimits.from_urdf(inverted, ["shoulder"])

    malformed = tmp_path / "malformed.urdf"
    malformed.write_text(URDF[:200])
    with pytest.raises(LimitsError, match=r"malformed.urdf.*malformed URDF XML"):
        JointLimits.from_urdf(malformed, ["shoulder"])
    with pytest.raises(LimitsError, match="missing.urdf"):
        JointLimits.from_urdf(tmp_path / "missing.urdf", ["shoulder"])


def test_tightened_by(tmp_path):
    path = tmp_path / "arm.urdf"
    path.write_text(URDF)
    urdf = JointLimits.from_urdf(path, ["shoulder", "wrist"])
    task = JointLimits(
        [
            JointLimit("wrist", -3.0, 3.0, 5.0, 2.0),
            JointLimit("shoulder", -2.0, 1.0, 1.0, 20.0),
            JointLimit("other", -1.0, 1.0, 1.0, 1.0),
        ]
    )
    both = urdf.tightened_by(task)
    assert both.names == ["shoulder", "wrist"]
    np.testing.assert_array_equal(both.lower, [-1.5, -3.0])
    np.testing.assert_array_equal(both.upper, [1.0, 3.0])
    np.testing.assert_array_equal(both.velocity_max, [1.0, 3.0])
    np.testing.assert_array_equal(both.acceleration_max, [10.0, 2.0])
    # Inputs are not modified.
    assert urdf.upper.tolist() == [1.25, np.inf]

    with pytest.raises(LimitsError, match=r"lack joints \['wrist'\]"):
        urdf.tightened_by(JointLimits([JointLimit("shoulder", -1.0, 1.0, 1.0, 1.0)]))
    with pytest.raises(LimitsError, match="joint 'shoulder'.*do not overlap"):
        disjoint = [JointLimit("shoulder", 2.0, 3.0, 1.0, 1.0), JointLimit("wrist", -1.0, 1.0, 1.0, 1.0)]
        urdf.tightened_by(JointLimits(disjoint))


# --------------------------------------------------------------------------- e-stop


def test_estop_latch():
    e = EStopLatch()
    assert not e.latched and e.reason is None and e.trigger_count == 0
    e.trigger("button")
    e.trigger("second")
    assert e.latched and e.reason == "button" and e.trigger_count == 2
    e.reset()
    assert not e.latched and e.reason is None and e.trigger_count == 2
    e.trigger()
    assert e.latched and e.reason == "e_stop"


def test_estop_thread_safe_count():
    e = EStopLatch()

    def spam():
        for _ in range(2000):
            e.trigger("t")

    threads = [threading.Thread(target=spam) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert e.trigger_count == 8000 and e.latched


# --------------------------------------------------------------------------- filter


def test_filter_rejects_bad_periods():
    with pytest.raises(ValueError, match="period_s"):
        SafetyFilter(_limits(), 0.0, 0.1, 0.1)
    with pytest.raises(ValueError, match="joint_state_timeout_s"):
        SafetyFilter(_limits(), DT, 0.1, math.nan)


def test_disabled_publishes_nothing():
    f = _filter()
    out = f.step(1.0, np.full(3, 0.5), 1.0, 1.0, np.zeros(3), False)
    assert out.status is SafetyStatus.DISABLED
    assert out.command is None and out.velocity is None
    assert f.last_command is None


def test_small_target_passes_exactly():
    f = _filter()
    target = np.array([0.001, -0.00002, 0.0])
    out = _ok_step(f, target, measured=np.zeros(3))
    # 0.001 would need more than ASTEP from rest, so joint1 is limited; joint2 is within reach.
    assert out.status is SafetyStatus.OK and out.reason == ""
    assert out.clamped
    assert out.command[0] == pytest.approx(ASTEP)
    assert out.command[1] == target[1] and out.command[2] == 0.0
    f2 = _filter()
    tiny = np.array([1e-5, -3e-5, 4e-5])
    out2 = _ok_step(f2, tiny)
    assert not out2.clamped
    np.testing.assert_array_equal(out2.command, tiny)
    np.testing.assert_allclose(out2.velocity, tiny / DT)


def test_clamps_positions_to_limits():
    f = _filter(_limits(lo=-1.0, hi=1.0))
    measured = np.array([0.99999, -0.99999, 0.5])
    target = np.array([5.0, -5.0, 0.5])
    out = _ok_step(f, target, measured)
    assert out.clamped
    for _ in range(50):
        out = _ok_step(f, target, measured)
        assert np.all(out.command <= 1.0) and np.all(out.command >= -1.0)
    np.testing.assert_array_equal(out.command, [1.0, -1.0, 0.5])


def test_measured_outside_limits_starts_at_limit():
    f = _filter(_limits(lo=-1.0, hi=1.0))
    out = _ok_step(f, [1.0, 0.0, 0.0], measured=[1.001, 0.0, 0.0])
    np.testing.assert_array_equal(out.command, [1.0, 0.0, 0.0])


def test_velocity_limit_over_many_steps():
    """From rest: steps grow by ASTEP until VSTEP, then a far target is approached at exactly VSTEP."""
    f = _filter()
    target = np.array([2.5, -2.5, 0.0])
    prev = np.zeros(3)
    ramp = round(VSTEP / ASTEP)  # 100 ticks to reach full speed
    steps = []
    for _ in range(ramp + 200):
        out = _ok_step(f, target)
        steps.append(out.command - prev)
        prev = out.command
        assert out.clamped
    steps = np.array(steps)
    k = np.arange(1, ramp + 1)
    np.testing.assert_allclose(steps[:ramp, 0], k * ASTEP, rtol=0, atol=1e-12)
    np.testing.assert_allclose(steps[:ramp, 1], -k * ASTEP, rtol=0, atol=1e-12)
    np.testing.assert_allclose(steps[ramp:, 0], VSTEP, rtol=0, atol=1e-15)
    np.testing.assert_allclose(steps[ramp:, 1], -VSTEP, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(steps[:, 2], 0.0)
    np.testing.assert_allclose(out.velocity[:2], [VMAX, -VMAX])


def test_far_target_is_reached_without_ringing():
    f = _filter()
    target = np.array([1.0, -1.0, 0.3])
    cmds = np.array([_ok_step(f, target).command for _ in range(1500)])
    np.testing.assert_array_equal(cmds[-1], target)
    assert not _ok_step(f, target).clamped
    overshoot = np.max(np.abs(cmds) - np.abs(target), axis=0)
    assert np.all(overshoot < 1e-3)  # at most a rounding-sized overshoot, no ringing
    # Once there, it stays there.
    tail = cmds[-200:]
    assert np.all(tail == tail[-1])


def test_smooth_stream_tracks_exactly():
    f = _filter()
    t = np.arange(2000) * DT
    stream = np.stack([0.5 * np.sin(2 * np.pi * 0.5 * t), 0.3 * t, np.zeros_like(t)], axis=1)
    err = [np.abs(_ok_step(f, x).command - x).max() for x in stream]
    assert max(err[600:]) == 0.0  # after the start-up transient, pass-through is bit-exact


def test_acceleration_limit_from_rest():
    f = _filter()
    out = _ok_step(f, [0.5, -0.5, 0.0])
    np.testing.assert_allclose(out.command, [ASTEP, -ASTEP, 0.0], rtol=0, atol=1e-15)
    np.testing.assert_allclose(out.velocity, [AMAX * DT, -AMAX * DT, 0.0])
    out = _ok_step(f, [0.5, -0.5, 0.0])
    np.testing.assert_allclose(out.command, [3 * ASTEP, -3 * ASTEP, 0.0], rtol=0, atol=1e-15)
    # Reversing the target cannot reverse the motion instantly: the step may drop by ASTEP only.
    out = _ok_step(f, [-0.5, 0.5, 0.0])
    np.testing.assert_allclose(out.command, [4 * ASTEP, -4 * ASTEP, 0.0], rtol=0, atol=1e-15)


def test_stale_joints_hold_last_command_not_zeros():
    f = _filter()
    measured = np.full(3, 0.7)
    last = None
    for _ in range(20):
        last = _ok_step(f, np.full(3, 1.0), measured, now=1.0).command
    assert np.all(last > 0.7)
    # joint stamp 60 ms old (> 50 ms timeout): hold on this very tick.
    out = f.step(1.06, np.full(3, 1.0), 1.06, 1.0, measured, True)
    assert out.status is SafetyStatus.HOLD_STALE_JOINTS
    np.testing.assert_array_equal(out.command, last)
    np.testing.assert_array_equal(out.velocity, np.zeros(3))
    assert "joint state" in out.reason and not out.clamped
    # Missing stamp, missing measurement and NaN measurement are all stale joints.
    for stamp, meas in ((None, measured), (1.06, None), (1.06, np.array([0.7, np.nan, 0.7])),
                        (1.06, np.zeros(2))):
        out = f.step(1.06, np.full(3, 1.0), 1.06, stamp, meas, True)
        assert out.status is SafetyStatus.HOLD_STALE_JOINTS
        np.testing.assert_array_equal(out.command, last)
    # The returned command is a copy: mutating it does not move the hold point.
    out.command[:] = 0.0
    np.testing.assert_array_equal(f.last_command, last)


def test_stale_joints_before_any_command_publishes_nothing():
    f = _filter()
    out = f.step(1.0, np.ones(3), 1.0, 0.5, np.zeros(3), True)
    assert out.status is SafetyStatus.HOLD_STALE_JOINTS and out.command is None and out.velocity is None


def test_stale_latent_holds_and_resume_is_rate_limited():
    f = _filter()
    for _ in range(200):
        last = _ok_step(f, np.ones(3)).command  # moving at full speed now
    out = f.step(2.0, np.ones(3), 1.7, 2.0, np.zeros(3), True)  # latent 300 ms old
    assert out.status is SafetyStatus.HOLD_STALE_LATENT and "latent" in out.reason
    np.testing.assert_array_equal(out.command, last)
    out = f.step(2.0, np.ones(3), None, 2.0, np.zeros(3), True)  # never received
    assert out.status is SafetyStatus.HOLD_STALE_LATENT
    # Resuming starts from rest at the hold point: first step is one acceleration step.
    out = _ok_step(f, np.ones(3), now=2.0 + DT)
    np.testing.assert_allclose(out.command - last, ASTEP, rtol=0, atol=1e-15)


def test_hold_without_last_command_latches_fresh_measured():
    f = _filter(_limits(lo=-1.0, hi=1.0))
    measured = np.array([0.1, 1.2, -0.3])  # joint2 reads just past its limit
    out = f.step(1.0, None, 1.0, 1.0, measured, True)
    assert out.status is SafetyStatus.HOLD_INVALID_TARGET
    np.testing.assert_array_equal(out.command, [0.1, 1.0, -0.3])  # clamped into limits
    # The hold point stays fixed even if the arm sags.
    out = f.step(1.01, None, 1.01, 1.01, measured - 0.05, True)
    np.testing.assert_array_equal(out.command, [0.1, 1.0, -0.3])


@pytest.mark.parametrize(
    "bad",
    [None, [np.nan, 0.0, 0.0], [0.0, np.inf, 0.0], [0.0, 0.0, -np.inf], [0.1, 0.2], [[0.1, 0.2, 0.3]], "abc"],
)
def test_invalid_target_holds(bad):
    f = _filter()
    for _ in range(10):
        last = _ok_step(f, np.full(3, 0.2)).command
    out = f.step(1.0, bad, 1.0, 1.0, np.zeros(3), True)
    assert out.status is SafetyStatus.HOLD_INVALID_TARGET
    np.testing.assert_array_equal(out.command, last)
    assert np.all(np.isfinite(out.command))


def test_priority_order():
    estop = EStopLatch()
    f = _filter(estop=estop)
    _ok_step(f, np.full(3, 0.1))
    stale_all = dict(now_s=5.0, target=None, latent_stamp_s=None, joint_stamp_s=None, measured_position=None)
    assert f.step(**stale_all, enabled=True).status is SafetyStatus.HOLD_STALE_JOINTS
    stale_latent = dict(stale_all, joint_stamp_s=5.0, measured_position=np.zeros(3))
    assert f.step(**stale_latent, enabled=True).status is SafetyStatus.HOLD_STALE_LATENT
    estop.trigger("test")
    assert f.step(**stale_all, enabled=True).status is SafetyStatus.ESTOP
    assert f.step(**stale_all, enabled=False).status is SafetyStatus.DISABLED


def test_estop_latches_and_holds_until_reset():
    estop = EStopLatch()
    f = _filter(estop=estop)
    for _ in range(50):
        last = _ok_step(f, np.ones(3)).command
    estop.trigger("operator")
    for k in range(100):  # fresh inputs and a valid target do not release it
        out = _ok_step(f, np.ones(3), now=1.0 + k * DT)
        assert out.status is SafetyStatus.ESTOP and "operator" in out.reason
        np.testing.assert_array_equal(out.command, last)
        np.testing.assert_array_equal(out.velocity, 0.0)
    estop.reset()
    out = _ok_step(f, np.ones(3))
    assert out.status is SafetyStatus.OK
    np.testing.assert_allclose(out.command - last, ASTEP, rtol=0, atol=1e-15)


def test_estop_before_any_command():
    estop = EStopLatch()
    estop.trigger()
    f = _filter(estop=estop)
    out = _ok_step(f, np.ones(3), measured=np.full(3, 0.25))
    assert out.status is SafetyStatus.ESTOP
    np.testing.assert_array_equal(out.command, np.full(3, 0.25))  # measured, never zeros
    # With stale joint states there is nothing trustworthy to hold: publish nothing.
    f2 = _filter(estop=estop)
    out = f2.step(1.0, np.ones(3), 1.0, 0.0, np.full(3, 0.25), True)
    assert out.status is SafetyStatus.ESTOP and out.command is None
    # A default-constructed filter owns a latch.
    f3 = _filter()
    f3.estop.trigger()
    assert _ok_step(f3, np.ones(3)).status is SafetyStatus.ESTOP


def test_reenable_starts_from_measured_without_jump():
    f = _filter()
    for _ in range(100):
        _ok_step(f, np.ones(3))
    assert f.step(1.0, np.ones(3), 1.0, 1.0, np.zeros(3), False).command is None
    assert f.last_command is None
    measured = np.array([-0.4, 0.2, 0.0])  # the arm was moved while disabled
    out = _ok_step(f, measured + 0.5, measured)
    np.testing.assert_allclose(out.command - measured, ASTEP, rtol=0, atol=1e-15)
    # reset() (deactivate) does the same.
    f.reset()
    measured2 = np.array([0.3, 0.3, 0.3])
    out = _ok_step(f, measured2, measured2)
    np.testing.assert_array_equal(out.command, measured2)
    assert not out.clamped


def test_continuous_joint_with_infinite_limits():
    lim = JointLimits(
        [JointLimit("wrist", -np.inf, np.inf, VMAX, AMAX), JointLimit("j", -1.0, 1.0, VMAX, AMAX)]
    )
    f = _filter(lim)
    start = np.array([100.0, 0.0])  # far beyond any revolute range
    target = np.array([110.0, 5.0])
    prev = start
    for _ in range(400):
        out = _ok_step(f, target, start)
        assert np.all(np.isfinite(out.command)) and np.all(np.isfinite(out.velocity))
        assert abs(out.command[0] - prev[0]) <= VSTEP + TOL
        prev = out.command
    assert out.command[0] > 100.0 + 1.0  # it moved freely
    assert out.command[1] == 1.0  # the bounded joint is still clamped
    out = f.step(1.0, None, 1.0, 1.0, start, True)
    assert out.status is SafetyStatus.HOLD_INVALID_TARGET and np.all(np.isfinite(out.command))


def test_random_targets_respect_all_limits():
    """Property test: whatever the policy asks, commands stay in limits and respect v and a bounds."""
    rng = np.random.default_rng(1234)
    lim = JointLimits(
        [
            JointLimit("a", -1.0, 1.0, 2.0, 10.0),
            JointLimit("b", -0.2, 0.3, 0.5, 3.0),
            JointLimit("c", -np.inf, np.inf, 4.0, 40.0),
            JointLimit("d", 0.0, 0.04, 0.1, 1.0),
        ]
    )
    f = _filter(lim)
    lower, upper = lim.lower, lim.upper
    vstep, astep = lim.velocity_max * DT, lim.acceleration_max * DT * DT
    measured = np.array([0.9, -0.19, 3.0, 0.02])
    prev, dprev = measured.copy(), np.zeros(4)
    target = measured.copy()
    statuses = set()
    for k in range(600):
        mode = rng.integers(6)
        if mode == 0:
            target = rng.uniform(-3.0, 3.0, 4)  # wild, often beyond limits
        elif mode == 1:
            target = target + rng.normal(0.0, 0.01, 4)  # jittery stream
        elif mode == 2:
            target = np.array([5.0, 5.0, 5.0, 5.0]) * rng.choice([-1.0, 1.0])  # slam into a limit
        hold = rng.random() < 0.05
        out = f.step(k * DT, target, k * DT - (1.0 if hold else 0.0), k * DT, measured, True)
        statuses.add(out.status)
        cmd = out.command
        assert cmd is not None and np.all(np.isfinite(cmd))
        assert np.all(cmd >= lower) and np.all(cmd <= upper)
        delta = cmd - prev
        if out.status is SafetyStatus.OK:
            assert np.all(np.abs(delta) <= vstep * (1 + 1e-9) + TOL)
            assert np.all(np.abs(delta - dprev) <= astep * (1 + 1e-9) + TOL)
            np.testing.assert_allclose(out.velocity, delta / DT, rtol=1e-9, atol=1e-9)
            dprev = delta
        else:
            np.testing.assert_array_equal(delta, 0.0)  # holds repeat the last command exactly
            dprev = np.zeros(4)
        prev = cmd
    assert statuses == {SafetyStatus.OK, SafetyStatus.HOLD_STALE_LATENT}


def test_step_is_fast_enough():
    """Loose guard against accidental slow paths (budget ~20 us; shared CI cores are noisy)."""
    import time

    f = _filter(_limits(names=[f"j{i}" for i in range(7)]))
    target, measured = np.full(7, 0.5), np.zeros(7)
    f.step(0.0, target, 0.0, 0.0, measured, True)
    n = 2000
    t0 = time.perf_counter()
    for _ in range(n):
        f.step(0.0, target, 0.0, 0.0, measured, True)
    per_step = (time.perf_counter() - t0) / n
    assert per_step < 500e-6


def test_ramp_into_position_limit_brakes_within_acceleration_limit():
    """A target stream that runs into a limit at speed: the command must brake before the limit,
    not stop dead at it (which would be an unbounded deceleration)."""
    f = _filter(_limits(lo=-1.0, hi=1.0))
    prev, dprev = np.zeros(3), np.zeros(3)
    for k in range(1, 1200):
        target = np.array([0.9 * VSTEP * k, -0.9 * VSTEP * k, 0.0])  # 1.8 rad/s, through the limits
        cmd = _ok_step(f, target).command
        delta = cmd - prev
        assert np.all(np.abs(cmd) <= 1.0)
        assert np.all(np.abs(delta - dprev) <= ASTEP * (1 + 1e-9) + TOL), k
        prev, dprev = cmd, delta
    np.testing.assert_array_equal(cmd, [1.0, -1.0, 0.0])


def test_future_stamps_beyond_timeout_are_stale():
    """A stamp far ahead of now means the clock jumped back (sim reset): do not trust it."""
    f = _filter()
    _ok_step(f, np.full(3, 0.01), now=10.0)
    out = f.step(1.0, np.full(3, 0.01), 1.0, 10.0, np.zeros(3), True)
    assert out.status is SafetyStatus.HOLD_STALE_JOINTS
    out = f.step(1.0, np.full(3, 0.01), 10.0, 1.0, np.zeros(3), True)
    assert out.status is SafetyStatus.HOLD_STALE_LATENT
    # Small skew within the timeout is fine.
    assert f.step(1.0, np.full(3, 0.01), 1.01, 1.01, np.zeros(3), True).status is SafetyStatus.OK
