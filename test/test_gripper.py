"""The gripper's command output (safety/gripper.py), pure: no ROS graph.

The gripper joint goes through the same ControlStep / SafetyFilter as the arm's joints; the output
only splits the filtered vector. Property (hypothesis): for ANY model output (finite, NaN, Inf,
huge, wrong size) and any tick sequence, every gripper value is inside the joint's limits, and in
open_close mode it is exactly open_position or closed_position; the arm part is the filtered
vector without the gripper's column, in command order.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sage_hl_ros.core.robot import GripperSpec
from sage_hl_ros.safety import (
    ControlStep,
    ControlStepConfig,
    EStopLatch,
    GripperError,
    GripperOutput,
    JointInput,
    JointLimit,
    JointLimits,
    LatentInput,
    LoadedPolicy,
    SafetyStatus,
)

NAMES = ("shoulder", "finger", "elbow")  # the gripper sits between arm joints in command order
LO, HI = 0.0, 0.04  # the finger's position limits
PERIOD = 0.005
D = 4


def _limits() -> JointLimits:
    return JointLimits([JointLimit("shoulder", -1.0, 1.0, 1.0, 10.0), JointLimit("finger", LO, HI, 0.1, 1.0),
                        JointLimit("elbow", -2.0, 2.0, 2.0, 20.0)], origin="test_limits.yaml")


def _spec(mode="position", **kw) -> GripperSpec:
    return GripperSpec(joint="finger", topic="gripper_controller/commands", mode=mode, **kw)


# --------------------------------------------------------------------------- examples


def test_split_gives_the_arm_in_command_order_and_the_gripper_position():
    out = GripperOutput.build(NAMES, _spec(), _limits())
    assert out.arm_names == ("shoulder", "elbow") and out.index == 1
    arm, value = out.split(np.array([0.3, 0.02, -0.5]))
    np.testing.assert_array_equal(arm, [0.3, -0.5])
    assert value == 0.02
    # Trajectories (M, J) keep their rows, lose the gripper's column.
    np.testing.assert_array_equal(out.arm(np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])), [[1.0, 3.0], [4.0, 6.0]])
    # Position mode clamps once more to the joint's limits (the filter already did).
    assert out.value(0.5) == HI and out.value(-0.5) == LO


def test_open_close_takes_the_nearer_position_and_a_tie_opens():
    out = GripperOutput.build(NAMES, _spec("open_close", open_position=0.04, closed_position=0.0), _limits())
    assert [out.value(x) for x in (0.0, 0.019, 0.021, 0.04, -1.0, 1.0)] == [0.0, 0.0, 0.04, 0.04, 0.0, 0.04]
    assert out.value(0.02) == 0.04  # a tie opens
    # Either way round: closed may be the larger position (a gripper closing towards its upper limit).
    rev = GripperOutput.build(NAMES, _spec("open_close", open_position=0.0, closed_position=0.04), _limits())
    assert (rev.value(0.03), rev.value(0.01)) == (0.04, 0.0)
    assert rev.split(np.array([0.0, 0.035, 0.0]))[1] == 0.04


def test_open_close_positions_outside_the_limits_are_refused_naming_keys_and_limits():
    where = "/m/config.json: robot.gripper"
    with pytest.raises(GripperError) as info:
        GripperOutput.build(NAMES, _spec("open_close", open_position=0.08, closed_position=0.0), _limits(), where)
    message = str(info.value)
    assert f"{where}.open_position: 0.08" in message and "test_limits.yaml" in message and "[0.0, 0.04]" in message
    with pytest.raises(GripperError, match=r"robot\.gripper\.closed_position: -0\.01"):
        GripperOutput.build(NAMES, _spec("open_close", open_position=0.04, closed_position=-0.01), _limits(), where)
    with pytest.raises(GripperError, match="closed_position: nan"):
        GripperOutput.build(NAMES, _spec("open_close", closed_position=math.nan), _limits(), where)
    # Position mode ignores both positions; without limits (a dry run) nothing is checked.
    GripperOutput.build(NAMES, _spec("position", open_position=5.0), _limits())
    GripperOutput.build(NAMES, _spec("open_close", open_position=5.0), None)


def test_the_gripper_joint_must_be_a_commanded_joint():
    with pytest.raises(GripperError, match="'finger' is not one of the commanded joints"):
        GripperOutput.build(["shoulder", "elbow"], _spec(), None)
    with pytest.raises(GripperError, match="only commanded joint"):
        GripperOutput.build(["finger"], _spec(), None)


# --------------------------------------------------------------------------- property


class ScriptedPolicy:
    def __init__(self):
        self.next = np.zeros((1, len(NAMES)))

    def act(self, z, position, velocity):
        return self.next


values = st.one_of(st.floats(-3.0, 3.0), st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from([math.nan, math.inf, -math.inf, 1e30, -1e308, 0.0, 0.02, 0.04]))
tick = st.fixed_dictionaries({
    "dt": st.one_of(st.floats(0.0, 4 * PERIOD), st.sampled_from([0.0, PERIOD, 0.2, 2.0, -0.01])),
    "target": st.lists(values, min_size=3, max_size=3),
    "target_size": st.sampled_from([3, 3, 3, 3, 2, 4]),
    "measured": st.lists(values, min_size=3, max_size=3),
    "fresh": st.sampled_from([True, True, True, True, False]),
    "enabled": st.sampled_from([True, True, True, True, False]),
    "estop": st.sampled_from([None] * 6 + ["trigger", "reset"]),
})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(tick, min_size=1, max_size=60), st.sampled_from(["position", "open_close"]),
       st.booleans())
def test_gripper_output_is_always_inside_its_limits_for_any_model_output(ticks, mode, closed_high):
    opened, closed = (0.0, 0.04) if closed_high else (0.04, 0.0)
    spec = _spec(mode, open_position=opened, closed_position=closed)
    limits = _limits()
    out = GripperOutput.build(NAMES, spec, limits)
    estop = EStopLatch()
    cs = ControlStep(ControlStepConfig(period_s=PERIOD), limits, estop)
    fast = ScriptedPolicy()
    policy = LoadedPolicy(fast, "/m", "a" * 64, NAMES, None, D)
    now = 10.0
    last_value = None
    for t in ticks:
        now += t["dt"]
        if t["estop"] == "trigger":
            estop.trigger("test")
        elif t["estop"] == "reset":
            estop.reset()
        row = t["target"][: t["target_size"]] + [0.0] * max(0, t["target_size"] - 3)
        fast.next = np.array([row])
        m = np.array(t["measured"], dtype=np.float64)
        with np.errstate(over="ignore"):
            pos32 = m.astype(np.float32)
        stamp = now if t["fresh"] else now - 1.0
        latent = LatentInput(np.full(D, 0.1, np.float32), stamp, stamp)
        joints = JointInput(pos32, np.zeros(3, np.float32), m, stamp, stamp)
        res = cs.step(now, policy, latent, joints, t["enabled"])
        if not t["enabled"]:
            last_value = None  # a new enabled span starts from the measured position
        if res.command is None:
            continue
        arm, value = out.split(res.command)
        assert math.isfinite(value) and LO <= value <= HI, value
        if mode == "open_close":
            assert value in (opened, closed)
        else:
            assert value == res.command[1]  # the filtered position itself
        np.testing.assert_array_equal(arm, res.command[[0, 2]])
        if res.status in (SafetyStatus.ESTOP, SafetyStatus.HOLD_STALE_JOINTS, SafetyStatus.HOLD_STALE_LATENT,
                          SafetyStatus.HOLD_INVALID_TARGET) and last_value is not None:
            assert value == last_value, "a hold holds the gripper too"
        last_value = value
    if not any(t["enabled"] for t in ticks):
        assert last_value is None
