"""sage_recorder: record the runtime's topics into a rosbag2 bag (MCAP default, sqlite3 option).

    sage_recorder --ros-args -p output_dir:=bags/run1
    sage-hl-bag record bags/run1                 # the same, from the CLI

Design: raw subscriptions (``raw=True``: the serialized CDR bytes exactly as received, no
deserialise/serialise round trip; DESIGN §6) whose callbacks only stamp the receive time and
put ``(connection, time, bytes)`` on a queue. A writer thread owns the bag (``BagWriter``):
writes, splits, flushes every ``flush_period_s`` and closes. DDS callbacks never wait on the
disk; the queue is bounded by ``max_queue_mb`` (beyond it messages are dropped and counted, so
a stalled disk cannot eat the robot's memory).

Lifecycle node (``autostart`` default **true**: a recorder started by hand should record).
``configure`` opens the bag (``output_dir`` must not exist or be empty; parents are created)
and starts the writer thread; ``activate`` subscribes (recording); ``deactivate`` unsubscribes
(pause; the bag stays open); ``cleanup``/shutdown closes the bag and writes ``metadata.yaml``.
SIGINT/SIGTERM close the bag cleanly (every queued message is written first).

Topics and types
    ``topics`` (default: the runtime's topics, incl. ``/sage/episode`` and the teacher's labels
    ``/teacher/joint_command`` and chunks ``/teacher/joint_trajectory``, as bags.topics lists them;
    ``[]`` = every topic in the graph). Types come from the runtime's defaults
    (``DEFAULT_TOPIC_TYPES``) plus ``topic_types`` entries ``"topic:pkg/msg/Type"`` (added to the
    defaults, an entry for a default topic replaces its type), so all of those are subscribed at
    activation and the first messages are kept; other types come from the graph: every
    ``discovery_period_s`` the recorder looks at each wanted topic's publishers and subscribes to
    each type it sees (a topic published with two types is recorded as two connections, like rosbag2).
    A topic is added to the bag with its first message, together with the QoS profiles its
    publishers offer at that moment (``offered_qos_profiles``, as rosbag2 records them).
QoS (per subscription)
    ``reliability`` auto (default): reliable unless a publisher offers best-effort (then
    best-effort, which matches both) — what rosbag2 does, so reliable publishers are recorded
    without loss and best-effort sensor streams (DESIGN §4) are still matched. A sensor stream
    (image, compressed image, point cloud, scan, camera info types; the runtime's audio and
    tactile topics) subscribed before any publisher is known starts best-effort, so a
    best-effort camera is matched from its first message; a best-effort subscription is never
    re-created reliable (that would open a gap). Other topics subscribed before a publisher is
    known start reliable and are re-created best-effort when a best-effort publisher appears.
    ``durability`` auto: transient-local when every publisher
    offers it (late-joining recorder gets latched data), else volatile. Depth (2 s of data, so a
    scheduling stall on a busy machine costs latency, not messages): ``sensor_queue_depth`` (60)
    for image/point-cloud types, ``queue_depth`` (1000) otherwise. DESIGN §4's shallow sensor
    queues are right for controllers (freshness) but wrong for a recorder (completeness).
    ``qos_overrides`` entries ``"topic:reliability[:depth[:durability]]"`` fix them per topic.
Ready
    ``/diagnostics`` carries ``matched <topic>`` (publishers each subscription has matched, where
    the rclpy has ``Subscription.get_publisher_count``) and ``ready``: true once recording and every
    wanted topic that has publishers in the graph is subscribed and matched to all of them;
    messages published after that are in the bag. "In the graph" means known to this node: a
    publisher not yet discovered is not waited for (check ``matched <topic>`` for the ones you
    expect). The log says "ready" each time more publishers are matched.
Throughput (bench/bench_record.py, 2 cores shared with other work)
    2 x 640x480 rgb8 + 640x480 32FC1 at 30 Hz + joint states at 500 Hz for 60 s: nothing lost,
    92 MB/s to disk, ~35-40% of one core. Each callback also drains whatever else is queued on
    its subscription (rclpy's executor takes one message per subscription per wait cycle, which
    fell behind at 500 Hz beside the camera streams). With Fast DDS the *publishers'* shared-memory
    segment must hold camera frames: the default 512 KB is smaller than one 640x480 frame and
    lost 10-30% of messages for any subscriber (this recorder or a plain counter); the 64 MB
    profile ``config/fastdds_large_data.xml`` (``FASTDDS_DEFAULT_PROFILES_FILE``) fixes it.
Episodes
    ``~/start_episode``, ``~/end_episode``, ``~/end_episode_success``, ``~/end_episode_failure``
    (std_srvs/Trigger) publish ``start[:<episode_task>]`` / ``end[:success|:failure]`` on
    ``episode_topic`` (so other nodes see it) and the recorder records it from its own
    subscription, like any marker published by another node. ``episode_task`` is a runtime
    parameter.
Other services
    ``~/split`` (std_srvs/Trigger): close the current storage file and continue in a new one.
Splitting
    ``max_bag_size_mb`` / ``max_bag_duration_s`` (0 = never): rosbag2-style ``<name>_0.mcap``,
    ``<name>_1.mcap``, ... inside the one bag directory (see ``sage_hl_ros.bags.layout``).
Failures
    A storage error (disk full, permission, I/O error) stops recording: the subscriptions are
    removed, the bag is closed as far as the disk allows, an ERROR is logged and published on
    ``/diagnostics`` (status "sage_recorder: <node>"), and the node stays up to report it (or
    exits with code 1 if ``exit_on_error``). An unusable ``output_dir`` fails ``configure`` the
    same way. Nothing else in the graph is affected. A bag left without ``metadata.yaml``
    is recovered with ``sage-hl-bag repair <dir>``.
Parameters
    output_dir (str, "")             bag directory; "" = ./sage_bag_<YYYYmmdd_HHMMSS>
    storage (str, "mcap")            mcap | sqlite3
    humble_compatible (bool, true)   metadata.yaml version 8 (ROS 2 Humble can read it); false: 9
    topics (str[]), topic_types (str[]), qos_overrides (str[])   see above
    queue_depth (int, 1000), sensor_queue_depth (int, 60)
    max_bag_size_mb (float, 0), max_bag_duration_s (float, 0)
    flush_period_s (float, 1.0)      data older than this is on disk (survives SIGKILL; repairable)
    fsync (bool, true)               also fsync on each flush (survives power loss)
    discovery_period_s (float, 1.0)  how often the graph is checked for new publishers/types
    max_queue_mb (float, 512)        writer queue bound
    episode_topic (str, "/sage/episode"), episode_task (str, "", runtime)
    diagnostics_period_s (float, 1.0)
    exit_on_error (bool, false)      exit (code 1) instead of staying up after a storage error
    autostart (bool, true)
    use_sim_time (bool, false)       receive timestamps from /clock (as rosbag2 does)

Only rclpy APIs that ROS 2 Humble has are used.
"""

from __future__ import annotations

import math
import os
import queue
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import String
from std_srvs.srv import Trigger

from ..bags.bag_writer import BagWriter
from ..bags.episodes import encode_cdr_string
from ..bags.errors import BagError
from ..bags.qos import make_qos
from ..bags.topics import DEFAULT_TOPIC_TYPES, EPISODE_TOPIC, SENSOR_TYPES, is_sensor_stream
from .diagnostics import RateMeter, diagnostic_array, status
from .msg_types import message_class
from .node_main import DeclaredParams, stop_on_signals

DEFAULT_TOPICS = list(DEFAULT_TOPIC_TYPES)
IGNORED_TOPICS = {"/rosout", "/parameter_events"}
MAX_DRAIN = 256  # messages taken per callback beyond the first (bounded: other subscriptions get their turn)
_RELIABILITY = {"reliable": ReliabilityPolicy.RELIABLE, "best_effort": ReliabilityPolicy.BEST_EFFORT}
_DURABILITY = {"volatile": DurabilityPolicy.VOLATILE, "transient_local": DurabilityPolicy.TRANSIENT_LOCAL}


def _ns(duration) -> int | None:
    n = getattr(duration, "nanoseconds", None)
    return None if n is None else int(n)


def endpoint_qos(info):
    """rosbags Qos of a publisher's TopicEndpointInfo (``qos_profile``: a QoSProfile)."""
    q = info.qos_profile
    return make_qos(int(q.history), int(q.depth), int(q.reliability), int(q.durability), _ns(q.deadline),
                    _ns(q.lifespan), int(q.liveliness), _ns(q.liveliness_lease_duration),
                    bool(q.avoid_ros_namespace_conventions))


def parse_topic_types(entries) -> dict[str, str]:
    """["topic:pkg/msg/Type", ...] -> {topic: type}; raises ValueError naming a bad entry."""
    out = {}
    for entry in entries:
        topic, sep, msgtype = str(entry).rpartition(":")
        if not sep or not topic.startswith("/") or msgtype.count("/") not in (1, 2):
            raise ValueError(f"topic_types entry {entry!r} is not 'topic:pkg/msg/Type'")
        out[topic] = msgtype if msgtype.count("/") == 2 else msgtype.replace("/", "/msg/")
    return out


@dataclass
class QosOverride:
    reliability: str | None = None
    depth: int | None = None
    durability: str | None = None


def parse_qos_overrides(entries) -> dict[str, QosOverride]:
    """["topic:reliability[:depth[:durability]]", ...]; reliability/durability may be 'auto'."""
    out = {}
    for entry in entries:
        fields = str(entry).split(":")
        if len(fields) < 2 or not fields[0].startswith("/"):
            raise ValueError(f"qos_overrides entry {entry!r} is not 'topic:reliability[:depth[:durability]]'")
        o = QosOverride()
        rel = fields[1].strip().lower().replace("-", "_")
        if rel not in ("auto", "", *_RELIABILITY):
            raise ValueError(f"qos_overrides {entry!r}: reliability must be auto, reliable or best_effort")
        o.reliability = None if rel in ("auto", "") else rel
        if len(fields) > 2 and fields[2].strip():
            try:
                o.depth = int(fields[2])
            except ValueError:
                raise ValueError(f"qos_overrides {entry!r}: depth must be an integer") from None
            if o.depth < 1:
                raise ValueError(f"qos_overrides {entry!r}: depth must be >= 1")
        if len(fields) > 3:
            dur = fields[3].strip().lower().replace("-", "_")
            if dur not in ("auto", "", *_DURABILITY):
                raise ValueError(f"qos_overrides {entry!r}: durability must be auto, volatile or transient_local")
            o.durability = None if dur in ("auto", "") else dur
        out[fields[0]] = o
    return out


# ----------------------------------------------------------------------------- writer thread


class WriterThread:
    """Owns the BagWriter. ``put`` is called from DDS callbacks: O(1), never blocks on disk.

    Queue items: ``(conn_key, t_ns, data)`` for messages (``conn_key`` an int), or
    ``("conn", key, topic, type, qos)`` / ``("split",)`` / ``("stop",)`` control items, all in
    one FIFO, so a connection is always registered before its first message is written.
    """

    def __init__(self, writer: BagWriter, flush_period_s: float, max_queue_bytes: int, on_error):
        self.writer = writer
        self.flush_period_s = flush_period_s
        self.max_queue_bytes = max_queue_bytes
        self._on_error = on_error
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.queued_bytes = 0
        self.queued_peak_bytes = 0
        self.dropped_queue_full = 0
        self.written = 0
        self.written_bytes = 0
        self.error: str = ""
        self._ids: dict[int, int] = {}
        self._thread = threading.Thread(target=self._run, name="sage_recorder_writer", daemon=True)
        self._closed = threading.Event()

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def put(self, key: int, t_ns: int, data: bytes) -> bool:
        n = len(data)
        with self._lock:
            if self.error or self.queued_bytes + n > self.max_queue_bytes:
                self.dropped_queue_full += 1
                return False
            self.queued_bytes += n
            if self.queued_bytes > self.queued_peak_bytes:
                self.queued_peak_bytes = self.queued_bytes
        self._q.put((key, t_ns, data))
        return True

    def control(self, *item) -> None:
        self._q.put(item)

    def stop(self, timeout_s: float = 60.0) -> None:
        """Write everything queued, close the bag (metadata.yaml), join."""
        if self._thread.is_alive():
            self._q.put(("stop",))
            self._thread.join(timeout_s)

    def _run(self) -> None:
        w = self.writer
        get = self._q.get
        next_flush = time.monotonic() + self.flush_period_s
        try:
            while True:
                timeout = max(0.0, next_flush - time.monotonic())
                try:
                    item = get(timeout=timeout)
                except queue.Empty:
                    item = None
                if item is not None:
                    key = item[0]
                    if type(key) is int:
                        data = item[2]
                        with self._lock:
                            self.queued_bytes -= len(data)
                        if not self.error:
                            w.write(self._ids[key], item[1], data)
                            self.written += 1
                            self.written_bytes += len(data)
                    elif key == "conn":
                        self._ids[item[1]] = w.add_connection(item[2], item[3], item[4])
                    elif key == "split":
                        w.split()
                    elif key == "stop":
                        w.close()
                        return
                if time.monotonic() >= next_flush:
                    w.flush()
                    next_flush = time.monotonic() + self.flush_period_s
        except Exception as exc:  # every failure (disk full, permissions, bugs) stops recording the same way
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        if isinstance(exc, OSError):
            reason = f"{os.strerror(exc.errno) if exc.errno else type(exc).__name__}"
            where = exc.filename or self.writer.path
            text = f"storage error: {reason} ({where})"
        elif isinstance(exc, BagError):
            text = str(exc)
        else:
            text = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}"
        with self._lock:
            self.error = text
        closed = False
        try:  # close as far as the disk allows: a complete bag if there is room for the summary
            self.writer.close()
            closed = True
        except Exception:
            self.writer.abort()
        self._on_error(text, closed)
        # Drain and discard: nothing is written any more, but memory must not grow.
        while True:
            try:
                item = self._q.get(timeout=0.5)
            except queue.Empty:
                continue
            if type(item[0]) is int:
                with self._lock:
                    self.queued_bytes -= len(item[2])
            elif item[0] == "stop":
                return


# ----------------------------------------------------------------------------- node


_REPLAY_MEMORY = 16  # small messages remembered per volatile subscription
_REPLAY_MAX_BYTES = 4096


@dataclass
class _Sub:
    key: int
    topic: str
    msgtype: str
    reliability: ReliabilityPolicy
    durability: DurabilityPolicy
    depth: int
    handle: object = None
    registered: bool = False  # connection sent to the writer (with the first message)
    count: int = 0
    msg_class: object = None
    # Small messages recorded while volatile, and after a re-subscription to transient-local the
    # ones the publisher's history may deliver again (dropped once each: a latched marker such as
    # "start:reach" received live before discovery is not recorded twice).
    recent: deque = field(default_factory=lambda: deque(maxlen=_REPLAY_MEMORY))
    replay: list = field(default_factory=list)


class RecorderNode(DeclaredParams, LifecycleNode):
    def __init__(self, node_name: str = "sage_recorder", **kwargs):
        super().__init__(node_name, **kwargs)
        p = self._param
        p("output_dir", "", "bag directory (must not exist or be empty); '' = ./sage_bag_<time>")
        p("storage", "mcap", "mcap | sqlite3")
        p("humble_compatible", True, "metadata.yaml version 8 (readable by ROS 2 Humble); false: version 9")
        p("topics", DEFAULT_TOPICS, "topics to record; [] = every topic in the graph")
        p("topic_types", [""], "'topic:pkg/msg/Type' for topics to subscribe before they are advertised "
          "(added to the runtime's topic types)")
        p("qos_overrides", [""], "'topic:reliability[:depth[:durability]]' (reliability/durability may be auto)")
        p("queue_depth", 1000, "subscription keep-last depth (non-image topics; 2 s at 500 Hz)")
        p("sensor_queue_depth", 60, "subscription keep-last depth for image / point-cloud topics (2 s at 30 Hz)")
        p("max_bag_size_mb", 0.0, "start a new storage file at this size [MB]; 0 = never")
        p("max_bag_duration_s", 0.0, "start a new storage file after this long [s]; 0 = never")
        p("flush_period_s", 1.0, "put received data on disk this often [s] (crash-recoverable)")
        p("fsync", True, "fsync on each flush (survives power loss, not just a killed process)")
        p("discovery_period_s", 1.0, "check the graph for new publishers/types this often [s]")
        p("max_queue_mb", 512.0, "bound of the writer queue [MB]; beyond it messages are dropped and counted")
        p("episode_topic", EPISODE_TOPIC, "episode marker topic (std_msgs/String)")
        p("episode_task", "", "task name for ~/start_episode ('start:<task>'); runtime")
        p("diagnostics_period_s", 1.0, "period of /diagnostics messages [s]")
        p("exit_on_error", False, "exit with code 1 after a storage error instead of staying up to report it")
        p("autostart", True, "configure and activate at start-up")

        self._log = self.get_logger()
        self._writer: BagWriter | None = None
        self._thread: WriterThread | None = None
        self._subs: dict[tuple[str, str], _Sub] = {}
        self._active = False
        self._error = ""
        self._state_text = "unconfigured"
        self._lost = 0
        self._next_key = 0
        self._rate = RateMeter()
        self._last_bytes = 0
        self._last_t = time.monotonic()
        self.exit_requested = False
        self._discovery_timer = None
        self._episode_pub = None
        self._srvs: list = []
        self._unavailable: set = set()
        self._drain_ok = True
        self._replayed_dropped = 0  # transient-local history messages already recorded (not written twice)
        self._ready_logged = -1  # matched publishers when 'ready' was last logged
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        period = float(self._get("diagnostics_period_s"))
        self._diag_timer = self.create_timer(period if period > 0 else 1.0, self._publish_diagnostics)

    # ------------------------------------------------------------------ parameters
    def _fail(self, text: str) -> None:
        self._error = text
        self._state_text = "error"
        self._log.error(text)
        self._publish_diagnostics()
        if self._get("exit_on_error"):
            self.exit_requested = True

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._configure()
        except (ValueError, OSError, BagError) as exc:
            if isinstance(exc, OSError):
                text = (f"cannot create bag {exc.filename or self._get('output_dir')}: "
                        f"{os.strerror(exc.errno) if exc.errno else exc}")
            else:
                text = f"configure failed: {exc}"
            self._fail(text + " (not recording)")
            self._writer = None
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def _configure(self) -> None:
        self._error = ""
        out = str(self._get("output_dir")).strip() or time.strftime("sage_bag_%Y%m%d_%H%M%S")
        storage = str(self._get("storage")).strip().lower()
        size_mb = float(self._get("max_bag_size_mb"))
        dur_s = float(self._get("max_bag_duration_s"))
        self._flush_s = float(self._get("flush_period_s"))
        self._discovery_s = float(self._get("discovery_period_s"))
        max_q = float(self._get("max_queue_mb"))
        for key, value in (("flush_period_s", self._flush_s), ("discovery_period_s", self._discovery_s),
                           ("max_queue_mb", max_q)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{key} must be > 0, got {value}")
        if not (size_mb >= 0 and dur_s >= 0):
            raise ValueError("max_bag_size_mb and max_bag_duration_s must be >= 0 (0 = no split)")
        self._topics = [t for t in (self._get("topics") or []) if t]
        # Added to the defaults, never instead of them: the runtime's topics are subscribed at once.
        self._types = {**DEFAULT_TOPIC_TYPES, **parse_topic_types([e for e in (self._get("topic_types") or []) if e])}
        self._overrides = parse_qos_overrides([e for e in (self._get("qos_overrides") or []) if e])
        self._depth = int(self._get("queue_depth"))
        self._sensor_depth = int(self._get("sensor_queue_depth"))
        if self._depth < 1 or self._sensor_depth < 1:
            raise ValueError("queue_depth and sensor_queue_depth must be >= 1")
        self._episode_topic = str(self._get("episode_topic"))
        self._sim = bool(self._get("use_sim_time"))
        writer = BagWriter(out, storage=storage, humble_compatible=bool(self._get("humble_compatible")),
                           max_bag_size_bytes=int(size_mb * 1e6), max_bag_duration_ns=int(dur_s * 1e9),
                           fsync=bool(self._get("fsync")),
                           custom_data={"sage_hl_ros.recorder": self.get_fully_qualified_name()})
        writer.open()
        self._writer = writer
        self._thread = WriterThread(writer, self._flush_s, int(max_q * 1e6), self._on_writer_error)
        self._thread.start()
        self._episode_pub = self.create_publisher(String, self._episode_topic,
                                                  QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        for name, cb in (("start_episode", self._srv_start), ("end_episode", self._srv_end("")),
                         ("end_episode_success", self._srv_end("success")),
                         ("end_episode_failure", self._srv_end("failure")), ("split", self._srv_split)):
            self._srvs.append(self.create_service(Trigger, f"~/{name}", cb))
        self._state_text = "configured"
        self._log.info(f"bag {writer.path} ({storage}, metadata version {writer.version}); topics: "
                       + (", ".join(self._topics) if self._topics else "all"))

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._thread is None or self._error:
            return TransitionCallbackReturn.FAILURE
        self._active = True
        self._state_text = "recording"
        for topic, msgtype in self._types.items():
            if not self._topics or topic in self._topics:
                self._subscribe(topic, msgtype, [p for p in self._graph_publishers(topic) if p.topic_type == msgtype])
        self._discover()
        self._discovery_timer = self.create_timer(self._discovery_s, self._discover)
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._pause()
        return super().on_deactivate(state)

    def _pause(self) -> None:
        self._active = False
        if self._discovery_timer is not None:
            self.destroy_timer(self._discovery_timer)
            self._discovery_timer = None
        for sub in self._subs.values():
            if sub.handle is not None:
                self.destroy_subscription(sub.handle)
                sub.handle = None
        if not self._error:
            self._state_text = "paused"

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.release()
        return TransitionCallbackReturn.SUCCESS

    def release(self) -> None:
        """Stop recording and close the bag (metadata.yaml). Safe to call more than once."""
        self._pause()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.stop()
            if not thread.error and self._writer is not None:
                self._log.info(f"closed {self._writer.path}: {self._writer.message_count} messages in "
                               f"{len(self._writer.files)} file(s)")
        for srv in self._srvs:
            self.destroy_service(srv)
        self._srvs = []
        if self._episode_pub is not None:
            self.destroy_publisher(self._episode_pub)
            self._episode_pub = None
        if not self._error:
            self._state_text = "closed"

    # ------------------------------------------------------------------ subscriptions
    def _qos_for(self, topic: str, msgtype: str, publishers) -> tuple[ReliabilityPolicy, DurabilityPolicy, int]:
        o = self._overrides.get(topic, QosOverride())
        if o.reliability:
            rel = _RELIABILITY[o.reliability]
        elif any(int(p.qos_profile.reliability) == int(ReliabilityPolicy.BEST_EFFORT) for p in publishers):
            rel = ReliabilityPolicy.BEST_EFFORT
        elif not publishers and is_sensor_stream(topic, msgtype):
            rel = ReliabilityPolicy.BEST_EFFORT  # matches whichever publisher comes, from its first message
        else:
            rel = ReliabilityPolicy.RELIABLE
        if o.durability:
            dur = _DURABILITY[o.durability]
        elif publishers and all(int(p.qos_profile.durability) == int(DurabilityPolicy.TRANSIENT_LOCAL)
                                for p in publishers):
            dur = DurabilityPolicy.TRANSIENT_LOCAL
        else:
            dur = DurabilityPolicy.VOLATILE
        depth = o.depth or (self._sensor_depth if msgtype in SENSOR_TYPES else self._depth)
        return rel, dur, depth

    def _subscribe(self, topic: str, msgtype: str, publishers) -> None:
        key = (topic, msgtype)
        rel, dur, depth = self._qos_for(topic, msgtype, publishers)
        sub = self._subs.get(key)
        if sub is not None and sub.handle is not None:
            if (sub.reliability, sub.durability) == (rel, dur):
                return
            if (sub.durability == dur and sub.reliability == ReliabilityPolicy.BEST_EFFORT
                    and not self._overrides.get(topic, QosOverride()).reliability):
                return  # best-effort already matches reliable publishers; re-creating it would lose messages
            # A publisher appeared that our subscription cannot match: re-create it.
            self._log.info(f"{topic}: re-subscribing {rel.name.lower()}/{dur.name.lower()} to match its publishers")
            if sub.durability == DurabilityPolicy.VOLATILE and dur == DurabilityPolicy.TRANSIENT_LOCAL:
                sub.replay = list(sub.recent)  # its history may hold messages already recorded
            self.destroy_subscription(sub.handle)
            sub.handle = None
        try:
            cls = message_class(msgtype)
        except ValueError as exc:
            if (topic, msgtype) not in self._unavailable:
                self._unavailable.add((topic, msgtype))
                self._log.warning(f"not recording {topic}: {exc}")
            return
        if sub is None:
            sub = _Sub(self._next_key, topic, msgtype, rel, dur, depth)
            self._next_key += 1
            self._subs[key] = sub
        sub.reliability, sub.durability, sub.depth, sub.msg_class = rel, dur, depth, cls
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=rel, durability=dur)
        kwargs = {"raw": True}
        events = self._event_callbacks()
        if events is not None:
            kwargs["event_callbacks"] = events
        try:
            sub.handle = self.create_subscription(cls, topic, self._callback(sub), qos, **kwargs)
        except TypeError:  # an rclpy without event_callbacks
            kwargs.pop("event_callbacks", None)
            sub.handle = self.create_subscription(cls, topic, self._callback(sub), qos, **kwargs)
        self._log.info(f"recording {topic} [{msgtype}] {rel.name.lower()} {dur.name.lower()} depth {depth}")

    def _event_callbacks(self):
        try:
            from rclpy.event_handler import SubscriptionEventCallbacks  # Iron and later
        except ImportError:
            try:
                from rclpy.qos_event import SubscriptionEventCallbacks  # Humble
            except ImportError:
                return None
        try:
            return SubscriptionEventCallbacks(message_lost=self._on_lost)
        except TypeError:
            return None

    def _on_lost(self, info) -> None:
        self._lost += int(getattr(info, "total_count_change", 1) or 1)

    def _callback(self, sub: _Sub):
        thread = self._thread
        assert thread is not None
        put = thread.put
        clock = self.get_clock()
        now = (lambda: clock.now().nanoseconds) if self._sim else time.time_ns

        volatile = sub.durability == DurabilityPolicy.VOLATILE

        def take(t: int, data: bytes) -> None:
            if sub.replay:
                if data in sub.replay:  # history re-delivered after the transient-local re-subscription
                    sub.replay.remove(data)
                    self._replayed_dropped += 1
                    return
                sub.replay = []  # history is delivered first: past it, everything is new
            if volatile and len(data) <= _REPLAY_MAX_BYTES:
                sub.recent.append(bytes(data))
            put(sub.key, t, data)

        def on_message(data: bytes) -> None:
            t = now()
            if not sub.registered:
                self._register(sub)
            take(t, data)
            n = 1
            # Drain whatever else is already queued on this subscription. rclpy's executor takes one
            # message per subscription per wait cycle, and with camera streams in the same process a
            # cycle takes long enough that 500 Hz joint states fell behind (measured: p50 latency
            # 0.7 s and 11% lost beside three 640x480 streams; see bench/bench_record.py).
            # ``handle.take_message(type, raw)`` is what rclpy's executor itself calls (Humble too).
            handle = getattr(sub.handle, "handle", None)
            if handle is not None and self._drain_ok:
                try:
                    with handle:
                        while n < MAX_DRAIN:
                            got = handle.take_message(sub.msg_class, True)
                            if got is None:
                                break
                            take(now(), got[0])
                            n += 1
                except Exception as exc:  # an rclpy without it: one message per callback
                    self._drain_ok = False
                    self._log.warning(f"draining subscriptions disabled ({type(exc).__name__}: {exc})")
            sub.count += n

        return on_message

    def _register(self, sub: _Sub) -> None:
        """Send the connection (with the publishers' offered QoS now) ahead of its first message."""
        try:
            offered = [endpoint_qos(p) for p in self.get_publishers_info_by_topic(sub.topic)
                       if p.topic_type == sub.msgtype]
        except Exception:  # graph query failed: record without QoS rather than not at all
            offered = []
        assert self._thread is not None
        self._thread.control("conn", sub.key, sub.topic, sub.msgtype, offered)
        sub.registered = True

    def _graph_publishers(self, topic: str) -> list:
        """Publishers of ``topic`` in the graph, other than this node's own (the marker publisher)."""
        try:
            infos = self.get_publishers_info_by_topic(topic)
        except Exception:
            return []
        return [p for p in infos if p.node_name != self.get_name() or p.node_namespace != self.get_namespace()]

    def _discover(self) -> None:
        if not self._active:
            return
        try:
            if self._topics:
                wanted = self._topics
            else:
                wanted = [t for t, _ in self.get_topic_names_and_types() if t not in IGNORED_TOPICS]
            for topic in wanted:
                publishers = self._graph_publishers(topic)
                types = {p.topic_type for p in publishers}
                for msgtype in sorted(types):
                    self._subscribe(topic, msgtype, [p for p in publishers if p.topic_type == msgtype])
        except Exception as exc:  # never let discovery kill the executor
            self._log.warning(f"topic discovery failed: {exc}")

    # ------------------------------------------------------------------ writer errors
    def _on_writer_error(self, text: str, closed: bool) -> None:
        # Called on the writer thread: only flag; the executor thread tears down subscriptions.
        where = self._writer.path if self._writer is not None else "?"
        note = "metadata.yaml written" if closed else f"bag left unclosed: run `sage-hl-bag repair {where}`"
        self._error = f"recording stopped: {text}; {note}"
        self._state_text = "error"

    def _check_writer(self) -> None:
        if self._error and self._active:
            self._pause()
            self._state_text = "error"
            self._fail(self._error)

    # ------------------------------------------------------------------ services
    def _publish_marker(self, text: str):
        if self._episode_pub is None or not self._active or self._error:
            return False, f"not recording ({self._state_text}); marker '{text}' not published"
        msg = String()
        msg.data = text
        self._episode_pub.publish(msg)
        if (self._episode_topic, "std_msgs/msg/String") not in self._subs or \
                self._subs[(self._episode_topic, "std_msgs/msg/String")].handle is None:
            # Not subscribed to the marker topic (filtered out): record the marker directly.
            self._write_direct(self._episode_topic, "std_msgs/msg/String", encode_cdr_string(text))
        return True, f"published '{text}' on {self._episode_topic}"

    def _write_direct(self, topic: str, msgtype: str, data: bytes) -> None:
        key = (topic, msgtype)
        sub = self._subs.get(key)
        if sub is None:
            sub = _Sub(self._next_key, topic, msgtype, ReliabilityPolicy.RELIABLE, DurabilityPolicy.VOLATILE, 1)
            self._next_key += 1
            self._subs[key] = sub
        if not sub.registered:
            self._register(sub)
        t = self.get_clock().now().nanoseconds if self._sim else time.time_ns()
        self._thread.put(sub.key, t, data)

    def _srv_start(self, request, response):
        task = str(self._get("episode_task")).strip()
        response.success, response.message = self._publish_marker(f"start:{task}" if task else "start")
        return response

    def _srv_end(self, outcome: str):
        def handler(request, response):
            response.success, response.message = self._publish_marker(f"end:{outcome}" if outcome else "end")
            return response

        return handler

    def _srv_split(self, request, response):
        if self._thread is None or self._error:
            response.success, response.message = False, f"not recording ({self._state_text})"
        else:
            self._thread.control("split")
            response.success, response.message = True, "split requested: a new storage file starts now"
        return response

    # ------------------------------------------------------------------ diagnostics
    @staticmethod
    def _matched(sub: _Sub) -> int | None:
        count = getattr(sub.handle, "get_publisher_count", None)  # not in every rclpy (Humble)
        try:
            return int(count()) if count is not None else None
        except Exception:  # subscription being destroyed
            return None

    def _readiness(self) -> tuple[bool, dict[str, int]]:
        """(ready, matched publishers per topic): ready = recording, and every wanted topic that
        has publishers in the graph is subscribed (each of its types) and matched to all of them."""
        matched: dict[str, int] = {}
        for sub in self._subs.values():
            n = self._matched(sub) if sub.handle is not None else None
            if n is not None:
                matched[sub.topic] = matched.get(sub.topic, 0) + n
        if not self._active or self._error:
            return False, matched
        try:
            wanted = self._topics or [t for t, _ in self.get_topic_names_and_types() if t not in IGNORED_TOPICS]
        except Exception:
            return False, matched
        for topic in wanted:
            publishers = self._graph_publishers(topic)
            for msgtype in {p.topic_type for p in publishers}:
                if (topic, msgtype) in self._unavailable:
                    continue  # not installed: said once in the log, cannot be recorded
                sub = self._subs.get((topic, msgtype))
                if sub is None or sub.handle is None:
                    return False, matched
                n = self._matched(sub)
                if n is not None and n < sum(1 for p in publishers if p.topic_type == msgtype):
                    return False, matched
        return True, matched

    def _publish_diagnostics(self) -> None:
        self._check_writer()
        now = time.monotonic()
        t = self._thread
        w = self._writer
        written_bytes = t.written_bytes if t is not None else 0
        dt = max(now - self._last_t, 1e-6)
        mb_s = (written_bytes - self._last_bytes) / dt / 1e6
        self._last_bytes, self._last_t = written_bytes, now
        values = {
            "state": self._state_text,
            "output_dir": str(w.path) if w is not None else str(self._get("output_dir")),
            "storage": w.storage if w is not None else str(self._get("storage")),
            "files": len(w.files) if w is not None else 0,
            "topics_subscribed": sum(1 for s in self._subs.values() if s.handle is not None),
            "messages_received": sum(s.count for s in self._subs.values()),
            "messages_written": t.written if t is not None else 0,
            "write_mb_per_s": mb_s,
            "queue_mb": (t.queued_bytes / 1e6) if t is not None else 0.0,
            "queue_peak_mb": (t.queued_peak_bytes / 1e6) if t is not None else 0.0,
            "dropped_queue_full": t.dropped_queue_full if t is not None else 0,
            "dds_messages_lost": self._lost,
            "episodes": len(w.episodes.episodes) if w is not None else 0,
        }
        for sub in sorted(self._subs.values(), key=lambda x: (x.topic, x.msgtype)):
            key = f"received {sub.topic}"
            values[key] = values.get(key, 0) + sub.count
        ready, matched = self._readiness()
        values["ready"] = ready
        for topic, n in sorted(matched.items()):
            values[f"matched {topic}"] = n
        if ready and self._ready_logged != sum(matched.values()):  # again when more publishers are matched
            self._ready_logged = sum(matched.values())
            self._log.info(f"ready: {values['topics_subscribed']} subscription(s), every publisher in the graph "
                           f"matched ({self._ready_logged})")
        if self._error:
            level, message = "error", self._error
            values["error"] = self._error
        elif values["dropped_queue_full"] or self._lost:
            level, message = "warn", "recording; messages dropped (see dropped_queue_full / dds_messages_lost)"
        elif self._state_text == "recording":
            level, message = "ok", "recording"
        else:
            level, message = "ok", self._state_text
        st = status(f"sage_recorder: {self.get_name()}", level, message, values)
        try:
            self._diag_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), [st]))
        except Exception:  # context shutting down
            pass


def run(args=None) -> int:
    """Record until SIGINT/SIGTERM, then close the bag. Returns the exit code (1 after an error)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    rclpy.init(args=args)
    stop = stop_on_signals()  # the bag is closed by us, after the executor stopped, context valid
    node = None
    executor = SingleThreadedExecutor()
    code = 0
    try:
        node = RecorderNode()
        executor.add_node(node)
        if node.get_parameter("autostart").value:
            if node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                node.trigger_activate()
        while not stop.is_set() and rclpy.ok() and not node.exit_requested:
            executor.spin_once(timeout_sec=0.1)
    finally:
        if node is not None:
            try:
                node.release()
            except Exception as exc:  # best effort at exit
                print(f"[sage_recorder] closing the bag failed: {exc}", flush=True)
            code = 1 if node._error else 0
            try:
                executor.remove_node(node)
            except Exception:
                pass
            node.destroy_node()
        executor.shutdown(timeout_sec=1.0)
        rclpy.try_shutdown()
    return code


def main(args=None) -> None:
    raise SystemExit(run(args))


if __name__ == "__main__":
    main()
