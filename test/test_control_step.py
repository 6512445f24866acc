"""The control tick as a pure function: property tests (hypothesis) and examples, no ROS graph.

For ANY sequence of inputs — NaN/Inf/extreme values, wrong sizes, stale or future stamps,
e-stop toggles, reloads (policy swaps), irregular tick times including zero and long gaps —
every command is finite, inside the position limits, within the velocity and acceleration limits
by the elapsed time since the previous command, a hold repeats the last command, and a latched
e-stop stays latched until reset.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sage_hl_ros.safety import (
    ControlStep,
    ControlStepConfig,
    EStopLatch,
    JointInput,
    JointLimit,
    JointLimits,
    LatentInput,
    LoadedPolicy,
    SafetyStatus,
)

NAMES = ("j1", "j2", "j3")
PERIOD = 0.005
VMAX = np.array([1.0, 2.0, 0.5])
AMAX = np.array([10.0, 20.0, 5.0])
LOWER = np.array([-1.0, -2.0, -math.inf])  # j3 continuous
UPPER = np.array([1.0, 2.0, math.inf])
D = 4
HOLDS = (SafetyStatus.ESTOP, SafetyStatus.HOLD_STALE_JOINTS, SafetyStatus.HOLD_STALE_LATENT,
         SafetyStatus.HOLD_INVALID_TARGET)


def _limits() -> JointLimits:
    return JointLimits([JointLimit(n, float(lo), float(hi), float(v), float(a))
                        for n, lo, hi, v, a in zip(NAMES, LOWER, UPPER, VMAX, AMAX, strict=True)])


class ScriptedPolicy:
    """An L step whose next output is set by the test (any values, including garbage)."""

    def __init__(self):
        self.next = np.zeros((1, len(NAMES)))

    def act(self, z, position, velocity):
        return self.next


def _policy(fast, perm=None, sha="a" * 64) -> LoadedPolicy:
    return LoadedPolicy(fast, "/m", sha, NAMES, perm, D)


def _step(**kw) -> ControlStep:
    return ControlStep(ControlStepConfig(period_s=PERIOD, **kw), _limits(), EStopLatch())


# --------------------------------------------------------------------------- strategies
values = st.one_of(st.floats(-3.0, 3.0), st.sampled_from([math.nan, math.inf, -math.inf, 1e30, -1e308, 0.0]))
tick = st.fixed_dictionaries({
    "dt": st.one_of(st.floats(0.0, 4 * PERIOD), st.sampled_from([0.0, 1e-9, PERIOD, 0.2, 2.0, -0.01])),
    "target": st.lists(values, min_size=3, max_size=3),
    "target_size": st.sampled_from([3, 3, 3, 3, 2, 4]),
    "measured": st.lists(values, min_size=3, max_size=3),
    "latent_dim": st.sampled_from([D, D, D, D, D - 1, 0]),
    "latent_nan": st.booleans(),
    "latent_stamp_age": st.one_of(st.floats(-0.2, 1.0), st.just(0.0)),
    "joint_stamp_age": st.one_of(st.floats(-0.2, 0.3), st.just(0.0)),
    "unstamped": st.booleans(),
    "new_latent": st.booleans(),
    "new_joints": st.booleans(),
    "enabled": st.sampled_from([True, True, True, True, True, False]),
    "estop": st.sampled_from([None, None, None, None, None, None, "trigger", "reset"]),
    "reload": st.sampled_from([False] * 9 + [True]),
})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(tick, min_size=1, max_size=80), st.booleans(), st.booleans())
def test_any_input_sequence_gives_safe_commands(ticks, heartbeat, chunked):
    """Also with K = 3 chunks played between latents (chunk_dt_s > 0): the same guarantees, also for
    every look-ahead point of a trajectory command (point to point by the chunk's spacing), and the
    look-ahead never changes the commands (a twin without it commands the same)."""
    hb_timeout = 0.1 if heartbeat else 0.0
    cs = _step(e_stop_heartbeat_timeout_s=hb_timeout, chunk_dt_s=0.02 if chunked else 0.0, trajectory_preview=True)
    twin = _step(e_stop_heartbeat_timeout_s=hb_timeout, chunk_dt_s=0.02 if chunked else 0.0)
    twin.estop = twin.filter.estop = cs.estop
    estop = cs.estop
    fast = ScriptedPolicy()
    policy = _policy(fast)
    now = 100.0
    latent = joints = None
    hb = now
    last_cmd = last_vel = None
    last_t = None
    last_ok = False
    latched_since_reset = False
    for t in ticks:
        now += t["dt"]
        if t["reload"]:
            policy = _policy(fast, sha=("b" if policy.sha256[0] == "a" else "a") * 64)
        if t["estop"] == "trigger":
            estop.trigger("test")
        elif t["estop"] == "reset":
            estop.reset()
        if heartbeat and t["estop"] != "trigger":  # the trigger ticks also stand for a lost heartbeat
            hb = now
        row = t["target"][: t["target_size"]] + [0.0] * max(0, t["target_size"] - 3)
        fast.next = np.array([row, row[::-1], [0.5 * v for v in row]] if chunked else [row])
        if t["new_latent"]:
            z = np.full(t["latent_dim"], math.nan if t["latent_nan"] else 0.1, dtype=np.float32)
            latent = LatentInput(z, 0.0 if t["unstamped"] else now - t["latent_stamp_age"], now)
        if t["new_joints"]:
            m = np.array(t["measured"], dtype=np.float64)
            with np.errstate(over="ignore"):  # 1e308 -> inf in float32, as a real overflow would
                pos32 = m.astype(np.float32)
            joints = JointInput(pos32, np.zeros(3, np.float32), m,
                                0.0 if t["unstamped"] else now - t["joint_stamp_age"], now)
        was_latched = estop.latched
        res = cs.step(now, policy, latent, joints, t["enabled"], hb if heartbeat else None)
        twin_res = twin.step(now, policy, latent, joints, t["enabled"], hb if heartbeat else None)
        assert twin_res.status is res.status
        if res.command is not None:
            np.testing.assert_array_equal(twin_res.command, res.command)
        if res.preview_positions is not None:
            assert chunked and res.status is SafetyStatus.OK
            _assert_preview_safe(res, 0.02)
        if estop.latched and not was_latched:
            latched_since_reset = True
        if t["estop"] == "reset":
            latched_since_reset = estop.latched
        if not t["enabled"]:
            assert res.command is None and res.status is SafetyStatus.DISABLED
            last_cmd = last_vel = last_t = None  # a new enabled span starts from the measured position
            continue
        if latched_since_reset:
            assert res.status is SafetyStatus.ESTOP, "a latched e-stop holds until reset"
        if res.command is None:
            continue
        cmd, vel = res.command, res.velocity
        assert np.isfinite(cmd).all() and np.isfinite(vel).all()
        assert (cmd >= LOWER).all() and (cmd <= UPPER).all()
        if last_cmd is not None:
            elapsed = now - last_t
            step = np.abs(cmd - last_cmd)
            if elapsed < 1e-3 * PERIOD:
                np.testing.assert_array_equal(cmd, last_cmd)  # (almost) no time, no motion
            else:
                assert (step <= VMAX * elapsed * (1 + 1e-9) + 1e-12).all(), (step, VMAX * elapsed)
                if res.status is SafetyStatus.OK and last_ok:  # a hold stops at once by design
                    assert (np.abs(vel - last_vel) <= AMAX * elapsed * (1 + 1e-9) + 1e-6).all()
            if res.status in HOLDS:
                np.testing.assert_array_equal(cmd, last_cmd)
                assert (vel == 0).all()
        elif res.status in HOLDS:
            assert (vel == 0).all()
        last_cmd, last_vel, last_t = cmd, vel, now
        last_ok = res.status is SafetyStatus.OK


def _assert_preview_safe(res, dt):
    """Every look-ahead point inside the limits, within speed and acceleration of the one before."""
    pos = np.vstack([res.command, res.preview_positions])
    vel = np.vstack([res.velocity, res.preview_velocities])
    assert np.isfinite(pos).all() and np.isfinite(vel).all()
    assert (pos >= LOWER).all() and (pos <= UPPER).all()
    assert (np.abs(np.diff(pos, axis=0)) <= VMAX * dt * (1 + 1e-9) + 1e-12).all()
    assert (np.abs(np.diff(vel, axis=0)) <= AMAX * dt * (1 + 1e-9) + 1e-6).all()


# --------------------------------------------------------------------------- examples
def _fresh_inputs(cs, now, target, measured=(0.0, 0.0, 0.0)):
    m = np.array(measured, dtype=np.float64)
    latent = LatentInput(np.zeros(D, np.float32), now, now)
    joints = JointInput(m.astype(np.float32), np.zeros(3, np.float32), m, now, now)
    return latent, joints


def test_late_tick_then_short_tick_stays_within_speed_by_stamp_gap():
    """The measured failure: after a late tick the next one comes early; its step must shrink."""
    cs = _step()
    fast = ScriptedPolicy()
    fast.next = np.array([[0.9, 1.9, 5.0]])  # far: every joint runs at its limit
    policy = _policy(fast)
    t, last, last_t = 0.0, None, None
    worst = 0.0
    for k in range(400):
        t += (0.0098 if k % 2 else 0.0002) if k > 100 else PERIOD  # late, short, late, short...
        latent, joints = _fresh_inputs(cs, t, None)
        res = cs.step(t, policy, latent, joints, True)
        if last is not None:
            worst = max(worst, float(np.max(np.abs(res.command - last) / (t - last_t) / VMAX)))
        last, last_t = res.command, t
    assert worst <= 1.0 + 1e-9


def test_old_stamp_arriving_now_holds_and_names_the_clock():
    cs = _step(joint_state_timeout_s=0.1)
    fast = ScriptedPolicy()
    policy = _policy(fast)
    t = 10.0
    latent, joints = _fresh_inputs(cs, t, None)
    assert cs.step(t, policy, latent, joints, True).status is SafetyStatus.OK
    t += PERIOD
    old = JointInput(joints.position, joints.velocity, joints.measured, t - 0.5, t)  # replayed: old stamp
    res = cs.step(t, policy, LatentInput(latent.z, t, t), old, True)
    assert res.status is SafetyStatus.HOLD_STALE_JOINTS
    assert res.stale_clock == "stamp" and "header stamp" in res.reason


def test_future_stamp_beyond_skew_is_rejected_within_it_accepted():
    cs = _step(clock_skew_tolerance_s=0.05)
    policy = _policy(ScriptedPolicy())
    t = 10.0
    latent, joints = _fresh_inputs(cs, t, None)
    ok = JointInput(joints.position, joints.velocity, joints.measured, t + 0.04, t)
    assert cs.step(t, policy, latent, ok, True).status is SafetyStatus.OK
    t += PERIOD
    future = LatentInput(latent.z, t + 0.2, t)
    res = cs.step(t, policy, future, JointInput(ok.position, ok.velocity, ok.measured, t, t), True)
    assert res.status is SafetyStatus.HOLD_STALE_LATENT and "ahead of the node clock" in res.reason
    assert res.stale_clock == "stamp"


def test_unstamped_inputs_use_arrival_time_unless_stamps_are_required():
    for require, expected in ((False, SafetyStatus.OK), (True, SafetyStatus.HOLD_STALE_JOINTS)):
        cs = _step(require_stamps=require)
        t = 5.0
        latent, joints = _fresh_inputs(cs, t, None)
        unstamped = JointInput(joints.position, joints.velocity, joints.measured, 0.0, t)
        assert cs.step(t, _policy(ScriptedPolicy()), latent, unstamped, True).status is expected


def test_missing_heartbeat_latches_until_reset():
    cs = _step(e_stop_heartbeat_timeout_s=0.1)
    policy = _policy(ScriptedPolicy())
    t = 1.0
    for _ in range(10):  # heartbeat every tick: commanding
        t += PERIOD
        latent, joints = _fresh_inputs(cs, t, None)
        assert cs.step(t, policy, latent, joints, True, heartbeat_s=t).status is SafetyStatus.OK
    hb = t
    for _ in range(30):  # 150 ms without a heartbeat
        t += PERIOD
        latent, joints = _fresh_inputs(cs, t, None)
        res = cs.step(t, policy, latent, joints, True, heartbeat_s=hb)
    assert res.status is SafetyStatus.ESTOP and "heartbeat" in cs.estop.reason
    t += PERIOD  # the heartbeat comes back: still latched
    latent, joints = _fresh_inputs(cs, t, None)
    assert cs.step(t, policy, latent, joints, True, heartbeat_s=t).status is SafetyStatus.ESTOP
    cs.estop.reset()
    t += PERIOD
    assert cs.step(t, policy, latent, joints, True, heartbeat_s=t).status is SafetyStatus.OK


def test_no_heartbeat_ever_latches_after_the_timeout():
    cs = _step(e_stop_heartbeat_timeout_s=0.1)
    policy = _policy(ScriptedPolicy())
    t = 1.0
    statuses = []
    for _ in range(40):
        t += PERIOD
        latent, joints = _fresh_inputs(cs, t, None)
        statuses.append(cs.step(t, policy, latent, joints, True, heartbeat_s=None).status)
    assert statuses[0] is SafetyStatus.OK and statuses[-1] is SafetyStatus.ESTOP
    assert cs.estop.latched


def test_reload_swaps_policy_between_ticks_without_a_jump():
    cs = _step()
    a, b = ScriptedPolicy(), ScriptedPolicy()
    a.next = np.array([[0.1, 0.1, 0.1]])
    b.next = np.array([[-0.9, -0.9, -0.9]])
    t, last = 0.0, None
    for k in range(200):
        t += PERIOD
        latent, joints = _fresh_inputs(cs, t, None)
        res = cs.step(t, _policy(a if k < 100 else b), latent, joints, True)
        if last is not None:
            assert (np.abs(res.command - last) <= VMAX * PERIOD * (1 + 1e-9)).all()
        last = res.command
    assert res.command[0] < 0  # the new policy took over


def test_wrong_size_latent_or_joints_hold_with_reason():
    cs = _step()
    policy = _policy(ScriptedPolicy())
    t = 1.0
    latent, joints = _fresh_inputs(cs, t, None)
    assert cs.step(t, policy, latent, joints, True).status is SafetyStatus.OK
    t += PERIOD
    res = cs.step(t, policy, LatentInput(np.zeros(D + 1, np.float32), t, t), joints, True)
    assert res.status is SafetyStatus.HOLD_INVALID_TARGET


def test_config_validates_on_construction():
    with pytest.raises(ValueError, match="period_s"):
        ControlStepConfig(period_s=0.0)
    with pytest.raises(ValueError, match="clock_skew_tolerance_s"):
        ControlStepConfig(period_s=0.005, clock_skew_tolerance_s=-1.0)
    with pytest.raises(ValueError, match="smoothing_alpha"):
        ControlStepConfig(period_s=0.005, smoothing_alpha=0.0)


def test_control_step_and_numpy_policy_do_not_import_torch():
    code = ("import sys; import sage_hl_ros.safety.control_step, sage_hl_ros.core.fast_policy; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_trajectory_preview_follows_the_chunk_and_brakes_at_the_limit():
    """Far from the limits the look-ahead points are the chunk's; a chunk that runs into a position
    limit is cut to a stop inside it, and the real commands are unchanged by the look-ahead."""
    cs = _step(chunk_dt_s=0.02, trajectory_preview=True)
    fast = ScriptedPolicy()
    # A chunk that speeds up within the acceleration limits (from rest: v 0.1/0.2/0.3 rad/s on j1, ...).
    fast.next = np.array([[0.0, 0.0, 0.0], [0.002, 0.004, 0.001], [0.006, 0.012, 0.003], [0.012, 0.024, 0.006]])
    policy = _policy(fast)
    latent, joints = _fresh_inputs(cs, 0.0, None)
    res = cs.step(0.0, policy, latent, joints, True)
    assert res.status is SafetyStatus.OK and res.preview_positions.shape == (3, 3)
    np.testing.assert_allclose(res.preview_positions, fast.next[1:], atol=1e-12)
    np.testing.assert_allclose(res.preview_velocities, np.diff(fast.next, axis=0) / 0.02, atol=1e-9)
    res2 = cs.step(PERIOD, policy, latent, joints, True)  # a quarter of the way to the next point
    assert res2.preview_positions.shape == (2, 3)
    _assert_preview_safe(res2, 0.02)

    cs = _step(chunk_dt_s=0.02, trajectory_preview=True)
    fast.next = np.array([[0.95, 0.0, 0.0], [1.5, 0.0, 0.0], [2.0, 0.0, 0.0], [2.5, 0.0, 0.0]])
    m = np.array([0.95, 0.0, 0.0])
    latent = LatentInput(np.zeros(D, np.float32), 0.0, 0.0)
    joints = JointInput(m.astype(np.float32), np.zeros(3, np.float32), m, 0.0, 0.0)
    res = cs.step(0.0, policy, latent, joints, True)
    _assert_preview_safe(res, 0.02)
    x, v = res.preview_positions[-1, 0], res.preview_velocities[-1, 0]
    assert x < 1.0 and v * v / (2 * AMAX[0]) <= 1.0 - x + 1e-12, "the last point can still stop inside the limit"


def test_no_preview_without_a_played_chunk():
    cs = _step(trajectory_preview=True)  # receding horizon: nothing is played, nothing previewed
    fast = ScriptedPolicy()
    fast.next = np.array([[0.1, 0.1, 0.1], [0.2, 0.2, 0.2]])
    latent, joints = _fresh_inputs(cs, 0.0, None)
    assert cs.step(0.0, _policy(fast), latent, joints, True).preview_positions is None
