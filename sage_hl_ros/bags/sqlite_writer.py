"""One rosbag2 sqlite3 storage file (``.db3``), rosbag2's schema version 4 (the same tables as
rosbags writes)."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

__all__ = ["Sqlite3File"]

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
