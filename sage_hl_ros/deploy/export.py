"""Checkpoint -> exports/<model_hash>/<precision>/ (ONNX H path, L step as numpy, manifest), checked.

Every export is run through ONNX Runtime (the same ``OnnxHPath`` a robot uses) right after it is
written and compared with the torch model on held-out observations, step by step with the temporal
state carried by each side on its own, as the nodes run. Held-out observations are, in order of
preference: the checkpoint's own validation data (the eval bags, else the val split of the bags it
was trained on, from ``config.json``'s ``training`` section), the given bags, else synthetic
observations of the model's observation config (labelled by the synthetic task's expert). The
manifest says which. Two numbers are kept: max |dz| (ORT vs torch latent) and the action-error
ratio, (held-out action error of the L step fed the ORT latent) / (same, fed the torch latent).

Nothing half-written is ever left: each precision is built in a hidden temporary folder next to
its destination and renamed into place only after its check passed. A failed check removes it and
raises ExportError with the numbers.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .. import __version__
from ..core.checkpoint import load_checkpoint
from ..core.checkpoint_files import read_meta, sha256_file
from ..core.context import TemporalState
from ..core.observation import ObservationBatch
from ..core.system import SageHL, SequenceBatch
from .manifest import (
    BATCH_DIM,
    FORMAT_VERSION,
    H_PATH_FILE,
    INPUTS,
    L_STEP_FILE,
    MANIFEST_FILE,
    OBSERVATION_INPUTS,
    OUTPUTS,
    PRECISIONS,
    ExportError,
    TensorSpec,
    checkpoint_hash,
    export_dir,
    export_root,
    write_json_atomic,
)
from .onnx_backend import OnnxHPath
from .quantize import INT8_OPS, to_fp16, to_int8

OPSET = 18
_L_STATS = ("joint_position", "joint_velocity", "action")


@dataclass
class ExportConfig:
    """What to export and how strictly to check it; validated on construction."""

    precisions: list[str] = field(default_factory=lambda: ["fp32"])
    calibration_bags: list[str] = field(default_factory=list)
    held_out_sequences: int = 16  # sequences of held-out observations (batch of the check)
    held_out_steps: int = 4  # steps per sequence, temporal state carried
    calibration_sequences: int = 16  # INT8 calibration: sequences x held_out_steps observations
    max_abs_dz: float = 1e-4  # FP32: ORT vs torch latent, absolute
    max_action_error_ratio: float = 1.05  # every precision: ORT-latent vs torch-latent action error
    threads: int = 2  # torch and ORT threads while exporting and checking

    def __post_init__(self) -> None:
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad or not self.precisions:
            raise ValueError(f"precisions: choose from {list(PRECISIONS)}, got {self.precisions}")
        for key in ("held_out_sequences", "held_out_steps", "calibration_sequences", "threads"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: must be >= 1, got {getattr(self, key)}")
        if not self.max_abs_dz > 0 or not self.max_action_error_ratio >= 1.0:
            raise ValueError(f"max_abs_dz must be > 0 and max_action_error_ratio >= 1, got {self.max_abs_dz}, "
                             f"{self.max_action_error_ratio}")


class HPathGraph(nn.Module):
    """SageHL.encode with flat tensor inputs/outputs: the graph that is exported."""

    def __init__(self, model: SageHL):
        super().__init__()
        self.model = model

    def forward(self, image, depth, audio, tactile, joint_position, joint_velocity, mask, history, history_valid):
        obs = ObservationBatch(image, depth, audio, tactile, joint_position, joint_velocity, mask)
        # The undecorated encode: inference_mode tensors cannot be traced by torch.export.
        z, _, state = SageHL.encode.__wrapped__(self.model, obs, TemporalState(history, history_valid))
        return z, state.history, state.valid


def observation_arrays(obs: ObservationBatch) -> dict[str, np.ndarray]:
    return {name: getattr(obs, name).detach().cpu().numpy() for name in OBSERVATION_INPUTS}


def _specs(names: Sequence[str], tensors: Sequence[torch.Tensor]) -> list[TensorSpec]:
    dtype = {torch.float32: "float32", torch.bool: "bool"}
    return [TensorSpec(n, dtype[t.dtype], (BATCH_DIM, *t.shape[1:])) for n, t in zip(names, tensors, strict=True)]


def export_onnx(model: SageHL, path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The FP32 H path with a dynamic batch axis; returns the input and output specs."""
    import warnings

    obs = model.schema.empty(2)
    obs.mask[:] = True
    state = model.initial_state(2)
    args = (*(getattr(obs, n) for n in OBSERVATION_INPUTS), state.history, state.valid)
    batch = torch.export.Dim(BATCH_DIM, min=1, max=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter chatter (deprecations, dim renames)
        torch.onnx.export(HPathGraph(model.eval()), args, str(path), input_names=list(INPUTS),
                          output_names=list(OUTPUTS), dynamic_shapes={n: {0: batch} for n in INPUTS},
                          opset_version=OPSET, dynamo=True, external_data=False, optimize=True, verbose=False)
    with torch.inference_mode():
        z, _, new_state = model.encode(obs, state)
    return _specs(INPUTS, args), _specs(OUTPUTS, (z, new_state.history, new_state.valid))


def write_l_step(model: SageHL, path: Path) -> list[str]:
    """L-module and normaliser tensors under their checkpoint names (core/checkpoint_files.py layout)."""
    from safetensors.numpy import save_file

    tensors = {f"l_module.{k}": v.detach().cpu().numpy() for k, v in model.l_module.state_dict().items()}
    for stat in _L_STATS:
        for f in ("mean", "std", "min", "max"):
            tensors[f"normalizer.{stat}_{f}"] = getattr(model.normalizer, f"{stat}_{f}").detach().cpu().numpy()
    save_file(tensors, str(path))
    return sorted(tensors)


# ---------------------------------------------------------------------------- observations
def _bag_sequences(bags: Sequence[str], model_dir: Path, split: str, n: int, steps: int) -> SequenceBatch | None:
    from ..bags.bag_dataset import BagDataset, concat_sequences
    from ..bags.dataset_config import configs_for_model

    obs_cfg, dcfg = configs_for_model(checkpoint=model_dir)
    dcfg = dataclasses.replace(dcfg, sequence_steps=steps, sequence_stride=steps)
    seqs = []
    for seq in BagDataset(list(bags), obs_cfg, dcfg).iter_sequences(split):
        seqs.append(seq)
        if len(seqs) >= n:
            break
    return concat_sequences(seqs) if seqs else None


def held_out_observations(model: SageHL, model_dir: Path, bags: Sequence[str], n: int, steps: int,
                          log: Callable[[str], None]) -> tuple[SequenceBatch, dict[str, Any]]:
    """Labelled held-out sequences and where they came from (see the module docstring)."""
    from ..bags.errors import BagError

    notes = []
    training = read_meta(model_dir).get("training") or {}
    own = [(training.get("eval_bags") or [], "all", "the checkpoint's eval bags"),
           (training.get("bags") or [], "val", "the val split of the checkpoint's training bags")]
    for source_bags, split, what in own:
        if not source_bags:
            continue
        try:
            data = _bag_sequences(source_bags, model_dir, split, n, steps)
        except (BagError, OSError, ValueError) as exc:
            notes.append(f"{what} unusable ({exc})")
            continue
        if data is not None:
            return data, {"source": "validation", "detail": what, "bags": list(source_bags), "notes": notes}
        notes.append(f"{what}: no sequences of {steps} steps")
    if bags:
        for split in ("val", "all"):
            data = _bag_sequences(bags, model_dir, split, n, steps)
            if data is not None:
                what = f"the {split} split of the given bags"
                if split == "all":
                    what += " (also the calibration data)"
                return data, {"source": "bags", "detail": what, "bags": list(bags), "notes": notes}
        notes.append(f"given bags {list(bags)}: no sequences of {steps} steps")
    from ..core.synthetic import SyntheticReachTask

    seed = model.cfg.seed + 7919  # not the seeds the synthetic checkpoints were trained or calibrated on
    data = SyntheticReachTask(model.cfg.observation, seed=seed).sequences(n, steps, chunk=model.cfg.model.action_chunk)
    for note in notes:
        log(f"  note: {note}")
    return data, {"source": "synthetic", "detail": f"synthetic reaching task of the model's observation config, "
                                                   f"seed {seed}", "notes": notes}


def calibration_feeds(model: SageHL, data: SequenceBatch) -> list[dict[str, np.ndarray]]:
    """One feed per step: the observations plus the temporal state the model reached on them."""
    b, t = data.num_sequences, data.steps
    idx = torch.arange(b) * t
    state = model.initial_state(b)
    feeds = []
    for step in range(t):
        obs = data.obs.index(idx + step)
        feeds.append({**observation_arrays(obs), "history": state.history.numpy().copy(),
                      "history_valid": state.valid.numpy().copy()})
        _, _, state = model.encode(obs, state)
    return feeds


# ---------------------------------------------------------------------------- the check
@torch.inference_mode()
def compare(model: SageHL, backend: OnnxHPath, data: SequenceBatch) -> dict[str, float]:
    """ORT vs torch on labelled sequences, each side carrying its own temporal state."""
    b, t = data.num_sequences, data.steps
    idx = torch.arange(b) * t
    state_t, state_o = model.initial_state(b), backend.initial_state(b)
    dz = dh = da = 0.0
    err_t, err_o = [], []
    for step in range(t):
        obs = data.obs.index(idx + step)
        z_t, _, state_t = model.encode(obs, state_t)
        z_o, state_o = backend.run(observation_arrays(obs), state_o)
        dz = max(dz, float(np.abs(z_o - z_t.numpy()).max()))
        dh = max(dh, float(np.abs(state_o.history - state_t.history.numpy()).max()))
        label = data.action[:, step, 0]
        a_t = model.act(z_t, obs.joint_position, obs.joint_velocity)[:, 0]
        a_o = model.act(torch.from_numpy(z_o), obs.joint_position, obs.joint_velocity)[:, 0]
        da = max(da, float((a_o - a_t).abs().max()))
        err_t.append(float((a_t - label).abs().mean()))
        err_o.append(float((a_o - label).abs().mean()))
    e_t, e_o = float(np.mean(err_t)), float(np.mean(err_o))
    ratio = e_o / e_t if e_t > 0 else (1.0 if e_o == 0 else float("inf"))
    return {"max_abs_dz": dz, "max_abs_dhistory": dh, "max_abs_daction_rad": da,
            "action_error_torch_rad": e_t, "action_error_onnx_rad": e_o, "action_error_ratio": ratio}


def _versions() -> dict[str, str]:
    out = {"sage_hl_ros": __version__, "python": platform.python_version()}
    for dist in ("torch", "onnx", "onnxscript", "onnxruntime"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def export_model(model_dir: str | Path, cfg: ExportConfig | None = None,
                 log: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Export, check and install every precision in ``cfg.precisions``; returns {precision: manifest}."""
    cfg = cfg or ExportConfig()
    model_dir = Path(model_dir)
    torch.set_num_threads(cfg.threads)
    model_hash = checkpoint_hash(model_dir)
    model = load_checkpoint(model_dir).eval()
    root = export_root(model_dir, model_hash)
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=root, prefix=".work-"))
    results: dict[str, dict[str, Any]] = {}
    try:
        t0 = time.perf_counter()
        fp32 = work / "fp32.onnx"
        inputs, outputs = export_onnx(model, fp32)
        log(f"exported the H path of {model_dir} ({model_hash[:12]}, compressor {model.cfg.model.compressor}) "
            f"to ONNX opset {OPSET} in {time.perf_counter() - t0:.1f} s")
        data, held_out = held_out_observations(model, model_dir, cfg.calibration_bags, cfg.held_out_sequences,
                                               cfg.held_out_steps, log)
        held_out.update(sequences=data.num_sequences, steps=data.steps)
        log(f"held-out observations: {held_out['source']} ({held_out['detail']}; "
            f"{data.num_sequences} sequences x {data.steps} steps)")
        base = {
            "format_version": FORMAT_VERSION, "model_hash": model_hash,
            "model_dir": str(model_dir.resolve()),
            "inputs": [s.to_json() for s in inputs], "outputs": [s.to_json() for s in outputs],
            "opset": OPSET, "exporter": "torch.onnx.export(dynamo=True, optimize=True)", "versions": _versions(),
            "config": model.cfg.to_dict(), "held_out": held_out,
            "state": {"inputs": ["history", "history_valid"], "outputs": ["new_history", "new_history_valid"],
                      "initial": "zeros / false, shape (B, history_len, 256) / (B, history_len)",
                      "carry": "feed each step's new_history / new_history_valid as the next step's inputs"},
        }
        fp32_check = None
        for precision in sorted(cfg.precisions, key=PRECISIONS.index):  # fp32 first: the others report vs it
            manifest = _build_one(model, model_dir, model_hash, precision, fp32, work, base, data, cfg, log)
            if precision == "fp32":
                fp32_check = manifest["check"]
            elif fp32_check is not None:
                manifest["check"]["action_error_ratio_vs_fp32_onnx"] = (
                    manifest["check"]["action_error_onnx_rad"] / fp32_check["action_error_onnx_rad"])
                write_json_atomic(export_dir(model_dir, model_hash, precision) / MANIFEST_FILE, manifest)
            results[precision] = manifest
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


def _build_one(model: SageHL, model_dir: Path, model_hash: str, precision: str, fp32: Path, work: Path,
               base: dict[str, Any], data: SequenceBatch, cfg: ExportConfig, log) -> dict[str, Any]:
    final = export_dir(model_dir, model_hash, precision)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{precision}-"))
    try:
        t0 = time.perf_counter()
        onnx_path = tmp / H_PATH_FILE
        extra: dict[str, Any] = {}
        if precision == "fp32":
            shutil.copyfile(fp32, onnx_path)
        elif precision == "fp16":
            to_fp16(fp32, onnx_path)
        else:
            if cfg.calibration_bags:
                calib = _bag_sequences(cfg.calibration_bags, model_dir, "all", cfg.calibration_sequences,
                                       cfg.held_out_steps)
                if calib is None:
                    raise ExportError(f"{cfg.calibration_bags}: no sequences of {cfg.held_out_steps} steps to "
                                      "calibrate INT8 on")
                source = {"source": "bags", "bags": list(cfg.calibration_bags)}
            else:
                from ..core.synthetic import SyntheticReachTask

                seed = model.cfg.seed + 104729
                calib = SyntheticReachTask(model.cfg.observation, seed=seed).sequences(
                    cfg.calibration_sequences, cfg.held_out_steps, chunk=model.cfg.model.action_chunk)
                source = {"source": "synthetic", "detail": f"synthetic reaching task, seed {seed} (not the "
                                                           "held-out seed)"}
            excluded = to_int8(fp32, onnx_path, calibration_feeds(model, calib), work)
            extra["calibration"] = {**source, "sequences": calib.num_sequences, "steps": calib.steps,
                                    "method": "MinMax, symmetric, per-channel weights", "format": "QDQ",
                                    "quantized_ops": list(INT8_OPS), "float_nodes": excluded}
        tensors = write_l_step(model, tmp / L_STEP_FILE)
        manifest = {
            **base, "precision": precision, **extra,
            "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "ort": {"graph_optimization_level": "extended" if precision == "fp16" else "all"},
            "files": {"h_path": {"name": H_PATH_FILE, "sha256": sha256_file(onnx_path),
                                 "bytes": onnx_path.stat().st_size},
                      "l_step": {"name": L_STEP_FILE, "sha256": sha256_file(tmp / L_STEP_FILE),
                                 "tensors": tensors}},
            "check": {"passed": False, "status": "running"},
        }
        write_json_atomic(tmp / MANIFEST_FILE, manifest)
        backend = OnnxHPath(tmp, expected_hash=model_hash, intra_op_threads=cfg.threads, require_passed_check=False)
        check = compare(model, backend, data)
        del backend
        limits = {"max_action_error_ratio": cfg.max_action_error_ratio}
        if precision == "fp32":
            limits["max_abs_dz"] = cfg.max_abs_dz
        problems = []
        if precision == "fp32" and not check["max_abs_dz"] <= cfg.max_abs_dz:
            problems.append(f"max |dz| {check['max_abs_dz']:.3g} > {cfg.max_abs_dz:g}")
        if not check["action_error_ratio"] <= cfg.max_action_error_ratio:
            problems.append(f"action error ratio {check['action_error_ratio']:.4f} > {cfg.max_action_error_ratio:g}")
        manifest["check"] = {**check, "limits": limits, "passed": not problems, "problems": problems,
                             "seconds": time.perf_counter() - t0}
        log(f"{precision}: max |dz| {check['max_abs_dz']:.3g}, max |d history| {check['max_abs_dhistory']:.3g}, "
            f"action error {check['action_error_onnx_rad']:.5f} rad (ORT z) vs {check['action_error_torch_rad']:.5f} "
            f"(torch z): ratio {check['action_error_ratio']:.4f}" + ("" if not problems else "  REFUSED"))
        if problems:
            raise ExportError(f"{final}: {precision} export refused ({'; '.join(problems)}; held-out: "
                              f"{base['held_out']['source']}); nothing was written")
        write_json_atomic(tmp / MANIFEST_FILE, manifest)
        _install(tmp, final)
        log(f"{precision}: wrote {final}")
        return manifest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _install(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; an existing export is swapped out first, then removed."""
    old = None
    if final.exists():
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
