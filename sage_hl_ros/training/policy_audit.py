"""Where a policy's steps part from its teacher's labels, by time in the episode.

Held-out action error is one number over every step, and it is dominated by the large steps at the
start of a reach; closed-loop success is decided by the last centimetres. This audit runs the
checkpoint on the recorded observations of some bags (the deployment path, as ``fit.action_error``)
and, per window of time since the episode's start, compares its joint step (first target -
position) with the teacher's: the mean absolute error, both step sizes and the **gain**, the
policy's step projected on the label's (1 = the teacher's step, < 1 = short of it, the median
over steps). It also counts where labels came from (teacher or executed command), so a bag whose
episodes train on the policy's own commands shows up. On bags of the policy's own rollouts
(on-policy, expert-labelled) the late windows say whether it stops short of the targets it visits.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

WINDOWS_S = (0.0, 0.3, 0.8, 1.5, math.inf)
SUMMARY_KEYS = ("steps", "teacher_fraction", "action_error_rad", "early_gain", "late_gain")


def audit_policy(model, bags: Iterable[str | Path], dataset_config=None, split: str = "all",
                 windows_s: Sequence[float] = WINDOWS_S) -> dict:
    """Per time window: steps, action error, label and policy step norms, gain, teacher-label share."""
    import torch

    from ..bags.bag_dataset import SOURCE_COMMAND, BagDataset

    ds = BagDataset(list(bags), model.cfg.observation, dataset_config, robot=model.cfg.robot_contract())
    model.eval()
    rows: list[tuple[float, float, float, float, float, int]] = []
    for step in ds.iter_steps(split):
        obs = step.obs
        with torch.inference_mode():
            z, _, _ = model.encode(obs)
            pred = model.act(z, obs.joint_position, obs.joint_velocity)[0, 0].double().numpy()
        q = obs.joint_position[0].double().numpy()
        label, policy = step.action[0].astype(np.float64) - q, pred - q
        gain = float(policy @ label / (label @ label)) if label @ label > 1e-12 else math.nan
        t = (step.time_ns - step.ep.start_ns) / 1e9
        rows.append((t, float(np.abs(policy - label).mean()), float(np.linalg.norm(label)),
                     float(np.linalg.norm(policy)), gain, int(step.source == SOURCE_COMMAND)))
    if not rows:
        raise ValueError(f"no labelled steps in {[str(b) for b in ds.bag_paths]} (split {split})")
    r = np.array(rows)
    windows = []
    for lo, hi in zip(windows_s[:-1], windows_s[1:], strict=True):
        k = (r[:, 0] >= lo - 1e-9) & (r[:, 0] < hi - 1e-9)
        if not k.any():
            continue
        gains = r[k, 4][np.isfinite(r[k, 4])]
        windows.append({"from_s": lo, "to_s": hi, "steps": int(k.sum()), "action_error_rad": float(r[k, 1].mean()),
                        "label_step_rad": float(r[k, 2].mean()), "policy_step_rad": float(r[k, 3].mean()),
                        "gain": float(np.median(gains)) if gains.size else math.nan})
    return {"steps": len(rows), "teacher_fraction": float(1.0 - r[:, 5].mean()),
            "action_error_rad": float(r[:, 1].mean()), "windows": windows,
            "early_gain": windows[0]["gain"], "late_gain": windows[-1]["gain"]}


def format_audit(result: dict) -> str:
    lines = ["| time in episode, s | steps | action error, rad | label step, rad | policy step, rad | gain |",
             "|---|---|---|---|---|---|"]
    for w in result["windows"]:
        span = f"{w['from_s']:g}-{w['to_s']:g}" if math.isfinite(w["to_s"]) else f">= {w['from_s']:g}"
        lines.append(f"| {span} | {w['steps']} | {w['action_error_rad']:.4f} | {w['label_step_rad']:.4f} | "
                     f"{w['policy_step_rad']:.4f} | {w['gain']:.2f} |")
    lines.append("audit: " + " ".join(f"{k}={result[k]:.4f}" if isinstance(result[k], float) else f"{k}={result[k]}"
                                      for k in SUMMARY_KEYS))
    return "\n".join(lines)
