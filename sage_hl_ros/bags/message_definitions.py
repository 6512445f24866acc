"""Message definitions (``ros2msg`` text, as rosbag2 stores them) and RIHS01 type hashes of
recorded types, from rosbags' typestores or installed ``.msg`` files. Pure Python: no rclpy."""

from __future__ import annotations

import os
import re
import sys
import threading
from pathlib import Path

__all__ = ["message_definition"]

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
