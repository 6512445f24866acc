"""Normaliser statistics for joints, tactile and actions, fitted from data and saved with weights.

Actions also keep their observed range: predictions are clipped to what the demonstrations did
(DESIGN §7: clipping steps to the demo range measurably helps closed-loop success).
"""

from __future__ import annotations

import torch
import torch.nn as nn

STAT_NAMES = ("joint_position", "joint_velocity", "tactile", "action")


class Normalizer(nn.Module):
    """Per-feature mean/std/min/max held as buffers; identity until ``fit`` is called."""

    def __init__(self, num_joints: int, tactile_taxels: int, action_dim: int):
        super().__init__()
        sizes = {"joint_position": num_joints, "joint_velocity": num_joints,
                 "tactile": tactile_taxels, "action": action_dim}
        for name, n in sizes.items():
            self.register_buffer(f"{name}_mean", torch.zeros(n))
            self.register_buffer(f"{name}_std", torch.ones(n))
            self.register_buffer(f"{name}_min", torch.full((n,), -torch.inf))
            self.register_buffer(f"{name}_max", torch.full((n,), torch.inf))

    def fit(self, name: str, data: torch.Tensor, min_std: float = 1e-3) -> None:
        """Set the statistics of ``name`` from samples (N, features)."""
        data = data.reshape(-1, data.shape[-1]).float()
        getattr(self, f"{name}_mean").copy_(data.mean(0))
        getattr(self, f"{name}_std").copy_(data.std(0, unbiased=False).clamp_min(min_std))
        getattr(self, f"{name}_min").copy_(data.amin(0))
        getattr(self, f"{name}_max").copy_(data.amax(0))

    def normalize(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return (x - getattr(self, f"{name}_mean")) / getattr(self, f"{name}_std")

    def denormalize(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return x * getattr(self, f"{name}_std") + getattr(self, f"{name}_mean")

    def clip(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return torch.maximum(torch.minimum(x, getattr(self, f"{name}_max")), getattr(self, f"{name}_min"))

    def to_json(self) -> dict[str, dict[str, list[float]]]:
        out: dict[str, dict[str, list[float]]] = {}
        for name in STAT_NAMES:
            out[name] = {k: getattr(self, f"{name}_{k}").tolist() for k in ("mean", "std", "min", "max")}
        return out

    def load_json(self, data: dict, source: str) -> None:
        for name in STAT_NAMES:
            if name not in data:
                raise ValueError(f"{source}: missing statistics '{name}'")
            for k in ("mean", "std", "min", "max"):
                buf = getattr(self, f"{name}_{k}")
                values = data[name].get(k)
                if values is None or len(values) != buf.numel():
                    got = None if values is None else len(values)
                    raise ValueError(f"{source}: '{name}.{k}' expected {buf.numel()} values, got {got}")
                buf.copy_(torch.tensor(values, dtype=buf.dtype))
