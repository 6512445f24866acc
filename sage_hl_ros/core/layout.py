"""The 4096-D reality context: 15 named slices in four groups (DESIGN §2).

Callers address slices by name (``ctx.slice("temporal.predictive")``); offsets live only here.
The context is also viewed as 16 tokens of 256 (the 512-D visual slice is two tokens), which is
what the H-module attends over.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import CONTEXT_DIM, MODALITIES

TOKEN_DIM = 256

# (group, slice, dims) in context order.
_LAYOUT = (
    ("sensory", "visual", 512),
    ("sensory", "depth", 256),
    ("sensory", "audio", 256),
    ("sensory", "tactile", 256),
    ("sensory", "proprioceptive", 256),
    ("semantic", "objects", 256),
    ("semantic", "affordances", 256),
    ("semantic", "relationships", 256),
    ("semantic", "intentions", 256),
    ("physical", "dynamics", 256),
    ("physical", "materials", 256),
    ("physical", "constraints", 256),
    ("temporal", "immediate", 256),
    ("temporal", "historical", 256),
    ("temporal", "predictive", 256),
)

GROUPS = ("sensory", "semantic", "physical", "temporal")

# Sensory slice that each modality fills.
MODALITY_SLICE = {
    "visual": "sensory.visual",
    "depth": "sensory.depth",
    "audio": "sensory.audio",
    "tactile": "sensory.tactile",
    "proprio": "sensory.proprioceptive",
}


def _build_offsets() -> dict[str, slice]:
    offsets: dict[str, slice] = {}
    start = 0
    for group, name, dims in _LAYOUT:
        offsets[f"{group}.{name}"] = slice(start, start + dims)
        start += dims
    assert start == CONTEXT_DIM
    return offsets


SLICES: dict[str, slice] = _build_offsets()
SLICE_NAMES: tuple[str, ...] = tuple(SLICES)
NUM_TOKENS = CONTEXT_DIM // TOKEN_DIM


def group_slice(group: str) -> slice:
    """The contiguous range of a whole group (e.g. ``"physical"`` -> 768 dims)."""
    names = [n for n in SLICE_NAMES if n.split(".")[0] == group]
    if not names:
        raise KeyError(f"unknown context group {group!r}; groups are {GROUPS}")
    return slice(SLICES[names[0]].start, SLICES[names[-1]].stop)


def slice_of(name: str) -> slice:
    try:
        return SLICES[name]
    except KeyError:
        raise KeyError(f"unknown context slice {name!r}; slices are {SLICE_NAMES}") from None


def slice_dims(name: str) -> int:
    s = slice_of(name)
    return s.stop - s.start


def token_range(name_or_group: str) -> range:
    """Token indices (of the 16) covered by a slice or a group."""
    s = group_slice(name_or_group) if name_or_group in GROUPS else slice_of(name_or_group)
    return range(s.start // TOKEN_DIM, s.stop // TOKEN_DIM)


def token_group_ids() -> torch.Tensor:
    """Group index (0..3) of each of the 16 tokens."""
    ids = torch.zeros(NUM_TOKENS, dtype=torch.long)
    for gi, group in enumerate(GROUPS):
        for t in token_range(group):
            ids[t] = gi
    return ids


@dataclass
class RealityContext:
    """A batch of 4096-D contexts plus the modality mask the model saw (True = present)."""

    vector: torch.Tensor  # (B, 4096)
    mask: torch.Tensor  # (B, len(MODALITIES)) bool

    def slice(self, name: str) -> torch.Tensor:
        return self.vector[:, slice_of(name)]

    def group(self, group: str) -> torch.Tensor:
        return self.vector[:, group_slice(group)]

    def tokens(self) -> torch.Tensor:
        return self.vector.view(self.vector.shape[0], NUM_TOKENS, TOKEN_DIM)

    def modality_present(self, modality: str) -> torch.Tensor:
        return self.mask[:, MODALITIES.index(modality)]

    @staticmethod
    def from_slices(parts: dict[str, torch.Tensor], mask: torch.Tensor) -> RealityContext:
        missing = [n for n in SLICE_NAMES if n not in parts]
        if missing:
            raise KeyError(f"context slices missing: {missing}")
        for name in SLICE_NAMES:
            if parts[name].shape[-1] != slice_dims(name):
                raise ValueError(f"slice {name}: expected {slice_dims(name)} dims, got {parts[name].shape[-1]}")
        return RealityContext(torch.cat([parts[n] for n in SLICE_NAMES], dim=-1), mask)
