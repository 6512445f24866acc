"""The GR00T teacher node as a separate process on a real ROS graph, against the protocol stand-in
(sage_hl_ros.groot.standin, in this process) over real ZeroMQ, for both protocol versions.

Checked from the node's own records (its labels' stamps, its /diagnostics counters, its log):
labels answer the observation they were computed from (stamp and value: the stand-in's chunk[0]
is the IK expert's command for the joint state sent), the chunk goes out as a JointTrajectory, every
kind of bad server (error reply, wrong shapes, NaN, a pickle, a non-msgpack reply, too slow, down,
wrong token) gives a diagnostic and no label without killing the node, labels resume when the
server is back, and the API token never appears in the node's output or diagnostics.
"""

from __future__ import annotations

import math
import os
import sys
import threading

import numpy as np
import pytest
from ros_harness import (
    Harness,
    Spinner,
    read_log,
    ros_args,
    ros_env,
    start_process,
    stop_process,
    wait_diagnostic,
    wait_for,
)

pytestmark = pytest.mark.ros

os.environ.setdefault("MUJOCO_GL", "egl")  # the stand-in's ReachExpert imports mujoco

JOINTS = [f"joint{i}" for i in range(1, 8)]
HOME = np.array([0.0, 0.35, 0.0, -2.1, 0.0, 2.45, 0.0])
TARGET = (0.5, 0.05, 0.04)
TOKEN = "tok-9f3a-SECRET-groot-never-log"
DIAG = "groot_teacher: teacher"
TIMEOUT_S = 0.5


def _ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class Feed:
    """Joint states at 50 Hz, each with distinct positions (remembered by stamp), a 64x64 camera at
    10 Hz, and the target once (transient local, stamped before every joint state)."""

    def __init__(self, harness: Harness):
        from geometry_msgs.msg import PointStamped
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image, JointState

        from sage_hl_ros.ros.convert import numpy_to_image

        node = harness.node
        self.lock = threading.Lock()
        self.sent: dict[int, np.ndarray] = {}
        self._k = 0
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        target = PointStamped()
        target.header.stamp = node.get_clock().now().to_msg()
        target.point.x, target.point.y, target.point.z = TARGET
        self._target_pub = node.create_publisher(PointStamped, "/sim/target", latched)
        self._target_pub.publish(target)
        joints_pub = harness.publisher(JointState, "/joint_states")
        image_pub = harness.publisher(Image, "/rgb")
        frame = np.zeros((64, 64, 3), dtype=np.uint8)
        frame[20:40, 20:40, 0] = 255

        def joints():
            msg = JointState()
            msg.header.stamp = node.get_clock().now().to_msg()
            msg.name = list(JOINTS)
            q = HOME + 0.05 * np.sin(0.1 * self._k + np.arange(7))
            self._k += 1
            msg.position = [float(v) for v in q]
            with self.lock:
                self.sent[_ns(msg.header.stamp)] = q
            joints_pub.publish(msg)

        def image():
            image_pub.publish(numpy_to_image(frame, "rgb8", node.get_clock().now().to_msg(), "camera"))

        self._timers = [node.create_timer(0.02, joints), node.create_timer(0.1, image)]

    def q_at(self, stamp_ns: int) -> np.ndarray | None:
        with self.lock:
            return self.sent.get(stamp_ns)


@pytest.fixture(scope="module")
def harness():
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import JointState
    from trajectory_msgs.msg import JointTrajectory

    ros_env()
    rclpy.init()
    h = Harness("groot_teacher_test")
    h.record(DiagnosticArray, "/diagnostics")
    h.record(JointState, "/teacher/joint_command")
    h.record(JointTrajectory, "/teacher/joint_trajectory")
    spinner = Spinner(h.node)
    h.feed = Feed(h)
    try:
        yield h
    finally:
        spinner.shutdown()
        h.destroy()
        rclpy.shutdown()


@pytest.fixture(scope="module")
def expert():
    from sage_hl_ros.sim.expert import ReachExpert

    return ReachExpert()


def _standin(version: str, port: int = 0, token: str = TOKEN):
    from sage_hl_ros.groot.modality_map import load_modality_map
    from sage_hl_ros.groot.standin import StandinServer
    from sage_hl_ros.paths import config_file

    return StandinServer(load_modality_map(config_file("groot/sim_arm.yaml")), version, port=port,
                         api_token=token).start()


class Teacher:
    def __init__(self, version, server, proc):
        self.version, self.server, self.proc = version, server, proc


@pytest.fixture(scope="module", params=["n1.5", "n1.6"])
def teacher(request, harness, tmp_path_factory):
    """One node process per protocol, protocol 'auto' (detected from the server's modality config);
    the token comes from the parameter for n1.6 and from the environment for n1.5."""
    version = request.param
    for rec in harness.recorders.values():  # the previous protocol's node had the same name
        rec.clear()
    server = _standin(version)
    params = {"endpoint": server.endpoint, "protocol": "auto", "rate_hz": 10.0, "timeout_s": TIMEOUT_S,
              "diagnostics_period_s": 0.5}
    env_token = version == "n1.5"
    if not env_token:
        params["api_token"] = TOKEN
    log = tmp_path_factory.mktemp(f"groot_{version}") / "teacher.log"
    saved = os.environ.get("SAGE_GROOT_API_TOKEN")
    if env_token:
        os.environ["SAGE_GROOT_API_TOKEN"] = TOKEN
    try:
        proc = start_process([sys.executable, "-m", "sage_hl_ros.ros.groot_teacher_node"] + ros_args(params), log)
    finally:
        if saved is None:
            os.environ.pop("SAGE_GROOT_API_TOKEN", None)
        else:
            os.environ["SAGE_GROOT_API_TOKEN"] = saved
    t = Teacher(version, server, proc)
    try:
        yield t
    finally:
        code, killed = stop_process(proc)
        t.server.stop()
        text = read_log(proc)
        assert not killed and code == 0, f"teacher exited {code} (killed={killed}):\n{text[-3000:]}"
        assert "Traceback" not in text, text[-3000:]
        assert TOKEN not in text, "the API token appeared in the node's output"


def _diag(harness, predicate=None, timeout_s: float = 20.0, since: float = 0.0):
    """Newest teacher diagnostic (level, message, values) received after ``since`` matching ``predicate``."""
    return wait_diagnostic(harness, DIAG, since, predicate, timeout_s)


def _count(st, key: str) -> int:
    return int(st[2][key])


def _alive(teacher):
    assert teacher.proc.poll() is None, f"teacher died:\n{read_log(teacher.proc)[-3000:]}"


def _labels_flowing(harness, teacher, more: int = 3, timeout_s: float = 30.0) -> int:
    now = _count(_diag(harness), "labels")
    st = _diag(harness, lambda s: _count(s, "labels") >= now + more, timeout_s)
    _alive(teacher)
    return _count(st, "labels")


def test_labels_answer_their_observation(harness, teacher, expert):
    import time

    t0 = time.monotonic()
    # OK level: labelling, and the map agrees with the server's modality config
    st = _diag(harness, lambda s: _count(s, "labels") >= 5 and s[0] == 0, timeout_s=60.0)
    assert st[2]["protocol"] == teacher.version and st[2]["requested_protocol"] == "auto"
    assert st[2]["map_problems"] == "" and st[1] == "labelling", st
    rec = harness.recorders["/teacher/joint_command"]
    labels = wait_for(lambda: (lambda got: got if len(got) >= 3 else None)([m for _, m in rec.since(t0)]),
                      10.0, what="labels")
    target32 = np.array(TARGET, dtype=np.float32).astype(np.float64)
    for msg in labels:
        assert list(msg.name) == JOINTS
        q = harness.feed.q_at(_ns(msg.header.stamp))
        assert q is not None, "label stamp is not the stamp of a joint state that was sent"
        want = expert.command(q.astype(np.float32).astype(np.float64), target32)
        np.testing.assert_allclose(np.array(msg.position), want, atol=1e-5)
    stamps = [_ns(m.header.stamp) for m in labels]
    assert len(set(stamps)) == len(stamps), "a joint state was answered twice"


def test_chunk_goes_out_as_a_trajectory(harness, teacher):
    import time

    t0 = time.monotonic()
    trajs = wait_for(lambda: [m for _, m in harness.recorders["/teacher/joint_trajectory"].since(t0)] or None,
                     20.0, what="a JointTrajectory")
    traj = trajs[0]
    assert list(traj.joint_names) == JOINTS and len(traj.points) == 16
    for i, point in enumerate(traj.points):
        assert math.isclose(point.time_from_start.sec + point.time_from_start.nanosec * 1e-9, (i + 1) * 0.1,
                            abs_tol=1e-9)
        assert len(point.positions) == 7
    stamp = _ns(traj.header.stamp)
    label = wait_for(lambda: next((m for _, m in harness.recorders["/teacher/joint_command"].snapshot()
                                   if _ns(m.header.stamp) == stamp), None), 10.0, what="the chunk's label")
    np.testing.assert_array_equal(np.array(label.position), np.array(traj.points[0].positions))
    assert harness.feed.q_at(stamp) is not None


FAULTS = [("error", "server_errors"), ("wrong_shape", "bad_replies"), ("nan", "bad_replies"),
          ("pickle", "bad_replies"), ("garbage", "bad_replies"), ("slow", "timeouts")]


@pytest.mark.parametrize("fault,counter", FAULTS, ids=[f for f, _ in FAULTS])
def test_bad_server_gives_a_diagnostic_and_no_label(harness, teacher, fault, counter, tmp_path):
    _labels_flowing(harness, teacher)
    marker = tmp_path / "unpickled"
    server = teacher.server
    server.pickle_marker, server.delay_s = str(marker), 2 * TIMEOUT_S
    before = _count(_diag(harness), counter)
    server.fault = fault
    try:
        first = _diag(harness, lambda s: _count(s, counter) >= before + 1)
        # Every request sent after the first failure was answered under the fault: no label since.
        later = _diag(harness, lambda s: _count(s, counter) >= _count(first, counter) + 2)
        assert _count(later, "labels") == _count(first, "labels"), (first, later)
        assert later[0] == 2, later  # ERROR level while failing
        assert later[2]["last_error"], later
        _alive(teacher)
    finally:
        server.fault = "none"
    _labels_flowing(harness, teacher)
    assert not marker.exists(), "the pickled payload was unpickled"
    if fault == "slow":
        assert _count(_diag(harness), "reconnects") >= 2  # the REQ socket was rebuilt after each timeout


def test_server_down_then_back_and_wrong_token(harness, teacher):
    _labels_flowing(harness, teacher)
    port = teacher.server.port
    teacher.server.stop()
    before = _count(_diag(harness), "timeouts")
    first = _diag(harness, lambda s: _count(s, "timeouts") >= before + 1)
    later = _diag(harness, lambda s: _count(s, "timeouts") >= _count(first, "timeouts") + 2)
    assert _count(later, "labels") == _count(first, "labels")
    _alive(teacher)

    teacher.server = _standin(teacher.version, port, token="another-token")  # back, but the token is wrong
    errors = _count(_diag(harness), "server_errors")
    st = _diag(harness, lambda s: _count(s, "server_errors") >= errors + 2)
    assert "Unauthorized" in st[2]["last_error"], st
    assert _count(_diag(harness), "labels") == _count(st, "labels")

    teacher.server.stop()
    teacher.server = _standin(teacher.version, port)  # the right server again
    _labels_flowing(harness, teacher)


def test_token_never_in_diagnostics(harness, teacher):
    _diag(harness)
    for _, msg in harness.recorders["/diagnostics"].snapshot():
        for st in msg.status:
            assert TOKEN not in st.message and all(TOKEN not in kv.value for kv in st.values)
    assert TOKEN not in read_log(teacher.proc)
