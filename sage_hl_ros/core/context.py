"""RealityContext4K assembly: sensory slices -> semantic, physical and temporal groups.

Which slice learns from what (DESIGN §2: no filler slices):

| slice | signal |
|---|---|
| semantic.objects | cross-modal agreement: predicts the (stop-gradient) proprio embedding from vision+depth |
| semantic.affordances | declared projection of objects, tactile and proprio |
| semantic.relationships | declared projection: attention across the sensory tokens |
| semantic.intentions | reads out the recorded/teacher action |
| physical.dynamics | reads out the next-step joint positions |
| physical.materials | declared projection of tactile, audio and vision |
| physical.constraints | declared projection of proprio and depth |
| temporal.immediate | declared projection of the current sensory group |
| temporal.historical | attention over the last ``history_len`` immediates (state carried across H steps) |
| temporal.predictive | predicts the next step's sensory embedding (stop-gradient target) |

Every slice also receives behaviour-cloning gradient through H, the compressor and the L-module.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .config import MODALITIES, ModelConfig, ObservationConfig
from .encoders import mlp
from .layout import SLICE_NAMES, RealityContext

D = 256


@dataclass
class TemporalState:
    """Per-episode memory of the temporal group: the last K immediates and which are filled."""

    history: torch.Tensor  # (B, K, 256)
    valid: torch.Tensor  # (B, K) bool

    def detach(self) -> TemporalState:
        return TemporalState(self.history.detach(), self.valid)


class ContextHeads(nn.Module):
    """Builds the semantic, physical and temporal groups from the sensory group."""

    def __init__(self, obs_cfg: ObservationConfig, model_cfg: ModelConfig):
        super().__init__()
        self.history_len = model_cfg.history_len
        n_mod = len(MODALITIES)
        j = obs_cfg.num_joints
        action_dim = model_cfg.action_chunk * j
        # semantic
        self.objects = mlp(512 + 256 + n_mod, 512, D)
        self.affordances = mlp(D + 256 + 256 + n_mod, 512, D)
        self.rel_tokens = nn.Linear(512, 2 * D)  # split the visual slice into two tokens
        self.rel_attn = nn.MultiheadAttention(D, 4, batch_first=True)
        self.rel_query = nn.Parameter(torch.randn(1, 1, D) * 0.02)
        self.rel_norm = nn.LayerNorm(D)
        self.intentions = mlp(1536 + D + n_mod, 512, D)
        # physical
        self.dynamics = mlp(256 + D + D + n_mod, 512, D)
        self.materials = mlp(256 + 256 + 512 + n_mod, 512, D)
        self.constraints = mlp(256 + 256 + n_mod, 512, D)
        # temporal
        self.immediate = mlp(1536 + n_mod, 512, D)
        self.hist_query = nn.Parameter(torch.randn(1, 1, D) * 0.02)
        self.hist_start = nn.Parameter(torch.randn(1, 1, D) * 0.02)  # always-valid "start" slot
        self.hist_pos = nn.Parameter(torch.randn(1, model_cfg.history_len + 1, D) * 0.02)
        self.hist_attn = nn.MultiheadAttention(D, 4, batch_first=True)
        self.hist_norm = nn.LayerNorm(D)
        self.predictive = mlp(D + D, 512, D)
        # read-outs that give slices their training signal
        self.readout_objects = nn.Linear(D, 256)  # -> proprio embedding (stop-gradient)
        self.readout_intentions = nn.Linear(D, action_dim)  # -> normalised action
        self.readout_dynamics = nn.Linear(D, j)  # -> normalised next joint position
        self.readout_predictive = nn.Linear(D, 1536)  # -> next sensory group (stop-gradient)

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> TemporalState:
        return TemporalState(torch.zeros(batch, self.history_len, D, device=device),
                             torch.zeros(batch, self.history_len, dtype=torch.bool, device=device))

    def forward(self, sensory: dict[str, torch.Tensor], mask: torch.Tensor,
                state: TemporalState) -> tuple[RealityContext, TemporalState]:
        m = mask.to(sensory["sensory.visual"].dtype)
        vis, dep, aud = sensory["sensory.visual"], sensory["sensory.depth"], sensory["sensory.audio"]
        tac, pro = sensory["sensory.tactile"], sensory["sensory.proprioceptive"]
        sens = torch.cat([vis, dep, aud, tac, pro], dim=1)
        b = sens.shape[0]

        immediate = self.immediate(torch.cat([sens, m], 1))
        historical = self._historical(immediate, state)
        objects = self.objects(torch.cat([vis, dep, m], 1))
        tokens = torch.cat([self.rel_tokens(vis).view(b, 2, D), torch.stack([dep, aud, tac, pro], 1)], 1)
        rel, _ = self.rel_attn(self.rel_query.expand(b, -1, -1), tokens, tokens, need_weights=False)
        relationships = self.rel_norm(rel[:, 0])
        parts = {
            **sensory,
            "semantic.objects": objects,
            "semantic.affordances": self.affordances(torch.cat([objects, tac, pro, m], 1)),
            "semantic.relationships": relationships,
            "semantic.intentions": self.intentions(torch.cat([sens, historical, m], 1)),
            "physical.materials": self.materials(torch.cat([tac, aud, vis, m], 1)),
            "physical.constraints": self.constraints(torch.cat([pro, dep, m], 1)),
            "temporal.immediate": immediate,
            "temporal.historical": historical,
            "temporal.predictive": self.predictive(torch.cat([immediate, historical], 1)),
        }
        parts["physical.dynamics"] = self.dynamics(
            torch.cat([pro, parts["semantic.intentions"], historical, m], 1))
        assert set(parts) == set(SLICE_NAMES)
        new_state = TemporalState(
            torch.cat([state.history[:, 1:], immediate[:, None]], 1),
            torch.cat([state.valid[:, 1:], torch.ones(b, 1, dtype=torch.bool, device=mask.device)], 1),
        )
        return RealityContext.from_slices(parts, mask), new_state

    def _historical(self, immediate: torch.Tensor, state: TemporalState) -> torch.Tensor:
        b = immediate.shape[0]
        keys = torch.cat([self.hist_start.expand(b, -1, -1), state.history], 1) + self.hist_pos
        pad = torch.cat([torch.zeros(b, 1, dtype=torch.bool, device=immediate.device), ~state.valid], 1)
        query = self.hist_query.expand(b, -1, -1) + immediate[:, None]
        out, _ = self.hist_attn(query, keys, keys, key_padding_mask=pad, need_weights=False)
        return self.hist_norm(out[:, 0])
