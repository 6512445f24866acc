"""The basic optimisation loop and held-out evaluation through the deployment path.

Evaluation deliberately uses ``encode``/``act`` step by step with temporal state carried, exactly as
the nodes run the model, rather than the batched training forward pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..core.system import SageHL, SequenceBatch


@dataclass
class FitResult:
    steps: int
    seconds: float
    samples: int  # observation steps consumed (sequences x steps per sequence)
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else float("nan")


def make_optimizer(model: SageHL, lr: float, weight_decay: float = 1e-4, **adamw: object) -> torch.optim.Optimizer:
    """AdamW without weight decay on biases and norms; ``adamw`` passes options (e.g. ``fused=True``)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, **adamw)


def fit(model: SageHL, next_batch: Callable[[int], SequenceBatch], steps: int, lr: float = 1e-3,
        grad_clip: float = 1.0, optimizer: torch.optim.Optimizer | None = None,
        on_step: Callable[[int, dict[str, float]], None] | None = None) -> FitResult:
    """Run ``steps`` optimiser steps on batches from ``next_batch(step)``; returns loss history."""
    model.train()
    opt = optimizer or make_optimizer(model, lr)
    if steps >= 20:  # warm-up then anneal; OneCycleLR needs a few steps in each phase
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    else:  # a handful of steps (smoke runs): constant rate
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    result = FitResult(steps=0, seconds=0.0, samples=0)
    start = time.perf_counter()
    for step in range(steps):
        batch = next_batch(step)
        terms = model.losses(batch)
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        sched.step()
        logged = {k: float(v.detach()) for k, v in terms.items()}
        result.history.append(logged)
        result.samples += batch.obs.batch_size
        if on_step is not None:
            on_step(step, logged)
    result.steps = steps
    result.seconds = time.perf_counter() - start
    model.eval()
    return result


@torch.inference_mode()
def action_error(model: SageHL, batch: SequenceBatch) -> float:
    """Mean absolute error (rad) of the first predicted target vs the recorded one, deployment path."""
    was_training = model.training
    model.eval()
    b, t = batch.num_sequences, batch.steps
    state = model.initial_state(b)
    errors = []
    idx = torch.arange(b) * t
    for step in range(t):
        obs = batch.obs.index(idx + step)
        z, _, state = model.encode(obs, state)
        pred = model.act(z, obs.joint_position, obs.joint_velocity)[:, 0]
        errors.append((pred - batch.action[:, step, 0]).abs().mean())
    model.train(was_training)
    return float(torch.stack(errors).mean())
