"""One MCAP storage file written record by record, following the MCAP spec: chunked, with message
indexes and a full summary (schemas, channels, chunk indexes, statistics, summary offsets; chunk
CRCs). :meth:`McapFile.flush` closes the open chunk (writing its message indexes) and hands the
bytes to the OS, so a crashed file keeps every flushed chunk for ``repair_bag``."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

from .mcap_format import (
    MCAP_MAGIC,
    OP_CHANNEL,
    OP_CHUNK,
    OP_CHUNK_INDEX,
    OP_DATA_END,
    OP_FOOTER,
    OP_HEADER,
    OP_MESSAGE,
    OP_MESSAGE_INDEX,
    OP_METADATA,
    OP_METADATA_INDEX,
    OP_SCHEMA,
    OP_STATISTICS,
    OP_SUMMARY_OFFSET,
)

__all__ = ["DEFAULT_CHUNK_BYTES", "McapFile"]

LIBRARY = "sage_hl_ros recorder"
DEFAULT_CHUNK_BYTES = 1 << 20

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
