"""L-module: [z, proprio] -> joint targets (optionally a chunk of K steps), and caller-owned smoothing.

The network predicts normalised actions: joint deltas from the current position ("delta" mode)
or absolute joint targets ("absolute" mode). ``SageHL.act`` turns them into absolute targets and
clips them to the range seen in the demonstrations.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .config import ModelConfig, ObservationConfig
from .smoothing import ActionSmoother

__all__ = ["ActionSmoother", "LModule"]


class LModule(nn.Module):
    def __init__(self, obs_cfg: ObservationConfig, model_cfg: ModelConfig, code_dim: int | None = None):
        """``code_dim``: width of the code it reads (default the latent); a probe on the context passes 4096."""
        super().__init__()
        self.chunk = model_cfg.action_chunk
        self.num_joints = obs_cfg.num_joints
        layers: list[nn.Module] = []
        d = (model_cfg.latent_dim if code_dim is None else code_dim) + obs_cfg.proprio_dim
        for _ in range(model_cfg.l_layers):
            # tanh-GELU: exactly reproducible in numpy by NumpyLPolicy (the control loop's fast path)
            layers += [nn.Linear(d, model_cfg.l_hidden_dim), nn.LayerNorm(model_cfg.l_hidden_dim),
                       nn.GELU(approximate="tanh")]
            d = model_cfg.l_hidden_dim
        layers.append(nn.Linear(d, self.chunk * self.num_joints))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, proprio: torch.Tensor) -> torch.Tensor:
        """Normalised actions, (B, K, J)."""
        return self.net(torch.cat([z, proprio], dim=-1)).view(-1, self.chunk, self.num_joints)
