"""rosbag2 bag writing: connections, raw CDR messages, splits, flushes (pure Python: no rclpy).

What comes from ``rosbags`` and what is written here
    rosbags' typestores give the message definitions (``ros2msg`` text, as rosbag2 stores them)
    and RIHS01 type hashes; its QoS serialisers (v8 and v9 formats) produce
    ``offered_qos_profiles``; its ``Reader`` reads bags back (``info``, replay, dataset, tests).
    The storage files themselves are written by the small encoders of this package
    (:class:`~.mcap_writer.McapFile`, :class:`~.sqlite_writer.Sqlite3File`), not by
    ``rosbags.rosbag2.Writer``, because a
    recorder needs three things that writer does not offer: several storage files in one bag
    (its file name is fixed to ``<name>.mcap``), a flush that puts everything received so far
    on disk (its MCAP writer keeps up to 1 MiB in an in-memory chunk and has no flush), and
    crash repair. The encoders follow the MCAP spec (chunked, with message indexes and a full
    summary: schemas, channels, chunk indexes, statistics, summary offsets; chunk CRCs) and
    rosbag2's sqlite3 schema (version 4 tables, the same as rosbags). The test suite reads what
    they write with two independent readers: rosbags and the ``mcap`` package (plus Python's
    ``sqlite3`` for .db3). The bag layout is in ``layout``, the metadata version in ``metadata``.

Crash safety
    :meth:`BagWriter.flush` closes the open MCAP chunk (writing its message indexes) and hands
    the bytes to the OS (``fsync`` too, by default), or commits the sqlite3 transaction (WAL
    journal, so a kill never corrupts committed data). After SIGKILL the file has no summary
    and no footer and ``metadata.yaml`` is missing; ``repair.repair_bag`` rebuilds them from
    whatever complete chunks (or committed rows) exist, like ``ros2 bag reindex`` but also
    for truncated MCAP files.

Episodes
    The writer tracks the markers on ``episode_topic`` as messages are written (``episodes``) and
    stores the list in ``custom_data`` (``sage_hl_ros.episodes``, JSON).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml

from .episodes import EpisodeTracker, decode_cdr_string
from .errors import BagError
from .layout import STORAGE_SUFFIX
from .mcap_writer import DEFAULT_CHUNK_BYTES, McapFile
from .message_definitions import message_definition
from .metadata import Connection, FileStats, _distro, build_metadata, write_metadata
from .qos import _qos_text
from .sqlite_writer import Sqlite3File
from .topics import EPISODE_TOPIC

__all__ = ["BagWriter", "check_output_dir"]


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
