"""NumpyLPolicy: the L step (normalise proprio, L-module MLP, decode and clip action) in numpy.

The control loop runs this at up to 1 kHz. Torch's per-call dispatch costs ~150 us for this tiny
MLP; plain numpy float32 does the same arithmetic in a fraction of that and allocates little.
``SageHL.act`` stays the reference: tests check both agree to float32 precision.
"""

from __future__ import annotations

import numpy as np
import torch.nn as nn

_SQRT_2_OVER_PI = float(np.sqrt(2.0 / np.pi))


class NumpyLPolicy:
    def __init__(self, model) -> None:
        cfg = model.cfg
        self.features = list(cfg.observation.proprio_features)
        self.delta = cfg.model.action_mode == "delta"
        self.chunk = cfg.model.action_chunk
        self.num_joints = cfg.observation.num_joints
        n = model.normalizer

        def buf(name: str) -> np.ndarray:
            return getattr(n, name).detach().cpu().numpy().astype(np.float32)

        self._pos_mean, self._pos_std = buf("joint_position_mean"), buf("joint_position_std")
        self._vel_mean, self._vel_std = buf("joint_velocity_mean"), buf("joint_velocity_std")
        self._act_mean, self._act_std = buf("action_mean"), buf("action_std")
        self._act_min, self._act_max = buf("action_min"), buf("action_max")
        self._layers: list[tuple[str, tuple[np.ndarray, ...]]] = []
        for layer in model.l_module.net:
            if isinstance(layer, nn.Linear):
                self._layers.append(("linear", (layer.weight.detach().cpu().numpy().T.copy(),
                                                layer.bias.detach().cpu().numpy().copy())))
            elif isinstance(layer, nn.LayerNorm):
                self._layers.append(("norm", (layer.weight.detach().cpu().numpy().copy(),
                                              layer.bias.detach().cpu().numpy().copy(), np.float32(layer.eps))))
            elif isinstance(layer, nn.GELU) and layer.approximate == "tanh":
                self._layers.append(("gelu", ()))
            else:
                raise TypeError(f"NumpyLPolicy: unsupported L-module layer {layer!r}")

    def act(self, z: np.ndarray, joint_position: np.ndarray, joint_velocity: np.ndarray | None = None) -> np.ndarray:
        """One latent (D,) + proprio (J,) -> absolute joint targets (K, J), float64."""
        pos = np.asarray(joint_position, dtype=np.float32)
        parts = [z.astype(np.float32, copy=False).reshape(-1)]
        for feature in self.features:
            if feature == "position":
                parts.append((pos - self._pos_mean) / self._pos_std)
            else:
                vel = np.zeros_like(pos) if joint_velocity is None else np.asarray(joint_velocity, np.float32)
                parts.append((vel - self._vel_mean) / self._vel_std)
        h = np.concatenate(parts)
        for kind, p in self._layers:
            if kind == "linear":
                h = h @ p[0] + p[1]
            elif kind == "norm":
                mu = h.mean()
                c = h - mu
                h = c / np.sqrt((c * c).mean() + p[2]) * p[0] + p[1]
            else:
                h = 0.5 * h * (1.0 + np.tanh(_SQRT_2_OVER_PI * (h + 0.044715 * h * h * h)))
        a = h.reshape(self.chunk, self.num_joints) * self._act_std + self._act_mean
        a = np.minimum(np.maximum(a, self._act_min), self._act_max)
        return (pos + a).astype(np.float64) if self.delta else a.astype(np.float64)
