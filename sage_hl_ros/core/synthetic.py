"""A synthetic reaching task with a learnable sensors -> command mapping.

A bright blob in the camera image (and a bump in the depth image) marks a goal; the goal's image
position and depth map linearly to a joint-space goal; the "expert" command moves the joints a fraction
(``gain``) of the way there, at most ``max_step_rad`` per step. Solving it needs vision (where is the
blob), depth and proprioception.
Used by tests, benchmarks and the synthetic main job; the MuJoCo closed loop replaces it for real.
"""

from __future__ import annotations

import numpy as np
import torch

from .config import MODALITIES, ObservationConfig
from .observation import Observation, ObservationBatch
from .system import SequenceBatch


class SyntheticReachTask:
    def __init__(self, cfg: ObservationConfig, seed: int = 0, gain: float = 0.3, max_step_rad: float = 0.2):
        self.cfg = cfg
        self.gain = gain
        self.max_step_rad = max_step_rad
        g = torch.Generator().manual_seed(seed)
        self.gen = torch.Generator().manual_seed(seed + 1)
        j = cfg.num_joints
        self.goal_map = torch.randn(3, j, generator=g) * 0.6  # (u, v, depth) -> joint goal
        self.goal_bias = torch.randn(j, generator=g) * 0.2

    # ---------------------------------------------------------------- world state -> sensing
    def sample_goal(self, n: int) -> torch.Tensor:
        """(n, 3): blob u, v in [-0.7, 0.7] and depth in [0.5, 1.5] m."""
        uv = (torch.rand(n, 2, generator=self.gen) - 0.5) * 1.4
        d = 0.5 + torch.rand(n, 1, generator=self.gen)
        return torch.cat([uv, d], 1)

    def joint_goal(self, goal: torch.Tensor) -> torch.Tensor:
        feats = torch.cat([goal[:, :2], goal[:, 2:] - 1.0], 1)
        return feats @ self.goal_map + self.goal_bias

    def expert_target(self, goal: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        step = (self.gain * (self.joint_goal(goal) - pos)).clamp(-self.max_step_rad, self.max_step_rad)
        return pos + step

    def render(self, goal: torch.Tensor, pos: torch.Tensor) -> ObservationBatch:
        c, n = self.cfg, goal.shape[0]
        image = self._blob(goal, c.image_height_px, c.image_width_px, sigma=0.08)
        colour = torch.tensor([1.0, 0.3, 0.1]).view(1, 3, 1, 1)
        image = (0.15 + 0.8 * image[:, None] * colour + 0.03 * torch.rand(n, 3, 1, 1, generator=self.gen))
        if c.num_cameras > 1:  # further cameras: view k sees the scene mirrored (odd k) in its own tint
            views = [image]
            for k in range(1, c.num_cameras):
                mirrored = goal * torch.tensor([-1.0 if k % 2 else 1.0, 1.0, 1.0])
                blob = self._blob(mirrored, c.image_height_px, c.image_width_px, sigma=0.08)
                tint = torch.tensor([0.2, 0.9, 0.3 + 0.1 * k]).view(1, 3, 1, 1)
                views.append(0.15 + 0.8 * blob[:, None] * tint + 0.03 * torch.rand(n, 3, 1, 1, generator=self.gen))
            image = torch.cat(views, 1)
        bump = self._blob(goal, c.depth_height_px, c.depth_width_px, sigma=0.1)
        depth = (2.0 - (2.0 - goal[:, 2, None, None]) * bump)[:, None] / c.depth_max_m
        t = torch.arange(c.audio_window_samples) / c.audio_sample_rate_hz
        freq = 300.0 + 400.0 * goal[:, 2:3]
        audio = 0.3 * torch.sin(2 * torch.pi * freq * t) + 0.01 * torch.randn(n, t.numel(), generator=self.gen)
        tactile = 0.05 * torch.rand(n, c.tactile_taxels, generator=self.gen)
        vel = 0.1 * torch.randn(n, c.num_joints, generator=self.gen)
        return ObservationBatch(image=image.clamp(0, 1), depth=depth.clamp(0, 1), audio=audio, tactile=tactile,
                                joint_position=pos.clone(), joint_velocity=vel,
                                mask=torch.ones(n, len(MODALITIES), dtype=torch.bool))

    @staticmethod
    def _blob(goal: torch.Tensor, h: int, w: int, sigma: float) -> torch.Tensor:
        ys = torch.linspace(-1, 1, h).view(1, h, 1)
        xs = torch.linspace(-1, 1, w).view(1, 1, w)
        u, v = goal[:, 0].view(-1, 1, 1), goal[:, 1].view(-1, 1, 1)
        return torch.exp(-((xs - u) ** 2 + (ys - v) ** 2) / (2 * sigma**2))

    # ---------------------------------------------------------------- datasets
    def sequences(self, num_sequences: int, steps: int, chunk: int = 1) -> SequenceBatch:
        """Expert rollouts of ``steps`` steps; actions are chunks of the next ``chunk`` targets."""
        j = self.cfg.num_joints
        goal = self.sample_goal(num_sequences)
        pos = self.joint_goal(goal) + torch.randn(num_sequences, j, generator=self.gen) * 0.3
        frames, actions = [], []
        for _ in range(steps):
            frames.append(self.render(goal, pos))
            chunk_targets, p = [], pos
            for _ in range(chunk):
                p = self.expert_target(goal, p)
                chunk_targets.append(p)
            actions.append(torch.stack(chunk_targets, 1))
            pos = chunk_targets[0]
        # time-major within each sequence: index b * T + t
        obs = ObservationBatch(**{
            k: torch.stack([getattr(f, k) for f in frames], 1).flatten(0, 1) for k in frames[0].__dict__
        })
        return SequenceBatch(obs=obs, action=torch.stack(actions, 1), steps=steps)

    def observation(self, goal: torch.Tensor, pos: torch.Tensor) -> Observation:
        """One raw, numpy observation as a robot would deliver it (for nodes and demos)."""
        b = self.render(goal[None], pos[None])
        views = [(b.image[0, 3 * k:3 * k + 3].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
                 for k in range(self.cfg.num_cameras)]
        return Observation(
            image=views[0], extra_views=views[1:],
            depth=(b.depth[0, 0].numpy() * self.cfg.depth_max_m).astype(np.float32),
            audio=b.audio[0].numpy(), tactile=b.tactile[0].numpy(),
            joint_position=pos.numpy().astype(np.float64), joint_velocity=b.joint_velocity[0].numpy(),
        )
