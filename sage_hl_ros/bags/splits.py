"""A dataset's episodes and their train/val split: a deterministic hash of seed, bag name and
episode index, so the split survives moving the dataset and adding bags."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .align import NS

__all__ = ["SPLITS", "EpisodeInfo", "assign_splits", "split_value"]

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


def assign_splits(eps: list[EpisodeInfo], val_fraction: float, seed: int,
                  exclude_outcomes: list[str]) -> None:
    """In place: each episode's split. An excluded outcome is "excluded"; the others go to val by
    ``split_value`` < ``val_fraction``. Small datasets: with a val fraction asked for, at least one
    of two or more eligible episodes is val (the one with the smallest value)."""
    eligible = []
    for e in eps:
        if e.outcome and e.outcome in exclude_outcomes:
            e.split = "excluded"
            continue
        e.split = "val" if split_value(e.bag, e.index, seed) < val_fraction else "train"
        eligible.append(e)
    if val_fraction > 0 and len(eligible) >= 2 and not any(e.split == "val" for e in eligible):
        min(eligible, key=lambda e: split_value(e.bag, e.index, seed)).split = "val"


def _check_split(split: str) -> None:
    if split not in (*SPLITS, "all"):
        raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
