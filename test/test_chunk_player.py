"""K-step action chunks are played between latents, time-indexed from the latent's stamp."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sage_hl_ros.core.chunk_player import ChunkPlayer, sample_chunk
from sage_hl_ros.safety.control_step import ControlStep, ControlStepConfig, JointInput, LatentInput, LoadedPolicy
from sage_hl_ros.safety.estop import EStopLatch
from sage_hl_ros.safety.filter import SafetyStatus
from sage_hl_ros.safety.limits import JointLimit, JointLimits

CHUNK = np.array([[0.0, 0.0], [0.1, -0.1], [0.2, -0.2], [0.3, -0.3]])
DT = 0.02
PERIOD = 0.005


def test_sample_is_linear_between_points_and_clamped_at_the_ends():
    np.testing.assert_allclose(sample_chunk(CHUNK, 10.0, DT, 10.0), CHUNK[0])
    np.testing.assert_allclose(sample_chunk(CHUNK, 10.0, DT, 10.01), [0.05, -0.05])
    np.testing.assert_allclose(sample_chunk(CHUNK, 10.0, DT, 10.05), [0.25, -0.25])
    np.testing.assert_allclose(sample_chunk(CHUNK, 10.0, DT, 11.0), CHUNK[-1])  # past the end: last point
    np.testing.assert_allclose(sample_chunk(CHUNK, 10.0, DT, 9.0), CHUNK[0])  # before its stamp: first point
    np.testing.assert_allclose(sample_chunk(CHUNK, 10.0, DT, math.nan), CHUNK[0])


def test_a_new_chunk_is_cross_faded_without_a_step():
    player = ChunkPlayer(DT, blend_s=0.01)
    player.push(CHUNK, 0.0, 0.0)
    before = player.sample(0.03)
    player.push(CHUNK + 1.0, 0.03, 0.03)  # disagrees by 1 rad
    np.testing.assert_allclose(player.sample(0.03), before)  # no jump at the switch
    halfway = 0.5 * sample_chunk(CHUNK, 0.0, DT, 0.035) + 0.5 * sample_chunk(CHUNK + 1.0, 0.03, DT, 0.035)
    np.testing.assert_allclose(player.sample(0.035), halfway)  # both chunks advance while fading
    np.testing.assert_allclose(player.sample(0.05), sample_chunk(CHUNK + 1.0, 0.03, DT, 0.05))  # faded in
    with pytest.raises(ValueError, match="dt_s"):
        ChunkPlayer(0.0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 0.05), st.booleans()), min_size=2, max_size=60))
def test_played_targets_stay_inside_the_chunks_hull(events):
    """Whatever the push/sample timing, a target is a convex mix of chunk points (no overshoot)."""
    player = ChunkPlayer(DT)
    lo, hi = CHUNK.min(axis=0), (CHUNK + 0.5).max(axis=0)
    now = 0.0
    for dt, push in events:
        now += dt
        if push or not player.has_chunk:
            player.push(CHUNK + (0.5 if player.chunks % 2 else 0.0), now - 0.01, now)
        x = player.sample(now)
        assert (x >= lo - 1e-12).all() and (x <= hi + 1e-12).all()


class CountingPolicy:
    """An L step returning a fixed chunk (model order), counting its calls."""

    def __init__(self, chunk):
        self.chunk, self.calls = chunk, 0

    def act(self, z, position, velocity):
        self.calls += 1
        return self.chunk


def _step(chunk_dt_s):
    limits = JointLimits([JointLimit(n, -3.0, 3.0, 10.0, 1e4) for n in ("a", "b")])
    return ControlStep(ControlStepConfig(period_s=PERIOD, chunk_dt_s=chunk_dt_s), limits, EStopLatch())


def _run(cs, fast, perm=None, ticks=12, latent_every=None):
    policy = LoadedPolicy(fast, "/m", "a" * 64, ("a", "b"), perm, 4)
    joints = JointInput(np.zeros(2, np.float32), np.zeros(2, np.float32), np.zeros(2), 0.0, 0.0)
    out, latent = [], None
    for i in range(ticks):
        now = 1.0 + i * PERIOD
        if latent is None or (latent_every and i % latent_every == 0):
            latent = LatentInput(np.zeros(4, np.float32), now, now)
        joints = JointInput(joints.position, joints.velocity, joints.measured, now, now)
        res = cs.step(now, policy, latent, joints, True)
        assert res.status is SafetyStatus.OK, res.reason
        out.append(res.command)
    return np.array(out)


def test_control_step_plays_the_chunk_between_latents():
    fast = CountingPolicy(CHUNK)
    commands = _run(_step(DT), fast, ticks=12)
    assert fast.calls == 1, "the L step runs once per latent when chunks are played"
    expected = np.array([sample_chunk(CHUNK, 1.0, DT, 1.0 + i * PERIOD) for i in range(12)])
    np.testing.assert_allclose(commands, expected, atol=1e-9)  # follows the chunk, last point held


def test_receding_horizon_takes_the_first_point_every_tick():
    fast = CountingPolicy(CHUNK)
    commands = _run(_step(0.0), fast, ticks=6)
    assert fast.calls == 6
    np.testing.assert_allclose(commands, np.zeros((6, 2)))


def test_played_chunks_are_permuted_to_command_order():
    fast = CountingPolicy(CHUNK)
    commands = _run(_step(DT), fast, perm=np.array([1, 0]), ticks=5)
    np.testing.assert_allclose(commands[-1], sample_chunk(CHUNK, 1.0, DT, 1.0 + 4 * PERIOD)[::-1])
