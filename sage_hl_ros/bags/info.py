"""Summary of a recorded bag (pure: rosbags' reader, no rclpy): ``sage-hl-bag info <bag>``.

Topics with types, message counts, rates and offered QoS; storage files with sizes; start,
end and duration; episodes reconstructed from the ``/sage/episode`` markers (the markers are
authoritative; the list the recorder stores in ``custom_data`` is only a cache of them).
Every storage file is read first and must pass its checks (MCAP chunk CRCs and summary, sqlite3
``quick_check``; :mod:`sage_hl_ros.bags.verify`), so a damaged bag is an error naming the file,
never a normal-looking summary; ``verify=False`` (``--no-verify``) reads only the summary and
says so. A bag without ``metadata.yaml`` (the recorder was killed) gets a clear error pointing
at ``sage-hl-bag repair``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from .episodes import Episode, EpisodeTracker, decode_cdr_string, episodes_from_markers
from .errors import BagError
from .layout import storage_files
from .topics import EPISODE_TOPIC
from .verify import read_failure, require_intact

__all__ = ["BagInfo", "TopicInfo", "bag_info", "format_info"]


@dataclass
class TopicInfo:
    name: str
    type: str
    count: int
    rate_hz: float
    qos: str  # e.g. "reliable volatile keep_last(10)"; "" when not recorded


@dataclass
class BagInfo:
    path: str
    storage: str
    metadata_version: int
    ros_distro: str
    files: list[dict]  # {path, size_bytes, message_count}
    size_bytes: int
    start_ns: int
    end_ns: int
    message_count: int
    topics: list[TopicInfo]
    episodes: list[Episode] = field(default_factory=list)
    unmatched_episode_ends: int = 0
    custom_data: dict = field(default_factory=dict)
    verified: bool = False  # every storage file was read and passed its checks
    verification: str = ""  # what was checked

    @property
    def duration_s(self) -> float:
        return max(0, self.end_ns - self.start_ns) * 1e-9

    def to_dict(self) -> dict:
        out = asdict(self)
        out["duration_s"] = self.duration_s
        return out

    def topic(self, name: str) -> TopicInfo | None:
        return next((t for t in self.topics if t.name == name), None)


def _qos_summary(profiles) -> str:
    if not profiles:
        return ""
    parts = []
    for q in profiles:
        # Publishers' offered QoS as seen in the graph has history "unknown" and depth 0 (DDS does
        # not advertise them), as in any rosbag2 recording; show only what is known.
        text = f"{q.reliability.name.lower()} {q.durability.name.lower()}"
        hist = q.history.name.lower()
        if hist == "keep_last":
            text += f" keep_last({q.depth})"
        elif hist == "keep_all":
            text += " keep_all"
        parts.append(text)
    unique = sorted(set(parts))
    return unique[0] if len(unique) == 1 else "; ".join(unique)


def bag_info(path: str | Path, verify: bool = True) -> BagInfo:
    """Read a bag's summary; raises :class:`BagError` naming the storage file and the problem
    (and the fix) if it cannot. ``verify`` first reads every storage file (chunk CRCs, sqlite3
    ``quick_check``): without it only the summary and the episode markers are read, and a
    damaged chunk elsewhere goes unnoticed."""
    path = Path(path)
    if not path.exists():
        raise BagError(path, "does not exist")
    if path.is_dir() and not (path / "metadata.yaml").exists():
        files = storage_files(path)
        if files:
            raise BagError(files[0], f"no metadata.yaml in {path}: the recording did not close; "
                                     f"run `sage-hl-bag repair {path}`")
        raise BagError(path, "no metadata.yaml and no .mcap/.db3 storage files: not a bag")
    verification = require_intact(path).summary() if verify else ""
    try:
        return _read_info(path, verification)
    except BagError:
        raise
    except Exception as exc:  # rosbags' ReaderError, sqlite3 and struct errors of a damaged file
        raise read_failure(path, exc) from None


def _read_info(path: Path, verification: str) -> BagInfo:
    from rosbags.rosbag2 import Reader

    reader = Reader(path)
    reader.open()
    try:
        meta = {}
        if path.is_dir():
            meta = (yaml.safe_load((path / "metadata.yaml").read_text()) or {}).get("rosbag2_bagfile_information", {})
        duration_s = max(reader.duration * 1e-9, 1e-9)
        topics = []
        for conn in reader.connections:
            existing = next((t for t in topics if t.name == conn.topic and t.type == conn.msgtype), None)
            if existing is not None:  # same topic+type under several QoS: one line
                existing.count += conn.msgcount
                existing.rate_hz = existing.count / duration_s if existing.count > 1 else 0.0
                continue
            qos = _qos_summary(getattr(conn.ext, "offered_qos_profiles", []))
            rate = conn.msgcount / duration_s if conn.msgcount > 1 else 0.0
            topics.append(TopicInfo(conn.topic, conn.msgtype, conn.msgcount, rate, qos))
        topics.sort(key=lambda t: t.name)
        markers = []
        episode_conns = [c for c in reader.connections
                         if c.topic == EPISODE_TOPIC and c.msgtype == "std_msgs/msg/String"]
        if episode_conns:
            markers = [(t, decode_cdr_string(bytes(data))) for _c, t, data in reader.messages(episode_conns)]
        tracker = EpisodeTracker()
        for t, text in sorted(markers, key=lambda m: m[0]):
            tracker.feed(t, text)
        files = []
        for f in meta.get("files", []) or []:
            p = path / f["path"]
            files.append({"path": f["path"], "size_bytes": p.stat().st_size if p.exists() else 0,
                          "message_count": int(f.get("message_count", 0))})
        if not files and path.is_file():
            files = [{"path": path.name, "size_bytes": path.stat().st_size, "message_count": reader.message_count}]
        return BagInfo(
            path=str(path), storage=str(meta.get("storage_identifier", path.suffix.lstrip("."))),
            metadata_version=int(meta.get("version", 0)), ros_distro=str(meta.get("ros_distro", "") or ""),
            files=files, size_bytes=sum(f["size_bytes"] for f in files),
            start_ns=reader.start_time if reader.message_count else 0,
            end_ns=(reader.end_time - 1) if reader.message_count else 0,
            message_count=reader.message_count, topics=topics, episodes=tracker.episodes,
            unmatched_episode_ends=tracker.unmatched_ends, custom_data=dict(meta.get("custom_data") or {}),
            verified=bool(verification), verification=verification,
        )
    finally:
        reader.close()


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n} B"


def format_info(info: BagInfo) -> str:
    """Human-readable summary, in the spirit of ``ros2 bag info``."""
    lines = [
        f"Bag:          {info.path}",
        f"Storage:      {info.storage} (metadata version {info.metadata_version}"
        + (f", {info.ros_distro}" if info.ros_distro else "") + ")",
        f"Files:        {len(info.files)}  ({_fmt_bytes(info.size_bytes)})",
    ]
    for f in info.files:
        lines.append(f"              {f['path']}  {_fmt_bytes(f['size_bytes'])}  {f['message_count']} msgs")
    lines += [
        f"Duration:     {info.duration_s:.3f} s",
        f"Start:        {info.start_ns * 1e-9:.6f}",
        f"End:          {info.end_ns * 1e-9:.6f}",
        f"Messages:     {info.message_count}",
        "Verified:     " + (info.verification if info.verified else
                            "NO (summary only: chunk CRCs not checked; run without --no-verify)"),
        "Topics:",
    ]
    width = max((len(t.name) for t in info.topics), default=10)
    tw = max((len(t.type) for t in info.topics), default=10)
    for t in info.topics:
        rate = f"{t.rate_hz:8.2f} Hz" if t.rate_hz else "          "
        lines.append(f"  {t.name:<{width}}  {t.type:<{tw}}  {t.count:8d} msgs {rate}  {t.qos}")
    ignored = info.unmatched_episode_ends
    lines.append(f"Episodes:     {len(info.episodes)}"
                 + (f"  ({ignored} end marker(s) without a start ignored)" if ignored else ""))
    for e in info.episodes:
        start = (e.start_ns - info.start_ns) * 1e-9
        if e.end_ns is None:
            span = f"{start:9.3f} s -> (open at end of bag)"
        else:
            span = f"{start:9.3f} s -> {(e.end_ns - info.start_ns) * 1e-9:9.3f} s ({e.duration_s:.3f} s)"
        lines.append(f"  #{e.index:<3d} {span}  task={e.task or '-'}  outcome={e.outcome or '-'}")
    return "\n".join(lines)


def info_json(info: BagInfo) -> str:
    return json.dumps(info.to_dict(), indent=2)


# Re-exported for readers that only need the episode logic.
__all__ += ["episodes_from_markers", "info_json"]
