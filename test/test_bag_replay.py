"""sage_replay through a real ROS graph, on a bag recorded by sage_recorder in this module.

The bag (module fixture): the synthetic sensors node (camera/depth 32x32, audio, tactile; all
best-effort publishers, so the recorder's reliable-until-discovered subscriptions must switch to
best-effort) and 7-joint joint states from this test process, recorded for about 4 s.

Checks: replayed messages are the bag's bytes (compared on raw subscriptions, see
test_bag_recorder for why raw), in order, with the bag's timing scaled by ``rate``; ``/clock``
follows the bag's timeline; offset, topic filter and loop work; and the runtime nodes started
with ``use_sim_time:=true`` run on the replayed clock: they produce latents and commands while
the bag plays, stamp their diagnostics with bag time, and stop ticking when the clock stops.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from ros_harness import Harness, Spinner, read_log, ros_args, ros_env, script, start_process, stop_process, wait_for

pytestmark = pytest.mark.ros

JOINTS = [f"joint{i}" for i in range(1, 8)]
POSITIONS = {j: 0.05 * (i + 1) for i, j in enumerate(JOINTS)}  # inside every limit below
SENSOR_TOPICS = ["/camera/image_raw", "/camera/depth/image_raw", "/audio/frames", "/tactile/array"]
RECORD_S = 4.0


class RawLog:
    """(receive monotonic time, serialized bytes) from a raw subscription."""

    def __init__(self, node, msg_type, topic, qos):
        self.items: list[tuple[float, bytes]] = []
        self._lock = threading.Lock()
        self.sub = node.create_subscription(msg_type, topic, self._cb, qos, raw=True)

    def _cb(self, data):
        t = time.monotonic()
        with self._lock:
            self.items.append((t, bytes(data)))

    def snapshot(self):
        with self._lock:
            return list(self.items)

    def clear(self):
        with self._lock:
            self.items.clear()


def _reliable(depth=500):
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)


def _recorder_received(harness: Harness, name: str, topic: str) -> int:
    from ros_harness import diag_statuses

    rec = harness.recorders["/diagnostics"]
    for _t, msg in reversed(rec.snapshot()):
        st = diag_statuses(msg).get(f"sage_recorder: {name}")
        if st is not None:
            return int(st[2].get(f"received {topic}", "0"))
    return 0


def _read_bag(bag: Path) -> dict[str, list[tuple[int, bytes]]]:
    from rosbags.rosbag2 import Reader

    out: dict[str, list[tuple[int, bytes]]] = {}
    with Reader(bag) as reader:
        for conn, t, data in reader.messages():
            out.setdefault(conn.topic, []).append((t, bytes(data)))
    return out


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    ros_env()
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray

    rclpy.init()
    harness = Harness("bag_replay_test")
    harness.record(DiagnosticArray, "/diagnostics")
    spinner = Spinner(harness.node)
    yield harness
    spinner.shutdown()
    harness.destroy()
    rclpy.shutdown()


@pytest.fixture(scope="module")
def recorded(graph, tmp_path_factory):
    """Record sensors + joint states for RECORD_S seconds through the real graph."""
    from sage_hl_ros.bags.info import bag_info
    from sage_hl_ros.launch_table import STAND_IN_NODES
    from sage_hl_ros.tools.bringup import node_command

    harness = graph
    root = tmp_path_factory.mktemp("replay")
    bag = root / "bag"
    sensors_spec = next(s for s in STAND_IN_NODES if s.name == "synthetic_sensors")
    sensors = start_process(node_command(sensors_spec, [], {"camera_width_px": 32, "camera_height_px": 32}),
                            root / "sensors.log")
    rec = start_process([script("sage_recorder")] + ros_args(
        {"output_dir": str(bag), "topics": SENSOR_TOPICS + ["/joint_states"], "diagnostics_period_s": 0.2,
         "discovery_period_s": 0.3, "fsync": False}) + ["-r", "__node:=rec_for_replay"], root / "recorder.log")
    try:
        harness.stream_joints(JOINTS, POSITIONS, rate_hz=100.0)
        for topic in ("/camera/image_raw", "/joint_states", "/tactile/array"):
            wait_for(lambda topic=topic: _recorder_received(harness, "rec_for_replay", topic) > 0, 60.0,
                     what=f"the recorder receiving {topic}")
        time.sleep(RECORD_S)
        code, killed = stop_process(rec, grace_s=20.0)
        assert code == 0 and not killed, read_log(rec)
    finally:
        harness.joint_stream = False
        stop_process(rec)
        stop_process(sensors)
    info = bag_info(bag)
    assert {t.name for t in info.topics} >= {"/camera/image_raw", "/joint_states", "/tactile/array"}
    assert info.topic("/joint_states").count > 100
    return bag


def _replay(tmp_path, bag, name, params):
    cmd = [script("sage_replay")] + ros_args({"bag": str(bag), "start_delay_s": 1.5, **params}) + \
        ["-r", f"__node:={name}"]
    return start_process(cmd, tmp_path / f"{name}.log")


def test_replay_is_byte_exact_timed_and_publishes_clock(graph, recorded, tmp_path):
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image, JointState
    from std_srvs.srv import Trigger

    node = graph.node
    bag = _read_bag(recorded)
    joints = RawLog(node, JointState, "/joint_states", _reliable())
    camera = RawLog(node, Image, "/camera/image_raw", _reliable())
    clock = graph.record(Clock, "/clock")
    rate = 2.0
    # Start paused; resume once our subscriptions have matched the replayer's publishers (and the
    # service round trip shows it has discovered us): then nothing is lost to discovery.
    proc = _replay(tmp_path, recorded, "replay_exact", {"rate": rate, "start_paused": True, "start_delay_s": 0.0})
    try:
        wait_for(lambda: joints.sub.get_publisher_count() >= 1 and camera.sub.get_publisher_count() >= 1, 30.0,
                 what="the replayer's publishers")
        wait_for(lambda: clock.count() >= 3, 30.0, what="/clock while paused")
        held = {m.clock.sec * 1_000_000_000 + m.clock.nanosec for _t, m in clock.snapshot()}
        assert held == {min(t for v in bag.values() for t, _d in v)}  # paused: /clock holds the bag's start
        assert not joints.snapshot()
        assert graph.call(Trigger, "/replay_exact/resume").success
        assert proc.wait(60) == 0, read_log(proc)  # exits by itself when the bag is done
    finally:
        stop_process(proc)
    # Every message, byte-exact, in order.
    assert [d for _t, d in joints.snapshot()] == [d for _t, d in bag["/joint_states"]]
    assert [d for _t, d in camera.snapshot()] == [d for _t, d in bag["/camera/image_raw"]]
    # Timing: the bag's span divided by the rate (never faster; slower only by scheduling delays).
    bag_span = (bag["/joint_states"][-1][0] - bag["/joint_states"][0][0]) * 1e-9
    wall = joints.snapshot()
    wall_span = wall[-1][0] - wall[0][0]
    assert wall_span >= 0.8 * bag_span / rate, (wall_span, bag_span)
    assert wall_span <= bag_span / rate + 3.0, (wall_span, bag_span)
    # /clock: the bag's timeline, monotonic, about clock_rate_hz per wall second.
    ticks = [m.clock.sec * 1_000_000_000 + m.clock.nanosec for _t, m in clock.snapshot()]
    start = min(t for v in bag.values() for t, _d in v)
    end = max(t for v in bag.values() for t, _d in v)
    assert len(ticks) > 0.3 * 100 * bag_span / rate
    assert ticks == sorted(ticks)
    assert start <= ticks[0] and ticks[-1] <= end
    assert ticks[-1] - ticks[0] > 0.8 * (end - start)
    node.destroy_subscription(joints.sub)
    node.destroy_subscription(camera.sub)
    clock.clear()


def test_replay_offset_topic_filter_and_loop(graph, recorded, tmp_path):
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image, JointState

    node = graph.node
    bag = _read_bag(recorded)
    start = min(t for v in bag.values() for t, _d in v)
    joints = RawLog(node, JointState, "/joint_states", _reliable())
    camera = RawLog(node, Image, "/camera/image_raw", _reliable())
    clock = graph.recorders["/clock"] if "/clock" in graph.recorders else graph.record(Clock, "/clock")
    clock.clear()
    proc = _replay(tmp_path, recorded, "replay_loop", {"rate": 4.0, "loop": True, "start_offset_s": 1.0,
                                                       "topics": ["/joint_states"]})

    def clock_ns():
        return [m.clock.sec * 1_000_000_000 + m.clock.nanosec for _t, m in clock.snapshot()]

    def jumped_back():
        ticks = clock_ns()
        return any(b < a for a, b in zip(ticks, ticks[1:], strict=False))

    try:
        # Looping: the clock jumps back to start + offset at least once.
        wait_for(jumped_back, 60.0, what="a loop (clock jump back)")
        assert proc.poll() is None  # still looping
        code, killed = stop_process(proc, grace_s=20.0)
        assert code == 0 and not killed, read_log(proc)
    finally:
        stop_process(proc)
    assert not camera.snapshot()  # filtered out
    offset_ns = start + 1_000_000_000
    allowed = {d for t, d in bag["/joint_states"] if t >= offset_ns}
    skipped = {d for t, d in bag["/joint_states"] if t < offset_ns - 50_000_000}
    got = [d for _t, d in joints.snapshot()]
    assert got and set(got) <= allowed and not (set(got) & skipped)
    assert min(clock_ns()) >= offset_ns
    node.destroy_subscription(joints.sub)
    node.destroy_subscription(camera.sub)


def test_replay_drives_runtime_nodes_on_sim_time(graph, recorded, tmp_path):
    from lifecycle_msgs.srv import GetState
    from sensor_msgs.msg import Image
    from std_msgs.msg import Float64MultiArray

    from sage_hl_ros.launch_table import RUNTIME_NODES
    from sage_hl_ros.paths import config_file
    from sage_hl_ros.tools.bringup import node_command
    from sage_hl_ros.tools.models import make_synthetic_checkpoint

    harness = graph
    ckpt = tmp_path / "ckpt"
    make_synthetic_checkpoint(config_file("model.yaml"), ckpt, steps=0, image_px=32, log=lambda *_: None)
    limits = tmp_path / "limits.yaml"
    limits.write_text("joint_limits:\n" + "".join(
        f"  {j}: {{position_min_rad: -2.0, position_max_rad: 2.0, velocity_max_rad_s: 2.0, "
        f"acceleration_max_rad_s2: 40.0}}\n" for j in JOINTS))
    params = [config_file("sage_hl.yaml")]
    common = {"model_dir": str(ckpt), "autostart": True, "use_sim_time": True, "diagnostics_period_s": 0.5}
    procs = {}
    for spec in RUNTIME_NODES:
        overrides = dict(common)
        if spec.name == "sage_control":
            overrides.update(enable_control=True, joint_limits_file=str(limits))
        procs[spec.name] = start_process(node_command(spec, params, overrides), tmp_path / f"{spec.name}.log")
    commands = harness.record(Float64MultiArray, "/forward_position_controller/commands")
    latents = harness.record(Image, "/sage/latent")
    diags = harness.recorders["/diagnostics"]
    replay = None
    try:
        for name in procs:  # both configured (checkpoint loaded) and active
            def active(name=name):
                assert procs[name].poll() is None, read_log(procs[name])
                try:
                    return harness.call(GetState, f"/{name}/get_state", timeout_s=2.0).current_state.id == 3
                except AssertionError:
                    return False

            wait_for(active, 120.0, interval_s=0.2, what=f"{name} active")
        time.sleep(1.0)
        assert commands.count() == 0  # sim time without /clock: the loops do not tick
        commands.clear()
        latents.clear()
        diags.clear()
        replay = _replay(tmp_path, recorded, "replay_runtime", {"rate": 1.0})
        assert replay.wait(60) == 0, read_log(replay)
        t_done = time.monotonic()
        n_cmd, n_lat = commands.count(), latents.count()
        time.sleep(1.5)
        for name, proc in procs.items():
            assert proc.poll() is None, f"{name} died:\n{read_log(proc)}"
    finally:
        if replay is not None:
            stop_process(replay)
        for proc in procs.values():
            stop_process(proc)
    bag = _read_bag(recorded)
    start = min(t for v in bag.values() for t, _d in v)
    end = max(t for v in bag.values() for t, _d in v)
    # ~RECORD_S s of bag: the 200 Hz control loop and the 10 Hz H loop ran on the replayed clock.
    assert n_cmd > 50, f"{n_cmd} commands\n{read_log(procs['sage_control'])[-3000:]}"
    assert n_lat > 5, f"{n_lat} latents\n{read_log(procs['sage_context'])[-3000:]}"
    cmd = commands.last()
    assert len(cmd.data) == len(JOINTS)
    # When the clock stopped, so did the loops (they follow /clock, not the wall clock).
    late = [m for t, m in commands.snapshot() if t > t_done + 0.5]
    assert not late, f"{len(late)} commands after the replay ended"
    # Their diagnostics are stamped with the bag's time, not with the wall clock of this run.
    stamps = [m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec for _t, m in diags.snapshot()
              if any(st.name.startswith("sage_control") for st in m.status)]
    assert stamps, "no diagnostics from sage_control during the replay"
    assert all(start <= s <= end + 500_000_000 for s in stamps), (start, end, stamps[:3])
    assert time.time_ns() - end > 2_000_000_000  # wall time is well past the bag: the check above means something


def test_replay_never_commands_the_robot_unless_asked(graph, tmp_path):
    """A bag holding what the recorder stores by default: the command topics, the e-stop pair and
    /diagnostics beside joint states. Default replay publishes none of the former (no publisher
    even exists, and the log names each skipped topic); ``--include-commands`` replays them all and
    warns, naming them."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Bool, Empty, Float64MultiArray
    from std_srvs.srv import Trigger
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    from sage_hl_ros.bags.bag_writer import BagWriter

    node = graph.node
    n = 20
    unsafe = {
        "/forward_position_controller/commands": (Float64MultiArray, Float64MultiArray(data=[0.1] * 7)),
        "/forward_position_controller/joint_trajectory": (JointTrajectory, JointTrajectory(
            joint_names=JOINTS, points=[JointTrajectoryPoint(positions=[0.1] * 7)])),
        "/joint_command": (JointState, JointState(name=JOINTS, position=[0.1] * 7)),
        "/e_stop": (Bool, Bool(data=True)),
        "/e_stop/reset": (Empty, Empty()),
        "/diagnostics": (DiagnosticArray, DiagnosticArray(status=[DiagnosticStatus(name="fake", message="ok")])),
    }
    topics = {**unsafe, "/joint_states": (JointState, JointState(name=JOINTS, position=[0.2] * 7))}
    bag = tmp_path / "bag"
    with BagWriter(bag) as writer:
        ids = {t: writer.add_connection(t, f"{cls.__module__.split('.')[0]}/msg/{cls.__name__}")
               for t, (cls, _msg) in topics.items()}
        for i in range(n):
            for t, (_cls, msg) in topics.items():
                writer.write(ids[t], 1_700_000_000_000_000_000 + i * 10_000_000, serialize_message(msg))

    def replay(name, *flags):
        logs = {t: RawLog(node, cls, t, _reliable()) for t, (cls, _msg) in topics.items()}
        proc = start_process([script("sage-hl-bag"), "replay", str(bag), "--start-paused", "--no-clock", *flags,
                              "--ros-args", "-r", f"__node:={name}"], tmp_path / f"{name}.log")
        try:
            listening = [t for t in topics if t not in unsafe or flags]
            wait_for(lambda: all(logs[t].sub.get_publisher_count() >= 1 for t in listening), 30.0,
                     what="the replayer's publishers")
            def resumed():
                assert proc.poll() is None, read_log(proc)
                try:
                    return graph.call(Trigger, f"/{name}/resume", timeout_s=5.0).success
                except AssertionError:  # service not up yet on a busy machine
                    return False

            wait_for(resumed, 60.0, what="resume")
            assert proc.wait(60) == 0, read_log(proc)
        finally:
            stop_process(proc)
        publishers = {t: node.count_publishers(t) for t in unsafe}
        counts = {t: len(log.snapshot()) for t, log in logs.items()}
        for log in logs.values():
            node.destroy_subscription(log.sub)
        return counts, read_log(proc), publishers

    counts, log, _ = replay("replay_safe")
    assert counts == {**dict.fromkeys(unsafe, 0), "/joint_states": n}, counts
    assert "not replaying 6 topic(s) that would act on a live robot" in log, log
    assert all(t in log for t in unsafe) and "--include-commands" in log
    counts, log, _ = replay("replay_commands", "--include-commands")
    assert counts == dict.fromkeys(topics, n), counts
    warning = next(line for line in log.splitlines() if "REPLAYING COMMAND / E-STOP / DIAGNOSTICS TOPICS" in line)
    assert all(t in warning for t in unsafe), warning
