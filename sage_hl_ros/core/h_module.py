"""H-module: transformer refinement over the 16 context tokens (16 x 256 = 4096).

Each token gets a learned position embedding, and tokens of a masked modality get a learned
"missing" embedding, so attention can route around a dead sensor instead of reading zeros as data.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .config import MODALITIES, ModelConfig
from .layout import MODALITY_SLICE, NUM_TOKENS, TOKEN_DIM, RealityContext, token_range


def modality_token_map() -> torch.Tensor:
    """(num_modalities, 16) float: 1 where a token belongs to that modality's sensory slice."""
    m = torch.zeros(len(MODALITIES), NUM_TOKENS)
    for i, modality in enumerate(MODALITIES):
        for t in token_range(MODALITY_SLICE[modality]):
            m[i, t] = 1.0
    return m


class HModule(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(1, NUM_TOKENS, TOKEN_DIM) * 0.02)
        self.missing = nn.Parameter(torch.randn(1, 1, TOKEN_DIM) * 0.02)
        self.register_buffer("token_of_modality", modality_token_map(), persistent=False)
        layer = nn.TransformerEncoderLayer(
            TOKEN_DIM, cfg.h_heads, cfg.h_ff_dim, cfg.dropout, activation="gelu",
            batch_first=True, norm_first=True,
        )
        # enable_nested_tensor only matters with padding masks, which H never uses.
        self.encoder = nn.TransformerEncoder(layer, cfg.h_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(TOKEN_DIM)

    def forward(self, ctx: RealityContext) -> torch.Tensor:
        """Refined tokens, (B, 16, 256)."""
        tokens = ctx.tokens()
        missing = (~ctx.mask).to(tokens.dtype) @ self.token_of_modality  # (B, 16)
        x = tokens + self.pos + missing[..., None] * self.missing
        return self.norm(self.encoder(x))
