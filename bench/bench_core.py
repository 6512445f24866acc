#!/usr/bin/env python3
"""Core model benchmark: per-stage latency, throughput, parameters and memory (DESIGN §8).

Runs the default model (config/model.yaml) in eval mode under torch.inference_mode with torch
threads pinned to 1 and to 2, at batch 1 and 16, on real synthetic observations, and prints
per-stage p50/p99. Then the H path on each backend of ``--backend`` (default
``torch,onnxruntime,onnxruntime-int8``; ``onnxruntime-fp16`` too if asked): the ONNX Runtime ones
run an export of the same weights (``sage-hl export``, checked against torch as every export is)
through ``OnnxHPath`` with one intra-op thread. Last lines, one per backend:

    bench_core: backend=torch h_path_b1_p50_ms=<x> h_path_b1_p99_ms=<..> b16_p50_ms=<..> \
        b16_samples_per_s=<y> l_step_p99_ms=<z> train_samples_per_s=<t> params_m=<p> rss_mb=<r>
    bench_core: backend=onnxruntime h_path_b1_p50_ms=<x> ... b16_samples_per_s=<y> \
        b1_vs_torch=<ratio> max_abs_dz=<..> action_error_ratio=<..>

Summary figures are for 1 thread (each node pins torch to 1 thread by default so the H and L
processes do not fight over cores), except training which uses every thread given.

    python bench/bench_core.py            # full run (~4 min on 2 cores, exports included)
    python bench/bench_core.py --quick    # few iterations, to check it runs
    python bench/bench_core.py --backend torch   # torch only (no export)
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sage_hl_ros.core.checkpoint import save_checkpoint  # noqa: E402
from sage_hl_ros.core.config import SageConfig  # noqa: E402
from sage_hl_ros.core.synthetic import SyntheticReachTask  # noqa: E402
from sage_hl_ros.core.system import build_model  # noqa: E402
from sage_hl_ros.training.fit import fit  # noqa: E402

STAGES = ("prepare", "encoders", "context", "h_module", "compressor", "l_module")


DEVICE = torch.device("cpu")


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, iters: int, warmup: int) -> np.ndarray:
    for _ in range(warmup):
        fn()
    sync()
    out = np.empty(iters)
    for i in range(iters):
        t0 = time.perf_counter()
        fn()
        sync()  # GPU work is asynchronous: time it to completion
        out[i] = time.perf_counter() - t0
    return out * 1e3  # ms


def pct(ms: np.ndarray) -> str:
    return f"p50={np.percentile(ms, 50):8.3f} ms  p99={np.percentile(ms, 99):8.3f} ms"


def bench_stages(model, task, batch: int, iters: int, warmup: int) -> dict[str, np.ndarray]:
    j = model.cfg.observation.num_joints
    goal = task.sample_goal(batch)
    pos = task.joint_goal(goal)
    obs = task.render(goal, pos).to(DEVICE)
    raw = task.observation(goal[0], pos[0])
    pos = pos.to(DEVICE)
    state = model.initial_state(batch)
    results: dict[str, np.ndarray] = {}
    with torch.inference_mode():
        if batch == 1:
            results["prepare"] = timed(lambda: model.schema.prepare(raw), iters, warmup)
        sensory, _ = model._sensory(obs)
        results["encoders"] = timed(lambda: model._sensory(obs), iters, warmup)
        ctx, _ = model.context_heads(sensory, obs.mask, state)
        results["context"] = timed(lambda: model.context_heads(sensory, obs.mask, state), iters, warmup)
        refined = model.h_module(ctx)
        results["h_module"] = timed(lambda: model.h_module(ctx), iters, warmup)
        results["compressor"] = timed(lambda: model.compressor(refined), iters, warmup)
        z = model.compressor(refined).z
        vel = torch.zeros(batch, j, device=DEVICE)
        results["l_module"] = timed(lambda: model.act(z, pos, vel), iters * 5, warmup)
        results["h_path"] = timed(lambda: model.encode(obs, state), iters, warmup)
    return results


ORT_BACKENDS = {"onnxruntime": "fp32", "onnxruntime-fp16": "fp16", "onnxruntime-int8": "int8"}


def bench_onnx(model, task, backends: list[str], iters: int, warmup: int, workdir: Path) -> dict[str, dict]:
    """Export the benchmarked weights at the precisions asked for, then time OnnxHPath.run."""
    from sage_hl_ros.deploy.export import ExportConfig, export_model, observation_arrays
    from sage_hl_ros.deploy.onnx_backend import OnnxHPath

    precisions = sorted({ORT_BACKENDS[b] for b in backends} | {"fp32"})
    model_dir = save_checkpoint(model.cpu().eval(), workdir / "model")
    # Untrained bench weights: the gate is loose here, the ratio is printed and reported.
    manifests = export_model(model_dir, ExportConfig(precisions=precisions, max_action_error_ratio=10.0),
                             log=lambda line: print(f"  export: {line}"))
    out = {}
    for name in backends:
        precision = ORT_BACKENDS[name]
        backend = OnnxHPath.for_checkpoint(model_dir, precision, intra_op_threads=1)
        res = {}
        for batch in (1, 16):
            goal = task.sample_goal(batch)
            arrays = observation_arrays(task.render(goal, task.joint_goal(goal)))
            state = backend.initial_state(batch)
            res[batch] = timed(lambda b=backend, a=arrays, s=state: b.run(a, s), iters, warmup)
        out[name] = {"times": res, "check": manifests[precision]["check"], "providers": backend.providers}
    return out


def bench_training(cfg: SageConfig, steps: int) -> float:
    model = build_model(cfg)
    task = SyntheticReachTask(cfg.observation)
    data = task.sequences(8, 2)
    model.fit_normalizer(data.obs.joint_position, data.obs.joint_velocity, data.obs.tactile, data.action.flatten(0, 1))
    model.to(DEVICE)
    batches = [task.sequences(8, 2).to(DEVICE) for _ in range(4)]  # 16 observations a step, made up front
    fit(model, lambda s: batches[s % 4], steps=2, lr=1e-4)  # warm-up
    return fit(model, lambda s: batches[s % 4], steps=steps, lr=1e-4).samples_per_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(Path(__file__).resolve().parent.parent / "config" / "model.yaml"))
    parser.add_argument("--quick", action="store_true", help="few iterations: checks the script, not the numbers")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (GPU timings include synchronisation)")
    parser.add_argument("--backend", default="torch,onnxruntime,onnxruntime-int8",
                        help="comma list of torch, onnxruntime, onnxruntime-int8, onnxruntime-fp16")
    args = parser.parse_args()
    backends = [b.strip() for b in args.backend.split(",") if b.strip()]
    unknown = [b for b in backends if b != "torch" and b not in ORT_BACKENDS]
    if unknown:
        parser.error(f"--backend: unknown {unknown}; choose from torch, {', '.join(ORT_BACKENDS)}")
    global DEVICE
    DEVICE = torch.device(args.device)
    iters, warmup, train_steps = (5, 1, 2) if args.quick else (200, 20, 20)

    cfg = SageConfig.from_yaml(args.config)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    task = SyntheticReachTask(cfg.observation)
    data = task.sequences(16, 2)
    model.fit_normalizer(data.obs.joint_position, data.obs.joint_velocity, data.obs.tactile, data.action.flatten(0, 1))
    model.to(DEVICE)

    print(f"device: {DEVICE}" + (f" ({torch.cuda.get_device_name(DEVICE)})" if DEVICE.type == "cuda" else ""))
    print(f"config: {args.config} (compressor={cfg.model.compressor}, image {cfg.observation.image_width_px}x"
          f"{cfg.observation.image_height_px}, {cfg.observation.num_joints} joints)")
    print("parameters (M):")
    params = {name: sum(p.numel() for p in mod.parameters()) / 1e6 for name, mod in model.named_children()}
    for name, n in params.items():
        print(f"  {name:14s} {n:7.3f}")
    total_params = sum(params.values())
    deploy = total_params - params.get("decoder", 0.0)
    print(f"  {'total':14s} {total_params:7.3f}  (deployed without the training-only decoder: {deploy:.3f})")

    summary: dict[int, dict] = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        summary[threads] = {}
        for batch in (1, 16):
            res = bench_stages(model, task, batch, iters, warmup)
            print(f"threads={threads} batch={batch}")
            for stage in (*STAGES, "h_path"):
                if stage in res:
                    print(f"  {stage:11s} {pct(res[stage])}")
            h50 = np.percentile(res["h_path"], 50)
            print(f"  h_path throughput: {batch / h50 * 1e3:9.1f} samples/s")
            summary[threads][batch] = res

    torch.set_num_threads(2)
    train_sps = bench_training(cfg, train_steps)
    print(f"training (threads=2, 8 sequences x 2 steps a batch): {train_sps:.1f} samples/s")

    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if DEVICE.type == "cuda":
        print(f"peak GPU memory allocated: {torch.cuda.max_memory_allocated(DEVICE) / 2**20:.0f} MB")
    one = summary[1]
    h_b1 = np.percentile(one[1]["h_path"], 50)
    l99 = np.percentile(one[1]["l_module"], 99)
    print(f"budget: h_path_b1_p50 < 30 ms -> {'OK' if h_b1 < 30 else 'MISSED'}; "
          f"l_step_p99 < 0.5 ms -> {'OK' if l99 < 0.5 else 'MISSED'}")

    onnx_results: dict[str, dict] = {}
    ort_backends = [b for b in backends if b in ORT_BACKENDS]
    if ort_backends:
        print(f"ONNX Runtime backends (1 intra-op thread; torch at 1 thread above): {', '.join(ort_backends)}")
        with tempfile.TemporaryDirectory(prefix="bench_core_") as tmp:
            onnx_results = bench_onnx(model, task, ort_backends, iters, warmup, Path(tmp))
    lines = []
    if "torch" in backends:
        lines.append(f"bench_core: backend=torch {_times(one[1]['h_path'], one[16]['h_path'])} "
                     f"l_step_p99_ms={l99:.3f} train_samples_per_s={train_sps:.1f} params_m={total_params:.2f} "
                     f"rss_mb={rss_mb:.0f}")
    fp32_b1 = np.percentile(onnx_results["onnxruntime"]["times"][1], 50) if "onnxruntime" in onnx_results else None
    for name, r in onnx_results.items():
        b1 = np.percentile(r["times"][1], 50)
        b16 = 16 / np.percentile(r["times"][16], 50) * 1e3
        c = r["check"]
        checks = [f"b1 p50 <= 0.6x torch ({b1 / h_b1:.2f}x) -> {'OK' if b1 <= 0.6 * h_b1 else 'MISSED'}",
                  f"b16 >= 500 samples/s ({b16:.0f}) -> {'OK' if b16 >= 500 else 'MISSED'}"]
        if name == "onnxruntime-int8" and fp32_b1 is not None:
            checks.append(f"<= 0.5x fp32 ORT ({b1 / fp32_b1:.2f}x) -> {'OK' if b1 <= 0.5 * fp32_b1 else 'MISSED'}")
            checks.append(f"action error ratio <= 1.05 ({c['action_error_ratio']:.4f}) -> "
                          f"{'OK' if c['action_error_ratio'] <= 1.05 else 'MISSED'}")
        print(f"budget {name} ({', '.join(r['providers'])}): " + "; ".join(checks))
        lines.append(f"bench_core: backend={name} {_times(r['times'][1], r['times'][16])} "
                     f"b1_vs_torch={b1 / h_b1:.3f} max_abs_dz={c['max_abs_dz']:.3g} "
                     f"action_error_ratio={c['action_error_ratio']:.4f}")
    for line in lines:
        print(line)
    return 0


def _times(b1: np.ndarray, b16: np.ndarray) -> str:
    return (f"h_path_b1_p50_ms={np.percentile(b1, 50):.2f} h_path_b1_p99_ms={np.percentile(b1, 99):.2f} "
            f"b16_p50_ms={np.percentile(b16, 50):.2f} b16_p99_ms={np.percentile(b16, 99):.2f} "
            f"b16_samples_per_s={16 / np.percentile(b16, 50) * 1e3:.1f}")


if __name__ == "__main__":
    sys.exit(main())
