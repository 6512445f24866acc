"""Online sleep as pure logic: when to train, stop and judge; the promotion gate; the checkpoint store."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sage_hl_ros.core.config import ConfigError
from sage_hl_ros.training.online import (
    CheckpointStore,
    SleeperConfig,
    SleeperInputs,
    SleeperStep,
    gate,
    is_idle,
    report_errors,
)

CFG = SleeperConfig(min_new_episodes=3, idle_settle_s=2.0, max_error_ratio=1.0, keep_checkpoints=3)


def _inputs(**kw):
    base = dict(now_s=100.0, idle=True, idle_since_s=90.0, new_episodes=0, training=False, resumable=False,
                candidate_ready=False)
    base.update(kw)
    return SleeperInputs(**base)


def test_idle_is_no_episode_and_no_control_unless_said_otherwise():
    assert is_idle(False, False, None) and not is_idle(True, False, None) and not is_idle(False, True, None)
    assert is_idle(True, True, True) and not is_idle(False, False, False)


@pytest.mark.parametrize("kw, action", [
    (dict(new_episodes=3), "start"),
    (dict(new_episodes=2), "none"),
    (dict(new_episodes=3, idle_since_s=99.0), "none"),  # idle for 1 s < 2 s
    (dict(new_episodes=3, idle=False, idle_since_s=None), "none"),
    (dict(training=True), "none"),
    (dict(training=True, idle=False, idle_since_s=None), "stop"),
    (dict(resumable=True), "resume"),
    (dict(resumable=True, idle_since_s=99.5), "none"),
    (dict(candidate_ready=True, idle_since_s=99.9), "judge"),
    (dict(candidate_ready=True, idle=False, idle_since_s=None), "none"),
])
def test_decisions(kw, action):
    assert SleeperStep(CFG)(_inputs(**kw)).action == action


@given(idle=st.booleans(), since=st.one_of(st.none(), st.floats(0, 200)), new=st.integers(0, 20),
       training=st.booleans(), resumable=st.booleans(), ready=st.booleans())
def test_nothing_starts_or_swaps_while_busy_and_training_always_stops_when_busy(idle, since, new, training,
                                                                                resumable, ready):
    decision = SleeperStep(CFG)(_inputs(idle=idle, idle_since_s=since if idle else None, new_episodes=new,
                                        training=training, resumable=resumable, candidate_ready=ready))
    if not idle:
        assert decision.action == ("stop" if training else "none")
    if decision.action in ("start", "resume"):
        assert idle and not training and since is not None and 100.0 - since >= CFG.idle_settle_s
    if decision.action == "judge":
        assert idle and ready and not training


def test_the_gate_refuses_a_worse_candidate_and_one_that_forgot():
    assert gate({"new": (0.10, 0.08)}, 1.0).promote
    assert gate({"new": (0.10, 0.10)}, 1.0).promote  # not worse
    worse = gate({"new": (0.10, 0.11)}, 1.0)
    assert not worse.promote and "new: 0.1100 > 1 x 0.1000 rad" in worse.reason
    forgot = gate({"new": (0.10, 0.05), "old": (0.02, 0.04)}, 1.0)
    assert not forgot.promote and "old: 0.0400" in forgot.reason
    assert gate({"new": (0.10, 0.104)}, 1.05).promote
    assert not gate({"new": (0.10, math.nan)}, 1.0).promote
    assert not gate({}, 1.0).promote


def test_report_errors_pair_the_initial_and_final_stages():
    report = {"stages": [{"stage": "initial", "metrics": {"new": {"action_error": 0.2}, "old": {"action_error": 0.1}}},
                         {"stage": "wake", "metrics": {"new": {"action_error": 0.15}, "old": {"action_error": 0.1}}},
                         {"stage": "final", "metrics": {"new": {"action_error": 0.12}, "old": {"action_error": 0.09}}}]}
    assert report_errors(report) == {"new": (0.2, 0.12), "old": (0.1, 0.09)}
    with pytest.raises(ValueError, match="no 'initial' and later evaluation"):
        report_errors({"stages": [{"stage": "final", "metrics": {"new": {"action_error": 0.1}}}]})
    with pytest.raises(ValueError, match="no per-stage action errors"):
        report_errors({})


def test_the_store_keeps_the_last_n_and_rolls_back(tmp_path):
    outside = tmp_path / "models" / "current"
    outside.mkdir(parents=True)
    store = CheckpointStore(tmp_path / "store", keep=3)
    store.start(str(outside), "a" * 64)
    made = []
    for i in range(4):
        d = tmp_path / "store" / f"cycle-{i:03d}"
        d.mkdir()
        made.append(d)
        store.promote(str(d), f"{i}" * 64, "promoted")
    assert [e["sha256"][0] for e in store.entries] == ["1", "2", "3"]
    assert outside.is_dir()  # never deleted: not the store's own
    assert not made[0].exists() and made[1].exists()
    assert store.rollback()["sha256"][0] == "2"
    assert CheckpointStore(tmp_path / "store", keep=3).current["sha256"][0] == "2"  # persisted
    store.rollback()
    with pytest.raises(ValueError, match="nothing to roll back to"):
        store.rollback()


def test_config_is_validated():
    with pytest.raises(ConfigError, match="keep_checkpoints: at least 2"):
        SleeperConfig(keep_checkpoints=1)
    with pytest.raises(ConfigError, match="min_new_episodes: must be > 0"):
        SleeperConfig(min_new_episodes=0)


def test_the_trainer_state_check_matches_the_trainer(tmp_path):
    from sage_hl_ros.training import state
    from sage_hl_ros.training.online import has_trainer_state

    d = tmp_path / state.STATE_DIR
    d.mkdir()
    (d / state.TENSORS).write_bytes(b"x")
    assert not has_trainer_state(tmp_path) and not state.has_state(tmp_path)
    (d / state.META).write_text("{}")
    assert has_trainer_state(tmp_path) and state.has_state(tmp_path)
