"""The experience recorder: the pure bag writer/repair, and sage_recorder through a real ROS graph.

Byte-exact checks compare the bag with what a raw subscription (``raw=True``) in this test
process received from the same publishers, not with ``serialize_message`` of the published
objects: DESIGN §6 measured that ``serialize_message`` can append trailing garbage bytes, so
its output is not what travels on the wire (and not what a recorder receives). With reliable
publishers and subscriptions both subscribers get every message, so the two byte sequences
must match message for message and in order, byte for byte except for one thing measured
here: Fast DDS pads payloads to 4 bytes on the wire, and this test's subscription, in the
publishing process, gets them unpadded (``same_wire_bytes``).

Every bag is read back by rosbags (the library the package uses) and by an independent reader:
the ``mcap`` package for MCAP (with CRC validation), Python's ``sqlite3`` for .db3.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import yaml
from ros_harness import read_log, ros_args, ros_env, script, start_process, stop_process, wait_for

from sage_hl_ros.bags.bag_writer import BagWriter
from sage_hl_ros.bags.episodes import (
    EpisodeTracker,
    decode_cdr_string,
    encode_cdr_string,
    episodes_from_markers,
    parse_episode_marker,
)
from sage_hl_ros.bags.qos import make_qos
from sage_hl_ros.bags.repair import repair_bag

T0 = 1_700_000_000_000_000_000


# ----------------------------------------------------------------------------- helpers


def read_rosbags(bag: Path) -> dict[str, list[tuple[int, bytes]]]:
    from rosbags.rosbag2 import Reader

    out: dict[str, list[tuple[int, bytes]]] = {}
    with Reader(bag) as reader:
        for conn, t, data in reader.messages():
            out.setdefault(conn.topic, []).append((t, bytes(data)))
    return out


def read_independent(bag: Path) -> dict[str, list[bytes]]:
    """Messages per topic via the mcap package (CRCs validated) or sqlite3, in time order."""
    out: dict[str, list[tuple[int, bytes]]] = {}
    files = sorted(bag.glob("*.mcap")) or sorted(bag.glob("*.db3"))
    for f in files:
        if f.suffix == ".mcap":
            from mcap.reader import make_reader

            with open(f, "rb") as fh:
                reader = make_reader(fh, validate_crcs=True)
                assert reader.get_summary() is not None, f"{f.name} has no summary"
                for _schema, channel, message in reader.iter_messages(log_time_order=True):
                    out.setdefault(channel.topic, []).append((message.log_time, bytes(message.data)))
        else:
            db = sqlite3.connect(str(f))
            rows = db.execute("SELECT t.name, m.timestamp, m.data FROM messages m JOIN topics t ON t.id = m.topic_id "
                              "ORDER BY m.timestamp, m.id").fetchall()
            db.close()
            for name, t, data in rows:
                out.setdefault(name, []).append((t, bytes(data)))
    return {k: [d for _t, d in sorted(v, key=lambda x: x[0])] for k, v in out.items()}


def metadata(bag: Path) -> dict:
    return yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]


def string_cdr(text: str) -> bytes:
    return encode_cdr_string(text)


# ----------------------------------------------------------------------------- pure writer


def test_episode_markers_parse_and_pair():
    assert parse_episode_marker("start") == ("start", "")
    assert parse_episode_marker("start:pick red cube") == ("start", "pick red cube")
    assert parse_episode_marker("end:SUCCESS") == ("end", "success")
    assert parse_episode_marker("end") == ("end", "")
    assert parse_episode_marker("hello") is None
    tracker = EpisodeTracker()
    for t, text in [(1, "end"), (2, "start:a"), (3, "end:success"), (4, "start:b"), (5, "start:c"), (6, "end:failure"),
                    (7, "start")]:
        tracker.feed(t, text)
    eps = tracker.episodes
    assert [(e.task, e.start_ns, e.end_ns, e.outcome) for e in eps] == [
        ("a", 2, 3, "success"), ("b", 4, 5, "interrupted"), ("c", 5, 6, "failure"), ("", 7, None, "")]
    assert tracker.unmatched_ends == 1
    assert episodes_from_markers([(3, "end"), (1, "start:x")])[0].end_ns == 3
    assert decode_cdr_string(string_cdr("start:x")) == "start:x"


@pytest.mark.parametrize("storage,humble", [("mcap", True), ("mcap", False), ("sqlite3", True)])
def test_writer_splits_and_two_readers_agree(tmp_path, storage, humble):
    bag = tmp_path / "bag"
    qos = [make_qos(history=3, depth=0, reliability=2, durability=2)]
    payloads = {"/a": [], "/b": [], "/sage/episode": []}
    with BagWriter(bag, storage=storage, humble_compatible=humble, max_bag_size_bytes=20_000,
                   max_bag_duration_ns=400_000_000) as w:
        a = w.add_connection("/a", "std_msgs/msg/String", qos)
        b = w.add_connection("/b", "sensor_msgs/msg/JointState")
        e = w.add_connection("/sage/episode", "std_msgs/msg/String")
        w.write(e, T0, string_cdr("start:pick"))
        payloads["/sage/episode"].append(string_cdr("start:pick"))
        for i in range(300):
            data = string_cdr(f"message {i} " + "x" * (i % 50))
            w.write(a, T0 + i * 5_000_000, data)
            payloads["/a"].append(data)
            if i % 3 == 0:
                blob = bytes([i % 256]) * 333  # opaque bytes: the writer never parses payloads
                w.write(b, T0 + i * 5_000_000 + 1, blob)
                payloads["/b"].append(blob)
            if i == 150:
                w.flush()
        w.write(e, T0 + 2_000_000_000, string_cdr("end:success"))
        payloads["/sage/episode"].append(string_cdr("end:success"))
    files = sorted(p.name for p in bag.iterdir() if p.name != "metadata.yaml")
    meta = metadata(bag)
    assert len(files) >= 4, files  # 300 messages over 2 s, split every 0.4 s and every 20 kB
    assert meta["relative_file_paths"] == [f["path"] for f in meta["files"]]
    assert sorted(meta["relative_file_paths"]) == files
    assert all(f"bag_{i}" in name for i, name in enumerate(meta["relative_file_paths"]))
    assert meta["version"] == (8 if humble else 9)
    assert meta["storage_identifier"] == storage
    counts = {t["topic_metadata"]["name"]: t["message_count"] for t in meta["topics_with_message_count"]}
    assert counts == {k: len(v) for k, v in payloads.items()}
    assert meta["message_count"] == sum(counts.values()) == sum(f["message_count"] for f in meta["files"])
    qos_a = next(t["topic_metadata"]["offered_qos_profiles"] for t in meta["topics_with_message_count"]
                 if t["topic_metadata"]["name"] == "/a")
    if humble:  # Humble reads offered_qos_profiles as a string with integer enums
        assert isinstance(qos_a, str) and "reliability: 2" in qos_a
    else:
        assert isinstance(qos_a, list) and qos_a[0]["reliability"] == "best_effort"
    episodes = json.loads(meta["custom_data"]["sage_hl_ros.episodes"])
    assert [(ep["task"], ep["outcome"]) for ep in episodes] == [("pick", "success")]
    got = read_rosbags(bag)
    assert {k: [d for _t, d in v] for k, v in got.items()} == payloads
    assert all(ts == sorted(ts) for ts in ([t for t, _d in v] for v in got.values()))
    assert read_independent(bag) == payloads
    from rosbags.rosbag2 import Reader

    with Reader(bag) as reader:  # message definitions stored, as rosbag2 does
        assert "string data" in next(c for c in reader.connections if c.topic == "/a").msgdef.data


_CRASH_SCRIPT = textwrap.dedent("""
    import os, sys
    from sage_hl_ros.bags.bag_writer import BagWriter
    from sage_hl_ros.bags.episodes import encode_cdr_string
    w = BagWriter(sys.argv[1], storage=sys.argv[2], chunk_bytes=4096)
    w.open()
    e = w.add_connection("/sage/episode", "std_msgs/msg/String")
    c = w.add_connection("/x", "std_msgs/msg/String")
    w.write(e, 1, encode_cdr_string("start:crash"))
    for i in range(1000):
        w.write(c, 10 + i, encode_cdr_string("m%d" % i))
        if i == 599:
            w.flush()
    os.kill(os.getpid(), 9)  # SIGKILL: no close, no metadata.yaml
""")


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_sigkilled_writer_is_repaired_up_to_the_last_flush(tmp_path, storage):
    bag = tmp_path / "bag"
    proc = subprocess.run([sys.executable, "-c", _CRASH_SCRIPT, str(bag), storage], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert not (bag / "metadata.yaml").exists()
    from sage_hl_ros.bags.errors import BagError
    from sage_hl_ros.bags.info import bag_info

    with pytest.raises(BagError, match="repair"):
        bag_info(bag)
    report = repair_bag(bag)
    got = read_rosbags(bag)
    # Everything up to the flush is there, in order; possibly more (a chunk closed by size).
    xs = [decode_cdr_string(d) for _t, d in got["/x"]]
    assert 600 <= len(xs) <= 1000
    assert xs == [f"m{i}" for i in range(len(xs))]
    assert report.messages == len(xs) + 1
    assert read_independent(bag)["/x"] == [d for _t, d in got["/x"]]
    info = bag_info(bag)
    assert [(e.task, e.end_ns) for e in info.episodes] == [("crash", None)]
    # A repaired bag repairs again to the same result (idempotent).
    assert repair_bag(bag).messages == report.messages


def test_truncated_mcap_keeps_complete_chunks(tmp_path):
    bag = tmp_path / "bag"
    with BagWriter(bag, chunk_bytes=2000) as w:
        c = w.add_connection("/x", "std_msgs/msg/String")
        for i in range(500):
            w.write(c, T0 + i, string_cdr(f"m{i}"))
    f = bag / "bag_0.mcap"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])  # cut in the middle of a chunk, summary gone
    (bag / "metadata.yaml").unlink()
    report = repair_bag(bag, keep_original=True)
    assert report.rebuilt_files == ["bag_0.mcap"]
    assert (bag / "bag_0.mcap.damaged").exists()
    xs = [decode_cdr_string(d) for _t, d in read_rosbags(bag)["/x"]]
    assert 100 < len(xs) < 500 and xs == [f"m{i}" for i in range(len(xs))]


def test_disk_full_stops_recording_with_a_clear_error(tmp_path):
    """Writer-level injection of ENOSPC after some data: the writer thread reports the error,
    drops what comes next without growing memory, and what was flushed is recoverable."""
    from sage_hl_ros.ros.recorder_node import WriterThread

    bag = tmp_path / "bag"
    writer = BagWriter(bag, chunk_bytes=1024).open()
    real = writer._file._f
    budget = {"left": 60_000}

    class FullDisk:
        def write(self, data):
            budget["left"] -= len(data)
            if budget["left"] < 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(bag / "bag_0.mcap"))
            return real.write(data)

        def writelines(self, parts):
            for part in parts:
                self.write(part)

        def __getattr__(self, name):
            return getattr(real, name)

    writer._file._f = FullDisk()
    errors = []
    thread = WriterThread(writer, flush_period_s=0.05, max_queue_bytes=10_000_000,
                          on_error=lambda text, closed: errors.append((text, closed)))
    thread.start()
    thread.control("conn", 0, "/x", "std_msgs/msg/String", [])
    for i in range(2000):
        thread.put(0, T0 + i, string_cdr(f"m{i:05d}" + "y" * 100))
        if i % 200 == 0:
            time.sleep(0.06)  # let flushes happen
    wait_for(lambda: errors, 10.0, what="the disk-full error")
    text, closed = errors[0]
    assert "No space left on device" in text and "bag_0.mcap" in text
    assert not closed  # no room for the summary either
    assert thread.error
    before = thread.dropped_queue_full
    assert not thread.put(0, T0 + 10_000, b"late")  # refused, counted
    assert thread.dropped_queue_full == before + 1
    thread.stop(10.0)
    assert not thread.alive
    real.close()
    repair_bag(bag)
    xs = [decode_cdr_string(d)[:6] for _t, d in read_rosbags(bag)["/x"]]
    assert len(xs) > 50 and xs == [f"m{i:05d}" for i in range(len(xs))]


def test_output_dir_must_be_new_or_empty(tmp_path):
    from sage_hl_ros.bags.errors import BagError

    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "file").write_text("x")
    with pytest.raises(BagError, match="not empty"):
        BagWriter(tmp_path / "used").open()
    (tmp_path / "empty").mkdir()
    BagWriter(tmp_path / "empty").open().close()  # an empty directory is fine
    BagWriter(tmp_path / "new" / "nested" / "bag").open().close()  # parents are created
    assert (tmp_path / "new" / "nested" / "bag" / "metadata.yaml").exists()


def test_replay_hazard_covers_every_command_output_and_nothing_else_recorded_by_default():
    """Replay skips what would act on a robot: every command topic the recorder stores by default,
    any controller's commands / joint_trajectory, any JointTrajectory, the e-stop pair, /diagnostics;
    sensors, joint states, latents, episode markers and teacher labels replay."""
    from sage_hl_ros.bags.topics import DEFAULT_TOPIC_TYPES, replay_hazard

    hazards = {t for t, ty in DEFAULT_TOPIC_TYPES.items() if replay_hazard(t, ty)}
    assert hazards == {"/forward_position_controller/commands", "/forward_position_controller/joint_trajectory",
                       "/joint_command", "/e_stop", "/diagnostics"}
    assert replay_hazard("/e_stop/reset") == "e-stop"
    assert replay_hazard("/arm_controller/joint_trajectory") == replay_hazard("/arm/commands") == "robot command"
    assert replay_hazard("/anything", "trajectory_msgs/msg/JointTrajectory") == "robot command"
    assert replay_hazard("/teacher/joint_trajectory", "trajectory_msgs/msg/JointTrajectory") == ""


# ----------------------------------------------------------------------------- through the ROS graph


class RawLog:
    """A raw subscription in the test process: the serialized bytes exactly as delivered."""

    def __init__(self, node, msg_type, topic, qos):
        self.items: list[bytes] = []
        self._lock = threading.Lock()
        self.sub = node.create_subscription(msg_type, topic, self._cb, qos, raw=True)

    def _cb(self, data):
        with self._lock:
            self.items.append(bytes(data))

    def snapshot(self) -> list[bytes]:
        with self._lock:
            return list(self.items)


@pytest.fixture(scope="module")
def graph():
    ros_env()
    import rclpy
    from rclpy.node import Node
    from ros_harness import Spinner

    rclpy.init()
    node = Node("bag_recorder_test")
    node.diag = DiagLog(node)
    spinner = Spinner(node)
    yield node
    spinner.shutdown()
    node.destroy_node()
    rclpy.shutdown()


def _reliable(depth=200):
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)


def _call(node, srv_type, name, timeout_s=20.0):
    client = node.create_client(srv_type, name)
    try:
        wait_for(client.service_is_ready, timeout_s, what=f"service {name}")
        future = client.call_async(srv_type.Request())
        wait_for(future.done, timeout_s, what=f"response of {name}")
        return future.result()
    finally:
        node.destroy_client(client)


def _set_param(node, target, name, value):
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    client = node.create_client(SetParameters, f"/{target}/set_parameters")
    try:
        wait_for(client.service_is_ready, 20.0, what="set_parameters")
        req = SetParameters.Request()
        req.parameters = [Parameter(name, value=value).to_parameter_msg()]
        future = client.call_async(req)
        wait_for(future.done, 20.0, what="set_parameters response")
        assert future.result().results[0].successful
    finally:
        node.destroy_client(client)


class DiagLog:
    """Latest /diagnostics status per name (level, message, values)."""

    def __init__(self, node):
        from diagnostic_msgs.msg import DiagnosticArray

        self.latest: dict[str, tuple[int, str, dict]] = {}
        self.history: list[tuple[str, int, str, dict]] = []
        self._lock = threading.Lock()
        self.sub = node.create_subscription(DiagnosticArray, "/diagnostics", self._cb, _reliable(50))

    def _cb(self, msg):
        with self._lock:
            for st in msg.status:
                level = st.level if isinstance(st.level, int) else int.from_bytes(st.level, "little")
                item = (level, st.message, {kv.key: kv.value for kv in st.values})
                self.latest[st.name] = item
                self.history.append((st.name, *item))

    def wait(self, name: str, predicate, timeout_s: float = 30.0):
        def find():
            with self._lock:
                return next((h[1:] for h in self.history if h[0] == name and predicate(*h[1:])), None)

        return wait_for(find, timeout_s, interval_s=0.05, what=f"a matching diagnostic from {name!r}")

    def received(self, recorder: str, topic: str) -> int:
        with self._lock:
            st = self.latest.get(f"sage_recorder: {recorder}")
        return int(st[2].get(f"received {topic}", "0")) if st else 0


def warm_up(diag: DiagLog, recorder: str, streams: dict, timeout_s: float = 30.0) -> None:
    """Publish on each topic until the recorder reports receiving from it.

    Discovery is asymmetric: our publisher can list the recorder's subscription before that
    subscription has matched our publisher, and a volatile reader starts at the writer's
    *current* sequence number when it matches, so messages sent in that gap never reach it.
    Only the recorder can tell us it is receiving; after this, nothing published is lost.
    Returns once its counters include the last warm-up messages (two diagnostics periods of
    0.2 s later). ``streams``: topic -> (publisher, message).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        pending = [t for t in streams if diag.received(recorder, t) == 0]
        if not pending:
            time.sleep(0.5)
            return
        assert time.monotonic() < deadline, f"the recorder never received {pending}"
        for t in pending:
            pub, msg = streams[t]
            pub.publish(msg)
        time.sleep(0.05)


def same_wire_bytes(recorded: bytes, local: bytes) -> bool:
    """Byte-exact, up to the RTPS alignment padding.

    Fast DDS pads a serialized payload to a multiple of 4 bytes on the wire (zeros), so another
    process (the recorder) receives e.g. a std_msgs/Bool as 8 bytes, while a subscription in the
    publishing process itself gets the unpadded 5-byte buffer. That padding is the only
    difference allowed; every other byte must match.
    """
    if len(recorded) < len(local):
        recorded, local = local, recorded
    extra = recorded[len(local):]
    return recorded[:len(local)] == local and len(extra) < 4 and not any(extra) and \
        (len(recorded) % 4 == 0 or not extra)


def assert_recorded_tail(got: list[bytes], sent: list[bytes], n_real: int, topic: str) -> None:
    """The recording is a contiguous suffix of what was sent (byte-exact up to wire padding, see
    ``same_wire_bytes``), holding all ``n_real`` messages sent after the warm-up (it may lack
    early warm-up messages, nothing else)."""
    assert len(got) >= n_real, f"{topic}: {len(got)} recorded < {n_real} sent after warm-up"
    tail = sent[len(sent) - len(got):]
    bad = [i for i, (a, b) in enumerate(zip(got, tail, strict=True)) if not same_wire_bytes(a, b)]
    assert not bad, f"{topic}: recorded message {bad[0]} differs: {got[bad[0]][:64]!r} vs {tail[bad[0]][:64]!r}"


def _recorder(tmp_path, name, params, log_name=None):
    cmd = [script("sage_recorder")] + ros_args(params) + ["-r", f"__node:={name}"]
    return start_process(cmd, tmp_path / (log_name or f"{name}.log"))


@pytest.mark.ros
def test_record_through_graph_byte_exact_with_episodes_and_splits(graph, tmp_path):
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import Float32MultiArray, Float64MultiArray, String
    from std_srvs.srv import Trigger

    node = graph
    bag = tmp_path / "run" / "bag"
    topics = ["/camera/image_raw", "/joint_states", "/tactile/array", "/teacher/joint_command", "/sage/episode",
              "/test/discovered"]  # the last has no topic_types entry: found in the graph
    proc = _recorder(tmp_path, "rec_main", {"output_dir": str(bag), "topics": topics, "max_bag_duration_s": 1.0,
                                            "flush_period_s": 0.5, "discovery_period_s": 0.3, "fsync": False,
                                            "diagnostics_period_s": 0.2})
    types = {"/camera/image_raw": Image, "/joint_states": JointState, "/tactile/array": Float32MultiArray,
             "/teacher/joint_command": JointState, "/sage/episode": String, "/test/discovered": Float64MultiArray}
    logs = {t: RawLog(node, types[t], t, _reliable()) for t in topics}
    pubs = {t: node.create_publisher(types[t], t, _reliable()) for t in topics}
    n_real = dict.fromkeys(topics, 0)
    img = Image(height=48, width=64, encoding="rgb8", step=64 * 3, data=bytes(64 * 48 * 3))
    js = JointState(name=["joint1", "joint2"], position=[0.0, 0.0])
    tac = Float32MultiArray(data=[0.0] * 16)
    extra = Float64MultiArray(data=[0.0, 1.0])
    try:
        warm_up(node.diag, "rec_main", {"/camera/image_raw": (pubs["/camera/image_raw"], img),
                                        "/joint_states": (pubs["/joint_states"], js),
                                        "/tactile/array": (pubs["/tactile/array"], tac),
                                        "/teacher/joint_command": (pubs["/teacher/joint_command"], js),
                                        "/test/discovered": (pubs["/test/discovered"], extra)})
        _set_param(node, "rec_main", "episode_task", "pick")
        assert _call(node, Trigger, "/rec_main/start_episode").success

        def publish(topic, msg):
            pubs[topic].publish(msg)
            n_real[topic] += 1

        t_end = time.monotonic() + 2.6
        i = 0
        while time.monotonic() < t_end:
            js.header.stamp = node.get_clock().now().to_msg()
            js.position = [0.01 * i, -0.01 * i]
            publish("/joint_states", js)
            if i % 2 == 0:
                publish("/teacher/joint_command", js)
            if i % 7 == 0:
                img.header.stamp = js.header.stamp
                img.data = bytes([i % 251]) * (64 * 48 * 3)
                publish("/camera/image_raw", img)
                tac.data = [float(i)] * 16
                publish("/tactile/array", tac)
                extra.data = [float(i), 1.0]
                publish("/test/discovered", extra)
            if i == 60:
                publish("/sage/episode", String(data="end:success"))
                publish("/sage/episode", String(data="start:place"))
            i += 1
            time.sleep(0.005)
        assert _call(node, Trigger, "/rec_main/end_episode_failure").success
        # Everything reached this test's own subscriptions and the recorder (its counters): stop it.
        for t in topics:
            wait_for(lambda t=t: node.diag.received("rec_main", t) >= n_real[t], 30.0, what=f"the recorder got {t}")
        proc.send_signal(signal.SIGTERM)  # the console script is the process itself
        assert proc.wait(30) == 0, Path(proc.log_path).read_text()
    finally:
        stop_process(proc)
        for pub in pubs.values():
            node.destroy_publisher(pub)
        for log in logs.values():
            node.destroy_subscription(log.sub)

    meta = metadata(bag)
    assert len(meta["files"]) >= 2  # split by duration (1 s) during ~3 s of recording
    recorded = read_rosbags(bag)
    assert set(recorded) == set(topics)
    for topic in topics:
        if topic != "/sage/episode":
            assert_recorded_tail([d for _t, d in recorded[topic]], logs[topic].snapshot(), n_real[topic], topic)
    # Markers: two from this test, two from the recorder's services (published by the recorder itself,
    # so its own subscription gets them unpadded, see same_wire_bytes). Compared decoded.
    markers = ["start:pick", "end:success", "start:place", "end:failure"]
    assert [decode_cdr_string(d) for _t, d in recorded["/sage/episode"]] == markers
    assert [decode_cdr_string(d) for d in logs["/sage/episode"].snapshot()] == markers
    assert read_independent(bag) == {t: [d for _t, d in v] for t, v in recorded.items()}
    counts = {x["topic_metadata"]["name"]: x["message_count"] for x in meta["topics_with_message_count"]}
    assert counts == {t: len(v) for t, v in recorded.items()}
    types_in_meta = {x["topic_metadata"]["name"]: x["topic_metadata"]["type"]
                     for x in meta["topics_with_message_count"]}
    assert types_in_meta["/test/discovered"] == "std_msgs/msg/Float64MultiArray"
    qos = next(x["topic_metadata"]["offered_qos_profiles"] for x in meta["topics_with_message_count"]
               if x["topic_metadata"]["name"] == "/joint_states")
    assert "reliability: 1" in qos  # the publisher's offered QoS (reliable), Humble's integer format
    # Receive timestamps: monotonic per topic.
    for v in recorded.values():
        assert [t for t, _d in v] == sorted(t for t, _d in v)
    from sage_hl_ros.bags.info import bag_info, format_info

    info = bag_info(bag)
    assert [(e.task, e.outcome) for e in info.episodes] == [("pick", "success"), ("place", "failure")]
    assert "Episodes:     2" in format_info(info)


@pytest.mark.ros
def test_sigkill_leaves_a_bag_that_repair_recovers(graph, tmp_path):
    from sensor_msgs.msg import JointState

    node = graph
    bag = tmp_path / "bag"
    proc = _recorder(tmp_path, "rec_kill", {"output_dir": str(bag), "topics": ["/joint_states"],
                                            "flush_period_s": 0.3, "fsync": False, "diagnostics_period_s": 0.2})
    log = RawLog(node, JointState, "/joint_states", _reliable())
    pub = node.create_publisher(JointState, "/joint_states", _reliable())
    try:
        msg = JointState(name=["joint1"], position=[-1.0])
        warm_up(node.diag, "rec_kill", {"/joint_states": (pub, msg)})
        n_warm = node.diag.received("rec_kill", "/joint_states")
        for i in range(200):
            msg.position = [float(i)]
            pub.publish(msg)
            time.sleep(0.01)
        wait_for(lambda: node.diag.received("rec_kill", "/joint_states") >= n_warm + 200, 20.0, what="the recorder")
        time.sleep(1.0)  # > 3 flush periods: everything received is on disk
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        stop_process(proc)
        node.destroy_publisher(pub)
        node.destroy_subscription(log.sub)
    assert not (bag / "metadata.yaml").exists()
    out = subprocess.run([script("sage-hl-bag"), "repair", str(bag)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "rebuilt bag_0.mcap" in out.stdout
    got = [d for _t, d in read_rosbags(bag)["/joint_states"]]
    assert_recorded_tail(got, log.snapshot(), 200, "/joint_states")  # all flushed before the kill
    info = subprocess.run([script("sage-hl-bag"), "info", str(bag), "--json"], capture_output=True, text=True,
                          timeout=60)
    assert info.returncode == 0 and json.loads(info.stdout)["message_count"] == len(got)


@pytest.mark.ros
def test_sqlite3_storage_through_graph(graph, tmp_path):
    from std_msgs.msg import Bool

    node = graph
    bag = tmp_path / "bag"
    proc = _recorder(tmp_path, "rec_sqlite", {"output_dir": str(bag), "storage": "sqlite3", "topics": ["/e_stop"],
                                              "diagnostics_period_s": 0.2})
    pub = node.create_publisher(Bool, "/e_stop", _reliable())
    log = RawLog(node, Bool, "/e_stop", _reliable())
    try:
        warm_up(node.diag, "rec_sqlite", {"/e_stop": (pub, Bool(data=False))})
        n = node.diag.received("rec_sqlite", "/e_stop") + 20
        for i in range(20):
            pub.publish(Bool(data=bool(i % 2)))
        wait_for(lambda: node.diag.received("rec_sqlite", "/e_stop") >= n, 20.0, what="the recorder")
        code, _killed = stop_process(proc, grace_s=20.0)  # SIGINT
        assert code == 0, Path(proc.log_path).read_text()
    finally:
        stop_process(proc)
        node.destroy_publisher(pub)
        node.destroy_subscription(log.sub)
    assert metadata(bag)["storage_identifier"] == "sqlite3"
    assert sorted(p.name for p in bag.iterdir()) == ["bag_0.db3", "metadata.yaml"]  # WAL folded back in
    db = sqlite3.connect(str(bag / "bag_0.db3"))
    rows = [bytes(r[0]) for r in db.execute("SELECT data FROM messages ORDER BY timestamp, id")]
    db.close()
    assert_recorded_tail(rows, log.snapshot(), 20, "/e_stop")  # Bool: 8 bytes recorded, 5 in-process
    assert [d for _t, d in read_rosbags(bag)["/e_stop"]] == rows


@pytest.mark.ros
def test_unwritable_output_dir_reports_and_keeps_running(graph, tmp_path):
    """A path under a regular file cannot be created (even as root): ERROR diagnostic + log,
    the node stays up to report it; stopping it gives exit code 1."""
    node = graph
    (tmp_path / "a_file").write_text("not a directory")
    bad = tmp_path / "a_file" / "bag"
    proc = _recorder(tmp_path, "rec_bad", {"output_dir": str(bad), "diagnostics_period_s": 0.3})
    try:
        level, message, values = node.diag.wait("sage_recorder: rec_bad", lambda lvl, m, v: lvl == 2)
        assert "cannot create bag" in message and "Not a directory" in message
        assert values["state"] == "error"
        assert proc.poll() is None  # still up, reporting
        code, killed = stop_process(proc)
        assert code == 1 and not killed
        assert "cannot create bag" in Path(proc.log_path).read_text()
    finally:
        stop_process(proc)


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                           capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


@pytest.mark.ros
def test_full_disk_through_graph_tmpfs(graph, tmp_path):
    """A real full disk (a 3 MB tmpfs, when this machine lets us mount one): recording stops with
    an ERROR diagnostic naming the cause, the node and this test's publisher keep running."""
    from sensor_msgs.msg import Image

    mnt = tmp_path / "tiny"
    if not _mount_tmpfs(mnt, "3m"):
        pytest.skip("cannot mount a tmpfs here (needs root); the writer-level test covers disk-full")
    node = graph
    proc = None
    pub = node.create_publisher(Image, "/camera/image_raw", _reliable(50))
    try:
        proc = _recorder(tmp_path, "rec_full", {"output_dir": str(mnt / "bag"), "topics": ["/camera/image_raw"],
                                                "diagnostics_period_s": 0.3, "flush_period_s": 0.2})
        img = Image(height=240, width=320, encoding="rgb8", step=960, data=bytes(320 * 240 * 3))
        warm_up(node.diag, "rec_full", {"/camera/image_raw": (pub, img)})
        for _ in range(30):  # 6.9 MB into 3 MB
            pub.publish(img)
            time.sleep(0.02)
        level, message, values = node.diag.wait("sage_recorder: rec_full", lambda lvl, m, v: lvl == 2)
        assert "No space left on device" in message and "recording stopped" in message
        assert proc.poll() is None
        pub.publish(img)  # the graph is unaffected
        code, killed = stop_process(proc)
        assert code == 1 and not killed
    finally:
        if proc is not None:
            stop_process(proc)
        node.destroy_publisher(pub)
        subprocess.run(["umount", str(mnt)], capture_output=True, timeout=20)


@pytest.mark.ros
def test_topic_type_and_best_effort_camera_record_everything_after_ready(graph, tmp_path):
    """Publishers run from before the recorder exists: a best-effort camera, reliable joint states
    and a topic only ``--topic-type`` names. The recorder runs from the CLI with ``--topic-type``
    (which used to replace the default types, so runtime topics waited for a discovery tick) and
    a discovery period longer than the test, so only the subscriptions made at activation can
    record: the camera's must be best-effort from the start (a reliable one is refused by a
    best-effort publisher). Every message published after the recorder reported ready (its
    diagnostics: ``ready`` and each topic matched, in two consecutive reports) is in the bag, in
    order, and the mcap package (CRCs validated) reads what rosbags reads."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import Float64MultiArray

    node = graph
    name = "rec_ready"
    types = {"/camera/image_raw": Image, "/joint_states": JointState, "/test/typed": Float64MultiArray}
    qos = {"/camera/image_raw": QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT)}
    pubs = {t: node.create_publisher(cls, t, qos.get(t, _reliable())) for t, cls in types.items()}
    sent: dict[str, list[int]] = {t: [] for t in types}
    lock = threading.Lock()
    stop = threading.Event()

    def publish_from_t0():
        i = 0
        while not stop.is_set():
            with lock:
                pubs["/joint_states"].publish(JointState(name=["joint1"], position=[float(i)]))
                sent["/joint_states"].append(i)
                if i % 3 == 0:
                    img = Image(height=4, width=4, encoding="mono8", step=4, data=bytes([i % 256]) * 16)
                    img.header.frame_id = str(i)
                    pubs["/camera/image_raw"].publish(img)
                    sent["/camera/image_raw"].append(i)
                    pubs["/test/typed"].publish(Float64MultiArray(data=[float(i)]))
                    sent["/test/typed"].append(i)
            i += 1
            time.sleep(0.01)

    publisher = threading.Thread(target=publish_from_t0, daemon=True)
    publisher.start()
    bag = tmp_path / "bag"
    proc = start_process([script("sage-hl-bag"), "record", str(bag), "--topics", *types,
                          "--topic-type", "/test/typed:std_msgs/msg/Float64MultiArray", "--flush-period-s", "0.5",
                          "--ros-args", "-p", "discovery_period_s:=600.0", "-p", "diagnostics_period_s:=0.2",
                          "-p", "fsync:=false", "-r", f"__node:={name}"], tmp_path / "recorder.log")
    try:
        def ready_reports():
            with node.diag._lock:
                return [v for n, _lvl, _m, v in node.diag.history if n == f"sage_recorder: {name}"]

        def is_ready(v):
            return v.get("ready") == "true" and all(int(v.get(f"matched {t}", "0")) >= 1 for t in types)

        def ready_twice():
            assert proc.poll() is None, read_log(proc)
            reports = ready_reports()
            return any(is_ready(a) and is_ready(b) for a, b in zip(reports, reports[1:], strict=False))

        wait_for(ready_twice, 60.0, interval_s=0.05, what="the recorder reporting ready")
        with lock:
            after = {t: len(v) for t, v in sent.items()}  # messages from here on must all be recorded
        wait_for(lambda: len(sent["/camera/image_raw"]) >= after["/camera/image_raw"] + 40, 60.0,
                 what="40 more camera frames")
        stop.set()
        publisher.join(5.0)
        for t in types:
            wait_for(lambda t=t: node.diag.received(name, t) >= len(sent[t]) - after[t], 30.0,
                     what=f"the recorder receiving {t}")
        code, killed = stop_process(proc, grace_s=20.0)
        assert code == 0 and not killed, read_log(proc)
    finally:
        stop.set()
        stop_process(proc)
        for pub in pubs.values():
            node.destroy_publisher(pub)
    recorded = read_rosbags(bag)
    assert read_independent(bag) == {t: [d for _t, d in v] for t, v in recorded.items()}
    decode = {"/camera/image_raw": lambda m: int(m.header.frame_id), "/joint_states": lambda m: int(m.position[0]),
              "/test/typed": lambda m: int(m.data[0])}
    for t, cls in types.items():
        got = [decode[t](deserialize_message(d, cls)) for _t, d in recorded.get(t, [])]
        must = sent[t][after[t]:]
        assert got == sorted(got), f"{t}: out of order"
        missing = sorted(set(must) - set(got))
        assert not missing, f"{t}: {len(missing)} of {len(must)} messages published after ready are not in the bag"
