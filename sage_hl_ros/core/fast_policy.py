"""NumpyLPolicy: the L step (normalise proprio, L-module MLP, decode and clip action) in numpy.

The control loop runs this at up to 1 kHz. Torch's per-call dispatch costs ~150 us for this tiny
MLP; plain numpy float32 does the same arithmetic in a fraction of that and allocates little.
``SageHL.act`` stays the reference: tests check both agree to float32 precision.

The control node never imports torch: :meth:`NumpyLPolicy.from_checkpoint` reads the L-module's
tensors and the normaliser straight from the checkpoint files (safetensors as numpy, hash verified
first). That keeps the control process small (no torch runtime) and makes a hot reload cheap: only
a few small tensors are read, so the load holds the interpreter for milliseconds, not the ~200 ms a
full torch model build took (which stalled the control loop). :meth:`from_model` builds the same
policy from a live torch model (training, tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checkpoint_files import L_STEP_PREFIX, CheckpointError, load_verified_tensors_numpy, read_meta, read_normalizer
from .config import ConfigError, SageConfig

_SQRT_2_OVER_PI = float(np.sqrt(2.0 / np.pi))
_LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, as LModule builds it
_STATS = ("joint_position", "joint_velocity", "action")


@dataclass(frozen=True)
class PolicyInfo:
    """What was loaded: shown in diagnostics and used to check a reload against the running model."""

    model_dir: str
    sha256: str  # the model hash config.json records; the L-step tensors checked against it (or their group digest)
    joint_names: tuple[str, ...]  # model input/output order
    latent_dim: int
    action_chunk: int


class NumpyLPolicy:
    def __init__(self, cfg: SageConfig, layers: list[tuple[str, tuple[np.ndarray, ...]]],
                 stats: dict[str, dict[str, np.ndarray]]) -> None:
        self.cfg = cfg
        self.features = list(cfg.observation.proprio_features)
        self.delta = cfg.model.action_mode == "delta"
        self.chunk = cfg.model.action_chunk
        self.num_joints = cfg.observation.num_joints
        self.latent_dim = int(cfg.model.latent_dim)
        f32 = lambda x: np.asarray(x, dtype=np.float32)  # noqa: E731
        self._pos_mean, self._pos_std = f32(stats["joint_position"]["mean"]), f32(stats["joint_position"]["std"])
        self._vel_mean, self._vel_std = f32(stats["joint_velocity"]["mean"]), f32(stats["joint_velocity"]["std"])
        self._act_mean, self._act_std = f32(stats["action"]["mean"]), f32(stats["action"]["std"])
        self._act_min, self._act_max = f32(stats["action"]["min"]), f32(stats["action"]["max"])
        self._layers = layers

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_model(cls, model) -> NumpyLPolicy:
        """From a live torch SageHL (training and tests)."""
        import torch.nn as nn

        n = model.normalizer
        stats = {name: {k: getattr(n, f"{name}_{k}").detach().cpu().numpy() for k in ("mean", "std", "min", "max")}
                 for name in _STATS}
        layers: list[tuple[str, tuple[np.ndarray, ...]]] = []
        for layer in model.l_module.net:
            if isinstance(layer, nn.Linear):
                layers.append(("linear", (layer.weight.detach().cpu().numpy().T.copy(),
                                          layer.bias.detach().cpu().numpy().copy())))
            elif isinstance(layer, nn.LayerNorm):
                layers.append(("norm", (layer.weight.detach().cpu().numpy().copy(),
                                        layer.bias.detach().cpu().numpy().copy(), np.float32(layer.eps))))
            elif isinstance(layer, nn.GELU) and layer.approximate == "tanh":
                layers.append(("gelu", ()))
            else:
                raise TypeError(f"NumpyLPolicy: unsupported L-module layer {layer!r}")
        return cls(model.cfg, layers, stats)

    @classmethod
    def from_checkpoint(cls, directory: str | Path) -> tuple[NumpyLPolicy, PolicyInfo]:
        """Torch-free load of the L step from a checkpoint directory (weights hash verified)."""
        directory = Path(directory)
        meta = read_meta(directory)
        try:
            cfg = SageConfig.from_dict(meta["config"], str(directory / "config.json"))
        except ConfigError as exc:
            raise CheckpointError(str(exc)) from None
        sha, tensors = load_verified_tensors_numpy(directory, prefix=L_STEP_PREFIX)
        weights = directory / "model.safetensors"
        m, o = cfg.model, cfg.observation
        layers: list[tuple[str, tuple[np.ndarray, ...]]] = []
        d_in = m.latent_dim + o.proprio_dim
        sizes = [m.l_hidden_dim] * m.l_layers + [m.action_chunk * o.num_joints]

        def tensor(name: str, shape: tuple[int, ...]) -> np.ndarray:
            key = f"{L_STEP_PREFIX}{name}"
            if key not in tensors:
                raise CheckpointError(f"{weights}: missing tensor '{key}' (expected shape {shape})")
            arr = tensors[key]
            if tuple(arr.shape) != shape:
                raise CheckpointError(f"{weights}: tensor '{key}' has shape {tuple(arr.shape)}, model expects {shape}")
            return np.asarray(arr, dtype=np.float32)

        idx = 0
        for k, d_out in enumerate(sizes):
            weight = tensor(f"{idx}.weight", (d_out, d_in)).T.copy()
            layers.append(("linear", (weight, tensor(f"{idx}.bias", (d_out,)))))
            if k < m.l_layers:  # hidden block: Linear, LayerNorm, GELU (LModule's layout)
                layers.append(("norm", (tensor(f"{idx + 1}.weight", (d_out,)), tensor(f"{idx + 1}.bias", (d_out,)),
                                        np.float32(_LAYER_NORM_EPS))))
                layers.append(("gelu", ()))
                idx += 3
            d_in = d_out
        stats = read_normalizer(directory, {"joint_position": o.num_joints, "joint_velocity": o.num_joints,
                                            "action": o.num_joints})
        info = PolicyInfo(str(directory.resolve()), sha, tuple(o.joint_names), int(m.latent_dim), int(m.action_chunk))
        return cls(cfg, layers, stats), info

    # ------------------------------------------------------------------ the step
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

