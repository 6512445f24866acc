"""Observation transforms for the sleep phase (augmentation) and the dream phase (edge cases).

Everything works on a ``SequenceBatch`` (B sequences x T steps, observations at ``b * T + t``),
draws its randomness from the caller's ``torch.Generator`` (so a resumed run repeats it exactly),
and returns new tensors: the input batch is never modified. Parameters are drawn per sequence and
held over its steps (a lighting change lasts longer than one frame). Masked modalities stay
zeros; a dropped modality becomes zeros with its mask bit cleared, exactly as the runtime and
``ObservationBatch.masked`` present a missing sensor. Proprioception is never dropped here: the
L-module always has joint states at runtime (the control node rejects commands without them).
Labels (absolute joint targets) are never changed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.config import MODALITIES
from ..core.observation import ObservationBatch
from ..core.system import SequenceBatch
from .config import EXTEROCEPTIVE, AugmentConfig, DreamConfig

_FIELDS = {"visual": ("image",), "depth": ("depth",), "audio": ("audio",), "tactile": ("tactile",),
           "proprio": ("joint_position", "joint_velocity")}
# Dream situation codes (per sequence), reported in the training log.
CLEAN, DROPPED, FAILED, PERTURBED = 0, 1, 2, 3


def _uniform(gen: torch.Generator, shape, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=gen)


def _rows(per_seq: torch.Tensor, steps: int) -> torch.Tensor:
    """(B, ...) per-sequence values -> (B*T, ...) per-step rows."""
    return per_seq.repeat_interleave(steps, dim=0)


def _copy(obs: ObservationBatch) -> ObservationBatch:
    return ObservationBatch(**{k: v.clone() for k, v in obs.__dict__.items()})


def _expand(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return x.view(-1, *([1] * (like.dim() - 1)))


def drop_rows(obs: ObservationBatch, rows: torch.Tensor, modality: str) -> None:
    """In place: zero ``modality`` and clear its mask bit where ``rows`` (B*T bool) is true."""
    i = MODALITIES.index(modality)
    obs.mask[:, i] &= ~rows
    for name in _FIELDS[modality]:
        t = getattr(obs, name)
        t.mul_(_expand((~rows).to(t.dtype), t))


def _views_seen(image: torch.Tensor) -> torch.Tensor:
    """(N, 3 V, 1, 1): 1 on the channels of each view that is not all zeros (a present camera).
    Colour changes must keep an absent view all zeros: that is how the encoder knows it is absent."""
    n, c, h, w = image.shape
    seen = image.reshape(n, c // 3, 3 * h * w).abs().amax(dim=2) > 0
    return seen.repeat_interleave(3, dim=1).to(image.dtype)[:, :, None, None]


def _present(obs: ObservationBatch, modality: str, like: torch.Tensor) -> torch.Tensor:
    return _expand(obs.mask[:, MODALITIES.index(modality)].to(like.dtype), like)


def _crop_resize(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _stale(obs: ObservationBatch, rows_seq: torch.Tensor, b: int, t: int, names: tuple[str, ...]) -> None:
    """In place: in the chosen sequences, steps 1.. show the previous step's data (one step late)."""
    if t < 2 or not bool(rows_seq.any()):
        return
    for name in names:
        x = getattr(obs, name).view(b, t, *getattr(obs, name).shape[1:])
        lagged = torch.cat([x[:, :1], x[:, :-1]], 1)
        x[rows_seq] = lagged[rows_seq]


def augment(batch: SequenceBatch, cfg: AugmentConfig, gen: torch.Generator,
            depth_max_m: float = 5.0) -> SequenceBatch:
    """Colour/crop, sensor noise, time jitter and modality dropout (sleep phase)."""
    obs = _copy(batch.obs)
    b, t = batch.num_sequences, batch.steps
    # colour: contrast around the image mean, brightness, per-channel gain
    img = obs.image
    c = _rows(_uniform(gen, (b, 1, 1, 1), 1 - cfg.contrast, 1 + cfg.contrast), t)
    br = _rows(_uniform(gen, (b, 1, 1, 1), 1 - cfg.brightness, 1 + cfg.brightness), t)
    views = img.shape[1] // 3  # the cameras, each with its own gains
    gain = _rows(_uniform(gen, (b, 3 * views, 1, 1), 1 - cfg.channel_gain, 1 + cfg.channel_gain), t)
    mean = img.mean(dim=(1, 2, 3), keepdim=True)
    present = _present(obs, "visual", img) * _views_seen(img)
    obs.image = (((img - mean) * c + mean) * br * gain).clamp(0.0, 1.0) * present
    # crop (same box for camera and the registered depth image), resized back
    if cfg.crop_fraction > 0:
        scale = _uniform(gen, (b,), 1 - 2 * cfg.crop_fraction, 1.0)
        shift = (1 - scale)[:, None] * _uniform(gen, (b, 2), -1.0, 1.0)
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0], theta[:, 1, 1] = scale, scale
        theta[:, :, 2] = shift
        theta = _rows(theta, t)
        obs.image = _crop_resize(obs.image, theta) * present
        obs.depth = _crop_resize(obs.depth, theta) * _present(obs, "depth", obs.depth)
    # sensor noise
    obs.depth = (obs.depth + torch.randn(obs.depth.shape, generator=gen) * (cfg.depth_noise_m / depth_max_m)
                 ).clamp(0.0, 1.0) * _present(obs, "depth", obs.depth)
    a_gain = _rows(_uniform(gen, (b, 1), 1 - cfg.audio_gain, 1 + cfg.audio_gain), t)
    obs.audio = ((obs.audio * a_gain + torch.randn(obs.audio.shape, generator=gen) * cfg.audio_noise)
                 .clamp(-1.0, 1.0) * _present(obs, "audio", obs.audio))
    obs.tactile = (obs.tactile + torch.randn(obs.tactile.shape, generator=gen) * cfg.tactile_noise
                   ) * _present(obs, "tactile", obs.tactile)
    obs.joint_position = obs.joint_position + torch.randn(obs.joint_position.shape, generator=gen) * (
        cfg.joint_noise_rad) * _present(obs, "proprio", obs.joint_position)
    # time jitter: camera, depth and microphone one step late
    jitter = torch.rand(b, generator=gen) < cfg.time_jitter_prob
    _stale(obs, jitter, b, t, ("image", "depth", "audio"))
    # camera dropout (several cameras): one view of a chosen sequence goes dark (the others stay),
    # so the policy learns to act on whichever cameras are left
    if views > 1:
        lose = torch.rand(b, generator=gen) < cfg.modality_dropout
        view = torch.randint(views, (b,), generator=gen)
        keep = torch.ones(b, 3 * views)
        for k in range(views):
            keep[lose & (view == k), 3 * k:3 * k + 3] = 0.0
        obs.image = obs.image * _rows(keep, t)[:, :, None, None]
    # modality dropout: one exteroceptive modality per chosen sequence
    drop = torch.rand(b, generator=gen) < cfg.modality_dropout
    which = torch.randint(len(EXTEROCEPTIVE), (b,), generator=gen)
    for k, m in enumerate(EXTEROCEPTIVE):
        rows = _rows(drop & (which == k), t)
        if bool(rows.any()):
            drop_rows(obs, rows, m)
    return SequenceBatch(obs=obs, action=batch.action, steps=t)


def _fail(obs: ObservationBatch, rows: torch.Tensor, modality: str, kind: int, gen: torch.Generator,
          b: int, t: int, tactile_stats: tuple[torch.Tensor, torch.Tensor] | None) -> None:
    """In place: an undetected failure of ``modality`` on ``rows`` (mask bit stays set).

    Images, depth and audio have fixed ranges ([0, 1], [-1, 1]); tactile has none, so its failures
    are scaled by the recorded statistics (saturated = mean + 6 std, noise = mean +- 3 std): a taxel
    array stuck at 1.0 when it reads 0.03 +- 0.015 is not a plausible sensor, it is a different robot.
    """
    name = _FIELDS[modality][0]
    x = getattr(obs, name)
    r = _expand(rows.to(x.dtype), x)
    scaled = modality == "tactile" and tactile_stats is not None
    if kind == 0:  # dead: zeros (black image, depth 0, silence, no pressure)
        bad = torch.zeros_like(x)
    elif kind == 1:  # saturated
        bad = (tactile_stats[0] + 6 * tactile_stats[1]).expand_as(x).clone() if scaled else torch.ones_like(x)
    elif kind == 2:  # noise
        if scaled:
            bad = tactile_stats[0] + tactile_stats[1] * (torch.rand(x.shape, generator=gen) * 6 - 3)
        elif modality in ("visual", "depth"):
            bad = torch.rand(x.shape, generator=gen)
        else:
            bad = torch.rand(x.shape, generator=gen) * 2 - 1
    else:  # frozen: every step repeats the sequence's first frame
        bad = x.view(b, t, *x.shape[1:])[:, :1].expand(b, t, *x.shape[1:]).reshape(x.shape)
    setattr(obs, name, x * (1 - r) + bad * r)


def dream_situations(batch: SequenceBatch, cfg: DreamConfig, gen: torch.Generator,
                     depth_max_m: float = 5.0, weights: torch.Tensor | None = None,
                     tactile_stats: tuple[torch.Tensor, torch.Tensor] | None = None
                     ) -> tuple[SequenceBatch, torch.Tensor]:
    """Generated edge cases, one situation per sequence; returns (batch, situation (B,)).

    ``weights`` (4,): how often each exteroceptive modality is the one dropped or failed (default
    uniform); the trainer sets them from how much losing each one currently hurts (the worst edge
    cases get dreamt most). ``tactile_stats`` (mean, std) scale tactile failures and offsets to the
    recorded data (the normaliser's statistics).

    - DROPPED: 1..``max_dropped`` exteroceptive modalities missing (zeros + mask bit cleared);
    - FAILED: one exteroceptive stream broken but not detected (dead, saturated, noise or frozen);
    - PERTURBED: out-of-range but plausible appearance: lighting x0.3-0.6 or x1.5-2.5 with a colour
      cast, depth speckle noise of 5 cm, microphone gain x0.2-3 (clipped), tactile offset of
      -1..3 recorded std;
    - CLEAN: unchanged (anchors the consistency objective).
    """
    obs = _copy(batch.obs)
    b, t = batch.num_sequences, batch.steps
    u = torch.rand(b, generator=gen)
    situation = torch.full((b,), CLEAN, dtype=torch.long)
    situation[u < cfg.drop_prob] = DROPPED
    situation[(u >= cfg.drop_prob) & (u < cfg.drop_prob + cfg.fail_prob)] = FAILED
    situation[(u >= cfg.drop_prob + cfg.fail_prob) & (u < cfg.drop_prob + cfg.fail_prob + cfg.perturb_prob)] = PERTURBED
    n_ext = len(EXTEROCEPTIVE)

    # DROPPED: a random subset of 1..max_dropped modalities
    dropped = situation == DROPPED
    w = torch.full((n_ext,), 1.0 / n_ext) if weights is None else (weights / weights.sum()).float().cpu()
    count = torch.randint(1, cfg.max_dropped + 1, (b,), generator=gen)
    # A weighted random order (Gumbel top-k: sampling without replacement in proportion to w).
    gumbel = -torch.log(-torch.log(torch.rand(b, n_ext, generator=gen).clamp(1e-12, 1 - 1e-7)))
    order = torch.argsort(torch.log(w.clamp_min(1e-12))[None] + gumbel, dim=1, descending=True)
    rank = torch.argsort(order, dim=1)  # rank of each modality in the random order
    for k, m in enumerate(EXTEROCEPTIVE):
        rows = _rows(dropped & (rank[:, k] < count), t)
        if bool(rows.any()):
            drop_rows(obs, rows, m)

    # FAILED: one modality, one failure kind
    failed = situation == FAILED
    which = torch.multinomial(w, b, replacement=True, generator=gen)
    kind = torch.randint(4, (b,), generator=gen)
    for k, m in enumerate(EXTEROCEPTIVE):
        for f in range(4):
            rows = _rows(failed & (which == k) & (kind == f), t)
            if bool(rows.any()):
                _fail(obs, rows, m, f, gen, b, t, tactile_stats)

    # PERTURBED: beyond the augmentation ranges, on every present modality
    pert = _rows(situation == PERTURBED, t)
    if bool(pert.any()):
        dark = torch.rand(b, generator=gen) < 0.5
        light = torch.where(dark, _uniform(gen, (b,), 0.3, 0.6), _uniform(gen, (b,), 1.5, 2.5))
        cast = _uniform(gen, (b, 3), 0.7, 1.3).repeat(1, obs.image.shape[1] // 3)
        factor = _rows(light[:, None] * cast, t)[:, :, None, None]
        p = _expand(pert.to(obs.image.dtype), obs.image)
        obs.image = obs.image * (1 - p) + (obs.image * factor).clamp(0, 1) * p
        speckle = torch.randn(obs.depth.shape, generator=gen) * (0.05 / depth_max_m)
        obs.depth = (obs.depth + speckle * _expand(pert.to(obs.depth.dtype), obs.depth)).clamp(0, 1) * _present(
            obs, "depth", obs.depth)
        gain = _rows(torch.exp(_uniform(gen, (b, 1), -1.6, 1.1)), t)
        pa = _expand(pert.to(obs.audio.dtype), obs.audio)
        obs.audio = (obs.audio * (1 - pa) + (obs.audio * gain).clamp(-1, 1) * pa) * _present(obs, "audio", obs.audio)
        unit = tactile_stats[1] if tactile_stats is not None else torch.tensor(0.1)
        offset = _rows(_uniform(gen, (b, 1), -1.0, 3.0), t) * unit
        obs.tactile = (obs.tactile + offset * _expand(pert.to(obs.tactile.dtype), obs.tactile)) * _present(
            obs, "tactile", obs.tactile)
    return SequenceBatch(obs=obs, action=batch.action, steps=t), situation


def drop_modality(batch: SequenceBatch, modality: str) -> SequenceBatch:
    """Every step of every sequence without ``modality`` (evaluation)."""
    return SequenceBatch(obs=batch.obs.masked(modality), action=batch.action, steps=batch.steps)
