"""Build checkpoints without recorded data: from a model config, optionally trained on the synthetic
reaching task so that demos and benchmarks run a model that does something purposeful."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from ..core.checkpoint import save_checkpoint
from ..core.config import SageConfig
from ..core.robot import load_robot
from ..core.synthetic import SyntheticReachTask
from ..core.system import build_model
from ..training.fit import action_error, fit


def make_synthetic_checkpoint(config: str | Path, out: str | Path, steps: int = 0, image_px: int = 0,
                              joint_names: list[str] | None = None, robot: str | Path | None = None,
                              log=print) -> dict:
    """Write a checkpoint to ``out``; returns what was done (held-out error before/after training).
    ``robot``: a robot contract file the model is for (its joints and sensors replace the config's)."""
    cfg = SageConfig.from_yaml(config)
    if robot:
        cfg = cfg.with_robot(load_robot(robot))
    changes: dict = {}
    if image_px:
        changes.update(image_height_px=image_px, image_width_px=image_px, depth_height_px=image_px,
                       depth_width_px=image_px)
    if joint_names:
        changes["joint_names"] = list(joint_names)
    if changes:  # replace() re-validates
        cfg = dataclasses.replace(cfg, observation=dataclasses.replace(cfg.observation, **changes))
    o = cfg.observation
    model = build_model(cfg)
    task = SyntheticReachTask(o, seed=cfg.seed)
    chunk = cfg.model.action_chunk
    data = task.sequences(256, 2, chunk=chunk)
    model.fit_normalizer(data.obs.joint_position, data.obs.joint_velocity, data.obs.tactile, data.action.flatten(0, 1))
    info: dict = {"trained_on": "untrained (normaliser from the synthetic task)"}
    if steps > 0:
        val = task.sequences(32, 2, chunk=chunk)
        before = action_error(model, val)
        log(f"training {steps} steps on the synthetic reaching task ({o.image_width_px}x{o.image_height_px} px); "
            f"held-out action error before: {before:.4f} rad")
        t0 = time.perf_counter()

        def progress(step: int, terms: dict) -> None:
            if (step + 1) % max(1, steps // 5) == 0:
                log(f"  step {step + 1:5d}/{steps}  loss {terms['total']:.4f}  bc {terms['bc']:.4f}  "
                    f"{time.perf_counter() - t0:6.1f} s")

        result = fit(model, lambda s: task.sequences(16, 2, chunk=chunk), steps, lr=2e-3, on_step=progress)
        after = action_error(model, val)
        log(f"held-out action error {before:.4f} -> {after:.4f} rad ({before / after:.1f}x lower), "
            f"{result.samples_per_s:.0f} samples/s")
        info = {"trained_on": f"synthetic reaching task, {steps} steps", "held_out_error_before_rad": before,
                "held_out_error_after_rad": after, "train_samples_per_s": result.samples_per_s}
    save_checkpoint(model, out, extra=info)
    robot_name = f"robot '{cfg.robot.name}', " if cfg.robot is not None else ""
    log(f"wrote checkpoint {out} ({robot_name}{o.num_joints} joints, sensors {o.sensors}, "
        f"compressor {cfg.model.compressor})")
    return info
