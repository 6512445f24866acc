"""Offered QoS profiles as rosbag2 stores them: rosbags' ``Qos`` from rmw enum values, and its
v8 (YAML string, integer enums) and v9 (YAML list, enum names) serialisations for MCAP channel
metadata, the sqlite3 topics table and ``metadata.yaml``."""

from __future__ import annotations

from collections.abc import Sequence

import yaml

__all__ = ["make_qos"]


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
