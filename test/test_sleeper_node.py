"""sage_sleeper over a real ROS graph with real sleep training: it trains only while the robot is
idle, stops when it gets busy and resumes later, promotes a better candidate into a running
sage_context (its hot reload), refuses a worse one (the running hash stays), rolls back, and trains
at a lower priority than the node process. Judged by the nodes' own records, not by wall-clock."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest
from ros_harness import Harness, Spinner, make_checkpoint, ros_env, wait_for

from sage_hl_ros.bags.synthetic import SyntheticBagSpec, write_synthetic_bag
from sage_hl_ros.core.checkpoint_files import read_config

JOINTS = [f"joint{i}" for i in range(1, 8)]
TRAIN = ["batch_size=4", "phases=[wake]", "wake.steps=200", "wake.lr=0.003", "checkpoint_every_steps=5",
         "eval.sequence_steps=2", "eval.probes=false", "eval.plots=false"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("sleeper")
    current = make_checkpoint(root / "current", JOINTS, bias=None)  # untrained: any learning beats it
    obs = read_config(current).observation
    spec = dict(steps_per_episode=4, start_noise_rad=0.8)
    write_synthetic_bag(root / "bags" / "day1", obs, SyntheticBagSpec(episodes=24, seed=1, **spec))
    write_synthetic_bag(root / "bags2" / "day2", obs, SyntheticBagSpec(episodes=24, seed=2, **spec))
    (root / "dataset.yaml").write_text("dataset:\n  val_fraction: 0.25\n")
    return root


@pytest.fixture(scope="module")
def graph():
    ros_env()
    import rclpy

    rclpy.init()
    harness = Harness("sleeper_test_harness")
    spinner = Spinner(harness.node)
    yield harness, spinner
    spinner.shutdown()
    harness.destroy()
    rclpy.shutdown()


def _context(files, name):
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from sage_hl_ros.ros.context_node import ContextNode

    node = ContextNode(node_name=name, parameter_overrides=[
        Parameter("model_dir", value=str(files / "current")), Parameter("diagnostics_period_s", value=0.25)])
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    return node


def _sleeper(files, name, context, store, bags, **extra):
    from rclpy.parameter import Parameter

    from sage_hl_ros.ros.sleeper_node import SleeperNode

    params = {"model_dir": str(files / "current"), "bags_dir": str(files / bags), "store_dir": str(files / store),
              "runtime_nodes": [context], "min_new_episodes": 10, "idle_settle_s": 0.0,
              "dataset_config": str(files / "dataset.yaml"), "sleep_set": TRAIN, "check_period_s": 0.1,
              "diagnostics_period_s": 0.25, **extra}
    return SleeperNode(node_name=name, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])


def _say(harness, topic, value):
    from std_msgs.msg import Bool, String

    msg_type = Bool if isinstance(value, bool) else String
    harness.publish(msg_type, topic, msg_type(data=value))


def _saved_step(sleeper) -> int:
    """The step of the cycle's saved trainer state (-1 before the first save)."""
    import json

    path = Path(sleeper._cycle["out"]) / "trainer_state" / "state.json" if sleeper._cycle else None
    try:
        return int(json.loads(path.read_text())["step"])
    except (AttributeError, OSError, ValueError, KeyError):
        return -1


def _log_has(sleeper, text):
    c = sleeper._cycle
    path = Path(c["out"] + ".log") if c else None
    return path is not None and path.exists() and text in path.read_text()


def test_trains_when_idle_stops_when_busy_resumes_promotes_and_rolls_back(graph, files):
    from std_msgs.msg import String
    from std_srvs.srv import Trigger

    harness, spinner = graph
    context = _context(files, "sage_context_sleep")
    original = context._loaded.sha256
    sleeper = _sleeper(files, "sage_sleeper_a", "sage_context_sleep", "store_a", "bags")
    spinner.add(context)
    spinner.add(sleeper)
    try:
        harness.wait_for_subscribers(String, "/sage/episode")
        # An open episode is busy: nothing trains however much data there is.
        _say(harness, "/sage/episode", "start:reach")
        wait_for(lambda: sleeper._episode_active, 10.0, what="the sleeper to see the episode")
        wait_for(lambda: sleeper._last["decision"].startswith("none: busy"), 10.0, what="a busy decision")
        assert sleeper._proc is None and sleeper._counts["cycles"] == 0
        _say(harness, "/sage/episode", "end:success")  # idle now: 24 new episodes >= 10
        wait_for(lambda: sleeper._proc is not None, 20.0, what="a training process")
        pid = sleeper._proc.pid
        assert psutil.Process(pid).nice() > os.nice(0)  # lower priority than this (node) process
        wait_for(lambda: _saved_step(sleeper) >= 5, 180.0, what="5 training steps")
        _say(harness, "/sage/idle", False)  # the robot is needed: training stops, its state is saved
        wait_for(lambda: sleeper._cycle and sleeper._cycle["state"] == "interrupted", 60.0, what="the stop")
        assert sleeper._counts["stopped"] == 1 and _log_has(sleeper, "saving the trainer state")
        stopped_at = _saved_step(sleeper)
        assert 5 <= stopped_at < 200 and sleeper._last["stop_latency_s"] >= 0
        assert context._loaded.sha256 == original and sleeper.reload_log() == []
        _say(harness, "/sage/idle", True)
        wait_for(lambda: sleeper._counts["promoted"] + sleeper._counts["refused"] == 1, 300.0,
                 what="the resumed cycle to finish and be judged")
        log = (files / "store_a" / "cycle-001.log").read_text()
        assert f"resuming at step {stopped_at} (phase wake" in log  # from its saved state
        assert sleeper._counts["promoted"] == 1, sleeper._last["gate"]
        promoted = sleeper.store.current
        wait_for(lambda: context._loaded.sha256 == promoted["sha256"], 60.0, what="the context node to load it")
        (entry,) = sleeper.reload_log()
        assert not entry["episode_active"] and entry["why"] == "promote"
        # rollback: the running node goes back to the checkpoint it ran before
        response = harness.call(Trigger, "/sage_sleeper_a/rollback")
        assert response.success, response.message
        wait_for(lambda: context._loaded.sha256 == original, 60.0, what="the rollback")
        assert [e["why"] for e in sleeper.reload_log()] == ["promote", "rollback"]
        assert not harness.call(Trigger, "/sage_sleeper_a/rollback").success  # nothing older
    finally:
        for node in (sleeper, context):
            spinner.remove(node)
            node.destroy_node()


def test_a_worse_candidate_is_refused_and_the_running_model_keeps_its_hash(graph, files):
    harness, spinner = graph
    context = _context(files, "sage_context_refuse")
    original = context._loaded.sha256
    # A bar no candidate can clear: the candidate must be 1000x better than the running model.
    sleeper = _sleeper(files, "sage_sleeper_b", "sage_context_refuse", "store_b", "bags2", max_error_ratio=0.001)
    spinner.add(context)
    spinner.add(sleeper)
    try:
        wait_for(lambda: sleeper._counts["refused"] == 1, 300.0, what="a judged cycle")
        assert sleeper._counts["promoted"] == 0 and "refused (new:" in sleeper._last["gate"]
        assert sleeper.reload_log() == [] and context._loaded.sha256 == original
        assert sleeper.store.current["sha256"] == original
        # and with its bags taken, the next decisions start nothing
        wait_for(lambda: sleeper._last["decision"] == "none: 0 new episodes (< 10)", 10.0, what="an idle decision")
        assert sleeper._proc is None and sleeper._counts["cycles"] == 1
    finally:
        for node in (sleeper, context):
            spinner.remove(node)
            node.destroy_node()
