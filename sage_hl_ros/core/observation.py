"""Observation schema: per-modality arrays with stamps and a validity mask.

A raw ``Observation`` holds whatever the sensors gave (numpy, any image size). ``ObservationSchema``
checks and shapes it into an ``ObservationBatch`` of tensors. Anything missing, malformed,
non-finite or outside the configured plausible range (``ObservationConfig.input_ranges``) is
masked with a reason, never raised: a robot with a dead microphone keeps working, and a corrupt
1e30 reading cannot overflow the encoders. Training and runtime share this schema, so they mask
the same inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .config import MODALITIES, InputRanges, ObservationConfig, range_problem


@dataclass
class Observation:
    """One time step of raw sensing. Arrays may be None (modality absent)."""

    image: np.ndarray | None = None  # (H, W, 3) uint8 RGB
    depth: np.ndarray | None = None  # (H, W) float32 metres
    audio: np.ndarray | None = None  # (N,) float32 PCM in [-1, 1]
    tactile: np.ndarray | None = None  # (taxels,) float32
    joint_position: np.ndarray | None = None  # (J,) rad, configured joint order
    joint_velocity: np.ndarray | None = None  # (J,) rad/s
    stamps_s: dict[str, float] = field(default_factory=dict)  # header stamp per modality


@dataclass
class ObservationBatch:
    """Model-ready tensors. Masked entries are zeros; ``mask[:, i]`` is MODALITIES[i] present."""

    image: torch.Tensor  # (B, 3, H, W) float [0, 1]
    depth: torch.Tensor  # (B, 1, H, W) float, metres / depth_max_m, clipped to [0, 1]
    audio: torch.Tensor  # (B, N) float
    tactile: torch.Tensor  # (B, T) float
    joint_position: torch.Tensor  # (B, J)
    joint_velocity: torch.Tensor  # (B, J)
    mask: torch.Tensor  # (B, 5) bool

    @property
    def batch_size(self) -> int:
        return self.mask.shape[0]

    def to(self, device: torch.device | str) -> ObservationBatch:
        return ObservationBatch(**{k: v.to(device) for k, v in self.__dict__.items()})

    def masked(self, modality: str) -> ObservationBatch:
        """A copy with one modality marked missing (zeros and mask bit cleared)."""
        out = ObservationBatch(**dict(self.__dict__))
        i = MODALITIES.index(modality)
        out.mask = self.mask.clone()
        out.mask[:, i] = False
        attrs = {"visual": ("image",), "depth": ("depth",), "audio": ("audio",), "tactile": ("tactile",),
                 "proprio": ("joint_position", "joint_velocity")}[modality]
        for name in attrs:
            setattr(out, name, torch.zeros_like(getattr(self, name)))
        return out

    @staticmethod
    def cat(batches: list[ObservationBatch]) -> ObservationBatch:
        keys = batches[0].__dict__.keys()
        return ObservationBatch(**{k: torch.cat([getattr(b, k) for b in batches]) for k in keys})

    def index(self, idx: torch.Tensor | slice) -> ObservationBatch:
        return ObservationBatch(**{k: v[idx] for k, v in self.__dict__.items()})


class ObservationSchema:
    """Turns raw observations into batches, masking what is missing or invalid."""

    def __init__(self, cfg: ObservationConfig):
        self.cfg = cfg

    def empty(self, batch: int = 1) -> ObservationBatch:
        c = self.cfg
        return ObservationBatch(
            image=torch.zeros(batch, 3, c.image_height_px, c.image_width_px),
            depth=torch.zeros(batch, 1, c.depth_height_px, c.depth_width_px),
            audio=torch.zeros(batch, c.audio_window_samples),
            tactile=torch.zeros(batch, c.tactile_taxels),
            joint_position=torch.zeros(batch, c.num_joints),
            joint_velocity=torch.zeros(batch, c.num_joints),
            mask=torch.zeros(batch, len(MODALITIES), dtype=torch.bool),
        )

    def prepare(self, obs: Observation) -> tuple[ObservationBatch, dict[str, str]]:
        """Batch of one plus ``{modality: reason}`` for every modality that was masked."""
        c = self.cfg
        r = c.input_ranges
        out = self.empty(1)
        problems: dict[str, str] = {}

        image = _check(obs.image, "visual", problems, ndim=3, channels=3)
        if image is not None:
            t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
            if image.dtype == np.uint8:
                t = t / 255.0
            out.image = _resize(t, c.image_height_px, c.image_width_px).clamp_(0.0, 1.0)
            out.mask[0, 0] = True

        depth = _check(obs.depth, "depth", problems, ndim=2, allow_nonfinite=True)
        if depth is not None:
            d = valid_depth_m(depth, r)
            t = torch.from_numpy(d)[None, None] / c.depth_max_m
            out.depth = _resize(t, c.depth_height_px, c.depth_width_px).clamp_(0.0, 1.0)
            out.mask[0, 1] = True

        audio = _check(obs.audio, "audio", problems, ndim=1, abs_max=r.audio_abs_max)
        if audio is not None:
            a = torch.from_numpy(audio.astype(np.float32, copy=False))
            n = c.audio_window_samples
            a = a[-n:] if a.numel() >= n else F.pad(a, (n - a.numel(), 0))
            out.audio = a[None].clamp(-1.0, 1.0)
            out.mask[0, 2] = True

        tactile = _check(obs.tactile, "tactile", problems, ndim=1, size=c.tactile_taxels, abs_max=r.tactile_abs_max)
        if tactile is not None:
            out.tactile = torch.from_numpy(tactile.astype(np.float32, copy=False))[None]
            out.mask[0, 3] = True

        pos = _check(obs.joint_position, "proprio", problems, ndim=1, size=c.num_joints,
                     abs_max=r.joint_position_abs_max_rad, what="joint position", unit=" rad")
        vel = obs.joint_velocity
        if pos is not None:
            if vel is None or vel.shape != pos.shape:
                vel = np.zeros_like(pos)  # no velocity reading: zeros, as for a JointState without one
            else:
                problem = range_problem(vel, r.joint_velocity_abs_max_rad_s, "joint velocity", " rad/s")
                if problem:  # a corrupt velocity makes the whole reading suspect (the decoder agrees)
                    problems["proprio"] = problem
                    pos = None
        if pos is not None:
            out.joint_position = torch.from_numpy(pos.astype(np.float32, copy=False))[None]
            out.joint_velocity = torch.from_numpy(vel.astype(np.float32, copy=False))[None]
            out.mask[0, 4] = True
        return out, problems


def valid_depth_m(depth: np.ndarray, ranges: InputRanges) -> np.ndarray:
    """Float32 depth with invalid pixels (NaN, inf, outside the valid range) set to 0 (REP 118 style).

    Depth images routinely carry invalid pixels, so they zero the pixel, never mask the image.
    """
    d = depth.astype(np.float32, copy=False)
    inside = (d >= ranges.depth_valid_min_m) & (d <= ranges.depth_valid_max_m)  # NaN compares False
    return np.where(inside, d, np.float32(0.0))


def _check(arr: np.ndarray | None, modality: str, problems: dict[str, str], *, ndim: int,
           channels: int | None = None, size: int | None = None, allow_nonfinite: bool = False,
           abs_max: float | None = None, what: str = "", unit: str = ""):
    if arr is None:
        problems[modality] = "missing"
        return None
    if not isinstance(arr, np.ndarray) or arr.ndim != ndim or arr.size == 0:
        shape = getattr(arr, "shape", type(arr).__name__)
        problems[modality] = f"expected a {ndim}-D array, got {shape}"
        return None
    if channels is not None and arr.shape[-1] != channels:
        problems[modality] = f"expected {channels} channels, got shape {arr.shape}"
        return None
    if size is not None and arr.shape[0] != size:
        problems[modality] = f"expected {size} values, got {arr.shape[0]}"
        return None
    if abs_max is not None:
        problem = range_problem(arr, abs_max, what or modality, unit)
        if problem:
            problems[modality] = problem
            return None
    elif not allow_nonfinite and arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        problems[modality] = "non-finite values"
        return None
    return arr


def _resize(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    if t.shape[-2:] == (h, w):
        return t
    return F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False, antialias=True)


def proprio_features(cfg: ObservationConfig, joint_position: torch.Tensor, joint_velocity: torch.Tensor):
    """The configured proprioceptive policy input (positions, optionally velocities)."""
    parts = {"position": joint_position, "velocity": joint_velocity}
    return torch.cat([parts[f] for f in cfg.proprio_features], dim=-1)
