"""Compressors 4096 -> 256 behind one interface, and the 256 -> 4096 decoder used to measure loss.

- ``bottleneck``: variational information bottleneck over the flat context (KL per sample).
- ``attention``: Perceiver-style learned latents cross-attending to the 16 context tokens.
- ``hierarchical``: each group compressed at its own rate (sizes from config, summing to 256).
- ``hybrid`` (default): attention and hierarchical codes fused through a variational bottleneck.

In eval mode every compressor is deterministic (the bottleneck returns its mean).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .config import CONTEXT_DIM, ModelConfig
from .layout import GROUPS, TOKEN_DIM, token_range


@dataclass
class Compressed:
    z: torch.Tensor  # (B, latent_dim)
    kl: torch.Tensor  # (B,) KL to the unit Gaussian prior; zeros for deterministic strategies


class VariationalHead(nn.Module):
    """x -> (mu, logvar) -> z; samples in training, returns mu in eval."""

    def __init__(self, in_dim: int, latent_dim: int, hidden: int = 512):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden), nn.GELU(),
                                 nn.Linear(hidden, 2 * latent_dim))
        # Start with little posterior noise so the L-module can learn from z at once; the KL term
        # then trades noise against information as training goes on.
        with torch.no_grad():
            self.net[-1].bias[latent_dim:].fill_(-6.0)

    def forward(self, x: torch.Tensor) -> Compressed:
        mu, logvar = self.net(x).chunk(2, dim=-1)
        logvar = logvar.clamp(-10.0, 6.0)
        kl = 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(-1)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        return Compressed(z, kl)


class BottleneckCompressor(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.head = VariationalHead(CONTEXT_DIM, cfg.latent_dim)

    def forward(self, tokens: torch.Tensor) -> Compressed:
        return self.head(tokens.flatten(1))


class AttentionCompressor(nn.Module):
    """``attention_latents`` learned queries read the tokens; each latent is projected to its share."""

    def __init__(self, cfg: ModelConfig, out_dim: int | None = None):
        super().__init__()
        out_dim = out_dim or cfg.latent_dim
        n = cfg.attention_latents
        if out_dim % n:
            raise ValueError(f"attention compressor: {n} latents do not divide {out_dim} dims")
        self.latents = nn.Parameter(torch.randn(1, n, TOKEN_DIM) * 0.5)
        self.attn = nn.MultiheadAttention(TOKEN_DIM, 4, batch_first=True)
        self.norm_q = nn.LayerNorm(TOKEN_DIM)
        self.ff = nn.Sequential(nn.LayerNorm(TOKEN_DIM), nn.Linear(TOKEN_DIM, 2 * TOKEN_DIM), nn.GELU(),
                                nn.Linear(2 * TOKEN_DIM, TOKEN_DIM))
        self.proj = nn.Linear(TOKEN_DIM, out_dim // n)
        self.last_attention: torch.Tensor | None = None

    def forward(self, tokens: torch.Tensor, keep_attention: bool = False) -> Compressed:
        b = tokens.shape[0]
        q = self.norm_q(self.latents.expand(b, -1, -1))
        read, weights = self.attn(q, tokens, tokens, need_weights=keep_attention, average_attn_weights=True)
        if keep_attention:
            self.last_attention = weights  # (B, latents, tokens)
        x = self.latents + read
        x = x + self.ff(x)
        z = self.proj(x).flatten(1)
        return Compressed(z, z.new_zeros(b))


class HierarchicalCompressor(nn.Module):
    """Per-group linear codes: e.g. sensory 1536 -> 96, semantic 1024 -> 64, ... (sum 256)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.groups = nn.ModuleDict()
        self.token_ranges = {}
        for g in GROUPS:
            r = token_range(g)
            self.token_ranges[g] = (r.start, r.stop)
            self.groups[g] = nn.Sequential(nn.LayerNorm(len(r) * TOKEN_DIM),
                                           nn.Linear(len(r) * TOKEN_DIM, cfg.hierarchical_dims[g]))

    def forward(self, tokens: torch.Tensor) -> Compressed:
        codes = [self.groups[g](tokens[:, a:b].flatten(1)) for g, (a, b) in self.token_ranges.items()]
        z = torch.cat(codes, dim=1)
        return Compressed(z, z.new_zeros(z.shape[0]))


class HybridCompressor(nn.Module):
    """Attention latents + per-group codes, fused by a variational bottleneck."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attention = AttentionCompressor(cfg)
        self.hierarchical = HierarchicalCompressor(cfg)
        self.head = VariationalHead(2 * cfg.latent_dim, cfg.latent_dim)

    def forward(self, tokens: torch.Tensor) -> Compressed:
        a = self.attention(tokens).z
        h = self.hierarchical(tokens).z
        return self.head(torch.cat([a, h], dim=1))


def build_compressor(cfg: ModelConfig) -> nn.Module:
    return {
        "bottleneck": BottleneckCompressor,
        "attention": AttentionCompressor,
        "hierarchical": HierarchicalCompressor,
        "hybrid": HybridCompressor,
    }[cfg.compressor](cfg)


class ContextDecoder(nn.Module):
    """z -> 4096-D context, for the reconstruction term and the information-loss metric."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, 1024), nn.GELU(), nn.Linear(1024, CONTEXT_DIM))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
