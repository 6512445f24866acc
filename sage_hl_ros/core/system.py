"""SageHL: the whole H<->L model behind the three calls nodes and trainers use.

    z, context, state = model.encode(obs, state)      # slow loop (H rate)
    targets = model.act(z, joint_position, joint_velocity)   # fast loop (L rate)
    terms = model.losses(batch)                       # training

``encode`` and ``act`` run under ``torch.inference_mode``; call ``model.eval()`` first (loading a
checkpoint does). Temporal state is the caller's: one per episode / robot, never global.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .compressors import Compressed, ContextDecoder, build_compressor
from .config import MODALITIES, SageConfig
from .context import ContextHeads, TemporalState
from .encoders import ModalityEncoders
from .h_module import HModule
from .l_module import LModule
from .layout import SLICES, RealityContext, group_slice
from .normalizer import Normalizer
from .observation import ObservationBatch, ObservationSchema, proprio_features

_PROPRIO = MODALITIES.index("proprio")
_VISUAL = MODALITIES.index("visual")


@dataclass
class SequenceBatch:
    """B sequences of T consecutive steps; observations flattened as index ``b * T + t``."""

    obs: ObservationBatch  # batch size B*T
    action: torch.Tensor  # (B, T, K, J) absolute joint targets (recorded command or teacher label)
    steps: int  # T

    @property
    def num_sequences(self) -> int:
        return self.action.shape[0]

    def to(self, device: torch.device | str) -> SequenceBatch:
        return SequenceBatch(self.obs.to(device), self.action.to(device), self.steps)


class SageHL(nn.Module):
    def __init__(self, cfg: SageConfig):
        super().__init__()
        self.cfg = cfg
        o, m = cfg.observation, cfg.model
        self.schema = ObservationSchema(o)
        self.normalizer = Normalizer(o.num_joints, o.tactile_taxels, o.num_joints)
        self.encoders = ModalityEncoders(o, m)
        self.context_heads = ContextHeads(o, m)
        self.h_module = HModule(m)
        self.compressor = build_compressor(m)
        self.decoder = ContextDecoder(m.latent_dim)
        self.l_module = LModule(o, m)

    # ------------------------------------------------------------------ building blocks
    def initial_state(self, batch: int = 1) -> TemporalState:
        return self.context_heads.initial_state(batch, self.normalizer.action_mean.device)

    def _proprio(self, joint_position: torch.Tensor, joint_velocity: torch.Tensor) -> torch.Tensor:
        n = self.normalizer
        return proprio_features(self.cfg.observation, n.normalize("joint_position", joint_position),
                                n.normalize("joint_velocity", joint_velocity))

    def _sensory(self, obs: ObservationBatch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        proprio = self._proprio(obs.joint_position, obs.joint_velocity)
        tactile_obs = ObservationBatch(**{**obs.__dict__, "tactile": self.normalizer.normalize("tactile", obs.tactile)})
        return self.encoders(tactile_obs, proprio), proprio

    def compress(self, ctx: RealityContext) -> tuple[Compressed, torch.Tensor]:
        """Refine with H and compress; returns the code and the refined tokens."""
        refined = self.h_module(ctx)
        return self.compressor(refined), refined

    def _act_normalized(self, z: torch.Tensor, proprio: torch.Tensor) -> torch.Tensor:
        return self.l_module(z, proprio)

    def _to_targets(self, action_norm: torch.Tensor, joint_position: torch.Tensor) -> torch.Tensor:
        a = self.normalizer.clip("action", self.normalizer.denormalize("action", action_norm))
        if self.cfg.model.action_mode == "delta":
            return joint_position[:, None, :] + a
        return a

    def _from_targets(self, targets: torch.Tensor, joint_position: torch.Tensor) -> torch.Tensor:
        """Absolute targets (B, K, J) -> the L-module's action representation (un-normalised)."""
        if self.cfg.model.action_mode == "delta":
            return targets - joint_position[:, None, :]
        return targets

    # ------------------------------------------------------------------ inference API
    @torch.inference_mode()
    def encode(self, obs: ObservationBatch, state: TemporalState | None = None
               ) -> tuple[torch.Tensor, RealityContext, TemporalState]:
        """Observation -> (z (B, 256), 4096-D context, new temporal state)."""
        if state is None:
            state = self.initial_state(obs.batch_size)
        sensory, _ = self._sensory(obs)
        ctx, new_state = self.context_heads(sensory, obs.mask, state)
        code, _ = self.compress(ctx)
        return code.z, ctx, new_state

    @torch.inference_mode()
    def act(self, z: torch.Tensor, joint_position: torch.Tensor,
            joint_velocity: torch.Tensor | None = None) -> torch.Tensor:
        """Latent + proprioception -> absolute joint targets (B, K, J), clipped to the demo range."""
        if joint_velocity is None:
            joint_velocity = torch.zeros_like(joint_position)
        proprio = self._proprio(joint_position, joint_velocity)
        return self._to_targets(self._act_normalized(z, proprio), joint_position)

    # ------------------------------------------------------------------ training
    def fit_normalizer(self, joint_position: torch.Tensor, joint_velocity: torch.Tensor,
                       tactile: torch.Tensor, targets: torch.Tensor) -> None:
        """Statistics from training data; ``targets`` (N, K, J) absolute, ``joint_position`` (N, J)."""
        n = self.normalizer
        n.fit("joint_position", joint_position)
        n.fit("joint_velocity", joint_velocity)
        n.fit("tactile", tactile)
        n.fit("action", self._from_targets(targets, joint_position))

    def forward_sequence(self, batch: SequenceBatch) -> dict[str, torch.Tensor]:
        """Run the stack over B x T steps with temporal state carried; tensors are (B*T, ...)."""
        obs, b, t = batch.obs, batch.num_sequences, batch.steps
        sensory, proprio = self._sensory(obs)
        mask = obs.mask.view(b, t, -1)
        state = self.initial_state(b)
        vectors, contexts = [], []
        for step in range(t):
            step_sensory = {k: v.view(b, t, -1)[:, step] for k, v in sensory.items()}
            ctx, state = self.context_heads(step_sensory, mask[:, step], state)
            contexts.append(ctx.vector)
        vectors = torch.stack(contexts, 1).reshape(b * t, -1)
        ctx = RealityContext(vectors, obs.mask)
        code, refined = self.compress(ctx)
        return {"context": vectors, "z": code.z, "kl": code.kl, "proprio": proprio,
                "action_norm": self._act_normalized(code.z, proprio)}

    def losses(self, batch: SequenceBatch) -> dict[str, torch.Tensor]:
        """All objectives (unweighted) plus ``total`` (weighted by ``cfg.loss``)."""
        w = self.cfg.loss
        obs, b, t = batch.obs, batch.num_sequences, batch.steps
        out = self.forward_sequence(batch)
        ctx = out["context"]
        k, j = batch.action.shape[2:]
        targets = batch.action.reshape(b * t, k, j)
        target_norm = self.normalizer.normalize("action", self._from_targets(targets, obs.joint_position))
        present = obs.mask.float()

        terms: dict[str, torch.Tensor] = {}
        terms["bc"] = F.mse_loss(out["action_norm"], target_norm)
        intent = self.context_heads.readout_intentions(ctx[:, SLICES["semantic.intentions"]])
        terms["intentions"] = F.mse_loss(intent.view(b * t, k, j), target_norm)
        recon = self.decoder(out["z"])
        terms["reconstruction"] = F.mse_loss(recon, ctx.detach())
        terms["kl"] = out["kl"].mean()

        # Next-step targets exist for steps 0..T-2 of each sequence.
        cur = torch.arange(b * t, device=ctx.device).view(b, t)[:, :-1].reshape(-1)
        nxt = cur + 1
        if t > 1:
            dyn = self.context_heads.readout_dynamics(ctx[cur][:, SLICES["physical.dynamics"]])
            next_pos = self.normalizer.normalize("joint_position", obs.joint_position[nxt])
            both = present[cur, _PROPRIO] * present[nxt, _PROPRIO]
            terms["dynamics"] = _masked_mse(dyn, next_pos, both)
            pred = self.context_heads.readout_predictive(ctx[cur][:, SLICES["temporal.predictive"]])
            terms["predictive"] = F.mse_loss(pred, ctx[nxt][:, group_slice("sensory")].detach())
        else:
            terms["dynamics"] = terms["predictive"] = ctx.new_zeros(())
        objects = self.context_heads.readout_objects(ctx[:, SLICES["semantic.objects"]])
        agree = present[:, _VISUAL] * present[:, _PROPRIO]
        terms["semantic"] = _masked_mse(objects, ctx[:, SLICES["sensory.proprioceptive"]].detach(), agree)
        if k > 2:
            terms["smoothness"] = out["action_norm"].diff(n=2, dim=1).square().mean()
        else:
            terms["smoothness"] = ctx.new_zeros(())

        terms["total"] = (
            w.bc * (terms["bc"] + 0.5 * terms["intentions"]) + w.reconstruction * terms["reconstruction"]
            + w.kl * terms["kl"] + w.dynamics * terms["dynamics"] + w.predictive * terms["predictive"]
            + w.semantic * terms["semantic"] + w.smoothness * terms["smoothness"]
        )
        return terms


def _masked_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    per = (pred - target).square().mean(-1)
    return (per * weight).sum() / weight.sum().clamp_min(1.0)


def build_model(cfg: SageConfig) -> SageHL:
    """A freshly initialised model; the same config and seed give the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return SageHL(cfg)
