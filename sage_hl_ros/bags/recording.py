"""rosbag2 bag writing, crash repair and episode bookkeeping (pure Python: no rclpy).

A bag is a rosbag2 directory: ``metadata.yaml`` plus storage files ``<name>_0.mcap``,
``<name>_1.mcap``, ... (or ``.db3`` for sqlite3), where ``<name>`` is the directory name, exactly
the layout ``ros2 bag record --max-bag-size/--max-bag-duration`` produces. Splitting therefore
stays inside one bag: ``ros2 bag play <dir>``, rosbags' ``Reader`` and
``sage_hl_ros.bags.dataset`` read all files of the bag in order, and connection ids are the same
in every file.

What comes from ``rosbags`` and what is written here
    rosbags' typestores give the message definitions (``ros2msg`` text, as rosbag2 stores them)
    and RIHS01 type hashes; its QoS serialisers (v8 and v9 formats) produce
    ``offered_qos_profiles``; its ``Reader`` reads bags back (``info``, replay, dataset, tests).
    The storage files themselves are written by the small encoders in this module
    (:class:`McapFile`, :class:`Sqlite3File`), not by ``rosbags.rosbag2.Writer``, because a
    recorder needs three things that writer does not offer: several storage files in one bag
    (its file name is fixed to ``<name>.mcap``), a flush that puts everything received so far
    on disk (its MCAP writer keeps up to 1 MiB in an in-memory chunk and has no flush), and
    crash repair. The encoders follow the MCAP spec (chunked, with message indexes and a full
    summary: schemas, channels, chunk indexes, statistics, summary offsets; chunk CRCs) and
    rosbag2's sqlite3 schema (version 4 tables, the same as rosbags). The test suite reads what
    they write with two independent readers: rosbags and the ``mcap`` package (plus Python's
    ``sqlite3`` for .db3).

Metadata version and ROS 2 Humble (checked against rosbag2 sources and issues, see below)
    ``humble_compatible=True`` (the default) writes ``metadata.yaml`` version 8 with
    ``offered_qos_profiles`` as a YAML *string* whose enums are integers (rosbags'
    ``dump_qos_v8``; the same string goes into each MCAP channel's metadata).
    ``humble_compatible=False`` writes version 9 (rosbags' latest), where
    ``offered_qos_profiles`` is a YAML *list* with enum names (``keep_last``, ``reliable``).
    - rosbag2 decodes ``metadata.yaml`` field by field by version (``version >= 3``:
      compression fields, ``>= 4``: ``offered_qos_profiles`` read as a string, ``>= 5``: per-file
      ``files``, ``>= 6``: ``custom_data``, ``>= 7``: ``type_description_hash``, ``>= 8``:
      ``ros_distro``); unknown keys are ignored and there is no "version too new" rejection
      (verified in ros2/rosbag2 ``rosbag2_storage/yaml.hpp``, Jazzy-era source).
    - Humble (rosbag2 0.15.x) writes and reads version 5: per-file info (#870, 2021) predates
      it and ``custom_data`` (version 6) was reverted from 0.15.1 and re-added in 0.17.0 (rosbag2
      CHANGELOG), so Humble reads the version <= 5 fields of a version 8 file and ignores the rest.
    - Version 9 is *not* readable by Humble: its ``offered_qos_profiles`` list fails Humble's
      ``as<std::string>()`` with "yaml-cpp: bad conversion" (reported for Jazzy bags opened on
      Humble: ros-visualization/rqt_bag#146, and a DeepRacer issue with the exact error at the
      ``offered_qos_profiles`` line, which also shows the version field itself is accepted).
    Not verified (no Humble install here): that Humble's player parses the integer-enum QoS
    string of a v8 file (it is the format Humble itself writes, so it should), and that Humble's
    sqlite3 plugin opens a schema-version-4 .db3 (extra tables/columns; MCAP is the default and
    the safer choice for Humble). The maintainers' workaround for any unreadable bag on an
    older distro is to delete ``metadata.yaml`` and run ``ros2 bag reindex``.

Crash safety
    :meth:`BagWriter.flush` closes the open MCAP chunk (writing its message indexes) and hands
    the bytes to the OS (``fsync`` too, by default), or commits the sqlite3 transaction (WAL
    journal, so a kill never corrupts committed data). After SIGKILL the file has no summary
    and no footer and ``metadata.yaml`` is missing; :func:`repair_bag` rebuilds them from
    whatever complete chunks (or committed rows) exist, like ``ros2 bag reindex`` but also
    for truncated MCAP files.

Episodes
    Markers on ``/sage/episode`` (std_msgs/String): ``start`` or ``start:<task>`` begins an
    episode; ``end``, ``end:success`` or ``end:failure`` ends it. A ``start`` while an episode
    is open ends that one as ``interrupted``; an ``end`` with none open is counted and ignored.
    The writer tracks them as messages are written and stores the list in ``custom_data``
    (``sage_hl_ros.episodes``, JSON); :func:`episodes_from_markers` is the same logic for readers.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import re
import sqlite3
import struct
import sys
import threading
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from .errors import BagError

__all__ = [
    "EPISODE_TOPIC",
    "TEACHER_TOPIC",
    "DEFAULT_TOPIC_TYPES",
    "COMMAND_TOPICS",
    "E_STOP_TOPICS",
    "DIAGNOSTICS_TOPIC",
    "SENSOR_TYPES",
    "SENSOR_TOPICS",
    "BadChunk",
    "BagError",
    "BagWriter",
    "Episode",
    "EpisodeTracker",
    "McapFile",
    "RepairReport",
    "Sqlite3File",
    "decode_cdr_string",
    "encode_cdr_string",
    "episodes_from_markers",
    "make_qos",
    "message_definition",
    "parse_episode_marker",
    "repair_bag",
    "replay_hazard",
    "is_sensor_stream",
    "storage_files",
]

EPISODE_TOPIC = "/sage/episode"
TEACHER_TOPIC = "/teacher/joint_command"
TEACHER_NAMESPACE = "/teacher/"

# Topics whose messages move or stop the robot, or speak for its health: republishing them from a
# bag would drive the robot past the live safety filter (a recorded command reaches the controller
# as if sage_control had sent it), latch or release the e-stop, or fake the diagnostics operators
# and monitors rely on. Replay skips them unless asked (``replay_hazard``).
COMMAND_TOPICS = ("/forward_position_controller/commands", "/forward_position_controller/joint_trajectory",
                  "/joint_command")
E_STOP_TOPICS = ("/e_stop", "/e_stop/reset")
DIAGNOSTICS_TOPIC = "/diagnostics"
COMMAND_TYPES = ("trajectory_msgs/msg/JointTrajectory",)

# Sensor streams: published best-effort (DESIGN §4), so the recorder subscribes to them best-effort
# from the start (that matches reliable publishers too), not reliable-until-discovered, which a
# best-effort camera refuses as "incompatible QoS" until the next discovery tick.
SENSOR_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage", "sensor_msgs/msg/PointCloud2",
                "sensor_msgs/msg/LaserScan", "sensor_msgs/msg/CameraInfo")
SENSOR_TOPICS = ("/camera/image_raw", "/camera/image_raw/compressed", "/camera/depth/image_raw", "/audio/frames",
                 "/tactile/array")

# The runtime's topics (DESIGN §4) and their types, so the recorder can subscribe before anything
# is advertised (no discovery delay, first messages kept).
DEFAULT_TOPIC_TYPES: dict[str, str] = {
    "/camera/image_raw": "sensor_msgs/msg/Image",
    "/camera/depth/image_raw": "sensor_msgs/msg/Image",
    "/audio/frames": "std_msgs/msg/Float32MultiArray",
    "/tactile/array": "std_msgs/msg/Float32MultiArray",
    "/joint_states": "sensor_msgs/msg/JointState",
    "/sage/latent": "sensor_msgs/msg/Image",
    "/forward_position_controller/commands": "std_msgs/msg/Float64MultiArray",
    "/forward_position_controller/joint_trajectory": "trajectory_msgs/msg/JointTrajectory",
    "/joint_command": "sensor_msgs/msg/JointState",
    TEACHER_TOPIC: "sensor_msgs/msg/JointState",
    "/e_stop": "std_msgs/msg/Bool",
    EPISODE_TOPIC: "std_msgs/msg/String",
    DIAGNOSTICS_TOPIC: "diagnostic_msgs/msg/DiagnosticArray",
}

STORAGE_SUFFIX = {"mcap": ".mcap", "sqlite3": ".db3"}
LIBRARY = "sage_hl_ros recorder"
DEFAULT_CHUNK_BYTES = 1 << 20


def replay_hazard(topic: str, msgtype: str = "") -> str:
    """Why republishing ``topic`` could act on a live robot ("" if it cannot): command outputs
    (the runtime's three, any ``/<controller>/commands`` or ``/<controller>/joint_trajectory``,
    any JointTrajectory), the e-stop topics and /diagnostics. Teacher labels (``/teacher/...``,
    e.g. ``/teacher/joint_trajectory``) are training data no controller listens to: not a hazard."""
    if topic.startswith(TEACHER_NAMESPACE) and topic not in COMMAND_TOPICS:
        return ""
    if topic in COMMAND_TOPICS or msgtype in COMMAND_TYPES or topic.endswith(("/commands", "/joint_trajectory")):
        return "robot command"
    if topic in E_STOP_TOPICS or topic.endswith(("/e_stop", "/e_stop/reset")):
        return "e-stop"
    if topic == DIAGNOSTICS_TOPIC:
        return "diagnostics"
    return ""


def is_sensor_stream(topic: str, msgtype: str) -> bool:
    return msgtype in SENSOR_TYPES or topic in SENSOR_TOPICS


# ----------------------------------------------------------------------------- message definitions

_TYPESTORE = None
_TYPESTORE_LOCK = threading.Lock()
_DEF_CACHE: dict[str, tuple[str, str]] = {}


def _store():
    """rosbags typestore for this ROS distro (``ROS_DISTRO``), else the latest."""
    global _TYPESTORE
    if _TYPESTORE is None:
        from rosbags.typesys import Stores, get_typestore

        distro = os.environ.get("ROS_DISTRO", "").strip().upper()
        store = getattr(Stores, f"ROS2_{distro}", None) if distro else None
        _TYPESTORE = get_typestore(store or Stores.LATEST)
    return _TYPESTORE


def _msg_search_roots() -> list[Path]:
    roots = [Path(p) for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    roots.append(Path(sys.prefix))
    return roots


def _find_msg_file(msgtype: str) -> Path | None:
    pkg, _, name = msgtype.partition("/msg/")
    if not name:
        return None
    for root in _msg_search_roots():
        path = root / "share" / pkg / "msg" / f"{name}.msg"
        if path.is_file():
            return path
    return None


def message_definition(msgtype: str) -> tuple[str, str]:
    """(ros2msg definition text, RIHS01 hash) of ``pkg/msg/Type``; ("", "") if unknown.

    The typestore knows the standard packages (sensor_msgs, std_msgs, trajectory_msgs,
    diagnostic_msgs, rosgraph_msgs, geometry_msgs, ...). Other types are looked up as ``.msg``
    files in the installed share directories (``AMENT_PREFIX_PATH``, this Python's prefix) and
    registered, dependencies included. A type found nowhere is recorded without a definition,
    as rosbag2 does; its data is still stored byte-exact.
    """
    with _TYPESTORE_LOCK:
        if msgtype in _DEF_CACHE:
            return _DEF_CACHE[msgtype]
        store = _store()
        result = ("", "")
        for _ in range(32):  # each round registers one missing dependency
            try:
                msgdef, _digest = store.generate_msgdef(msgtype, ros_version=2)
                result = (msgdef, store.hash_rihs01(msgtype))
                break
            except Exception as exc:  # TypesysError/KeyError naming the unknown type
                missing = _unknown_type_from(exc) or msgtype
                path = _find_msg_file(missing)
                if path is None:
                    break
                try:
                    from rosbags.typesys import get_types_from_msg

                    store.register(get_types_from_msg(path.read_text(), missing))
                except Exception:
                    break
        _DEF_CACHE[msgtype] = result
        return result


def _unknown_type_from(exc: Exception) -> str | None:
    m = re.search(r"([A-Za-z0-9_]+/msg/[A-Za-z0-9_]+)", str(exc))
    return m.group(1) if m else None


# ----------------------------------------------------------------------------- QoS


def make_qos(history: int = 1, depth: int = 10, reliability: int = 1, durability: int = 2,
             deadline_ns: int | None = None, lifespan_ns: int | None = None, liveliness: int = 1,
             liveliness_lease_ns: int | None = None, avoid_ros_namespace_conventions: bool = False):
    """A rosbags ``Qos`` from rmw enum values (the integers rclpy's policies use) and durations in
    ns (None or >= 2**63-1: infinite, written as rmw's {sec: 9223372036, nsec: 854775807})."""
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    def t(ns):
        if ns is None or ns >= 2**63 - 1 or ns < 0:
            ns = 2**63 - 1
        return QosTime(int(ns // 1_000_000_000), int(ns % 1_000_000_000))

    def enum(cls, value, fallback):
        try:
            return cls(int(value))
        except (ValueError, TypeError):
            return cls(fallback)

    return Qos(enum(QosHistory, history, 3), int(depth), enum(QosReliability, reliability, 3),
               enum(QosDurability, durability, 3), t(deadline_ns), t(lifespan_ns),
               enum(QosLiveliness, liveliness, 4), t(liveliness_lease_ns), bool(avoid_ros_namespace_conventions))


def _qos_text(qos: Sequence, version: int) -> str:
    """``offered_qos_profiles`` as stored in MCAP channel metadata / the sqlite topics table."""
    from rosbags.rosbag2.metadata import dump_qos_v8, dump_qos_v9

    if version >= 9:
        dumped = dump_qos_v9(list(qos))
        return yaml.safe_dump(dumped, default_flow_style=False, sort_keys=False).strip() if dumped else ""
    return dump_qos_v8(list(qos))


def _qos_yaml_value(qos: Sequence, version: int):
    """``offered_qos_profiles`` as it appears in metadata.yaml (string <= v8, list from v9)."""
    from rosbags.rosbag2.metadata import dump_qos_v8, dump_qos_v9

    return dump_qos_v9(list(qos)) if version >= 9 else dump_qos_v8(list(qos))


def _parse_qos_text(text: str) -> list:
    from rosbags.rosbag2.metadata import parse_qos

    try:
        return parse_qos(text) if text else []
    except Exception:
        return []


# ----------------------------------------------------------------------------- CDR strings


def encode_cdr_string(text: str) -> bytes:
    """std_msgs/String as CDR (little endian), e.g. an episode marker written without rclpy."""
    raw = text.encode("utf-8") + b"\x00"
    return b"\x00\x01\x00\x00" + struct.pack("<I", len(raw)) + raw


def decode_cdr_string(data: bytes) -> str | None:
    """The ``data`` field of a serialized std_msgs/String, or None if malformed."""
    if len(data) < 8:
        return None
    order = "<" if data[1] & 1 else ">"
    (n,) = struct.unpack_from(order + "I", data, 4)
    if n == 0 or 8 + n > len(data):
        return "" if n == 0 else None
    return bytes(data[8:8 + n - 1]).decode("utf-8", errors="replace")


# ----------------------------------------------------------------------------- episodes


@dataclass
class Episode:
    index: int
    start_ns: int
    end_ns: int | None = None  # None: still open at the end of the bag
    task: str = ""
    outcome: str = ""  # "success" | "failure" | "" (not given) | "interrupted" (a new start came first)

    @property
    def duration_s(self) -> float | None:
        return None if self.end_ns is None else (self.end_ns - self.start_ns) * 1e-9


def parse_episode_marker(text: str) -> tuple[str, str] | None:
    """("start", task) or ("end", outcome) for a marker string; None if it is not one."""
    kind, _, arg = text.strip().partition(":")
    kind = kind.strip().lower()
    if kind == "start":
        return "start", arg.strip()
    if kind == "end":
        return "end", arg.strip().lower()
    return None


class EpisodeTracker:
    """Turns a time-ordered stream of markers into :class:`Episode` records."""

    def __init__(self):
        self.episodes: list[Episode] = []
        self.unmatched_ends = 0
        self.invalid_markers = 0
        self._open: Episode | None = None

    def feed(self, t_ns: int, text: str | None) -> None:
        marker = parse_episode_marker(text) if text is not None else None
        if marker is None:
            self.invalid_markers += 1
            return
        kind, arg = marker
        if kind == "start":
            if self._open is not None:
                self._open.end_ns, self._open.outcome = t_ns, "interrupted"
            self._open = Episode(len(self.episodes), t_ns, task=arg)
            self.episodes.append(self._open)
        elif self._open is None:
            self.unmatched_ends += 1
        else:
            self._open.end_ns, self._open.outcome = t_ns, arg
            self._open = None

    @property
    def open_episode(self) -> Episode | None:
        return self._open

    def as_json(self) -> str:
        return json.dumps([asdict(e) for e in self.episodes], separators=(",", ":"))


def episodes_from_markers(markers: Iterable[tuple[int, str]]) -> list[Episode]:
    """Episodes from (timestamp ns, marker text) pairs (sorted by time here)."""
    tracker = EpisodeTracker()
    for t, text in sorted(markers, key=lambda m: m[0]):
        tracker.feed(t, text)
    return tracker.episodes


# ----------------------------------------------------------------------------- MCAP encoding

MCAP_MAGIC = b"\x89MCAP0\r\n"
OP_HEADER, OP_FOOTER, OP_SCHEMA, OP_CHANNEL, OP_MESSAGE = 0x01, 0x02, 0x03, 0x04, 0x05
OP_CHUNK, OP_MESSAGE_INDEX, OP_CHUNK_INDEX, OP_STATISTICS = 0x06, 0x07, 0x08, 0x0B
OP_METADATA, OP_METADATA_INDEX, OP_SUMMARY_OFFSET, OP_DATA_END = 0x0C, 0x0D, 0x0E, 0x0F

_MSG_HEADER = struct.Struct("<BQHIQQ")  # opcode, record length, channel, sequence, log time, publish time


def _s(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("<I", len(raw)) + raw


def _b(data: bytes) -> bytes:
    return struct.pack("<I", len(data)) + data


def _map_ss(d: dict[str, str]) -> bytes:
    body = b"".join(_s(k) + _s(v) for k, v in d.items())
    return struct.pack("<I", len(body)) + body


def _record(op: int, body: bytes) -> bytes:
    return struct.pack("<BQ", op, len(body)) + body


class McapFile:
    """One MCAP storage file: chunked, indexed, with a complete summary section when closed.

    Schema and channel records go into the data section as they are added (so a linear scan of a
    crashed file finds them before the messages that use them) and again into the summary.
    Messages are buffered as a list of byte strings (payloads are not copied) and written as one
    chunk when ``chunk_bytes`` is reached or on :meth:`flush`.
    """

    def __init__(self, path: Path, chunk_bytes: int = DEFAULT_CHUNK_BYTES, crc: bool = True):
        self.path = Path(path)
        self._f = open(self.path, "xb")  # noqa: SIM115 - closed in close()/abort()
        self._pos = 0
        self._put(MCAP_MAGIC + _record(OP_HEADER, _s("ros2") + _s(LIBRARY)))
        self._chunk_bytes = int(chunk_bytes)
        self._crc = crc
        self._schemas: dict[int, bytes] = {}
        self._channels: dict[int, bytes] = {}
        self._chunk_indexes: list[bytes] = []
        self._seq: dict[int, int] = {}
        self.channel_counts: dict[int, int] = {}
        self.message_count = 0
        self.start_ns: int | None = None
        self.end_ns: int | None = None
        self._new_chunk()

    # ---------------------------------------------------------------- writing
    def _put(self, data: bytes) -> None:
        self._f.write(data)
        self._pos += len(data)

    def _new_chunk(self) -> None:
        self._parts: list[bytes] = []
        self._chunk_len = 0
        self._chunk_start_ns = 2**64 - 1
        self._chunk_end_ns = 0
        self._index: dict[int, list[tuple[int, int]]] = {}

    def add_schema(self, schema_id: int, name: str, encoding: str, data: str) -> None:
        rec = _record(OP_SCHEMA, struct.pack("<H", schema_id) + _s(name) + _s(encoding) + _b(data.encode()))
        self._schemas[schema_id] = rec
        self._put(rec)

    def add_channel(self, channel_id: int, schema_id: int, topic: str, encoding: str,
                    metadata: dict[str, str]) -> None:
        rec = _record(OP_CHANNEL, struct.pack("<HH", channel_id, schema_id) + _s(topic) + _s(encoding)
                      + _map_ss(metadata))
        self._channels[channel_id] = rec
        self._seq[channel_id] = 0
        self.channel_counts[channel_id] = 0
        self._put(rec)

    def write(self, channel_id: int, t_ns: int, data: bytes) -> None:
        seq = self._seq[channel_id]
        self._seq[channel_id] = seq + 1
        header = _MSG_HEADER.pack(OP_MESSAGE, 22 + len(data), channel_id, seq & 0xFFFFFFFF, t_ns, t_ns)
        self._index.setdefault(channel_id, []).append((t_ns, self._chunk_len))
        self._parts.append(header)
        self._parts.append(data)
        self._chunk_len += len(header) + len(data)
        if t_ns < self._chunk_start_ns:
            self._chunk_start_ns = t_ns
        if t_ns > self._chunk_end_ns:
            self._chunk_end_ns = t_ns
        self.channel_counts[channel_id] += 1
        self.message_count += 1
        if self.start_ns is None or t_ns < self.start_ns:
            self.start_ns = t_ns
        if self.end_ns is None or t_ns > self.end_ns:
            self.end_ns = t_ns
        if self._chunk_len >= self._chunk_bytes:
            self._close_chunk()

    def _close_chunk(self) -> None:
        if not self._parts:
            return
        n = self._chunk_len
        crc = 0
        if self._crc:
            for part in self._parts:
                crc = zlib.crc32(part, crc)
        body_head = struct.pack("<QQQI", self._chunk_start_ns, self._chunk_end_ns, n, crc) + _s("")
        body_head += struct.pack("<Q", n)
        chunk_start = self._pos
        self._f.write(struct.pack("<BQ", OP_CHUNK, len(body_head) + n) + body_head)
        self._f.writelines(self._parts)
        self._pos += 9 + len(body_head) + n
        chunk_length = self._pos - chunk_start
        offsets: dict[int, int] = {}
        index_start = self._pos
        for cid in sorted(self._index):
            entries = self._index[cid]
            arr = b"".join(struct.pack("<QQ", t, o) for t, o in entries)
            offsets[cid] = self._pos
            self._put(_record(OP_MESSAGE_INDEX, struct.pack("<HI", cid, len(arr)) + arr))
        offs = b"".join(struct.pack("<HQ", cid, off) for cid, off in offsets.items())
        self._chunk_indexes.append(_record(OP_CHUNK_INDEX, struct.pack(
            "<QQQQ", self._chunk_start_ns, self._chunk_end_ns, chunk_start, chunk_length)
            + struct.pack("<I", len(offs)) + offs + struct.pack("<Q", self._pos - index_start) + _s("")
            + struct.pack("<QQ", n, n)))
        self._new_chunk()

    @property
    def size_bytes(self) -> int:
        """Bytes in the file plus the open chunk (what the file will hold after a flush)."""
        return self._pos + self._chunk_len

    def flush(self, fsync: bool = True) -> None:
        self._close_chunk()
        self._f.flush()
        if fsync:
            os.fsync(self._f.fileno())

    def close(self, metadata: dict[str, str] | None = None, fsync: bool = True) -> None:
        self._close_chunk()
        meta_start = self._pos
        meta_count = 0
        if metadata:
            self._put(_record(OP_METADATA, _s("rosbag2") + _map_ss(metadata)))
            meta_count = 1
        meta_end = self._pos
        self._put(_record(OP_DATA_END, struct.pack("<I", 0)))
        summary_start = self._pos
        groups: list[tuple[int, int, int]] = []

        def group(op: int, records: list[bytes]) -> None:
            if records:
                start = self._pos
                for rec in records:
                    self._put(rec)
                groups.append((op, start, self._pos - start))

        group(OP_SCHEMA, [self._schemas[k] for k in sorted(self._schemas)])
        group(OP_CHANNEL, [self._channels[k] for k in sorted(self._channels)])
        group(OP_CHUNK_INDEX, self._chunk_indexes)
        if meta_count:
            group(OP_METADATA_INDEX, [_record(OP_METADATA_INDEX, struct.pack("<QQ", meta_start, meta_end - meta_start)
                                              + _s("rosbag2"))])
        counts = b"".join(struct.pack("<HQ", cid, c) for cid, c in sorted(self.channel_counts.items()))
        group(OP_STATISTICS, [_record(OP_STATISTICS, struct.pack(
            "<QHIIIIQQ", self.message_count, len(self._schemas), len(self._channels), 0, meta_count,
            len(self._chunk_indexes), self.start_ns or 0, self.end_ns or 0) + struct.pack("<I", len(counts)) + counts)])
        offsets_start = self._pos
        for op, start, length in groups:
            self._put(_record(OP_SUMMARY_OFFSET, struct.pack("<BQQ", op, start, length)))
        self._put(_record(OP_FOOTER, struct.pack("<QQI", summary_start, offsets_start, 0)) + MCAP_MAGIC)
        self._f.flush()
        if fsync:
            os.fsync(self._f.fileno())
        self._f.close()

    def abort(self) -> None:
        """Close the file handle without writing anything more (the file stays repairable)."""
        try:
            self._f.close()
        except OSError:
            pass


# ----------------------------------------------------------------------------- sqlite3 encoding

_SQLITE_SCHEMA = """
CREATE TABLE schema(schema_version INTEGER PRIMARY KEY, ros_distro TEXT NOT NULL);
CREATE TABLE metadata(id INTEGER PRIMARY KEY, metadata_version INTEGER NOT NULL, metadata TEXT NOT NULL);
CREATE TABLE topics(id INTEGER PRIMARY KEY, name TEXT NOT NULL, type TEXT NOT NULL,
                    serialization_format TEXT NOT NULL, offered_qos_profiles TEXT NOT NULL,
                    type_description_hash TEXT NOT NULL);
CREATE TABLE message_definitions(id INTEGER PRIMARY KEY, topic_type TEXT NOT NULL, encoding TEXT NOT NULL,
                                 encoded_message_definition TEXT NOT NULL, type_description_hash TEXT NOT NULL);
CREATE TABLE messages(id INTEGER PRIMARY KEY, topic_id INTEGER NOT NULL, timestamp INTEGER NOT NULL,
                      data BLOB NOT NULL);
CREATE INDEX timestamp_idx ON messages (timestamp ASC);
"""


class Sqlite3File:
    """One rosbag2 sqlite3 storage file (schema version 4, as rosbags and rosbag2 >= Iron write).

    WAL journal with ``synchronous=NORMAL`` while recording (rosbag2's "resilient" preset): a
    commit (:meth:`flush`) survives a process kill, and a kill mid-transaction only loses that
    transaction. :meth:`close` checkpoints and switches back to a rollback journal, so a closed
    bag is one self-contained .db3 file.
    """

    def __init__(self, path: Path, distro: str):
        self.path = Path(path)
        if self.path.exists():
            raise FileExistsError(errno.EEXIST, "storage file exists", str(self.path))
        self._conn = sqlite3.connect(str(self.path), check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SQLITE_SCHEMA)
        self._conn.execute("INSERT INTO schema(schema_version, ros_distro) VALUES (4, ?)", (distro,))
        self._conn.commit()
        self._bytes = 0
        self.channel_counts: dict[int, int] = {}
        self.message_count = 0
        self.start_ns: int | None = None
        self.end_ns: int | None = None

    def add_schema(self, schema_id: int, name: str, encoding: str, data: str, digest: str = "") -> None:
        self._conn.execute("INSERT INTO message_definitions(topic_type, encoding, encoded_message_definition, "
                           "type_description_hash) VALUES (?, ?, ?, ?)", (name, encoding, data, digest))

    def add_channel(self, channel_id: int, topic: str, msgtype: str, qos_text: str, digest: str) -> None:
        self._conn.execute("INSERT INTO topics VALUES (?, ?, ?, 'cdr', ?, ?)",
                           (channel_id, topic, msgtype, qos_text, digest))
        self.channel_counts[channel_id] = 0

    def write(self, channel_id: int, t_ns: int, data: bytes) -> None:
        self._conn.execute("INSERT INTO messages(topic_id, timestamp, data) VALUES (?, ?, ?)", (channel_id, t_ns, data))
        self._bytes += len(data) + 24
        self.channel_counts[channel_id] += 1
        self.message_count += 1
        if self.start_ns is None or t_ns < self.start_ns:
            self.start_ns = t_ns
        if self.end_ns is None or t_ns > self.end_ns:
            self.end_ns = t_ns

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def flush(self, fsync: bool = True) -> None:
        self._conn.commit()

    def close(self, version: int, metadata_text: str) -> None:
        self._conn.execute("INSERT INTO metadata(metadata_version, metadata) VALUES (?, ?)", (version, metadata_text))
        self._conn.commit()
        _finalize_sqlite(self._conn)
        self._conn.close()

    def abort(self) -> None:
        try:
            self._conn.commit()
        except sqlite3.Error:
            pass
        try:
            self._conn.close()
        except sqlite3.Error:
            pass


def _finalize_sqlite(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("PRAGMA journal_mode=DELETE")


# ----------------------------------------------------------------------------- the bag writer


@dataclass
class Connection:
    id: int
    topic: str
    msgtype: str
    qos: list = field(default_factory=list)
    msgdef: str = ""
    digest: str = ""
    count: int = 0


@dataclass
class FileStats:
    path: str  # relative to the bag directory
    start_ns: int | None = None
    end_ns: int | None = None
    count: int = 0


def _distro() -> str:
    return os.environ.get("ROS_DISTRO", "") or "unknown"


def check_output_dir(path: Path) -> None:
    """A bag directory must not exist or be empty (rosbag2 refuses to overwrite)."""
    if path.exists():
        if not path.is_dir():
            raise BagError(path, "output path exists and is not a directory")
        if any(path.iterdir()):
            raise BagError(path, "output directory is not empty; choose a new directory (bags are never overwritten)")


class BagWriter:
    """Write a rosbag2 bag: connections, raw CDR messages with timestamps, splits, flushes.

    Not thread-safe: one thread (the recorder's writer thread) owns it. Errors are OSError
    (disk full, permissions: ``errno`` tells which) or :class:`BagError`.

    ``max_bag_size_bytes`` / ``max_bag_duration_ns`` (0 = no limit) start a new storage file
    ``<name>_<n+1>`` when the current one has reached the size, or spans the duration; the
    message that crosses the limit goes into the new file (a file is never empty).
    """

    def __init__(self, path: str | Path, *, storage: str = "mcap", humble_compatible: bool = True,
                 max_bag_size_bytes: int = 0, max_bag_duration_ns: int = 0,
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES, fsync: bool = True, crc: bool = True,
                 episode_topic: str = EPISODE_TOPIC, custom_data: dict[str, str] | None = None):
        if storage not in STORAGE_SUFFIX:
            raise BagError(path, f"storage {storage!r} is not supported; choose one of {', '.join(STORAGE_SUFFIX)}")
        if max_bag_size_bytes < 0 or max_bag_duration_ns < 0:
            raise BagError(path, "max_bag_size and max_bag_duration must be >= 0 (0 = no split)")
        self.path = Path(path)
        self.storage = storage
        self.version = 8 if humble_compatible else 9
        self.max_size = int(max_bag_size_bytes)
        self.max_duration = int(max_bag_duration_ns)
        self.chunk_bytes = int(chunk_bytes)
        self.fsync = fsync
        self.crc = crc
        self.episode_topic = episode_topic
        self.custom_data = dict(custom_data or {})
        self.connections: dict[int, Connection] = {}
        self._by_key: dict[tuple, int] = {}
        self._schema_ids: dict[str, int] = {}
        self.files: list[FileStats] = []
        self.episodes = EpisodeTracker()
        self._file: McapFile | Sqlite3File | None = None
        self._closed = False
        self.bytes_written = 0

    # ---------------------------------------------------------------- lifecycle
    @property
    def is_open(self) -> bool:
        return self._file is not None

    def open(self) -> BagWriter:
        check_output_dir(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._open_file()
        return self

    def __enter__(self) -> BagWriter:
        return self.open()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _file_name(self, index: int) -> str:
        return f"{self.path.name}_{index}{STORAGE_SUFFIX[self.storage]}"

    def _open_file(self) -> None:
        name = self._file_name(len(self.files))
        if self.storage == "mcap":
            f = McapFile(self.path / name, self.chunk_bytes, self.crc)
        else:
            f = Sqlite3File(self.path / name, _distro())
        self._file = f
        self.files.append(FileStats(name))
        self._schema_ids = {}
        for conn in self.connections.values():
            self._add_to_file(conn)

    def _add_to_file(self, conn: Connection) -> None:
        f = self._file
        assert f is not None
        # A known type gets a schema even when its definition is empty (std_msgs/Empty): rosbags
        # skips the messages of a channel without one.
        if (conn.msgdef or conn.digest) and conn.msgtype not in self._schema_ids:
            sid = len(self._schema_ids) + 1
            self._schema_ids[conn.msgtype] = sid
            if isinstance(f, McapFile):
                f.add_schema(sid, conn.msgtype, "ros2msg", conn.msgdef)
            else:
                f.add_schema(sid, conn.msgtype, "ros2msg", conn.msgdef, conn.digest)
        qos_text = _qos_text(conn.qos, self.version)
        if isinstance(f, McapFile):
            f.add_channel(conn.id, self._schema_ids.get(conn.msgtype, 0), conn.topic, "cdr",
                          {"offered_qos_profiles": qos_text})
        else:
            f.add_channel(conn.id, conn.topic, conn.msgtype, qos_text, conn.digest)

    def add_connection(self, topic: str, msgtype: str, offered_qos: Sequence = ()) -> int:
        """Register (topic, type, offered QoS) and return its connection id (idempotent)."""
        if self._file is None:
            raise BagError(self.path, "bag is not open")
        key = (topic, msgtype, tuple(offered_qos))
        if key in self._by_key:
            return self._by_key[key]
        msgdef, digest = message_definition(msgtype)
        conn = Connection(len(self.connections) + 1, topic, msgtype, list(offered_qos), msgdef, digest)
        self.connections[conn.id] = conn
        self._by_key[key] = conn.id
        self._add_to_file(conn)
        return conn.id

    def write(self, connection_id: int, t_ns: int, data: bytes) -> None:
        f = self._file
        if f is None:
            raise BagError(self.path, "bag is not open")
        conn = self.connections[connection_id]
        stats = self.files[-1]
        if stats.count and (
            (self.max_size and f.size_bytes >= self.max_size)
            or (self.max_duration and t_ns - (stats.start_ns or t_ns) >= self.max_duration)
        ):
            self.split()
            f, stats = self._file, self.files[-1]
        f.write(connection_id, t_ns, data)
        conn.count += 1
        stats.count += 1
        if stats.start_ns is None or t_ns < stats.start_ns:
            stats.start_ns = t_ns
        if stats.end_ns is None or t_ns > stats.end_ns:
            stats.end_ns = t_ns
        self.bytes_written += len(data)
        if conn.topic == self.episode_topic and conn.msgtype == "std_msgs/msg/String":
            self.episodes.feed(t_ns, decode_cdr_string(data))

    def flush(self) -> None:
        """Put everything written so far on disk (readable after a crash, via :func:`repair_bag`)."""
        if self._file is not None:
            self._file.flush(self.fsync)

    def split(self) -> None:
        """Close the current storage file (complete, with its summary) and continue in a new one."""
        if self._file is None:
            raise BagError(self.path, "bag is not open")
        if self.files[-1].count == 0:
            return
        self._close_file()
        self._open_file()

    def _close_file(self) -> None:
        f, self._file = self._file, None
        if f is None:
            return
        if isinstance(f, McapFile):
            f.close({"serialized_metadata": self.metadata_text()}, self.fsync)
        else:
            f.close(self.version, self.metadata_text())

    def close(self) -> None:
        """Finish the current file and write metadata.yaml (atomically). Idempotent."""
        if self._closed:
            return
        if self._file is not None:
            if self.files[-1].count == 0 and len(self.files) > 1:
                # A split that never got a message: drop the empty file rather than list it.
                f, self._file = self._file, None
                f.abort()
                (self.path / self.files.pop().path).unlink(missing_ok=True)
            else:
                self._close_file()
        write_metadata(self.path, self.metadata())
        self._closed = True

    def abort(self) -> None:
        """Release file handles after an error; what was flushed stays repairable."""
        f, self._file = self._file, None
        if f is not None:
            f.abort()

    # ---------------------------------------------------------------- metadata
    @property
    def message_count(self) -> int:
        return sum(c.count for c in self.connections.values())

    def metadata(self) -> dict:
        files = [f for f in self.files]
        custom = dict(self.custom_data)
        custom["sage_hl_ros.episodes"] = self.episodes.as_json()
        return build_metadata(self.version, self.storage, list(self.connections.values()), files, custom)

    def metadata_text(self) -> str:
        info = self.metadata()["rosbag2_bagfile_information"]
        return yaml.safe_dump(info, sort_keys=False, width=float("inf")).strip()


def build_metadata(version: int, storage: str, connections: list[Connection], files: list[FileStats],
                   custom_data: dict[str, str] | None) -> dict:
    """The metadata.yaml document (rosbag2 layout) for these connections and files."""
    starts = [f.start_ns for f in files if f.start_ns is not None]
    ends = [f.end_ns for f in files if f.end_ns is not None]
    start = min(starts) if starts else 0
    duration = (max(ends) - start) if ends else 0
    topics = []
    for c in connections:
        meta = {"name": c.topic, "type": c.msgtype, "serialization_format": "cdr",
                "offered_qos_profiles": _qos_yaml_value(c.qos, version), "type_description_hash": c.digest}
        topics.append({"topic_metadata": meta, "message_count": c.count})
    info = {
        "version": version,
        "storage_identifier": storage,
        "duration": {"nanoseconds": int(duration)},
        "starting_time": {"nanoseconds_since_epoch": int(start)},
        "message_count": sum(f.count for f in files),
        "topics_with_message_count": topics,
        "compression_format": "",
        "compression_mode": "",
        "relative_file_paths": [f.path for f in files],
        "files": [{"path": f.path,
                   "starting_time": {"nanoseconds_since_epoch": int(f.start_ns or 0)},
                   "duration": {"nanoseconds": int((f.end_ns or 0) - (f.start_ns or 0))},
                   "message_count": f.count} for f in files],
        "custom_data": dict(custom_data) if custom_data else None,
        "ros_distro": _distro(),
    }
    return {"rosbag2_bagfile_information": info}


def write_metadata(bag_dir: Path, metadata: dict) -> None:
    text = yaml.safe_dump(metadata, sort_keys=False, default_flow_style=False, width=float("inf"))
    tmp = Path(bag_dir) / "metadata.yaml.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, Path(bag_dir) / "metadata.yaml")


# ----------------------------------------------------------------------------- reading raw MCAP (repair)


def storage_files(bag_dir: str | Path) -> list[Path]:
    """Storage files of a bag directory in split order (``<name>_<n>``), .mcap or .db3."""
    bag_dir = Path(bag_dir)
    files = [p for p in bag_dir.iterdir() if p.is_file() and p.suffix in (".mcap", ".db3")]

    def key(p: Path):
        m = re.search(r"_(\d+)$", p.stem)
        return (int(m.group(1)) if m else -1, p.name)

    return sorted(files, key=key)


@dataclass
class _Scan:
    schemas: dict[int, tuple[str, str, str]] = field(default_factory=dict)  # id -> (name, encoding, data)
    channels: dict[int, tuple[int, str, str, dict]] = field(default_factory=dict)  # id -> (schema, topic, enc, meta)
    channel_counts: dict[int, int] = field(default_factory=dict)
    start_ns: int | None = None
    end_ns: int | None = None
    problem: str = ""
    chunks: int = 0  # chunks read (good and bad)
    chunks_without_crc: int = 0  # written with CRC 0 ("not computed"): their content is not checked
    messages: int = 0  # messages in good chunks (and outside chunks)
    bad_chunks: list[BadChunk] = field(default_factory=list)
    complete: bool = False  # the data section ended with a DataEnd record (a closed file)


@dataclass
class BadChunk:
    """An MCAP chunk whose content fails its CRC or size check (or cannot be decompressed).

    What it held comes from the message index records that follow it (outside the chunk, so not
    covered by the failed check): per-topic message counts and the log-time range; when those are
    missing too, from the chunk header (``counts`` empty).
    """

    file: str
    offset: int
    start_ns: int
    end_ns: int
    problem: str
    counts: dict[str, int] = field(default_factory=dict)  # topic -> messages lost

    @property
    def messages(self) -> int:
        return sum(self.counts.values())

    def detail(self) -> str:
        what = ", ".join(f"{t} {n}" for t, n in sorted(self.counts.items())) or "contents unknown (no message index)"
        return (f"chunk at byte {self.offset}, t={self.start_ns / 1e9:.6f}..{self.end_ns / 1e9:.6f} s "
                f"({self.problem}): {what}")

    def describe(self) -> str:
        return f"{self.file}: {self.detail()}"


def _read_string(buf, off: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<I", buf, off)
    if off + 4 + n > len(buf):
        raise ValueError("string overruns its record")
    return bytes(buf[off + 4:off + 4 + n]).decode("utf-8"), off + 4 + n


def _read_map(buf, off: int) -> tuple[dict, int]:
    (n,) = struct.unpack_from("<I", buf, off)
    end, off, out = off + 4 + n, off + 4, {}
    while off < end:
        k, off = _read_string(buf, off)
        v, off = _read_string(buf, off)
        out[k] = v
    return out, end


def _parse_definition(op: int, body, scan: _Scan) -> None:
    if op == OP_SCHEMA:
        (sid,) = struct.unpack_from("<H", body, 0)
        name, o = _read_string(body, 2)
        enc, o = _read_string(body, o)
        (n,) = struct.unpack_from("<I", body, o)
        scan.schemas.setdefault(sid, (name, enc, bytes(body[o + 4:o + 4 + n]).decode("utf-8", "replace")))
    elif op == OP_CHANNEL:
        cid, sid = struct.unpack_from("<HH", body, 0)
        topic, o = _read_string(body, 4)
        enc, o = _read_string(body, o)
        meta, _ = _read_map(body, o)
        scan.channels.setdefault(cid, (sid, topic, enc, meta))


def _decompress(compression: str, data: bytes) -> bytes:
    if compression == "":
        return data
    if compression == "zstd":
        try:
            from compression import zstd  # type: ignore[import-not-found]  # Python >= 3.14
        except ImportError:
            from backports import zstd  # type: ignore[no-redef]  # a rosbags dependency
        return zstd.decompress(data)
    if compression == "lz4":
        import lz4.frame  # type: ignore[import-not-found]

        return lz4.frame.decompress(data)
    raise ValueError(f"unsupported MCAP chunk compression {compression!r}")


class _Mapped:
    """A read-only memory map of a file (``buf``); a multi-GB bag is not read into memory."""

    def __init__(self, path: Path):
        self._f = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._map = None
        if os.fstat(self._f.fileno()).st_size:
            self._map = mmap.mmap(self._f.fileno(), 0, access=mmap.ACCESS_READ)
            self.buf = memoryview(self._map)
        else:
            self.buf = memoryview(b"")

    def close(self) -> None:
        try:
            self.buf.release()
            if self._map is not None:
                self._map.close()
        except (BufferError, ValueError):  # a caller still holds a slice: the GC unmaps it later
            pass
        self._f.close()


def _mcap_summary(path: Path) -> _Scan | None:
    """Schemas, channels and statistics from a complete file's summary; None if the file has
    no valid footer/summary (a recording that did not close)."""
    scan = _Scan()
    mapped = _Mapped(path)
    buf = mapped.buf
    try:
        size = len(buf)
        if size < 8 + 9 + 20 + 8 or bytes(buf[:8]) != MCAP_MAGIC or bytes(buf[size - 8:]) != MCAP_MAGIC:
            return None
        op, length = struct.unpack_from("<BQ", buf, size - 8 - 29)
        if op != OP_FOOTER or length != 20:
            return None
        summary_start, _offsets, _crc = struct.unpack_from("<QQI", buf, size - 8 - 20)
        if not 8 < summary_start <= size - 37:
            return None
        off, end = summary_start, size - 8 - 29
        stats_view = None
        while off < end:
            op, length = struct.unpack_from("<BQ", buf, off)
            if off + 9 + length > end:
                return None
            body = bytes(buf[off + 9:off + 9 + length])
            if op in (OP_SCHEMA, OP_CHANNEL):
                _parse_definition(op, body, scan)
            elif op == OP_STATISTICS:
                stats_view = body
            off += 9 + length
        if stats_view is None:
            return None
        count, _ns, _nc, _na, _nm, _nchunks, start, stop = struct.unpack_from("<QHIIIIQQ", stats_view, 0)
        counts, _ = _read_u16_u64_map(stats_view, 42)
        scan.channel_counts = counts
        if count:
            scan.start_ns, scan.end_ns = start, stop
        return scan
    except (struct.error, ValueError, UnicodeDecodeError):
        return None
    finally:
        del buf
        mapped.close()


def _read_u16_u64_map(buf, off: int) -> tuple[dict[int, int], int]:
    (n,) = struct.unpack_from("<I", buf, off)
    out = {}
    for i in range(n // 10):
        k, v = struct.unpack_from("<HQ", buf, off + 4 + 10 * i)
        out[k] = v
    return out, off + 4 + n


def _iter_mcap_messages(path: Path, scan: _Scan) -> Iterator[tuple[int, int, bytes]]:
    """(channel id, log time, data) of every message in complete, intact records, in file order,
    filling ``scan`` with schemas, channels and chunk statistics.

    A chunk whose content fails its CRC or size check is skipped and listed in
    ``scan.bad_chunks`` (its framing is intact, so reading goes on after it); a truncated or
    corrupt record framing ends the scan, with the reason in ``scan.problem``. Memory-mapped: a
    multi-GB file is not read into memory."""
    mapped = _Mapped(path)
    buf = mapped.buf
    body = None
    bad: BadChunk | None = None  # the bad chunk whose message indexes may follow
    try:
        size = len(buf)
        if size < 8 or bytes(buf[:8]) != MCAP_MAGIC:
            scan.problem = "not an MCAP file (missing magic; empty if the recorder died before its first flush)"
            return
        off = 8
        while True:
            if off + 9 > size:
                scan.problem = "no summary/footer: the recording did not close" if off == size else \
                    f"truncated record at byte {off} of {size} (data after the last flush is lost)"
                return
            op, length = struct.unpack_from("<BQ", buf, off)
            end = off + 9 + length
            if op == 0 or end > size:
                scan.problem = f"truncated record at byte {off} of {size} (data after the last flush is lost)"
                return
            body = buf[off + 9:end]
            try:
                if op == OP_MESSAGE_INDEX and bad is not None:
                    _note_lost_index(body, bad, scan)
                    off = end
                    continue
                bad = None
                if op == OP_CHUNK:
                    scan.chunks += 1
                    start_t, stop_t, usize, crc = struct.unpack_from("<QQQI", body, 0)
                    comp, o = _read_string(body, 28)
                    (clen,) = struct.unpack_from("<Q", body, o)
                    try:
                        records = _decompress(comp, bytes(body[o + 8:o + 8 + clen]))
                        if len(records) != usize:
                            raise ValueError(f"chunk holds {len(records)} bytes, its header says {usize}")
                        if crc and zlib.crc32(records) != crc:
                            raise ValueError("chunk CRC mismatch")
                        msgs = _chunk_messages(records, scan)
                    except Exception as exc:  # ValueError; zstd/lz4 errors for a garbled payload
                        bad = BadChunk(path.name, off, start_t, stop_t, str(exc))
                        scan.bad_chunks.append(bad)
                        off = end
                        continue
                    if not crc:
                        scan.chunks_without_crc += 1
                    scan.messages += len(msgs)
                    yield from msgs
                elif op == OP_MESSAGE:
                    cid, _seq, t, _pub = struct.unpack_from("<HIQQ", body, 0)
                    scan.messages += 1
                    yield cid, t, bytes(body[22:])
                elif op in (OP_SCHEMA, OP_CHANNEL):
                    _parse_definition(op, body, scan)
                elif op in (OP_DATA_END, OP_FOOTER):
                    scan.complete = True
                    return
            except (struct.error, ValueError, UnicodeDecodeError) as exc:
                scan.problem = f"corrupt record at byte {off} ({exc}); data from there on is lost"
                return
            off = end
    finally:
        del buf, body
        mapped.close()


def _chunk_messages(records: bytes, scan: _Scan) -> list[tuple[int, int, bytes]]:
    """Messages of a decompressed, CRC-checked chunk (definitions go into ``scan``)."""
    rbuf, r, msgs = memoryview(records), 0, []
    try:
        while r + 9 <= len(rbuf):
            rop, rlen = struct.unpack_from("<BQ", rbuf, r)
            if r + 9 + rlen > len(rbuf):
                raise ValueError("record overruns its chunk")
            rbody = rbuf[r + 9:r + 9 + rlen]
            if rop == OP_MESSAGE:
                cid, _seq, t, _pub = struct.unpack_from("<HIQQ", rbody, 0)
                msgs.append((cid, t, bytes(rbody[22:])))
            else:
                _parse_definition(rop, rbody, scan)
            r += 9 + rlen
    except (struct.error, UnicodeDecodeError) as exc:
        raise ValueError(f"chunk records are malformed ({exc})") from None
    finally:
        del rbuf
    return msgs


def _note_lost_index(body, bad: BadChunk, scan: _Scan) -> None:
    """Count a bad chunk's messages from one of its message index records."""
    cid, n = struct.unpack_from("<HI", body, 0)
    times = [struct.unpack_from("<Q", body, 6 + 16 * i)[0] for i in range(n // 16)]
    if not times:
        return
    ch = scan.channels.get(cid)
    topic = ch[1] if ch is not None else f"<channel {cid}>"
    if not bad.counts:  # the index's times, not the (unchecked) chunk header's
        bad.start_ns, bad.end_ns = min(times), max(times)
    else:
        bad.start_ns, bad.end_ns = min(bad.start_ns, *times), max(bad.end_ns, *times)
    bad.counts[topic] = bad.counts.get(topic, 0) + len(times)


@dataclass
class RepairReport:
    bag: str
    storage: str
    files: list[str]
    rebuilt_files: list[str]
    messages: int
    topics: dict[str, int]
    problems: list[str]
    metadata_version: int
    dropped: list[BadChunk] = field(default_factory=list)  # chunks left out: they failed their CRC
    left_out: list[str] = field(default_factory=list)  # storage files with nothing readable

    @property
    def dropped_messages(self) -> int:
        return sum(c.messages for c in self.dropped)

    def summary(self) -> str:
        lines = [f"repaired {self.bag}: {self.storage}, {len(self.files)} file(s), {self.messages} messages, "
                 f"metadata.yaml version {self.metadata_version}"]
        for name in self.rebuilt_files:
            lines.append(f"  rebuilt {name}")
        if self.dropped:
            lines.append(f"  dropped {len(self.dropped)} chunk(s) that fail their CRC, "
                         f"{self.dropped_messages} message(s):")
            lines += [f"    {c.describe()}" for c in self.dropped]
        for name in self.left_out:
            lines.append(f"  LEFT OUT {name}: nothing in it could be read")
        for p in self.problems:
            lines.append(f"  note: {p}")
        for topic, n in sorted(self.topics.items()):
            lines.append(f"  {topic}: {n}")
        return "\n".join(lines)


def _qos_version(text: str) -> int:
    """8 if an ``offered_qos_profiles`` string uses integer enums (v8 and older), 9 if names."""
    return 9 if re.search(r"history:\s*[a-z_]+", text or "") else 8


class _Connections:
    """Bag-wide connections while repairing: (topic, type, QoS text) -> Connection."""

    def __init__(self):
        self.by_key: dict[tuple[str, str, str], Connection] = {}
        self.qos_texts: list[str] = []

    def get(self, scan: _Scan, cid: int) -> Connection | None:
        ch = scan.channels.get(cid)
        if ch is None:
            return None
        sid, topic, _enc, meta = ch
        name, _e, msgdef = scan.schemas.get(sid, ("", "", ""))
        return self.add(topic, name, meta.get("offered_qos_profiles", ""), msgdef)

    def add(self, topic: str, msgtype: str, qos_text: str, msgdef: str = "") -> Connection:
        key = (topic, msgtype, qos_text)
        c = self.by_key.get(key)
        if c is None:
            c = Connection(len(self.by_key) + 1, topic, msgtype, _parse_qos_text(qos_text), msgdef)
            c.digest = message_definition(msgtype)[1] if msgtype else ""
            self.by_key[key] = c
            if qos_text:
                self.qos_texts.append(qos_text)
        if msgdef and not c.msgdef:
            c.msgdef = msgdef
        return c


def repair_bag(bag_dir: str | Path, keep_original: bool = False, version: int | None = None) -> RepairReport:
    """Rebuild ``metadata.yaml`` (and any MCAP file without summary/footer) from the storage files
    in ``bag_dir``: ``ros2 bag reindex`` for crashed recordings, truncated MCAP files included.

    Complete MCAP files (valid footer and summary) are kept as they are. A file that was not
    closed is read record by record up to the last complete chunk (what the last flush wrote)
    and rewritten with message indexes, summary and footer (``keep_original`` keeps the damaged
    file as ``<file>.damaged``). sqlite3 files are opened, which replays a leftover WAL
    journal, and finalised. Files with no complete message are left out of the metadata.
    ``version``: metadata version to write (default: the format of the QoS strings found; 8,
    the Humble-readable one, if there are none). Safe to run on a bag that is fine.
    """
    bag_dir = Path(bag_dir)
    if not bag_dir.is_dir():
        raise BagError(bag_dir, "not a bag directory")
    files = storage_files(bag_dir)
    if not files:
        raise BagError(bag_dir, "contains no .mcap or .db3 storage files; nothing to repair")
    suffixes = {p.suffix for p in files}
    if len(suffixes) > 1:
        raise BagError(bag_dir, f"mixes storage formats {sorted(suffixes)}")
    storage = "mcap" if files[0].suffix == ".mcap" else "sqlite3"
    problems: list[str] = []
    rebuilt: list[str] = []
    conns = _Connections()
    tracker = EpisodeTracker()
    markers: list[tuple[int, str | None]] = []
    file_stats: list[FileStats] = []
    dropped: list[BadChunk] = []
    left_out: list[str] = []
    for path in files:
        if storage == "mcap":
            stats = _repair_mcap_file(path, keep_original, conns, markers, problems, rebuilt, dropped)
        else:
            stats = _repair_sqlite_file(path, conns, markers, problems)
        if stats is None or stats.count == 0:
            if stats is not None:
                problems.append(f"{path.name}: no complete messages; left out of the bag")
            left_out.append(path.name)
            continue
        file_stats.append(stats)
    if version is None:
        version = max((_qos_version(t) for t in conns.qos_texts), default=8)
    for t, text in sorted(markers, key=lambda m: m[0]):
        tracker.feed(t, text)
    connections = sorted(conns.by_key.values(), key=lambda c: c.id)
    custom = {"sage_hl_ros.episodes": tracker.as_json(), "sage_hl_ros.repaired": "true"}
    write_metadata(bag_dir, build_metadata(version, storage, connections, file_stats, custom))
    topics: dict[str, int] = {}
    for c in connections:
        topics[c.topic] = topics.get(c.topic, 0) + c.count
    return RepairReport(str(bag_dir), storage, [f.path for f in file_stats], rebuilt,
                        sum(f.count for f in file_stats), topics, problems, version, dropped, left_out)


def _note(stats: FileStats, t: int) -> None:
    stats.count += 1
    stats.start_ns = t if stats.start_ns is None else min(stats.start_ns, t)
    stats.end_ns = t if stats.end_ns is None else max(stats.end_ns, t)


def _repair_mcap_file(path: Path, keep_original: bool, conns: _Connections, markers: list,
                      problems: list[str], rebuilt: list[str], dropped: list[BadChunk]) -> FileStats | None:
    stats = FileStats(path.name)
    summary = _mcap_summary(path)
    if summary is not None:  # closed: kept as it is if every chunk passes its CRC check
        check = _Scan()
        episode_ids = {cid for cid, ch in summary.channels.items() if ch[1] == EPISODE_TOPIC}
        found = [(t, decode_cdr_string(data)) for cid, t, data in _iter_mcap_messages(path, check)
                 if cid in episode_ids]
        if not check.bad_chunks and not check.problem:
            for cid, n in summary.channel_counts.items():
                c = conns.get(summary, cid)
                if c is not None:
                    c.count += n
            stats.count = sum(summary.channel_counts.values())
            stats.start_ns, stats.end_ns = summary.start_ns, summary.end_ns
            markers.extend(found)
            return stats
    tmp = path.with_name(path.name + ".repairing")
    tmp.unlink(missing_ok=True)
    scan = _Scan()
    if summary is not None:  # the summary knows every channel, also those defined inside a bad chunk
        scan.schemas.update(summary.schemas)
        scan.channels.update(summary.channels)
    out: McapFile | None = None
    written_schemas: set[int] = set()
    written_channels: set[int] = set()
    try:
        for cid, t, data in _iter_mcap_messages(path, scan):
            ch = scan.channels.get(cid)
            if ch is None:
                continue
            if out is None:
                out = McapFile(tmp)
            sid = ch[0]
            if sid and sid not in written_schemas and sid in scan.schemas:
                out.add_schema(sid, *scan.schemas[sid])
                written_schemas.add(sid)
            if cid not in written_channels:
                out.add_channel(cid, sid if sid in written_schemas else 0, ch[1], ch[2], ch[3])
                written_channels.add(cid)
            out.write(cid, t, data)
            c = conns.get(scan, cid)
            if c is not None:
                c.count += 1
                if c.topic == EPISODE_TOPIC:
                    markers.append((t, decode_cdr_string(data)))
            _note(stats, t)
        dropped.extend(scan.bad_chunks)
        if out is None:
            problems.append(f"{path.name}: {scan.problem or 'no intact messages'}")
            return None
        out.close({"serialized_metadata": ""})
    except BaseException:
        if out is not None:
            out.abort()
        tmp.unlink(missing_ok=True)
        raise
    if keep_original:
        os.replace(path, path.with_name(path.name + ".damaged"))
    os.replace(tmp, path)
    rebuilt.append(path.name)
    why = [scan.problem] if scan.problem else []
    if scan.bad_chunks:
        why.append(f"{len(scan.bad_chunks)} chunk(s) failed their CRC check and were dropped")
    problems.append(f"{path.name}: {'; '.join(why)}; kept {stats.count} messages (intact chunks)")
    return stats


def _repair_sqlite_file(path: Path, conns: _Connections, markers: list, problems: list[str]) -> FileStats | None:
    stats = FileStats(path.name)
    try:
        db = sqlite3.connect(str(path))
        try:
            topics = db.execute("SELECT id, name, type, offered_qos_profiles FROM topics").fetchall()
            try:
                defs = dict(db.execute("SELECT topic_type, encoded_message_definition FROM message_definitions"))
            except sqlite3.Error:
                defs = {}
            rows = db.execute("SELECT topic_id, COUNT(*), MIN(timestamp), MAX(timestamp) FROM messages "
                              "GROUP BY topic_id").fetchall()
            marks = db.execute("SELECT m.timestamp, m.data FROM messages m JOIN topics t ON m.topic_id = t.id "
                               "WHERE t.name = ? AND t.type = 'std_msgs/msg/String'", (EPISODE_TOPIC,)).fetchall()
            _finalize_sqlite(db)
        finally:
            db.close()
    except sqlite3.Error as exc:
        problems.append(f"{path.name}: cannot be read by sqlite3 ({exc}); left out of the bag")
        return None
    by_id = {tid: (name, typ, qos) for tid, name, typ, qos in topics}
    for tid, n, tmin, tmax in rows:
        if tid not in by_id:
            continue
        name, typ, qos = by_id[tid]
        conns.add(name, typ, qos or "", defs.get(typ, "")).count += n
        stats.count += n
        stats.start_ns = tmin if stats.start_ns is None else min(stats.start_ns, tmin)
        stats.end_ns = tmax if stats.end_ns is None else max(stats.end_ns, tmax)
    markers.extend((t, decode_cdr_string(bytes(d))) for t, d in marks)
    return stats
