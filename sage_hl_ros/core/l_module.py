"""L-module: [z, proprio] -> joint targets (optionally a chunk of K steps), and caller-owned smoothing.

The network predicts normalised actions: joint deltas from the current position ("delta" mode)
or absolute joint targets ("absolute" mode). ``SageHL.act`` turns them into absolute targets and
clips them to the range seen in the demonstrations.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from .config import ModelConfig, ObservationConfig


class LModule(nn.Module):
    def __init__(self, obs_cfg: ObservationConfig, model_cfg: ModelConfig):
        super().__init__()
        self.chunk = model_cfg.action_chunk
        self.num_joints = obs_cfg.num_joints
        layers: list[nn.Module] = []
        d = model_cfg.latent_dim + obs_cfg.proprio_dim
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


class ActionSmoother:
    """First-order low-pass on joint targets. One per episode/controller, never shared.

    ``alpha`` = 1 passes targets through; smaller values smooth more. ``reset`` at episode start
    (or after a hold) so the filter never drags the arm toward a stale target.
    """

    def __init__(self, alpha: float = 1.0):
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"smoothing alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self._last: np.ndarray | None = None

    def reset(self, value: np.ndarray | None = None) -> None:
        self._last = None if value is None else np.array(value, dtype=np.float64)

    def __call__(self, target: np.ndarray) -> np.ndarray:
        if self._last is None or self.alpha >= 1.0:
            self._last = np.array(target, dtype=np.float64)
        else:
            self._last += self.alpha * (target - self._last)
        return self._last.copy()
