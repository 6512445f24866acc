"""Observation schema: per-modality arrays with stamps and a validity mask.

A raw ``Observation`` holds whatever the sensors gave (numpy, any image size). ``ObservationSchema``
checks and shapes it in numpy (``prepare_arrays``: the batch-first float32/bool arrays named as the
exported H path's observation inputs, ``ARRAY_FIELDS``); ``prepare`` wraps exactly those arrays as
an ``ObservationBatch`` of tensors (``torch.from_numpy``), so training, the torch backend and the
torch-free ONNX Runtime backend see the same numbers. Images are resized by ``resize_aa``, a numpy
port of torch's antialiased bilinear ``F.interpolate``. Anything missing, malformed,
non-finite or outside the configured plausible range (``ObservationConfig.input_ranges``) is
masked with a reason, never raised: a robot with a dead microphone keeps working, and a corrupt
1e30 reading cannot overflow the encoders. Training and runtime share this schema, so they mask
the same inputs. torch is imported only by the tensor functions (``prepare``, ``empty``, the
``ObservationBatch`` methods, ``proprio_features``): the numpy path runs in a torch-free process.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING

import numpy as np

from .config import MODALITIES, InputRanges, ObservationConfig, range_problem

if TYPE_CHECKING:
    import torch


# Observation field of each optional sensor's schema modality.
_SENSOR_FIELDS = (("image", "visual"), ("depth", "depth"), ("audio", "audio"), ("tactile", "tactile"))


@dataclass
class Observation:
    """One time step of raw sensing. Arrays may be None (modality absent)."""

    image: np.ndarray | None = None  # (H, W, 3) uint8 RGB, the first camera
    # The further cameras' images (views 1.. of ``num_cameras``, contract order); None = missing.
    extra_views: list[np.ndarray | None] = field(default_factory=list)
    depth: np.ndarray | None = None  # (H, W) float32 metres
    audio: np.ndarray | None = None  # (N,) float32 PCM in [-1, 1]
    tactile: np.ndarray | None = None  # (taxels,) float32
    joint_position: np.ndarray | None = None  # (J,) rad, configured joint order
    joint_velocity: np.ndarray | None = None  # (J,) rad/s
    stamps_s: dict[str, float] = field(default_factory=dict)  # header stamp per modality


@dataclass
class ObservationBatch:
    """Model-ready tensors. Masked entries are zeros; ``mask[:, i]`` is MODALITIES[i] present."""

    image: torch.Tensor  # (B, 3 V, H, W) float [0, 1]: V views stacked on channels, an absent view all zeros
    depth: torch.Tensor  # (B, 1, H, W) float, metres / depth_max_m, clipped to [0, 1]
    audio: torch.Tensor  # (B, N) float
    tactile: torch.Tensor  # (B, T) float
    joint_position: torch.Tensor  # (B, J)
    joint_velocity: torch.Tensor  # (B, J)
    mask: torch.Tensor  # (B, 5) bool

    @property
    def batch_size(self) -> int:
        return self.mask.shape[0]

    @staticmethod
    def from_arrays(arrays: dict[str, np.ndarray]) -> ObservationBatch:
        """Tensors sharing memory with ``prepare_arrays``' output (no copy, no other arithmetic)."""
        import torch

        return ObservationBatch(**{name: torch.from_numpy(arrays[name]) for name in ARRAY_FIELDS})

    def to(self, device: torch.device | str) -> ObservationBatch:
        return ObservationBatch(**{k: v.to(device) for k, v in self.__dict__.items()})

    def masked(self, modality: str) -> ObservationBatch:
        """A copy with one modality marked missing (zeros and mask bit cleared)."""
        import torch

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
        import torch

        keys = batches[0].__dict__.keys()
        return ObservationBatch(**{k: torch.cat([getattr(b, k) for b in batches]) for k in keys})

    def index(self, idx: torch.Tensor | slice) -> ObservationBatch:
        return ObservationBatch(**{k: v[idx] for k, v in self.__dict__.items()})


# The model-ready arrays by name, in ObservationBatch field order: also the exported H path's
# observation inputs (deploy/manifest.py OBSERVATION_INPUTS).
ARRAY_FIELDS = tuple(f.name for f in fields(ObservationBatch))


class ObservationSchema:
    """Turns raw observations into batches, masking what is missing or invalid."""

    def __init__(self, cfg: ObservationConfig):
        self.cfg = cfg

    def empty_arrays(self, batch: int = 1) -> dict[str, np.ndarray]:
        """All-masked arrays (zeros, mask False), batch first."""
        c = self.cfg
        f32 = np.float32
        return {
            "image": np.zeros((batch, 3 * c.num_cameras, c.image_height_px, c.image_width_px), f32),
            "depth": np.zeros((batch, 1, c.depth_height_px, c.depth_width_px), f32),
            "audio": np.zeros((batch, c.audio_window_samples), f32),
            "tactile": np.zeros((batch, c.tactile_taxels), f32),
            "joint_position": np.zeros((batch, c.num_joints), f32),
            "joint_velocity": np.zeros((batch, c.num_joints), f32),
            "mask": np.zeros((batch, len(MODALITIES)), bool),
        }

    def empty(self, batch: int = 1) -> ObservationBatch:
        return ObservationBatch.from_arrays(self.empty_arrays(batch))

    def prepare(self, obs: Observation) -> tuple[ObservationBatch, dict[str, str]]:
        """Batch of one (tensors over ``prepare_arrays``' arrays) plus ``{modality: reason}``."""
        arrays, problems = self.prepare_arrays(obs)
        return ObservationBatch.from_arrays(arrays), problems

    def prepare_arrays(self, obs: Observation) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Arrays of a batch of one (``ARRAY_FIELDS``) plus ``{modality: reason}`` for every
        declared modality that was masked (``observation.sensors`` leaves the others out: their
        arrays stay zeros, mask bits off). The arrays never share memory with ``obs``.

        Views: camera k fills channels 3k..3k+2 of ``image``; one that is missing or malformed is
        left all zeros with its reason under ``view_key(k)``, and the visual mask bit is on while
        any view is usable (the encoder leaves an all-zero view out: encoders.VisualViews)."""
        c = self.cfg
        r = c.input_ranges
        out = self.empty_arrays(1)
        problems: dict[str, str] = {}
        have = c.modalities  # an undeclared sensor's reading is dropped here: never encoded
        obs = replace(obs, **{f: None for f, m in _SENSOR_FIELDS if m not in have})
        if "visual" not in have:
            obs = replace(obs, extra_views=[])

        views = [obs.image, *obs.extra_views[:c.num_cameras - 1]]
        views += [None] * (c.num_cameras - len(views))
        for k, view in enumerate(views):
            image = _check(view, view_key(k), problems, ndim=3, channels=3)
            if image is not None:
                x = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
                if image.dtype == np.uint8:
                    x /= np.float32(255.0)
                out["image"][0, 3 * k:3 * k + 3] = np.clip(resize_aa(x, c.image_height_px, c.image_width_px),
                                                           0.0, 1.0)
                out["mask"][0, 0] = True  # visual: at least one view

        depth = _check(obs.depth, "depth", problems, ndim=2, allow_nonfinite=True)
        if depth is not None:
            d = valid_depth_m(depth, r) / np.float32(c.depth_max_m)
            out["depth"][0, 0] = np.clip(resize_aa(d, c.depth_height_px, c.depth_width_px), 0.0, 1.0)
            out["mask"][0, 1] = True

        audio = _check(obs.audio, "audio", problems, ndim=1, abs_max=r.audio_abs_max)
        if audio is not None:
            n = c.audio_window_samples
            a = audio[-n:]  # shorter windows are left-padded with the zeros already there
            out["audio"][0, n - a.shape[0]:] = np.clip(a, -1.0, 1.0)
            out["mask"][0, 2] = True

        tactile = _check(obs.tactile, "tactile", problems, ndim=1, size=c.tactile_taxels, abs_max=r.tactile_abs_max)
        if tactile is not None:
            out["tactile"][0] = tactile
            out["mask"][0, 3] = True

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
            out["joint_position"][0] = pos
            out["joint_velocity"][0] = vel
            out["mask"][0, 4] = True
        return out, {m: why for m, why in problems.items() if m.split(":")[0] in have}


def view_key(k: int) -> str:
    """The schema's problem key of view ``k``: ``visual`` for the first camera, ``visual:<k>`` after it."""
    return "visual" if k == 0 else f"visual:{k}"


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


def resize_aa(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """Antialiased bilinear resize of the last two axes of a float32 array: the numbers of
    ``F.interpolate(x, (h, w), mode="bilinear", align_corners=False, antialias=True)``.

    Separable: ``rows @ x @ cols.T`` with the weight matrices of ``aa_weights``. Same size: ``x``.
    """
    if x.shape[-2:] == (h, w):
        return x
    rows, cols = aa_weights(x.shape[-2], h), aa_weights(x.shape[-1], w)
    return np.matmul(np.matmul(rows, x), cols.T)


@functools.lru_cache(maxsize=64)
def aa_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) float32 resampling matrix of torch's (and PIL's) antialiased bilinear
    filter: scale = in/out, support = max(scale, 1), a triangle filter stretched by the support
    (so a downscale averages over the whole source footprint), each row normalised to sum 1.
    Cached per size pair; read-only."""
    if in_size < 1 or out_size < 1:
        raise ValueError(f"resize sizes must be >= 1, got {in_size} -> {out_size}")
    scale = in_size / out_size
    support = max(scale, 1.0)  # bilinear: interp_size 2, half of it times the scale when shrinking
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    out = np.zeros((out_size, in_size), np.float64)
    for i in range(out_size):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)  # int(): C truncation, as in torch's kernel
        hi = min(int(center + support + 0.5), in_size)
        j = np.arange(lo, hi)
        wts = np.maximum(0.0, 1.0 - np.abs((j - center + 0.5) * invscale))
        total = wts.sum()
        out[i, lo:hi] = wts / total if total != 0 else wts
    out = out.astype(np.float32)
    out.flags.writeable = False
    return out


def proprio_features(cfg: ObservationConfig, joint_position: torch.Tensor, joint_velocity: torch.Tensor):
    """The configured proprioceptive policy input (positions, optionally velocities)."""
    import torch

    parts = {"position": joint_position, "velocity": joint_velocity}
    return torch.cat([parts[f] for f in cfg.proprio_features], dim=-1)
