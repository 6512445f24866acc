"""Crash repair: ``ros2 bag reindex`` for recordings killed before they closed, truncated MCAP
files included; chunks that fail their CRC are dropped and reported (pure Python: no rclpy)."""

from __future__ import annotations

import os
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from .episodes import EpisodeTracker, decode_cdr_string
from .errors import BagError
from .layout import storage_files
from .mcap_scan import BadChunk, _iter_mcap_messages, _mcap_summary, _Scan
from .mcap_writer import McapFile
from .message_definitions import message_definition
from .metadata import Connection, FileStats, build_metadata, write_metadata
from .qos import _parse_qos_text
from .sqlite_writer import _finalize_sqlite
from .topics import EPISODE_TOPIC

__all__ = ["RepairReport", "repair_bag"]


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
