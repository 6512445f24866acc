"""The objectives of the three phases, one optimiser step's loss each. Pure torch, no I/O.

wake   ``SageHL.losses`` on recorded sequences: behaviour cloning of the recorded (teacher-
       preferred) commands through the whole stack, compression (reconstruction of the stop-
       gradient context from z, KL), physical.dynamics -> next proprioception, temporal.predictive
       -> next sensory embedding (stop-gradient target), semantic agreement.
sleep  the same objectives on augmented replay + new sequences, plus distillation: MSE between the
       student's normalised actions and a teacher's (an EMA of the student that starts from the
       previous model) on the same inputs, weighted towards replayed (earlier) experience.
dream  every recorded sequence with a generated twin (``augment.dream_situations``: dropped, failed,
       out-of-range sensing), both trained with the recorded labels, and the twin's actions held to
       the clean ones (consistency); plus multi-step imagined rollouts of the learned predictive model
       (``imagine``) with objectives that keep actions smooth, inside the recorded range / joint limits,
       and consistent with the clean action on the real next step. Rollouts are off by default
       (``dream.rollout_horizon`` 0): they are only as good as the temporal.predictive read-out, whose
       held-out 1 - R^2 on the bench task is above 1 (worse than predicting the mean), and every
       weighting of their objectives tried there cost held-out accuracy.

Each loss function returns ``(loss, logs, per_sequence_error)``; the per-sequence behaviour-
cloning error feeds the replay priorities.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..core.config import MODALITIES
from ..core.layout import SLICES
from ..core.system import SageHL, SequenceBatch
from .augment import DROPPED, FAILED, PERTURBED, dream_situations
from .config import DreamConfig, SleepConfig

_SENSORY = ("sensory.visual", "sensory.depth", "sensory.audio", "sensory.tactile")


@contextmanager
def capture_forward(model: SageHL) -> Iterator[dict]:
    """Keep the outputs of ``model.forward_sequence`` while ``model.losses`` runs, so the extra
    objectives reuse them instead of running the stack twice."""
    store: dict = {}
    original = model.forward_sequence

    def wrapped(batch: SequenceBatch) -> dict:
        out = original(batch)
        store["out"] = out
        return out

    model.forward_sequence = wrapped  # instance attribute shadows the method
    try:
        yield store
    finally:
        del model.forward_sequence


def target_norm(model: SageHL, batch: SequenceBatch) -> torch.Tensor:
    """The recorded targets as the L-module's normalised action, (B*T, K, J)."""
    b, t = batch.num_sequences, batch.steps
    k, j = batch.action.shape[2:]
    targets = batch.action.reshape(b * t, k, j)
    return model.normalizer.normalize("action", model._from_targets(targets, batch.obs.joint_position))


def per_sequence_error(model: SageHL, batch: SequenceBatch, action_norm: torch.Tensor) -> torch.Tensor:
    """Mean squared normalised BC error of each sequence, (B,) (replay priorities)."""
    err = (action_norm.detach() - target_norm(model, batch)).square().mean(dim=(1, 2))
    return err.view(batch.num_sequences, batch.steps).mean(1)


def _logs(terms: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v.detach()) for k, v in terms.items()}


def wake_loss(model: SageHL, batch: SequenceBatch) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
    with capture_forward(model) as cap:
        terms = model.losses(batch)
    return terms["total"], _logs(terms), per_sequence_error(model, batch, cap["out"]["action_norm"])


@torch.no_grad()
def teacher_actions(teacher: SageHL, batch: SequenceBatch) -> torch.Tensor:
    return teacher.forward_sequence(batch)["action_norm"]


def sleep_loss(model: SageHL, teacher: SageHL | None, batch: SequenceBatch, replayed: torch.Tensor,
               cfg: SleepConfig) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
    """``batch`` already augmented; ``replayed`` (B,) marks sequences from earlier experience."""
    with capture_forward(model) as cap:
        terms = model.losses(batch)
    student = cap["out"]["action_norm"]
    loss = terms["total"]
    logs = _logs(terms)
    if teacher is not None and cfg.distill_weight > 0:
        t = teacher_actions(teacher, batch)
        w = torch.where(replayed, 1.0, cfg.distill_new).to(student.dtype).repeat_interleave(batch.steps)
        per = (student - t).square().mean(dim=(1, 2))
        distill = (per * w).sum() / w.sum().clamp_min(1e-6)
        loss = loss + cfg.distill_weight * distill
        logs["distill"] = float(distill.detach())
    logs["replayed"] = float(replayed.float().mean())
    logs["total"] = float(loss.detach())
    return loss, logs, per_sequence_error(model, batch, student)


# ----------------------------------------------------------------------------- dream


@dataclass
class Imagined:
    action_norm: torch.Tensor  # (B, H, K, J) normalised L-module outputs (unclipped)
    targets: torch.Tensor  # (B, H, J) absolute first-chunk targets, unclipped
    positions: torch.Tensor  # (B, H + 1, J) imagined joint positions (start + clipped targets)


def imagine(model: SageHL, batch: SequenceBatch, horizon: int, rate_hz: float,
            joint_shift: torch.Tensor | None = None, controller_only: bool = False) -> Imagined:
    """Roll the learned model forward ``horizon`` H steps from each sequence's first real step.

    Step k: context from the (real at k = 0, imagined after) sensory embeddings -> H-module ->
    compressor -> L-module -> joint targets. The next step's exteroceptive embeddings are the
    temporal.predictive read-out (the learned model of what the sensors will show; detached: the
    world model is not trained to make dreams easy); its joint positions are the commanded targets
    (clipped to the recorded range, as at deployment: a position-controlled arm tracks them), encoded
    by the real proprioceptive encoder. The modality mask of the start step is kept throughout.
    ``controller_only``: the latents are detached, so objectives on the rollout train the L-module
    (the controller acting in imagined states), not perception or the world model.
    """
    t = batch.steps
    idx = torch.arange(batch.num_sequences, device=batch.action.device) * t
    obs = batch.obs.index(idx)
    if joint_shift is not None:
        obs.joint_position = obs.joint_position + joint_shift
    pos, mask = obs.joint_position, obs.mask
    sensory, proprio = model._sensory(obs)
    state = model.initial_state(obs.batch_size)
    m = mask.to(pos.dtype)
    actions, targets, positions = [], [], [pos]
    for _ in range(horizon):
        ctx, state = model.context_heads(sensory, mask, state)
        code, _ = model.compress(ctx)
        a = model.l_module(code.z.detach() if controller_only else code.z, proprio)
        actions.append(a)
        raw = model.normalizer.denormalize("action", a)[:, 0]
        targets.append(pos + raw if model.cfg.model.action_mode == "delta" else raw)
        new_pos = model._to_targets(a, pos)[:, 0]
        pred = model.context_heads.readout_predictive(ctx.vector[:, SLICES["temporal.predictive"]]).detach()
        proprio = model._proprio(new_pos, (new_pos - pos) * rate_hz)
        sensory = {name: pred[:, SLICES[name]] * m[:, i:i + 1] for i, name in enumerate(_SENSORY)}
        sensory["sensory.proprioceptive"] = model.encoders.proprio(proprio) * m[:, 4:5]
        pos = new_pos
        positions.append(pos)
    return Imagined(torch.stack(actions, 1), torch.stack(targets, 1), torch.stack(positions, 1))


def action_limit_violation(model: SageHL, action_norm: torch.Tensor) -> torch.Tensor:
    """Per-element distance (normalised units) outside the recorded action range; zeros if the
    normaliser has no range (never fitted)."""
    n = model.normalizer
    lo, hi = n.normalize("action", n.action_min), n.normalize("action", n.action_max)
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        return torch.zeros_like(action_norm)
    return F.relu(action_norm - hi) + F.relu(lo - action_norm)


def joint_limit_violation(targets: torch.Tensor, lower: torch.Tensor | None, upper: torch.Tensor | None
                          ) -> torch.Tensor:
    if lower is None or upper is None:
        return torch.zeros_like(targets)
    return F.relu(targets - upper) + F.relu(lower - targets)


def smoothness(action_norm: torch.Tensor) -> torch.Tensor:
    """Mean squared second difference over imagined steps (jerk of the joint targets, normalised)."""
    a = action_norm[:, :, 0]
    if a.shape[1] >= 3:
        return a.diff(n=2, dim=1).square().mean()
    if a.shape[1] == 2:
        return a.diff(dim=1).square().mean()
    return a.new_zeros(())


def dream_loss(model: SageHL, batch: SequenceBatch, cfg: DreamConfig, gen: torch.Generator, rate_hz: float,
               depth_max_m: float = 5.0, joint_lower: torch.Tensor | None = None,
               joint_upper: torch.Tensor | None = None, weights: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
    """``batch`` is clean (recorded) data; its dreamt twin is generated here (on the CPU generator).

    Clean and dreamt twins both train on ``SageHL.losses`` (the recorded labels hold for both: only
    the sensing changed), the twins' weighted by ``dream_weight``, plus consistency: the dreamt
    actions match the (stop-gradient) actions on the clean twin. The clean twin in every batch and a
    dream weight below 1 limit how much clean accuracy the robustness costs (measured: learning to
    act without the camera pulls the shared representation away from the clean optimum).
    """
    from ..bags.bag_dataset import concat_sequences

    device = batch.action.device
    n = model.normalizer
    stats = (n.tactile_mean.detach().cpu(), n.tactile_std.detach().cpu())
    dreamt, situation = dream_situations(batch.to("cpu"), cfg, gen, depth_max_m, weights, stats)
    b, t = batch.num_sequences, batch.steps
    j = batch.action.shape[-1]
    shift = None
    perturbed_start = torch.rand(b, generator=gen) < cfg.joint_perturb_prob
    if cfg.rollout_horizon > 0 and bool(perturbed_start.any()):
        n = model.normalizer
        span = (n.joint_position_max - n.joint_position_min).cpu()
        if not torch.isfinite(span).all():
            span = 4 * n.joint_position_std.cpu()
        sign = torch.where(torch.rand(b, j, generator=gen) < 0.5, -1.0, 1.0)
        shift = sign * torch.rand(b, j, generator=gen) * cfg.joint_perturb_fraction * span
        shift = (shift * perturbed_start[:, None]).to(device)
    dreamt = dreamt.to(device)
    situation, perturbed_start = situation.to(device), perturbed_start.to(device)

    if cfg.dream_weight == 1.0:  # one pass over both twins
        with capture_forward(model) as cap:
            terms = model.losses(concat_sequences([batch, dreamt]))
        out = cap["out"]["action_norm"]
        clean, dream = out[:b * t], out[b * t:]
        loss = terms["total"]
        logs = _logs(terms)
    else:
        with capture_forward(model) as cap:
            terms = model.losses(batch)
        clean = cap["out"]["action_norm"]
        with capture_forward(model) as cap:
            dterms = model.losses(dreamt)
        dream = cap["out"]["action_norm"]
        loss = terms["total"] + cfg.dream_weight * dterms["total"]
        logs = _logs(terms)
        logs.update({f"dreamt_{k}": float(v.detach()) for k, v in dterms.items()})
    anchor = clean.detach()
    if cfg.consistency_weight > 0:
        consistency = F.mse_loss(dream, anchor)
        loss = loss + cfg.consistency_weight * consistency
        logs["consistency"] = float(consistency.detach())

    if cfg.rollout_horizon > 0:
        im = imagine(model, dreamt, cfg.rollout_horizon, rate_hz, shift, controller_only=True)
        smooth = smoothness(im.action_norm)
        limit = (action_limit_violation(model, im.action_norm).square().mean()
                 + joint_limit_violation(im.targets, joint_lower, joint_upper).square().mean())
        loss = loss + cfg.smooth_weight * smooth + cfg.limit_weight * limit
        logs["rollout_smooth"] = float(smooth.detach())
        logs["rollout_limit"] = float(limit.detach())
        if t >= 2 and cfg.rollout_horizon >= 2 and cfg.rollout_consistency_weight > 0:
            real_next = anchor.view(b, t, *anchor.shape[1:])[:, 1]
            keep = (~perturbed_start).to(out.dtype)
            per = (im.action_norm[:, 1] - real_next).square().mean(dim=(1, 2))
            rc = (per * keep).sum() / keep.sum().clamp_min(1.0)
            loss = loss + cfg.rollout_consistency_weight * rc
            logs["rollout_consistency"] = float(rc.detach())
    for name, code in (("dropped", DROPPED), ("failed", FAILED), ("perturbed", PERTURBED)):
        logs[f"share_{name}"] = float((situation == code).float().mean())
    logs["total"] = float(loss.detach())
    return loss, logs, per_sequence_error(model, dreamt, dream)


@torch.no_grad()
def modality_weights(model: SageHL, batch: SequenceBatch, floor: float = 0.1) -> torch.Tensor:
    """How much losing each exteroceptive modality hurts now: BC error with it masked minus the
    clean error (training forward, eval mode), floored at ``floor`` x the clean error; (4,) summing to 1
    (0 for a modality not in ``observation.sensors``)."""
    from .augment import drop_modality
    from .config import EXTEROCEPTIVE

    was = model.training
    model.eval()

    def err(b: SequenceBatch) -> float:
        return float(per_sequence_error(model, b, model.forward_sequence(b)["action_norm"]).mean())

    clean = err(batch)
    have = model.cfg.observation.modalities  # a sensor the robot lacks is never dreamt away (0)
    w = torch.tensor([max(err(drop_modality(batch, m)) - clean, 0.0) + floor * clean if m in have else 0.0
                      for m in EXTEROCEPTIVE])
    model.train(was)
    return w / w.sum().clamp_min(1e-12)


# ----------------------------------------------------------------------------- teacher


def make_teacher(model: SageHL) -> SageHL:
    """A frozen copy (eval mode: deterministic bottleneck) used as the distillation teacher."""
    teacher = copy.deepcopy(model)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: SageHL, student: SageHL, decay: float) -> None:
    if decay >= 1.0:
        return
    for pt, ps in zip(teacher.parameters(), student.parameters(), strict=True):
        pt.lerp_(ps.detach(), 1.0 - decay)
    for (name, bt), (_, bs) in zip(teacher.named_buffers(), student.named_buffers(), strict=True):
        if not name.startswith("normalizer."):
            bt.copy_(bs)


def modality_index(name: str) -> int:
    return MODALITIES.index(name)
