"""Held-out evaluation and the training report (markdown + JSON + PNG plots).

All metrics run the deployment path: ``encode`` step by step with the temporal state carried from
the first step of each held-out sequence, then ``act`` (clipped to the recorded range), exactly as
the nodes run the model (DESIGN §7: low loss is not good control, so models are judged here, not by
training loss).

Definitions (also written into every report)
    action_error        mean |predicted first target - recorded target| (rad) over held-out steps and
                        joints; equals ``training.fit.action_error``.
    dropped.<m>         action_error with modality m masked (zeros + mask bit cleared) on every step,
                        joint positions still given to the L-module (the control node always has them).
    jerk_rad_s3         mean |third difference of the predicted targets| x rate^3 (rad/s^3) along
                        held-out sequences (open loop on recorded trajectories); recorded_jerk_rad_s3 is
                        the same for the recorded targets.
    reconstruction_1mR2 1 - R^2 of decoder(z) against the 4096-D context (the stop-gradient target),
                        R^2 pooled over all 4096 dims: 1 - sum (c - c_hat)^2 / sum (c - mean_c)^2, the
                        mean per dim over the held-out steps.
    predictive_1mR2     the same for temporal.predictive's read-out against the next step's sensory
                        group (1536 dims).
    dynamics_error_rad  mean |physical.dynamics read-out - next joint position| (rad).
    action_parity       err(L probe fed z) / err(L probe fed the 4096-D context) - 1, both probes the
                        L-module architecture trained from scratch on the same training steps with the
                        encoder frozen (same seed, steps, optimiser), errors as action_error.
                        deployed_parity uses the jointly trained L-module's error as the numerator.
    imagined_*          imagined rollouts from each held-out start (``phases.imagine``): share of action
                        elements outside the recorded range, and mean |second difference| of the
                        normalised actions.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..core.l_module import LModule
from ..core.layout import SLICES, group_slice
from ..core.system import SageHL, SequenceBatch
from .augment import drop_modality
from .phases import action_limit_violation, imagine

REPORT_VERSION = 1

DEFINITIONS = {
    "action_error": "mean |predicted first target - recorded target| (rad), deployment path (encode/act, "
                    "temporal state carried from each held-out sequence's first step); = training.fit.action_error",
    "dropped.<m>": "action_error with modality m masked (zeros + mask bit cleared) on every step; the L-module "
                   "still gets joint positions",
    "jerk_rad_s3": "mean |third difference of predicted targets| x rate^3 along held-out sequences (open loop)",
    "reconstruction_1mR2": "1 - R^2 of decoder(z) vs the 4096-D context (stop-gradient target); R^2 pooled "
                           "over all 4096 dims: 1 - sum (c - c_hat)^2 / sum (c - mean_c)^2, mean per dim over "
                           "held-out steps",
    "predictive_1mR2": "the same for the temporal.predictive read-out vs the next step's 1536-D sensory group",
    "dynamics_error_rad": "mean |physical.dynamics read-out - next joint position| (rad)",
    "action_parity": "err(L-module probe fed z) / err(L-module probe fed the 4096-D context) - 1; both probes are "
                     "the deployed L-module architecture trained from scratch with the encoder frozen, on the same "
                     "training steps, seed, optimiser and step count; errors as action_error on held-out steps",
    "deployed_parity": "err(the jointly trained L-module, deployed) / err(context probe) - 1",
    "reconstruction_probe_1mR2": "reconstruction_1mR2 of a decoder probe: the model's decoder fine-tuned from "
                                 "frozen z to the frozen context on the probes' training steps (same steps, "
                                 "optimiser and seed as the action probes), evaluated on held-out steps",
    "imagined_limit_violation_share": "share of imagined-rollout action elements outside the recorded action range",
    "imagined_action_jerk": "mean |second difference| of normalised actions along imagined rollouts",
    "samples_per_s": "observation steps (sequences x steps) consumed per second of optimisation",
}


class _R2:
    """Pooled R^2 accumulator (float64): sums per dim, so the mean is the held-out mean."""

    def __init__(self):
        self.n = 0
        self.sum = None
        self.sumsq = None
        self.sse = 0.0

    def add(self, target: torch.Tensor, pred: torch.Tensor) -> None:
        t = target.detach().double().cpu()
        p = pred.detach().double().cpu()
        if self.sum is None:
            self.sum = torch.zeros(t.shape[1], dtype=torch.float64)
            self.sumsq = torch.zeros(t.shape[1], dtype=torch.float64)
        self.n += t.shape[0]
        self.sum += t.sum(0)
        self.sumsq += t.square().sum(0)
        self.sse += float((t - p).square().sum())

    def one_minus_r2(self) -> float:
        if not self.n:
            return float("nan")
        sst = float((self.sumsq - self.sum.square() / self.n).sum())
        return self.sse / sst if sst > 0 else float("nan")


@torch.inference_mode()
def predict(model: SageHL, batch: SequenceBatch, keep: bool = False) -> dict[str, Any]:
    """Deployment-path predictions for a batch of sequences: ``targets`` (B, T, J) first chunk;
    with ``keep`` also contexts (B, T, 4096), latents (B, T, L) and proprio features."""
    was = model.training
    model.eval()
    b, t = batch.num_sequences, batch.steps
    state = model.initial_state(b)
    idx = torch.arange(b, device=batch.action.device) * t
    preds, ctxs, zs, recon, dyn, pred_next, proprio = [], [], [], [], [], [], []
    for step in range(t):
        obs = batch.obs.index(idx + step)
        z, ctx, state = model.encode(obs, state)
        preds.append(model.act(z, obs.joint_position, obs.joint_velocity)[:, 0])
        v = ctx.vector
        recon.append(model.decoder(z))
        dyn.append(model.normalizer.denormalize(
            "joint_position", model.context_heads.readout_dynamics(v[:, SLICES["physical.dynamics"]])))
        pred_next.append(model.context_heads.readout_predictive(v[:, SLICES["temporal.predictive"]]))
        ctxs.append(v)
        zs.append(z)
        if keep:
            proprio.append(model._proprio(obs.joint_position, obs.joint_velocity))
    model.train(was)
    out = {"targets": torch.stack(preds, 1), "context": torch.stack(ctxs, 1), "z": torch.stack(zs, 1),
           "recon": torch.stack(recon, 1), "dynamics": torch.stack(dyn, 1), "predictive": torch.stack(pred_next, 1)}
    if keep:
        out["proprio"] = torch.stack(proprio, 1)
    return out


def _jerk(x: torch.Tensor, rate_hz: float) -> float:
    """x (B, T, J) -> mean |d^3 x / dt^3|; nan when T < 4."""
    if x.shape[1] < 4:
        return float("nan")
    return float(x.diff(n=3, dim=1).abs().mean()) * rate_hz**3


@torch.inference_mode()
def evaluate(model: SageHL, batch: SequenceBatch, rate_hz: float, dropped: list[str] | tuple[str, ...] = (),
             rollout_horizon: int = 4) -> dict[str, Any]:
    """Held-out metrics (see the module docstring) on ``batch`` (sequences, any T)."""
    b, t = batch.num_sequences, batch.steps
    out = predict(model, batch)
    labels = batch.action[:, :, 0]
    err = (out["targets"] - labels).abs()
    m: dict[str, Any] = {
        "sequences": b, "steps": b * t,
        "action_error": float(err.mean()),
        "action_error_per_joint": [float(x) for x in err.mean(dim=(0, 1))],
        "jerk_rad_s3": _jerk(out["targets"], rate_hz),
        "recorded_jerk_rad_s3": _jerk(labels, rate_hz),
    }
    r2 = _R2()
    r2.add(out["context"].flatten(0, 1), out["recon"].flatten(0, 1))
    m["reconstruction_1mR2"] = r2.one_minus_r2()
    if t >= 2:
        pos = batch.obs.joint_position.view(b, t, -1)
        m["dynamics_error_rad"] = float((out["dynamics"][:, :-1] - pos[:, 1:]).abs().mean())
        pr = _R2()
        pr.add(out["context"][:, 1:, group_slice("sensory")].flatten(0, 1), out["predictive"][:, :-1].flatten(0, 1))
        m["predictive_1mR2"] = pr.one_minus_r2()
    m["dropped"] = {}
    for name in dropped:
        d = predict(model, drop_modality(batch, name))
        m["dropped"][name] = float((d["targets"] - labels).abs().mean())
    if m["dropped"]:
        m["dropped_mean"] = sum(m["dropped"].values()) / len(m["dropped"])
    if rollout_horizon > 0:
        was = model.training
        model.eval()
        im = imagine(model, batch, rollout_horizon, rate_hz)
        model.train(was)
        m["imagined_limit_violation_share"] = float((action_limit_violation(model, im.action_norm) > 0).float().mean())
        a = im.action_norm[:, :, 0]
        m["imagined_action_jerk"] = float(a.diff(n=2, dim=1).abs().mean()) if a.shape[1] >= 3 else float("nan")
    return m


# ----------------------------------------------------------------------------- action parity


@dataclasses.dataclass
class ProbeData:
    features: torch.Tensor  # (N, D)
    proprio: torch.Tensor  # (N, P)
    joint_position: torch.Tensor  # (N, J)
    targets: torch.Tensor  # (N, K, J) absolute recorded targets


def probe_data(model: SageHL, batch: SequenceBatch, which: str) -> ProbeData:
    """Frozen features from the deployment path: ``which`` = "z" or "context"."""
    out = predict(model, batch, keep=True)
    return ProbeData(out[which].flatten(0, 1).float(), out["proprio"].flatten(0, 1),
                     batch.obs.joint_position.clone(), batch.action.flatten(0, 1).clone())


def train_probe(model: SageHL, data: ProbeData, steps: int, lr: float, batch_size: int, seed: int) -> LModule:
    """An L-module (the deployed architecture, input width = feature width) trained on frozen features."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        width = data.features.shape[1]
        probe = LModule(model.cfg.observation, model.cfg.model, code_dim=width).to(data.features.device)
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1), eta_min=lr * 0.05)
        with torch.no_grad():
            target = model.normalizer.normalize("action", model._from_targets(data.targets, data.joint_position))
        n = data.features.shape[0]
        for _ in range(steps):
            idx = torch.randint(n, (min(batch_size, n),), generator=gen).to(data.features.device)
            loss = F.mse_loss(probe(data.features[idx], data.proprio[idx]), target[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return probe.eval()


@torch.no_grad()
def probe_error(model: SageHL, probe: LModule, data: ProbeData) -> float:
    """action_error of a probe (first target, clipped to the recorded range like ``act``)."""
    pred = model._to_targets(probe(data.features, data.proprio), data.joint_position)[:, 0]
    return float((pred - data.targets[:, 0]).abs().mean())


def action_parity(model: SageHL, train: SequenceBatch, val: SequenceBatch, steps: int, lr: float,
                  batch_size: int, seed: int = 0) -> dict[str, float]:
    """Both probes on the same training steps; errors on held-out ``val``."""
    res: dict[str, float] = {}
    for which in ("z", "context"):
        tr, va = probe_data(model, train, which), probe_data(model, val, which)
        probe = train_probe(model, tr, steps, lr, batch_size, seed)
        res[f"probe_{which}_error"] = probe_error(model, probe, va)
        res[f"probe_{which}_train_error"] = probe_error(model, probe, tr)
    res["deployed_error"] = float((predict(model, val)["targets"] - val.action[:, :, 0]).abs().mean())
    res["action_parity"] = res["probe_z_error"] / res["probe_context_error"] - 1.0
    res["deployed_parity"] = res["deployed_error"] / res["probe_context_error"] - 1.0
    res["probe_steps"], res["probe_train_steps"] = steps, int(train.num_sequences * train.steps)
    res["reconstruction_probe_1mR2"] = reconstruction_probe(model, train, val, steps, lr, batch_size, seed)
    return res


def reconstruction_probe(model: SageHL, train: SequenceBatch, val: SequenceBatch, steps: int, lr: float,
                         batch_size: int, seed: int = 0) -> float:
    """1 - R^2 on ``val`` of a fresh decoder (the model's decoder architecture) fitted from frozen z to
    the frozen context on ``train``: how much of the context z still holds, independent of how far
    the jointly trained decoder has converged."""
    from ..core.compressors import ContextDecoder

    tr, va = predict(model, train), predict(model, val)
    z_tr, c_tr = tr["z"].flatten(0, 1), tr["context"].flatten(0, 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        dec = ContextDecoder(z_tr.shape[1]).to(z_tr.device)
        dec.load_state_dict(model.decoder.state_dict())  # start from the model's own decoder
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(dec.parameters(), lr=lr, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1), eta_min=lr * 0.05)
        n = z_tr.shape[0]
        for _ in range(steps):
            idx = torch.randint(n, (min(batch_size, n),), generator=gen).to(z_tr.device)
            loss = F.mse_loss(dec(z_tr[idx]), c_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    r2 = _R2()
    with torch.no_grad():
        r2.add(va["context"].flatten(0, 1), dec(va["z"].flatten(0, 1)))
    return r2.one_minus_r2()


# ----------------------------------------------------------------------------- writing


def _fmt(x: Any, digits: int = 4) -> str:
    if isinstance(x, float):
        if math.isnan(x):
            return "n/a"
        return f"{x:.{digits}g}"
    return str(x)


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def write_report(out_dir: str | Path, report: dict[str, Any], plots: bool = True) -> dict[str, Path]:
    """report.json, report.md and PNG plots into ``out_dir``; returns the written paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "report.json", "md": out / "report.md"}
    if plots:
        files.update(_plots(out, report))
        report.setdefault("plots", [p.name for k, p in files.items() if k.startswith("png")])
    _atomic(files["json"], json.dumps(_json_safe(report), indent=1))
    _atomic(files["md"], _markdown(report))
    return files


def _markdown(r: dict[str, Any]) -> str:
    lines = [f"# Sleep-cycle training report: {r.get('checkpoint', '')}", ""]
    lines.append(f"Model sha256 `{r.get('model_sha256', '')[:16]}`; parent "
                 f"`{(r.get('parent') or {}).get('sha256', '') or 'none (trained from scratch)'}`; "
                 f"device {r.get('device')}; seed {r.get('seed')}.")
    lines.append("")
    data = r.get("data", {})
    lines.append("## Data")
    counts = data.get("train_sequences", {})
    lines.append(f"- new experience: {len(data.get('bags', []))} bag(s), {counts.get('new', 0)} training sequences")
    lines.append(f"- earlier experience (replay): {len(data.get('replay_bags', []))} bag(s), "
                 f"{data.get('train_sequences', {}).get('old', 0)} sequences")
    for name, ev in data.get("eval", {}).items():
        lines.append(f"- held-out `{name}`: {ev.get('source')}: {ev.get('sequences')} sequences x "
                     f"{ev.get('steps_per_sequence')} steps")
    lines.append("")
    lines.append("## Phases")
    lines.append("| phase | steps | seconds | samples/s | first loss | last loss | measured effect |")
    lines.append("|---|---|---|---|---|---|---|")
    for name, ph in r.get("phases", {}).items():
        eff = "; ".join(f"{k}: {_fmt(v['before'])} -> {_fmt(v['after'])}" for k, v in ph.get("effect", {}).items())
        lines.append(f"| {name} | {ph['steps']} | {_fmt(ph['seconds'], 3)} | {_fmt(ph['samples_per_s'], 3)} | "
                     f"{_fmt(ph.get('loss_first'))} | {_fmt(ph.get('loss_last'))} | {eff} |")
    lines.append("")
    lines.append("## Held-out metrics by stage")
    for split in ("new", "old"):
        rows = [(s["stage"], s["metrics"][split]) for s in r.get("stages", []) if split in s.get("metrics", {})]
        if not rows:
            continue
        mods = list(rows[0][1].get("dropped", {}))
        lines.append(f"### `{split}` held-out set")
        head = ["stage", "action error (rad)", *[f"{m} dropped" for m in mods], "jerk (rad/s^3)",
                "recon 1-R^2", "dynamics (rad)", "predictive 1-R^2"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for stage, m in rows:
            vals = [stage, _fmt(m["action_error"]), *[_fmt(m["dropped"][x]) for x in mods], _fmt(m["jerk_rad_s3"]),
                    _fmt(m["reconstruction_1mR2"]), _fmt(m.get("dynamics_error_rad", float("nan"))),
                    _fmt(m.get("predictive_1mR2", float("nan")))]
            lines.append("| " + " | ".join(vals) + " |")
        lines.append("")
    info = r.get("information_loss")
    if info:
        lines.append("## Information loss (DESIGN §3), held-out `new`")
        lines.append(f"- reconstruction 1 - R^2 (the model's decoder): **{_fmt(info['reconstruction_1mR2'])}**")
        if "reconstruction_probe_1mR2" in info:
            lines.append(f"- reconstruction 1 - R^2 (decoder probe fitted on frozen z): "
                         f"{_fmt(info['reconstruction_probe_1mR2'])}")
        if "action_parity" in info:
            lines.append("- action parity (probe on z / probe on 4096-D context - 1): "
                         f"**{_fmt(info['action_parity'])}** (probe errors {_fmt(info['probe_z_error'])} vs "
                         f"{_fmt(info['probe_context_error'])} rad)")
            lines.append(f"- deployed L-module vs context probe: {_fmt(info['deployed_parity'])} "
                         f"({_fmt(info['deployed_error'])} rad)")
        lines.append("")
    lines.append("## Definitions")
    for k, v in r.get("definitions", {}).items():
        lines.append(f"- `{k}`: {v}")
    lines.append("")
    for p in r.get("plots", []):
        lines.append(f"![{p}]({p})")
    return "\n".join(lines) + "\n"


def _plots(out: Path, r: dict[str, Any]) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files: dict[str, Path] = {}
    # training loss by phase
    hist = r.get("history", [])
    if hist:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        for phase in dict.fromkeys(h["phase"] for h in hist):
            pts = [(h["step"], h["total"]) for h in hist if h["phase"] == phase]
            ax.plot([p[0] for p in pts], [max(p[1], 1e-6) for p in pts], label=phase, lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (total)")
        ax.legend()
        ax.grid(alpha=0.3)
        files["png_loss"] = out / "loss.png"
        fig.tight_layout()
        fig.savefig(files["png_loss"], dpi=90)
        plt.close(fig)
    stages = r.get("stages", [])
    if stages:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        names = [s["stage"] for s in stages]
        for k, split in enumerate(("new", "old")):
            vals = [s["metrics"][split]["action_error"] for s in stages if split in s["metrics"]]
            if vals:
                ax.bar([i + 0.4 * k for i in range(len(vals))], vals, width=0.4, label=f"held-out {split}")
        ax.set_xticks([i + 0.2 for i in range(len(names))], names)
        ax.set_ylabel("action error (rad)")
        ax.set_yscale("log")
        ax.legend()
        files["png_action_error"] = out / "action_error.png"
        fig.tight_layout()
        fig.savefig(files["png_action_error"], dpi=90)
        plt.close(fig)

        mods = list(stages[-1]["metrics"]["new"].get("dropped", {}))
        if mods:
            fig, ax = plt.subplots(figsize=(7, 3.5))
            width = 0.8 / len(stages)
            for k, s in enumerate(stages):
                d = s["metrics"]["new"]["dropped"]
                ax.bar([i + k * width for i in range(len(mods))], [d[m] for m in mods], width=width, label=s["stage"])
            ax.set_xticks([i + 0.4 - width / 2 for i in range(len(mods))], [f"{m} dropped" for m in mods])
            ax.set_ylabel("action error (rad)")
            ax.legend()
            files["png_dropped"] = out / "dropped.png"
            fig.tight_layout()
            fig.savefig(files["png_dropped"], dpi=90)
            plt.close(fig)
    traj = r.get("example_trajectory")
    if traj:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        for j, (p, lab) in enumerate(zip(traj["predicted"], traj["recorded"], strict=True)):
            ax.plot(lab, "-", color=f"C{j}", lw=1.5, label=f"j{j} recorded" if j < 3 else None)
            ax.plot(p, "--", color=f"C{j}", lw=1.5, label=f"j{j} predicted" if j < 3 else None)
        ax.set_xlabel("held-out step")
        ax.set_ylabel("joint target (rad)")
        ax.legend(fontsize=7, ncol=2)
        files["png_trajectory"] = out / "trajectory.png"
        fig.tight_layout()
        fig.savefig(files["png_trajectory"], dpi=90)
        plt.close(fig)
    return files

