"""Reading MCAP storage files record by record, without rosbags (memory-mapped): the summary of a
closed file, and every message of the intact chunks of any file, damaged or truncated, with the
chunks that fail their CRC or size check (:class:`BadChunk`). ``verify`` checks bags with it and
``repair`` rebuilds crashed files from it."""

from __future__ import annotations

import mmap
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .mcap_format import (
    MCAP_MAGIC,
    OP_CHANNEL,
    OP_CHUNK,
    OP_DATA_END,
    OP_FOOTER,
    OP_MESSAGE,
    OP_MESSAGE_INDEX,
    OP_SCHEMA,
    OP_STATISTICS,
)

__all__ = ["BadChunk"]


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
