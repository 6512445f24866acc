"""Episode markers: std_msgs/String on ``/sage/episode``, their CDR bytes, and the episodes they
delimit (pure Python: no rclpy).

``start`` or ``start:<task>`` begins an episode; ``end``, ``end:success`` or ``end:failure`` ends
it. A ``start`` while an episode is open ends that one as ``interrupted``; an ``end`` with none
open is counted and ignored. The writer tracks them as messages are written and stores the list in
``custom_data`` (``sage_hl_ros.episodes``, JSON); :func:`episodes_from_markers` is the same logic
for readers.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from dataclasses import asdict, dataclass

__all__ = [
    "Episode",
    "EpisodeTracker",
    "decode_cdr_string",
    "encode_cdr_string",
    "episodes_from_markers",
    "parse_episode_marker",
]


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
