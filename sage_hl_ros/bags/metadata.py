"""``metadata.yaml``, the rosbag2 bag description: what the writer and ``repair_bag`` write.

Metadata version and ROS 2 Humble (checked against rosbag2 sources and issues, see below)
    ``humble_compatible=True`` (the writer's default) writes ``metadata.yaml`` version 8 with
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
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .qos import _qos_yaml_value

__all__ = ["Connection", "FileStats", "build_metadata", "write_metadata"]


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
