"""Modality encoders: raw sensing -> the five sensory slices (visual 512, others 256).

N cameras share the visual slice (``VisualViews``).

A masked modality yields exactly zeros in its slice; the mask itself travels beside the context so
later stages can tell "dark image" from "no camera".
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import MODALITIES, ModelConfig, ObservationConfig
from .layout import MODALITY_SLICE, SLICES
from .observation import ObservationBatch


class SpatialSoftmax(nn.Module):
    """Feature map -> expected (x, y) image coordinate per channel: a keypoint per channel.

    Keeps *where* things are, which global pooling throws away and reaching depends on.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        attn = torch.softmax(x.flatten(2), dim=-1).view(b, c, h, w)
        ys = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=x.dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=x.dtype)
        ex = (attn.sum(dim=2) * xs).sum(dim=-1)
        ey = (attn.sum(dim=3) * ys).sum(dim=-1)
        return torch.cat([ex, ey], dim=1)


def _conv(cin: int, cout: int, k: int, s: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2), nn.GroupNorm(8, cout), nn.GELU())


class ImageCNN(nn.Module):
    """Small strided CNN with keypoint (spatial-softmax) and pooled features."""

    def __init__(self, in_channels: int, out_dim: int, width: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            _conv(in_channels, width, 5, 2),
            _conv(width, 2 * width, 3, 2),
            _conv(2 * width, 4 * width, 3, 2),
            _conv(4 * width, 4 * width, 3, 1),
        )
        self.keypoints = SpatialSoftmax()
        self.head = nn.Sequential(nn.Linear(4 * width * 3, out_dim), nn.LayerNorm(out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.body(x)
        return self.head(torch.cat([self.keypoints(f), f.mean(dim=(2, 3))], dim=1))


class HFVisualBackbone(nn.Module):
    """A local Hugging Face vision model (never downloaded) projected to the visual slice."""

    def __init__(self, model_dir: str, out_dim: int, image_size: int):
        super().__init__()
        try:
            from transformers import AutoModel
        except ImportError as exc:  # optional dependency
            raise ImportError("visual_backbone is a model directory but `transformers` is not installed") from exc
        if not Path(model_dir).is_dir():
            raise FileNotFoundError(f"visual_backbone: {model_dir} is not a directory")
        self.backbone = AutoModel.from_pretrained(model_dir, local_files_only=True)
        hidden = getattr(self.backbone.config, "hidden_size", None) or self.backbone.config.hidden_sizes[-1]
        self.image_size = getattr(self.backbone.config, "image_size", image_size)
        self.proj = nn.Sequential(nn.Linear(hidden, out_dim), nn.LayerNorm(out_dim))
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        out = self.backbone(pixel_values=(x - self.mean) / self.std)
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            pooled = out.last_hidden_state.mean(dim=1)
        return self.proj(pooled.flatten(1))


class VisualViews(nn.Module):
    """N camera views -> the one 512-D visual slice.

    Each view runs the same image encoder (weights shared: a wrist and a fixed camera see the same
    kind of scene), then a projection of its own (which camera saw it matters: the wrist view moves
    with the arm), and the slice is the mean over the views that are present, layer-normalised. So
    the slice keeps its size and its meaning for any N: "what the cameras see", whichever of them
    are working. A view is absent when its image is all zeros, which is what the observation schema
    writes for a missing, stale or malformed one (a frame that is exactly black everywhere is
    treated the same: it shows nothing). A model with one camera uses the image encoder alone.
    """

    def __init__(self, encoder: nn.Module, num_views: int, dim: int = 512):
        super().__init__()
        self.encoder, self.num_views = encoder, num_views
        self.view_proj = nn.ModuleList(nn.Linear(dim, dim) for _ in range(num_views))
        self.norm = nn.LayerNorm(dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        b, _, h, w = image.shape
        views = image.reshape(b, self.num_views, 3, h, w)
        present = (views.abs().amax(dim=(2, 3, 4)) > 0).to(image.dtype)  # (B, V)
        feats = self.encoder(views.reshape(b * self.num_views, 3, h, w)).reshape(b, self.num_views, -1)
        proj = torch.stack([p(feats[:, k]) for k, p in enumerate(self.view_proj)], dim=1)
        pooled = (proj * present[..., None]).sum(dim=1) / present.sum(dim=1, keepdim=True).clamp(min=1.0)
        return self.norm(pooled)


def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int) -> torch.Tensor:
    """HTK mel filterbank, (n_mels, n_fft // 2 + 1)."""
    def hz_to_mel(f: float) -> float:
        return 2595.0 * math.log10(1.0 + f / 700.0)

    mels = torch.linspace(hz_to_mel(0.0), hz_to_mel(sample_rate / 2), n_mels + 2)
    hz = 700.0 * (10 ** (mels / 2595.0) - 1.0)
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    lower, center, upper = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    up = (freqs[None] - lower) / (center - lower)
    down = (upper - freqs[None]) / (upper - center)
    return torch.clamp(torch.minimum(up, down), min=0.0)


class AudioEncoder(nn.Module):
    """PCM window -> log-mel spectrogram (inside the model) -> 1-D conv over time -> 256."""

    def __init__(self, cfg: ObservationConfig, out_dim: int = 256):
        super().__init__()
        self.n_fft, self.hop = cfg.audio_n_fft, cfg.audio_hop_samples
        self.register_buffer("window", torch.hann_window(cfg.audio_n_fft), persistent=False)
        self.register_buffer("mel", mel_filterbank(cfg.audio_n_fft, cfg.audio_n_mels, cfg.audio_sample_rate_hz),
                             persistent=False)
        self.conv = nn.Sequential(
            nn.Conv1d(cfg.audio_n_mels, 64, 3, padding=1), nn.GELU(),
            nn.Conv1d(64, 64, 3, stride=2, padding=1), nn.GELU(),
        )
        self.head = nn.Sequential(nn.Linear(128, out_dim), nn.LayerNorm(out_dim))

    def log_mel(self, audio: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(audio, self.n_fft, self.hop, window=self.window, center=False, return_complex=True)
        power = spec.real.square() + spec.imag.square()
        return torch.log(self.mel @ power + 1e-6)  # (B, n_mels, frames)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        f = self.conv(self.log_mel(audio))
        return self.head(torch.cat([f.mean(dim=-1), f.amax(dim=-1)], dim=1))


def mlp(in_dim: int, hidden: int, out_dim: int, layers: int = 2, norm_out: bool = True) -> nn.Sequential:
    mods: list[nn.Module] = []
    d = in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(d, hidden), nn.GELU()]
        d = hidden
    mods.append(nn.Linear(d, out_dim))
    if norm_out:
        mods.append(nn.LayerNorm(out_dim))
    return nn.Sequential(*mods)


class ModalityEncoders(nn.Module):
    """All five encoders; returns ``{slice name: (B, dims)}`` with masked modalities zeroed."""

    def __init__(self, obs_cfg: ObservationConfig, model_cfg: ModelConfig):
        super().__init__()
        self.obs_cfg = obs_cfg
        if model_cfg.visual_backbone == "cnn":
            self.visual: nn.Module = ImageCNN(3, 512)
        else:
            self.visual = HFVisualBackbone(model_cfg.visual_backbone, 512, obs_cfg.image_height_px)
        if obs_cfg.num_cameras > 1:
            self.visual = VisualViews(self.visual, obs_cfg.num_cameras)
        self.depth = ImageCNN(1, 256, width=16)
        self.audio = AudioEncoder(obs_cfg)
        self.tactile = mlp(obs_cfg.tactile_taxels, 128, 256)
        self.proprio = mlp(obs_cfg.proprio_dim, 256, 256)

    def forward(self, obs: ObservationBatch, proprio: torch.Tensor) -> dict[str, torch.Tensor]:
        """``proprio``: the normalised, configured proprio features (B, proprio_dim).

        A modality the robot does not declare (``observation.sensors``) is not run at all: its
        slice is zeros, exactly what its always-off mask would make of it, at no cost."""
        m = obs.mask.to(proprio.dtype)
        have = self.obs_cfg.modalities
        out = {}
        for modality, encoder, x in (("visual", self.visual, obs.image), ("depth", self.depth, obs.depth),
                                     ("audio", self.audio, obs.audio), ("tactile", self.tactile, obs.tactile)):
            name, slot = MODALITY_SLICE[modality], MODALITIES.index(modality)
            if modality in have:
                out[name] = encoder(x) * m[:, slot:slot + 1]
            else:
                width = SLICES[name].stop - SLICES[name].start
                out[name] = proprio.new_zeros(proprio.shape[0], width)
        out["sensory.proprioceptive"] = self.proprio(proprio) * m[:, 4:5]
        return out
