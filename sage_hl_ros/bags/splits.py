"""A dataset's episodes and their train/val split: a deterministic hash of seed, bag name and
episode index, so the split survives moving the dataset and adding bags."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .align import NS

__all__ = ["SPLITS", "EpisodeInfo", "split_value"]

SPLITS = ("train", "val")


@dataclass
class EpisodeInfo:
    """One episode of one bag. ``counts`` is filled once the episode has been aligned."""

    bag: str
    index: int
    start_ns: int
    end_ns: int
    task: str = ""
    outcome: str = ""  # success | failure | "" (not given) | interrupted | unfinished (bag ended)
    split: str = ""  # train | val | excluded
    steps: int = 0  # grid steps
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{Path(self.bag).name}#{self.index}"

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / NS

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["id"] = self.id
        return out


def split_value(bag: str | Path, index: int, seed: int) -> float:
    """Deterministic number in [0, 1) for an episode: sha256 of seed, bag name and episode index.

    The bag's directory *name* (not its full path) is hashed so the split survives moving the
    dataset folder; rosbag2 names bags by date and time, so names are unique in practice.
    """
    key = f"{seed}:{Path(bag).name}:{index}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2.0**64


def _check_split(split: str) -> None:
    if split not in (*SPLITS, "all"):
        raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
