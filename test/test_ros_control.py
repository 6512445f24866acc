"""sage_control over a real ROS graph, in one process (fast, deterministic where it can be).

The node runs with its real control thread; a harness node streams latents and joint states and
records commands with receive times. Checkpoints use a constant L-module delta (0 unless stated),
so a command equals the measured joint position: joint order and holds are visible from outside.
Timing claims ("hold within 2 ticks", "e-stop within 1 tick") are checked against the node's own
tick log (tick time on the node clock + safety status), which does not depend on machine load.
"""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
from ros_harness import Harness, Spinner, make_checkpoint, ros_env, wait_diagnostic, wait_for, write_limits

pytestmark = pytest.mark.ros

CKPT_ORDER = ["joint1", "joint2", "joint3", "joint4"]  # model order
COMMAND_ORDER = ["joint3", "joint1", "joint4", "joint2"]  # joint_names parameter (command order)
PUBLISH_ORDER = ["joint4", "joint2", "joint1", "joint3"]  # JointState name[] order, different again
LIMITS = {"joint1": (-1.0, 1.0, 2.0, 40.0), "joint2": (-1.0, 1.0, 2.0, 40.0),
          "joint3": (-1.0, 1.0, 2.0, 40.0), "joint4": (-0.5, 0.5, 2.0, 40.0)}
POSITIONS = {"joint1": 0.1, "joint2": -0.2, "joint3": 0.3, "joint4": 0.9}  # joint4 beyond its limit
EXPECTED = np.array([0.3, 0.1, 0.5, -0.2])  # COMMAND_ORDER, joint4 clamped to 0.5
ARRAY_TOPIC = "/forward_position_controller/commands"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("control")
    make_checkpoint(root / "zero", CKPT_ORDER, bias=0.0)
    make_checkpoint(root / "plus", CKPT_ORDER, bias=0.05)
    make_checkpoint(root / "other_robot", ["a", "b", "c", "d"], bias=0.0)
    make_checkpoint(root / "chunked", CKPT_ORDER, bias=0.0,
                    model_overrides={"action_chunk": 4, "action_chunk_dt_s": 0.05})
    shutil.copytree(root / "zero", root / "corrupt")
    (root / "corrupt" / "model.safetensors").write_bytes(b"\x00garbage, not safetensors" * 10)
    write_limits(root / "limits.yaml", LIMITS)
    write_limits(root / "limits_missing.yaml", {k: v for k, v in LIMITS.items() if k != "joint2"})
    contract = {"name": "arm_b", "joints": CKPT_ORDER, "joint_limits": str(root / "limits.yaml"),
                "joint_states_topic": "arm_b/joint_states",
                "command": {"interface": "joint_trajectory", "controller": "arm_b_controller"}}
    make_checkpoint(root / "arm_b", CKPT_ORDER, robot=contract)
    make_checkpoint(root / "arm_b_moved", CKPT_ORDER, robot={**contract, "command": {
        "interface": "joint_trajectory", "controller": "other_controller"}})
    return root


@pytest.fixture(scope="module")
def graph():
    ros_env()
    import rclpy
    from std_msgs.msg import Float64MultiArray

    rclpy.init()
    harness = Harness("control_test_harness")
    harness.record(Float64MultiArray, ARRAY_TOPIC)
    from diagnostic_msgs.msg import DiagnosticArray

    harness.record(DiagnosticArray, "/diagnostics")
    spinner = Spinner(harness.node)
    harness.stream_joints(PUBLISH_ORDER, POSITIONS, rate_hz=100.0)
    harness.stream_latent(rate_hz=10.0)
    yield harness, spinner
    spinner.shutdown()
    harness.destroy()
    rclpy.shutdown()


_counter = [0]


@pytest.fixture
def make_node(graph, files):
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from sage_hl_ros.ros.control_node import ControlNode

    harness, spinner = graph
    created = []

    def make(activate=True, **params):
        defaults = {"model_dir": str(files / "zero"), "joint_limits_file": str(files / "limits.yaml"),
                    "joint_names": COMMAND_ORDER, "control_rate_hz": 200.0, "diagnostics_period_s": 0.25}
        defaults.update(params)
        _counter[0] += 1
        node = ControlNode(node_name=f"sage_control_{_counter[0]}",
                           parameter_overrides=[Parameter(k, value=v) for k, v in defaults.items()])
        created.append(node)
        if activate:
            assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
            spinner.add(node)
            assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        return node

    yield make
    harness.joint_stream = harness.latent_stream = True
    harness.joint_positions = dict(POSITIONS)
    for node in created:
        node.release()
        spinner.remove(node)
        node.destroy_node()
    for rec in harness.recorders.values():
        rec.clear()


def _status(node):
    return node._status.value


def _wait_status(node, value, timeout_s=10.0):
    wait_for(lambda: _status(node) == value, timeout_s, what=f"status {value} (now {_status(node)})")


def _ticks_after(node, t_s):
    """Ticks after ``t_s`` in the node's relative seconds (arrival times, ``node._now_s()``)."""
    times, statuses = node.tick_log()
    keep = times > int(t_s * 1e9) + node._origin_ns
    return times[keep], [s.value for s, k in zip(statuses, keep, strict=True) if k]


def _diag(harness, node, part, since, predicate=None, timeout_s=10.0):
    """Newest ``<node name>: <part>`` diagnostic received after ``since`` that satisfies ``predicate``."""
    return wait_diagnostic(harness, f"{node.get_name()}: {part}", since, predicate, timeout_s)


def _commands(harness, since):
    return [(t, np.array(m.data)) for t, m in harness.recorders[ARRAY_TOPIC].since(since)]


# --------------------------------------------------------------------------- tests


def test_rate_limits_and_joint_order(graph, make_node):
    harness, _ = graph
    node = make_node(enable_control=True)
    rec = harness.recorders[ARRAY_TOPIC]
    wait_for(lambda: rec.count() > 50, 15.0, what="commands")
    # The rate from the node's own tick log (node clock), not from arrival times at a subscriber on a
    # shared machine: the loop keeps its 200 Hz schedule (a deadline missed under load is skipped and
    # counted, never burst), every tick commands, and the subscriber got every command.
    window = 4.0
    t0 = time.monotonic()
    skipped0, published0 = node._loop.skipped, node._published
    ticks0 = node._ticks
    wait_for(lambda: time.monotonic() > t0 + window, window + 5.0, interval_s=0.1, what="measurement window")
    ticks, skipped, published = node._ticks - ticks0, node._loop.skipped - skipped0, node._published - published0
    times, _ = node.tick_log()
    span_s = (times[-1] - times[-ticks]) * 1e-9
    schedule_hz = (ticks + skipped - 1) / span_s
    assert 180.0 <= schedule_hz <= 220.0, f"schedule {schedule_hz:.1f} Hz, expected 200 Hz +-10%"
    assert published >= ticks - 1, f"{ticks} ticks but {published} commands"
    wait_for(lambda: rec.count() >= node._published - 2, 5.0, what="every published command received")
    lo = np.array([LIMITS[n][0] for n in COMMAND_ORDER])
    hi = np.array([LIMITS[n][1] for n in COMMAND_ORDER])
    every = np.array([c for _, c in _commands(harness, 0.0)])
    assert every.shape[1] == 4
    assert np.all(every >= lo) and np.all(every <= hi), "a command left the joint limits"
    # Names arrive in PUBLISH_ORDER, the model uses CKPT_ORDER, commands go out in COMMAND_ORDER.
    np.testing.assert_allclose(every[-1], EXPECTED, atol=1e-6)
    assert _status(node) == "ok"


def test_stale_latent_and_stale_joints_hold_within_two_ticks(graph, make_node):
    harness, _ = graph
    node = make_node(enable_control=True, latent_timeout_s=0.3, joint_state_timeout_s=0.1)
    _wait_status(node, "ok")
    for stream, kind, timeout, attr in (("latent_stream", "hold_stale_latent", 0.3, "_latent"),
                                        ("joint_stream", "hold_stale_joints", 0.1, "_joints")):
        setattr(harness, stream, False)
        _wait_status(node, kind)
        harness.joint_positions = dict(POSITIONS, joint1=0.2)  # would move joint1 if not holding
        t_hold = time.monotonic()
        last_arrival = getattr(node, attr).arrival_s
        stale_at = last_arrival + timeout
        wait_for(lambda t=stale_at: len(_ticks_after(node, t)[1]) >= 5, 5.0, what="ticks after the input went stale")
        times, statuses = _ticks_after(node, stale_at)
        # The first tick after the input went stale holds (2 allowed), and no later tick commands.
        assert len(statuses) >= 2 and kind in statuses[:2], f"hold not within 2 ticks: {statuses[:5]}"
        assert "ok" not in statuses, "a command was computed from a stale input"
        # Holds repeat the last command: never zeros, never the new measurement.
        wait_for(lambda t=t_hold: len(_commands(harness, t)) >= 20, 10.0, what="held commands")
        for _, c in _commands(harness, t_hold):
            np.testing.assert_allclose(c, EXPECTED, atol=1e-6)
        level, message, values = _diag(harness, node, "control loop", since=t_hold,
                                       predicate=lambda st, k=kind: st[2]["state"] == k)
        assert level == 1 and kind in message, (level, message)  # WARN
        harness.joint_positions = dict(POSITIONS)
        setattr(harness, stream, True)
        _wait_status(node, "ok")
        wait_for(lambda: np.allclose(_commands(harness, 0.0)[-1][1], EXPECTED, atol=1e-6), 5.0, what="settled commands")


def test_estop_latches_within_one_tick_and_only_reset_releases(graph, make_node):
    from std_msgs.msg import Bool, Empty
    from std_srvs.srv import Trigger

    harness, _ = graph
    node = make_node(enable_control=True)
    _wait_status(node, "ok")
    harness.wait_for_subscribers(Bool, "/e_stop")
    harness.wait_for_subscribers(Empty, "/e_stop/reset")

    harness.publish(Bool, "/e_stop", Bool(data=True))
    _wait_status(node, "estop", 5.0)
    arrival = node._estop_arrival_s
    harness.joint_positions = dict(POSITIONS, joint1=0.2)
    for _ in range(3):  # the trigger going quiet (data=false) must not release it
        harness.publish(Bool, "/e_stop", Bool(data=False))
    t_quiet = time.monotonic()
    wait_for(lambda: time.monotonic() > t_quiet + 0.5, 5.0, what="a quiet period")
    _, statuses = _ticks_after(node, arrival)
    assert statuses.count("ok") <= 1 and statuses[1:].count("ok") == 0, f"e-stop not latched: {statuses[:5]}"
    assert set(statuses[1:]) == {"estop"}
    for _, c in _commands(harness, t_quiet - 0.4):
        np.testing.assert_allclose(c, EXPECTED, atol=1e-6)
    level, message, values = _diag(harness, node, "control loop", since=t_quiet,
                                   predicate=lambda st: st[2]["state"] == "estop")
    assert level == 2 and values["e_stop_latched"] == "true"  # ERROR

    # Topic reset releases it; it resumes toward the new measurement.
    harness.publish(Empty, "/e_stop/reset", Empty())
    _wait_status(node, "ok", 5.0)
    wait_for(lambda: abs(_commands(harness, 0.0)[-1][1][1] - 0.2) < 1e-6, 5.0, what="resume after reset")

    # Latch again; the service releases it too.
    harness.publish(Bool, "/e_stop", Bool(data=True))
    _wait_status(node, "estop", 5.0)
    response = harness.call(Trigger, f"/{node.get_name()}/reset_e_stop")
    assert response.success and "reset" in response.message
    _wait_status(node, "ok", 5.0)


def test_estop_empty_message_type(graph, make_node):
    from std_msgs.msg import Empty

    harness, _ = graph
    node = make_node(enable_control=True, e_stop_msg_type="empty", e_stop_topic="/e_stop_empty")
    _wait_status(node, "ok")
    harness.wait_for_subscribers(Empty, "/e_stop_empty")
    harness.publish(Empty, "/e_stop_empty", Empty())
    _wait_status(node, "estop", 5.0)
    node._reset_estop("test")
    _wait_status(node, "ok", 5.0)


def test_enable_control_false_publishes_nothing(graph, make_node):
    harness, _ = graph
    node = make_node(enable_control=False)
    wait_for(lambda: node._ticks > 100 and _status(node) == "disabled", 10.0, what="disabled ticks")
    t0 = time.monotonic()
    wait_for(lambda: time.monotonic() > t0 + 1.0, 5.0, what="a quiet second")
    assert _commands(harness, t0) == [], "commands published with enable_control=false"

    results = harness.set_params(node.get_name(), {"enable_control": True})
    assert results[0].successful, results[0].reason
    wait_for(lambda: len(_commands(harness, t0)) > 20, 10.0, what="commands after enabling")
    results = harness.set_params(node.get_name(), {"enable_control": False})
    assert results[0].successful
    wait_for(lambda: _status(node) == "disabled", 5.0, what="disabled status")
    published = node._published  # the node's own count: immune to DDS delivery delays under load
    t1 = time.monotonic() + 0.5  # messages already in flight may still arrive in this margin
    wait_for(lambda: time.monotonic() > t1 + 0.5, 5.0, what="a quiet period")
    assert node._published == published, "the node published after enable_control:=false"
    assert _commands(harness, t1) == [], "commands received after enable_control:=false"
    assert harness.set_params(node.get_name(), {"enable_control": "yes"})[0].successful is False


def test_bad_joint_states_and_latents_are_diagnosed(graph, make_node):
    from sensor_msgs.msg import Image, JointState

    from sage_hl_ros.ros.convert import latent_to_msg

    harness, _ = graph
    node = make_node(enable_control=True)
    _wait_status(node, "ok")

    def joint_msg(names, positions):
        msg = JointState()
        msg.header.stamp = harness.node.get_clock().now().to_msg()
        msg.name, msg.position = names, positions
        return msg

    cases = [
        (joint_msg(PUBLISH_ORDER, [0.1, float("nan"), 0.2, 0.3]), "non-finite"),
        (joint_msg(PUBLISH_ORDER, [0.1, float("inf"), 0.2, 0.3]), "non-finite"),
        (joint_msg(["joint1", "joint2", "joint3"], [0.1, 0.2, 0.3]), "missing"),
    ]
    for i, (msg, reason) in enumerate(cases, start=1):
        harness.publish(JointState, "/joint_states", msg)
        wait_for(lambda i=i: node._rejected["joint_states"] >= i, 5.0, what=f"rejection {i}")
        assert reason in node._reject_reasons["joint_states"]
    harness.publish(Image, "/sage/latent", latent_to_msg(np.zeros(128, np.float32), None))
    wait_for(lambda: node._rejected["latent"] >= 1, 5.0, what="latent rejection")
    assert "expected 256" in node._reject_reasons["latent"]

    t0 = time.monotonic()
    _, _, values = _diag(harness, node, "control loop", since=t0,
                         predicate=lambda st: st[2]["rejected.joint_states"] == "3")
    assert values["rejected.latent"] == "1" and "missing" in values["last_reject.joint_states"]
    assert node._loop.running and node._loop.errors == 0
    assert _status(node) == "ok"  # the good stream kept it commanding


def test_three_output_interfaces(graph, make_node):
    from sensor_msgs.msg import JointState
    from trajectory_msgs.msg import JointTrajectory

    harness, _ = graph
    traj = harness.record(JointTrajectory, "/forward_position_controller/joint_trajectory")
    js = harness.record(JointState, "/joint_command")
    make_node(enable_control=True, control_rate_hz=100.0)
    make_node(enable_control=True, control_rate_hz=100.0, command_interface="joint_trajectory",
              trajectory_time_from_start_s=0.05)
    make_node(enable_control=True, control_rate_hz=100.0, command_interface="joint_state")
    arr = harness.recorders[ARRAY_TOPIC]
    for rec in (arr, traj, js):
        wait_for(lambda rec=rec: rec.count() > 20, 15.0, what="commands on every interface")

    np.testing.assert_allclose(np.array(arr.last().data), EXPECTED, atol=1e-6)
    t = traj.last()
    assert isinstance(t, JointTrajectory) and list(t.joint_names) == COMMAND_ORDER and len(t.points) == 1
    np.testing.assert_allclose(np.array(t.points[0].positions), EXPECTED, atol=1e-6)
    assert len(t.points[0].velocities) == 4
    assert t.points[0].time_from_start.sec == 0 and t.points[0].time_from_start.nanosec == 50_000_000
    j = js.last()
    assert isinstance(j, JointState) and list(j.name) == COMMAND_ORDER
    np.testing.assert_allclose(np.array(j.position), EXPECTED, atol=1e-6)
    assert j.header.stamp.sec > 0


def test_joint_trajectory_carries_the_played_chunk(graph, make_node, files):
    """K = 4 chunk, 0.05 s apart: each JointTrajectory has the command plus the chunk's points still
    ahead, 0.05 s apart, every one inside the limits (the safety filter's look-ahead)."""
    from trajectory_msgs.msg import JointTrajectory

    harness, _ = graph
    traj = harness.record(JointTrajectory, "/forward_position_controller/joint_trajectory")
    node = make_node(enable_control=True, control_rate_hz=100.0, command_interface="joint_trajectory",
                     model_dir=str(files / "chunked"), trajectory_time_from_start_s=0.02)
    assert node._chunk_dt_s == 0.05
    wait_for(lambda: sum(len(m.points) > 1 for _, m in traj.snapshot()) > 10, 15.0, what="multi-point trajectories")
    lower = np.array([LIMITS[n][0] for n in COMMAND_ORDER])
    upper = np.array([LIMITS[n][1] for n in COMMAND_ORDER])
    counts = set()
    for _, msg in traj.snapshot():
        counts.add(len(msg.points))
        assert 1 <= len(msg.points) <= 4 and list(msg.joint_names) == COMMAND_ORDER
        times = [p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in msg.points]
        np.testing.assert_allclose(np.diff(times), 0.05, atol=1e-9)
        assert times[0] == pytest.approx(0.02)
        for p in msg.points:
            pos = np.array(p.positions)
            assert np.all(pos >= lower - 1e-12) and np.all(pos <= upper + 1e-12) and len(p.velocities) == 4
    assert counts & {2, 3, 4}, counts
    np.testing.assert_allclose(np.array(traj.last().points[-1].positions), EXPECTED, atol=1e-6)


def test_reload_swaps_model_and_rejects_bad_checkpoints(graph, make_node, files, tmp_path):
    from std_srvs.srv import Trigger

    from sage_hl_ros.core.checkpoint import load_checkpoint, save_checkpoint

    harness, _ = graph
    live = tmp_path / "live"
    shutil.copytree(files / "zero", live)
    node = make_node(enable_control=True, model_dir=str(live), **_PATIENT_INPUTS)
    name = node.get_name()
    wait_for(lambda: len(_commands(harness, 0.0)) > 20, 10.0, what="commands")
    np.testing.assert_allclose(_commands(harness, 0.0)[-1][1], EXPECTED, atol=1e-6)

    # New weights in the same directory + ~/reload_model: commands shift by the new delta.
    save_checkpoint(load_checkpoint(files / "plus"), live)
    t_call = time.monotonic()
    n_ticks = node._ticks
    response = harness.call(Trigger, f"/{name}/reload_model")
    assert response.success, response.message
    plus = EXPECTED + np.array([0.05, 0.05, 0.0, 0.05])  # joint4 stays clamped at 0.5
    wait_for(lambda: np.allclose(_commands(harness, t_call)[-1][1], plus, atol=1e-6), 10.0,
             what="commands from the reloaded model")
    _assert_flowing(harness, node, t_call, n_ticks)

    # A corrupt checkpoint via the parameter: accepted as a path, rejected on load; old model keeps running.
    t_bad = time.monotonic()
    n_ticks = node._ticks
    result = harness.set_params(name, {"model_dir": str(files / "corrupt")})[0]
    assert result.successful, result.reason
    level, message, values = _diag(harness, node, "model", since=t_bad, predicate=lambda st: st[0] == 2)
    assert "safetensors" in message and values["model_dir"] == str(live)
    response = harness.call(Trigger, f"/{name}/reload_model")  # model_dir now points at the corrupt one
    assert not response.success and "safetensors" in response.message
    np.testing.assert_allclose(_commands(harness, t_bad)[-1][1], plus, atol=1e-6)
    _assert_flowing(harness, node, t_bad, n_ticks)

    # Another robot's checkpoint and a missing directory are refused too.
    result = harness.set_params(name, {"model_dir": str(files / "other_robot")})[0]
    assert result.successful
    _diag(harness, node, "model", since=time.monotonic(), predicate=lambda st: "joint set" in st[1])
    result = harness.set_params(name, {"model_dir": str(tmp_path / "nope")})[0]
    assert not result.successful and "not a directory" in result.reason
    assert node._policy.model_dir == str(live)


# Reload tests judge the reload, not input staleness (tested above): on a loaded machine this test
# process's own joint-state stream may pause for >100 ms, which would rightly hold the loop.
_PATIENT_INPUTS = {"joint_state_timeout_s": 2.0, "latent_timeout_s": 3.0}


def _assert_flowing(harness, node, t0, n_ticks):
    """Since t0: every tick commanded (no hold; the node's tick log) and the commands arrived."""
    times, statuses = node.tick_log()
    recent = statuses[-(node._ticks - n_ticks):]
    assert recent and set(s.value for s in recent) == {"ok"}, set(s.value for s in recent)
    wait_for(lambda: len(_commands(harness, t0)) > 10, 10.0, what="commands arriving since the reload")


def test_configure_failures_are_clear(graph, files):
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from sage_hl_ros.ros.control_node import ControlNode

    def configure(**params):
        base = {"model_dir": str(files / "zero"), "joint_limits_file": str(files / "limits.yaml")}
        base.update(params)
        _counter[0] += 1
        node = ControlNode(node_name=f"sage_control_cfg_{_counter[0]}",
                           parameter_overrides=[Parameter(k, value=v) for k, v in base.items()])
        try:
            return node.trigger_configure(), node
        finally:
            node.release()

    fail = TransitionCallbackReturn.FAILURE
    for params in ({"model_dir": ""}, {"model_dir": str(files / "corrupt")},
                   {"joint_names": ["joint1", "joint2", "joint3", "wrist"]},
                   {"enable_control": True, "joint_limits_file": ""},
                   {"joint_limits_file": str(files / "limits_missing.yaml")},
                   {"command_interface": "velocity"}):
        result, node = configure(**params)
        assert result == fail, params
        node.destroy_node()
    # No limits + disabled = a dry run that refuses to be enabled.
    result, node = configure(joint_limits_file="")
    assert result == TransitionCallbackReturn.SUCCESS
    from rclpy.parameter import Parameter as P

    assert not node.set_parameters([P("enable_control", value=True)])[0].successful
    node.trigger_cleanup()
    node.destroy_node()


def test_loop_ticks_on_sim_time(graph, make_node):
    from builtin_interfaces.msg import Time
    from rclpy.qos import QoSProfile
    from rosgraph_msgs.msg import Clock

    harness, _ = graph
    node = make_node(enable_control=False, use_sim_time=True)
    harness.wait_for_subscribers(Clock, "/clock")
    pub = harness.publisher(Clock, "/clock", QoSProfile(depth=10))
    sim_ns = 1000 * 10**9  # far from wall time: tick stamps must come from /clock

    def run_clock(seconds):
        nonlocal sim_ns
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            sim_ns += 5_000_000  # 1 tick of sim time per message
            pub.publish(Clock(clock=Time(sec=sim_ns // 10**9, nanosec=sim_ns % 10**9)))
            time.sleep(0.01)  # sim runs at half speed

    def run_clock_until(predicate, timeout_s=15.0):  # keep the clock going: a loaded machine may be slow
        deadline = time.monotonic() + timeout_s
        while not predicate() and time.monotonic() < deadline:
            run_clock(0.1)
        return predicate()

    assert run_clock_until(lambda: node._ticks > 20), "no ticks on sim time"
    times, _ = node.tick_log()
    assert times.min() >= 1000 * 10**9 and times.max() <= sim_ns
    paused = node._ticks
    t0 = time.monotonic()
    wait_for(lambda: time.monotonic() > t0 + 0.5, 2.0, what="a paused clock")
    assert node._ticks - paused <= 1, "the loop ticked while /clock was paused"
    assert run_clock_until(lambda: node._ticks > paused + 10), "the loop did not resume with /clock"


def test_a_clock_slower_than_the_control_rate_is_named_not_reported_slow(graph, make_node):
    """/clock moving 10 ms per update caps a 200 Hz loop at 100 ticks per sim second: the node says so
    (clock_limit_hz, a message naming both rates) and does not call itself slow; rates are per sim second."""
    from builtin_interfaces.msg import Time
    from rclpy.qos import QoSProfile
    from rosgraph_msgs.msg import Clock

    harness, _ = graph
    node = make_node(enable_control=False, use_sim_time=True, control_rate_hz=200.0)
    harness.wait_for_subscribers(Clock, "/clock")
    pub = harness.publisher(Clock, "/clock", QoSProfile(depth=10))
    sim_ns = 2000 * 10**9
    stop = [False]

    def run_clock():
        nonlocal sim_ns
        while not stop[0]:
            sim_ns += 10_000_000  # 10 ms of sim time per update: a 100 Hz clock
            pub.publish(Clock(clock=Time(sec=sim_ns // 10**9, nanosec=sim_ns % 10**9)))
            time.sleep(0.01)

    import threading

    clock = threading.Thread(target=run_clock, daemon=True)
    clock.start()
    try:
        _, _, values = _diag(harness, node, "control loop", time.monotonic(), timeout_s=30.0,
                                   predicate=lambda st: float(st[2].get("clock_limit_hz", 0)) > 0)
    finally:
        stop[0] = True
        clock.join()
    assert float(values["clock_limit_hz"]) == pytest.approx(100.0, rel=0.05), values
    # Ticks per sim second stay near the clock's rate, not the 200 asked (a 0.25 s diagnostics window
    # holds ~25 ticks, so one tick of window jitter is 4%: seen 104.2 under load).
    assert 0 < float(values["rate_hz"]) <= 1.2 * float(values["clock_limit_hz"]), values
    # At most one tick per clock update (the tick log holds sim-time stamps).
    times, _ = node.tick_log()
    assert len(np.unique(times)) == len(times)


# --------------------------------------------------------------------------- wave 2: control-path safety
def test_old_stamped_joint_state_arriving_now_holds_within_two_ticks(graph, make_node):
    """A late or replayed JointState (old header stamp, fresh arrival) must not count as fresh."""
    harness, _ = graph
    node = make_node(enable_control=True, joint_state_timeout_s=0.1)
    _wait_status(node, "ok")
    harness.joint_stamp_offset_s = -0.5
    try:
        wait_for(lambda: node._joints.arrival_s - node._joints.stamp_s > 0.4, 5.0, what="an old-stamped joint state")
        first_old = node._joints.arrival_s
        wait_for(lambda: len(_ticks_after(node, first_old)[1]) >= 5, 5.0, what="ticks after it")
        _, statuses = _ticks_after(node, first_old)
        assert "hold_stale_joints" in statuses[:2], statuses[:5]
        assert "ok" not in statuses[2:], statuses[:10]
        assert node._stale_clock == "stamp" and "header stamp" in node._status_reason
    finally:
        harness.joint_stamp_offset_s = 0.0
    _wait_status(node, "ok")


def test_best_effort_estop_publisher_latches_and_state_is_published(graph, make_node):
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from std_msgs.msg import Bool

    harness, _ = graph
    node = make_node(enable_control=True)
    _wait_status(node, "ok")
    best_effort = QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT)
    pub = harness.node.create_publisher(Bool, "/e_stop", best_effort)
    try:
        wait_for(lambda: pub.get_subscription_count() >= 1, 10.0, what="the e-stop matching a best-effort publisher")
        wait_for(lambda: pub.publish(Bool(data=True)) or node.estop.latched, 5.0, what="e-stop latched")
        _wait_status(node, "estop")
        # A late-joining operator console gets the latched state (transient-local).
        latched_qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                 durability=DurabilityPolicy.TRANSIENT_LOCAL)
        got = []
        sub = harness.node.create_subscription(Bool, f"/{node.get_name()}/e_stop_state", got.append, latched_qos)
        wait_for(lambda: got and got[-1].data is True, 10.0, what="latched e_stop_state")
        node._reset_estop("test")
        wait_for(lambda: got[-1].data is False, 10.0, what="released e_stop_state")
        harness.node.destroy_subscription(sub)
    finally:
        harness.node.destroy_publisher(pub)
    _wait_status(node, "ok")


def test_missing_heartbeat_latches_the_estop(graph, make_node):
    from std_msgs.msg import Empty

    harness, _ = graph
    beating = [True]
    pub = harness.node.create_publisher(Empty, "/deadman", 10)
    timer = harness.node.create_timer(0.05, lambda: beating[0] and pub.publish(Empty()))
    try:
        node = make_node(enable_control=True, e_stop_heartbeat_topic="/deadman", e_stop_heartbeat_timeout_s=0.5)
        _wait_status(node, "ok")
        beating[0] = False
        _wait_status(node, "estop", 10.0)
        assert "heartbeat" in node.estop.reason
        beating[0] = True  # the heartbeat returning does not release a latched e-stop
        wait_for(lambda: node._heartbeat_s is not None and node._now_s() - node._heartbeat_s < 0.2, 5.0,
                 what="heartbeat back")
        t = node._now_s()
        wait_for(lambda: len(_ticks_after(node, t)[1]) >= 20, 5.0, what="ticks")
        assert set(_ticks_after(node, t)[1]) == {"estop"}
        node._reset_estop("test")
        _wait_status(node, "ok")
    finally:
        harness.node.destroy_timer(timer)
        harness.node.destroy_publisher(pub)


def test_twenty_reloads_at_200_hz_miss_no_ticks(graph, make_node, files):
    """Reload = load, verify and warm up in the node's helper process; this interpreter only swaps.

    Judged from the node's own records (reload log, tick log). A *missed* tick is a control
    deadline that passed without a command: a tick gap of two periods or more (the loop then skips
    the deadline, ``skipped_deadlines``). The control thread runs SCHED_FIFO where allowed (the
    documented setting for a loaded machine), so what remains is mostly this process's own
    contention. On an idle machine no reload window misses a deadline. A busy machine stalls any
    process now and then, so the windows are compared with 3 s of ticks right after the reloads:
    their miss rate may not exceed 3x the outside rate's upper bound ((misses + 3) / ticks, which
    covers an outside count of 0), plus 3 deadlines: in a window the loader and executor threads
    are busy too, and one of them preempted by another process while it holds the GIL stalls the
    real-time thread (seen under a fuzz load on 2 cores: 5 missed in 254 window ticks, 1 in 639
    outside). A reload that blocked the loop (the original bug: 175 ms, 35 deadlines per reload,
    700 in this test) fails it.
    Late ticks (1.5-2 periods: the command still went out in its period) are counted and printed.
    """
    harness, _ = graph
    node = make_node(enable_control=True, realtime_priority=10, **_PATIENT_INPUTS)
    _wait_status(node, "ok")
    for k in range(20):
        path = str(files / ("plus" if k % 2 == 0 else "zero"))
        result = harness.set_params(node.get_name(), {"model_dir": path})[0]
        assert result.successful, result.reason
        wait_for(lambda k=k: node._reloads >= k + 1 and not node._loader.busy, 60.0, what=f"reload {k + 1}")
    log = node.reload_log()
    t_end = node._now_s()
    wait_for(lambda: node._now_s() - t_end > 3.0, 20.0, interval_s=0.1, what="ticks after the reloads")
    assert len(log) == 20 and not node._reload_failed
    worker = node._reload_worker
    assert (worker.calls, worker.starts) == (20, 1), "every reload ran in the one helper process"
    times, statuses = node.tick_log()
    period_ns = 1e9 / 200.0
    gaps = np.diff(times)
    late = (gaps > 1.5 * period_ns) & (gaps < 2 * period_ns)
    missed = np.maximum(np.floor(gaps / period_ns + 1e-6) - 1, 0)  # deadlines without a command per gap
    in_window = np.zeros(len(gaps), dtype=bool)
    for start_ns, swap_ns, _ in log:
        in_window |= (times[1:] >= start_ns) & (times[:-1] <= swap_ns + period_ns)
    first = int(np.searchsorted(times, log[0, 0]))
    assert all(s.value == "ok" for s in statuses[first:]), "a tick during the reloads did not command"
    outside = ~in_window
    outside[: max(first - 1, 0)] = False  # start-up ticks before the first reload do not count
    miss_in, miss_out = int(missed[in_window].sum()), int(missed[outside].sum())
    n_in, n_out = int(in_window.sum()), int(outside.sum())
    assert n_out > 400, f"only {n_out} ticks outside the reload windows"
    allowed = 3.0 * n_in * (miss_out + 3.0) / n_out + 3.0
    print(f"reloads=20 rt={node._loop.rt_status!r} parent_cpu_max_ms={log[:, 2].max():.2f} "
          f"ticks_in_reload_windows={n_in} missed_in={miss_in} (allowed {allowed:.1f}) "
          f"missed_outside={miss_out}/{n_out} late_in={int(late[in_window].sum())} "
          f"late_outside={int(late[outside].sum())}")
    assert miss_in <= allowed, (f"reload windows missed {miss_in} deadlines in {n_in} ticks; the machine's own "
                                f"stalls outside them: {miss_out} in {n_out}")
    # This interpreter's CPU per reload: unpickling the helper's result and the checks (~3 ms);
    # loading in the control process itself was 12-16 ms (and ~200 ms for a torch model build).
    assert np.median(log[:, 2]) < 10.0, f"reloads used {np.median(log[:, 2]):.1f} ms of CPU (median)"


def test_controller_joint_order_is_checked(graph, make_node):
    """position_array is order-only: a controller with another joint order is refused, a matching one verified."""
    from rclpy.node import Node
    from rclpy.parameter import Parameter

    harness, spinner = graph
    for order, expect_ok in ((list(reversed(COMMAND_ORDER)), False), (COMMAND_ORDER, True)):
        _counter[0] += 1
        name = f"fake_controller_{_counter[0]}"
        controller = Node(name, parameter_overrides=[Parameter("joints", value=order)],
                          automatically_declare_parameters_from_overrides=True)
        spinner.add(controller)
        try:
            node = make_node(enable_control=True, controller_name=name)
            wait_for(lambda n=node: n._order_note != "not checked" and not n._order_note.startswith("unverified"),
                     15.0, what="the controller joint order check")
            if expect_ok:
                assert node._order_note.startswith("verified"), node._order_note
                _wait_status(node, "ok")
            else:
                assert "refusing to command" in node._order_problem
                published = node._published
                t = node._now_s()
                wait_for(lambda n=node, t=t: len(_ticks_after(n, t)[1]) >= 20, 5.0, what="ticks")
                assert node._published == published, "commanded a controller with another joint order"
                assert not node.set_parameters([Parameter("enable_control", value=True)])[0].successful
        finally:
            spinner.remove(controller)
            controller.destroy_node()


def test_empty_topic_fails_configure_with_its_cause(graph, files, capfd):
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from sage_hl_ros.ros.control_node import ControlNode

    _counter[0] += 1
    node = ControlNode(node_name=f"sage_control_cfg_{_counter[0]}", parameter_overrides=[
        Parameter("model_dir", value=str(files / "zero")), Parameter("latent_topic", value="")])
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
    finally:
        node.release()
        node.destroy_node()
    err = capfd.readouterr().err
    assert "configure failed" in err and "latent_topic is empty" in err, err[-500:]



def test_joints_topics_interface_and_limits_come_from_the_checkpoints_robot_contract(graph, make_node, files):
    """With those parameters left empty the node is the contract's robot; a reload whose contract
    moves the controller is refused, naming both."""
    harness, _ = graph
    node = make_node(model_dir=str(files / "arm_b"), joint_names=[], joint_limits_file="")
    assert node._command_names == CKPT_ORDER and node._limits_source.startswith(str(files / "limits.yaml"))
    assert node._command_topic == "/arm_b_controller/joint_trajectory"
    name = node.get_name()
    wait_for(lambda: name in [i.node_name for i in harness.node.get_subscriptions_info_by_topic("/arm_b/joint_states")]
             and name in [i.node_name for i in harness.node.get_publishers_info_by_topic(node._command_topic)],
             10.0, what="the contract's topics in the graph")
    assert name not in [i.node_name for i in harness.node.get_subscriptions_info_by_topic("/joint_states")]
    assert harness.set_params(name, {"model_dir": str(files / "arm_b_moved")})[0].successful
    _diag(harness, node, "model", since=time.monotonic(),
          predicate=lambda st: "controller 'arm_b_controller' -> 'other_controller'" in st[1])


def test_two_namespaced_robots_on_one_graph_do_not_cross_talk(graph, files):
    """Two control nodes in namespaces r1 and r2, each fed its own latent and joint states: each
    commands its own controller (relative topics), nothing reaches the root namespace's controller."""
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import Float64MultiArray

    from sage_hl_ros.ros.control_node import ControlNode
    from sage_hl_ros.ros.convert import latent_to_msg

    harness, spinner = graph
    h = harness.node
    positions = {"r1": POSITIONS, "r2": {k: v * 0.5 for k, v in POSITIONS.items()}}
    pubs = {ns: (h.create_publisher(JointState, f"/{ns}/joint_states", 10),
                 h.create_publisher(Image, f"/{ns}/sage/latent", 10)) for ns in positions}
    recs = {ns: harness.record(Float64MultiArray, f"/{ns}/forward_position_controller/commands") for ns in positions}
    root = harness.recorders[ARRAY_TOPIC]

    def tick():
        stamp = h.get_clock().now().to_msg()
        for ns, (joints, latent) in pubs.items():
            msg = JointState(name=list(PUBLISH_ORDER), position=[float(positions[ns][n]) for n in PUBLISH_ORDER],
                             velocity=[0.0] * len(PUBLISH_ORDER))
            msg.header.stamp = stamp
            joints.publish(msg)
            latent.publish(latent_to_msg(harness.latent, stamp))

    timer = h.create_timer(0.02, tick)
    harness.joint_stream = harness.latent_stream = False  # the root streams pause: only r1/r2 have inputs
    nodes = {}
    try:
        for ns in positions:
            node = ControlNode(node_name="sage_control", namespace=ns, parameter_overrides=[
                Parameter(k, value=v) for k, v in {
                    "model_dir": str(files / "zero"), "joint_limits_file": str(files / "limits.yaml"),
                    "joint_names": COMMAND_ORDER, "enable_control": True, "check_controller_joints": False,
                    "diagnostics_period_s": 0.25}.items()])
            nodes[ns] = node
            assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
            spinner.add(node)
            assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
            assert node._command_topic == f"/{ns}/forward_position_controller/commands"
        t0 = time.monotonic()
        wait_for(lambda: all(len(r.since(t0)) > 20 for r in recs.values()), 20.0, what="commands of both robots")
        for ns, rec in recs.items():  # each follows its own joint states (the zero model commands them)
            expected = [min(positions[ns][n], 0.5) if n == "joint4" else positions[ns][n] for n in COMMAND_ORDER]
            wait_for(lambda rec=rec, e=expected: np.allclose(rec.since(t0)[-1][1].data, e, atol=1e-6), 10.0,
                     what=f"{ns} settled on its own joints")
        assert root.since(t0) == []
    finally:
        h.destroy_timer(timer)
        for node in nodes.values():
            node.release()
            spinner.remove(node)
            node.destroy_node()
        harness.joint_stream = harness.latent_stream = True


# --------------------------------------------------------------------------- the gripper's own output
GRIPPER_TOPIC = "/gripper_controller/commands"
ARM_ORDER = [n for n in COMMAND_ORDER if n != "joint4"]  # the arm's command: joint4 is the gripper
EXPECTED_ARM = EXPECTED[[COMMAND_ORDER.index(n) for n in ARM_ORDER]]


@pytest.fixture(scope="module")
def gripper_files(files):
    """Checkpoints of a robot whose joint4 is a gripper (limits [-0.5, 0.5]) on its own topic."""
    root = files / "gripper"
    contract = {"name": "arm_g", "joints": CKPT_ORDER, "joint_limits": str(files / "limits.yaml"),
                "gripper": {"joint": "joint4", "topic": "gripper_controller/commands", "mode": "position"}}
    make_checkpoint(root / "position", CKPT_ORDER, robot=contract)
    make_checkpoint(root / "open_close", CKPT_ORDER, robot={**contract, "gripper": {
        **contract["gripper"], "mode": "open_close", "open_position": 0.5, "closed_position": -0.5}})
    make_checkpoint(root / "outside", CKPT_ORDER, robot={**contract, "gripper": {
        **contract["gripper"], "mode": "open_close", "open_position": 0.8, "closed_position": -0.5}})
    return root


def _gripper_values(rec, since=0.0):
    values = [list(m.data) for _, m in rec.since(since)]
    assert all(len(v) == 1 for v in values), "a gripper command with other than one value"
    return [v[0] for v in values]


def test_the_gripper_has_its_own_topic_and_an_estop_holds_it_with_the_arm(graph, make_node, gripper_files):
    """The arm's command carries the arm's joints only; the gripper's topic gets the filtered position of
    its joint (inside its limits); a latched e-stop holds both (judged by the node's own counters)."""
    from std_msgs.msg import Bool, Float64MultiArray

    harness, _ = graph
    grip = harness.recorders.get(GRIPPER_TOPIC) or harness.record(Float64MultiArray, GRIPPER_TOPIC)
    node = make_node(enable_control=True, model_dir=str(gripper_files / "position"))
    assert node._gripper is not None and node._gripper_topic == GRIPPER_TOPIC and node._arm_names == ARM_ORDER
    arm = harness.recorders[ARRAY_TOPIC]
    wait_for(lambda: arm.count() > 20 and grip.count() > 20, 15.0, what="arm and gripper commands")
    every = np.array([c for _, c in _commands(harness, 0.0)])
    assert every.shape[1] == 3, "the arm's command carries the gripper joint"
    np.testing.assert_allclose(every[-1], EXPECTED_ARM, atol=1e-6)
    values = _gripper_values(grip)
    assert all(-0.5 <= v <= 0.5 for v in values), "a gripper command left the joint's limits"
    assert values[-1] == 0.5  # measured 0.9, filtered to the limit
    published = node._gripper_state[0]
    assert published >= len(values) - 1 and node._gripper_state[1] == 0.5
    _, _, diag = _diag(harness, node, "control loop", since=time.monotonic(),
                       predicate=lambda st: int(st[2]["gripper_commands_published"]) > published)
    assert diag["gripper_topic"] == GRIPPER_TOPIC and diag["gripper_mode"] == "position"
    assert float(diag["gripper_last_command"]) == 0.5

    # E-stop: both hold their last command while the measurements move; the gripper keeps getting it.
    harness.wait_for_subscribers(Bool, "/e_stop")
    harness.publish(Bool, "/e_stop", Bool(data=True))
    _wait_status(node, "estop", 5.0)
    harness.joint_positions = dict(POSITIONS, joint1=0.2, joint4=-0.3)
    held = node._gripper_state[0]
    wait_for(lambda: node._gripper_state[0] > held + 20, 10.0, what="gripper holds published")
    t = node._now_s()
    wait_for(lambda: len(_ticks_after(node, t)[1]) >= 10, 5.0, what="e-stop ticks")
    assert set(_ticks_after(node, t)[1]) == {"estop"}
    assert node._gripper_state[1] == 0.5, "the gripper followed a measurement during an e-stop"
    t_rec = time.monotonic()
    wait_for(lambda: len(_gripper_values(grip, t_rec)) >= 10 and len(_commands(harness, t_rec)) >= 10, 10.0,
             what="held commands received")
    assert set(_gripper_values(grip, t_rec)) == {0.5}
    for _, c in _commands(harness, t_rec):
        np.testing.assert_allclose(c, EXPECTED_ARM, atol=1e-6)
    # Reset: both follow the new measurements again (the gripper through the filter, to -0.3).
    node._reset_estop("test")
    _wait_status(node, "ok", 5.0)
    wait_for(lambda: abs(node._gripper_state[1] + 0.3) < 1e-6, 10.0, what="the gripper following after reset")
    assert all(-0.5 <= v <= 0.5 for v in _gripper_values(grip))


def test_gripper_with_the_named_interfaces_leaves_the_gripper_out(graph, make_node, gripper_files):
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray
    from trajectory_msgs.msg import JointTrajectory

    harness, _ = graph
    traj = harness.record(JointTrajectory, "/forward_position_controller/joint_trajectory")
    js = harness.record(JointState, "/joint_command")
    grips = [harness.record(Float64MultiArray, f"/g_{k}") for k in ("traj", "js")]
    model = str(gripper_files / "position")
    make_node(enable_control=True, control_rate_hz=100.0, model_dir=model, command_interface="joint_trajectory",
              gripper_topic="/g_traj")
    make_node(enable_control=True, control_rate_hz=100.0, model_dir=model, command_interface="joint_state",
              gripper_topic="/g_js")
    for rec in (traj, js, *grips):
        wait_for(lambda rec=rec: rec.count() > 20, 15.0, what="commands on every topic")
    t = traj.last()
    assert list(t.joint_names) == ARM_ORDER and len(t.points[0].velocities) == 3
    np.testing.assert_allclose(np.array(t.points[0].positions), EXPECTED_ARM, atol=1e-6)
    j = js.last()
    assert list(j.name) == ARM_ORDER
    np.testing.assert_allclose(np.array(j.position), EXPECTED_ARM, atol=1e-6)
    for rec in grips:
        assert _gripper_values(rec)[-1] == 0.5


def test_open_close_gripper_drives_the_loopback_robot_and_a_reload_may_not_change_it(graph, make_node,
                                                                                     gripper_files):
    """The loopback stand-in takes the gripper's topic: an open/close gripper measured at 0.3 is
    commanded open (0.5, the nearer of 0.5 / -0.5) and the simulated joint gets there, while the arm's
    array carries the other three joints. A checkpoint whose gripper is another mode is refused."""
    from rclpy.parameter import Parameter

    from sage_hl_ros.ros.loopback_robot_node import LoopbackRobot

    harness, spinner = graph
    robot = LoopbackRobot(node_name="loopback_gripper", parameter_overrides=[Parameter(k, value=v) for k, v in {
        "joint_names": CKPT_ORDER, "gripper_joint": "joint4", "gripper_topic": "/loop_g/gripper",
        "controller_name": "loop_g_controller", "joint_states_topic": "/loop_g/joint_states",
        "initial_positions": [0.1, -0.2, 0.3, 0.3], "rate_hz": 100.0}.items()])
    spinner.add(robot)
    try:
        node = make_node(enable_control=True, model_dir=str(gripper_files / "open_close"), joint_names=CKPT_ORDER,
                         controller_name="loop_g_controller", joint_states_topic="/loop_g/joint_states",
                         gripper_topic="/loop_g/gripper", check_controller_joints=False, **_PATIENT_INPUTS)
        wait_for(lambda: robot.gripper_commands_received > 10 and robot.position[3] > 0.49, 20.0,
                 what="the loopback's gripper joint opened")
        assert robot.commands_received > 10 and robot.commands_rejected == 0, robot.commands_rejected
        assert set(np.unique(robot.command[3:])) == {0.5}
        np.testing.assert_allclose(robot.position[:3], [0.1, -0.2, 0.3], atol=1e-6)  # the arm stays put
        assert node._gripper_state[1] == 0.5 and node._gripper.mode == "open_close"

        assert harness.set_params(node.get_name(), {"model_dir": str(gripper_files / "position")})[0].successful
        _, message, _ = _diag(harness, node, "model", since=time.monotonic(),
                              predicate=lambda st: "gripper" in st[1] and st[0] == 2, timeout_s=60.0)
        assert "mode open_close (open 0.5, closed -0.5)" in message and "mode position" in message, message
        assert node._policy.model_dir == str(gripper_files / "open_close")
    finally:
        spinner.remove(robot)
        robot.destroy_node()


def test_gripper_configure_failures_name_their_cause(graph, files, gripper_files, capfd):
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from sage_hl_ros.ros.control_node import ControlNode

    cases = [({"model_dir": str(files / "zero"), "gripper_topic": "/g"}, "has no gripper"),
             ({"model_dir": str(gripper_files / "outside")}, "config.robot.gripper.open_position: 0.8 is outside"),
             ({"model_dir": str(gripper_files / "position"), "gripper_topic": ARRAY_TOPIC},
              "is the arm's command topic")]
    for params, fragment in cases:
        _counter[0] += 1
        node = ControlNode(node_name=f"sage_control_cfg_{_counter[0]}", parameter_overrides=[
            Parameter(k, value=v) for k, v in {"joint_limits_file": str(files / "limits.yaml"), **params}.items()])
        try:
            assert node.trigger_configure() == TransitionCallbackReturn.FAILURE, params
        finally:
            node.release()
            node.destroy_node()
        err = capfd.readouterr().err
        assert "configure failed" in err and fragment in err, (fragment, err[-600:])
