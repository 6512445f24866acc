#!/usr/bin/env python3
"""Deployment benchmark: the context + control node processes on each H-path backend (issue 12).

For each backend of ``--backend`` (default ``torch,onnxruntime,onnxruntime-int8``) this starts, as
separate processes from the package's node table (the bring-up's ``python -m`` commands, the
``--stand-ins`` plan): sage_synthetic_sensors, sage_loopback_robot, sage_context and sage_control
(control enabled, so the loop closes through the loopback arm). The checkpoint is built here into a
temporary folder (the default architecture, ``--image-px`` images, normaliser fitted on the
synthetic task, untrained) and exported once at fp32 and int8 (``sage_hl_ros.deploy.export``, checked
against torch as every export is). Once the context node has run ``--steps`` H steps the bench reads:

- resident memory of each node process (and its children): PSS from /proc/<pid>/smaps_rollup (shared
  pages split between the processes that map them, so the stack's total is the sum; a process's
  share depends on its neighbours: the synthetic sensors import torch and so share torch's pages
  with a torch context node), RSS when smaps_rollup is unreadable; also RSS (what the process would
  hold alone) and its high-water mark (VmHWM, the peak incl. loading). Budgets are judged on both;
- the H step's latency from the context node's own /diagnostics (``inference_p50_ms`` /
  ``inference_p99_ms``: schema + backend, over its last 256 steps);
- ``torch_imported`` as each node reports it in /diagnostics ("torch" in its sys.modules).

Budgets (issue 12): context node <= 300 MB, control node <= 150 MB, torch_imported=0 for the
non-torch backends (the torch backend is the reference; its memory budget is reported, not expected).

    python bench/bench_deploy.py                       # 3 backends, 100 H steps each (~3 min on 2 cores)
    python bench/bench_deploy.py --steps 30 --backend onnxruntime
    python bench/bench_deploy.py --image-px 0          # the default model's own image size (128 px)

Last lines, one per backend:
bench_deploy: backend=<b> context_rss_mb=<a> control_rss_mb=<c> stack_rss_mb=<s> torch_imported=<0|1> h_step_p50_ms=<h>
(``*_rss_mb`` are PSS where readable, as above; stack = context + control; the line then adds
``context_vmrss_mb`` / ``control_vmrss_mb``, plain RSS.)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sage_hl_ros.paths import config_file  # noqa: E402
from sage_hl_ros.tools.ros_domain import isolate_ros_graph  # noqa: E402

BACKENDS = {  # name -> (inference_backend, onnx_precision)
    "torch": ("torch", "fp32"),
    "onnxruntime": ("onnxruntime", "fp32"),
    "onnxruntime-int8": ("onnxruntime", "int8"),
    "onnxruntime-fp16": ("onnxruntime", "fp16"),
}
BUDGET_MB = {"sage_context": 300.0, "sage_control": 150.0}
JOINTS = [f"joint{i}" for i in range(1, 8)]  # the package's default limits file's joints


# ---------------------------------------------------------------------------- memory
def _kb_fields(path: Path, keys: tuple[str, ...]) -> dict[str, float]:
    out = {}
    try:
        for line in path.read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in keys:
                out[key] = float(rest.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return out


def process_memory_mb(pid: int) -> dict[str, float]:
    """{"pss", "rss", "hwm"} in MB for ``pid`` and its descendants ("pss" falls back to RSS per
    process where smaps_rollup is unreadable; "source" says which was used)."""
    import psutil

    try:
        pids = [pid] + [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        pids = [pid]
    total = {"pss": 0.0, "rss": 0.0, "hwm": 0.0}
    sources = set()
    for p in pids:
        status = _kb_fields(Path(f"/proc/{p}/status"), ("VmRSS", "VmHWM"))
        rollup = _kb_fields(Path(f"/proc/{p}/smaps_rollup"), ("Pss",))
        if "Pss" in rollup:
            total["pss"] += rollup["Pss"] / 1024
            sources.add("pss")
        elif "VmRSS" in status:
            total["pss"] += status["VmRSS"] / 1024
            sources.add("rss")
        total["rss"] += status.get("VmRSS", 0.0) / 1024
        total["hwm"] += status.get("VmHWM", 0.0) / 1024
    total["processes"] = len(pids)
    total["source"] = "+".join(sorted(sources)) or "none"
    return total


# ---------------------------------------------------------------------------- model
def build_model_dir(workdir: Path, image_px: int, max_ratio: float, log) -> tuple[Path, dict]:
    from sage_hl_ros.deploy.export import ExportConfig, export_model
    from sage_hl_ros.tools.models import make_synthetic_checkpoint

    model_dir = workdir / "model"
    make_synthetic_checkpoint(config_file("model.yaml"), model_dir, steps=0, image_px=image_px,
                              joint_names=JOINTS, log=lambda s: None)
    t0 = time.perf_counter()
    cfg = ExportConfig(precisions=["fp32", "int8"], held_out_sequences=4, held_out_steps=2, calibration_sequences=8,
                       threads=2, max_action_error_ratio=max_ratio)
    results = export_model(model_dir, cfg, log=lambda s: None)
    checks = {p: m["check"] for p, m in results.items()}
    from sage_hl_ros.core.checkpoint_files import read_config

    o = read_config(model_dir).observation
    log(f"checkpoint: default architecture, {o.image_width_px}x{o.image_height_px} px images, untrained; "
        f"exported fp32 + int8 "
        f"in {time.perf_counter() - t0:.0f} s (" + ", ".join(
            f"{p}: max|dz| {c['max_abs_dz']:.2g}, action error ratio {c['action_error_ratio']:.3f}"
            for p, c in checks.items()) + ")")
    return model_dir.resolve(), checks


# ---------------------------------------------------------------------------- one backend
class DiagnosticsListener:
    """The newest values of every /diagnostics status, by status name."""

    def __init__(self):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor

        rclpy.init()
        self.node = rclpy.create_node("bench_deploy")
        self.lock = threading.Lock()
        self.latest: dict[str, dict[str, str]] = {}
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 50)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_diag(self, msg) -> None:
        with self.lock:
            for st in msg.status:
                self.latest[st.name] = {kv.key: kv.value for kv in st.values}

    def get(self, name: str) -> dict[str, str]:
        with self.lock:
            return dict(self.latest.get(name, {}))

    def clear(self) -> None:
        with self.lock:
            self.latest.clear()

    def close(self) -> None:
        import rclpy

        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        rclpy.try_shutdown()


def run_backend(name: str, model_dir: Path, workdir: Path, steps: int, timeout_s: float,
                diag: DiagnosticsListener) -> dict:
    from sage_hl_ros.tools.bringup import NodeProcesses, build_parser, plan_nodes

    backend, precision = BACKENDS[name]
    params = yaml.safe_load(config_file("sage_hl.yaml").read_text())
    params["sage_context"]["ros__parameters"].update(
        inference_backend=backend, onnx_precision=precision, diagnostics_period_s=0.5)
    params["sage_control"]["ros__parameters"].update(diagnostics_period_s=0.5)
    params_file = workdir / f"params_{name}.yaml"
    params_file.write_text(yaml.safe_dump(params))
    plan = plan_nodes(build_parser().parse_args(
        ["--stand-ins", "--enable-control", "--model-dir", str(model_dir), "--params-file", str(params_file)]))
    diag.clear()
    nodes = NodeProcesses(workdir / f"logs_{name}")
    t_start = time.monotonic()
    try:
        for spec, cmd in plan:
            nodes.start(spec.name, cmd)
        deadline = t_start + timeout_s
        h_loop: dict[str, str] = {}
        while time.monotonic() < deadline:
            if nodes.exited():
                raise RuntimeError(f"{name}: node(s) exited {nodes.exited()}; logs in {nodes.log_dir}")
            h_loop = diag.get("sage_context: H loop")
            if h_loop and int(h_loop.get("latents_published", 0)) >= steps:
                break
            time.sleep(0.25)
        else:
            raise RuntimeError(f"{name}: fewer than {steps} H steps in {timeout_s:.0f} s ({h_loop}); logs in "
                               f"{nodes.log_dir}")
        ready_s = time.monotonic() - t_start
        time.sleep(1.2)  # one more diagnostics period: the values cover the last steps
        memory = {n: process_memory_mb(p.pid) for n, p in nodes.procs.items()}
        h_loop = diag.get("sage_context: H loop")
        model = diag.get("sage_context: model")
        control = diag.get("sage_control: control loop")
    finally:
        nodes.stop(grace_s=10.0)
    if model.get("inference_backend") != backend:
        raise RuntimeError(f"{name}: the context node runs {model.get('inference_backend')!r}, asked {backend!r} "
                           f"({model.get('inference_backend_reason')})")
    return {
        "memory": memory, "ready_s": ready_s,
        "h_p50_ms": float(h_loop["inference_p50_ms"]), "h_p99_ms": float(h_loop["inference_p99_ms"]),
        "h_max_ms": float(h_loop["inference_max_ms"]), "h_rate_hz": float(h_loop["rate_hz"]),
        "steps": int(h_loop["steps"]), "published": int(h_loop["latents_published"]),
        "torch_context": model.get("torch_imported") == "true",
        "torch_control": control.get("torch_imported") == "true",
        "providers": model.get("onnx_providers", ""), "control_period_p99_ms": control.get("period_p99_ms", "nan"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="torch,onnxruntime,onnxruntime-int8",
                        help=f"comma-separated, of {', '.join(BACKENDS)}")
    parser.add_argument("--steps", type=int, default=100, help="H steps (published latents) per backend")
    parser.add_argument("--image-px", type=int, default=32,
                        help="camera/depth size of the model (0 = config/model.yaml's own, 128 px)")
    parser.add_argument("--max-action-error-ratio", type=float, default=3.0,
                        help="export check limit (the checkpoint is untrained: its ratio is noise)")
    parser.add_argument("--timeout-s", type=float, default=240.0, help="per backend")
    args = parser.parse_args()
    names = [b.strip() for b in args.backend.split(",") if b.strip()]
    unknown = [b for b in names if b not in BACKENDS]
    if unknown or not names:
        parser.error(f"--backend: unknown {unknown}; choose from {', '.join(BACKENDS)}")
    isolate_ros_graph(keep_existing=True)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(f"machine: {os.cpu_count()} cores, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench_deploy_") as tmp:
        workdir = Path(tmp)
        model_dir, _ = build_model_dir(workdir, args.image_px, args.max_action_error_ratio, print)
        diag = DiagnosticsListener()
        try:
            for name in names:
                r = run_backend(name, model_dir, workdir, args.steps, args.timeout_s, diag)
                results[name] = r
                mem = r["memory"]
                print(f"{name:17s} H step p50 {r['h_p50_ms']:.2f} p99 {r['h_p99_ms']:.2f} max {r['h_max_ms']:.2f} ms "
                      f"over {r['steps']} steps ({r['h_rate_hz']:.1f} Hz; first {args.steps} latents after "
                      f"{r['ready_s']:.0f} s)" + (f"  providers {r['providers']}" if r["providers"] else ""))
                for node in ("sage_context", "sage_control", "synthetic_sensors", "loopback_robot"):
                    m = mem[node]
                    print(f"{'':17s} {node:17s} PSS {m['pss']:6.1f} MB  RSS {m['rss']:6.1f} MB  peak RSS "
                          f"{m['hwm']:6.1f} MB  ({m['source']}, {m['processes']} process(es))")
                print(f"{'':17s} torch imported: context {int(r['torch_context'])}, control {int(r['torch_control'])}; "
                      f"control period p99 {float(r['control_period_p99_ms']):.2f} ms; load average "
                      f"{os.getloadavg()[0]:.2f}")
        finally:
            diag.close()
    # PSS splits shared pages among the processes mapping them, so a process's PSS depends on its
    # neighbours (the torch stand-ins share torch's pages with a torch context node); RSS is what the
    # process would hold alone, an upper bound. Both are judged.
    print("budgets (issue 12): PSS (the line's figure) and RSS (the process alone, upper bound)")
    for name, r in results.items():
        mem, torch_backend = r["memory"], BACKENDS[name][0] == "torch"
        parts = []
        for node, limit in BUDGET_MB.items():
            m = mem[node]
            parts.append(f"{node} <= {limit:.0f} MB: PSS {m['pss']:.0f} {'PASS' if m['pss'] <= limit else 'MISS'}, "
                         f"RSS {m['rss']:.0f} {'PASS' if m['rss'] <= limit else 'MISS'}")
        imported = r["torch_context"] or r["torch_control"]
        parts.append("torch_imported=0: " + ("n/a (torch backend)" if torch_backend else
                                             ("PASS" if not imported else "MISS")))
        note = " (the reference backend)" if torch_backend else ""
        print(f"  {name:17s} " + "; ".join(parts) + note)
    for name, r in results.items():
        mem = r["memory"]
        ctx, ctl = mem["sage_context"]["pss"], mem["sage_control"]["pss"]
        print(f"bench_deploy: backend={name} context_rss_mb={ctx:.0f} control_rss_mb={ctl:.0f} "
              f"stack_rss_mb={ctx + ctl:.0f} torch_imported={int(r['torch_context'] or r['torch_control'])} "
              f"h_step_p50_ms={r['h_p50_ms']:.2f} context_vmrss_mb={mem['sage_context']['rss']:.0f} "
              f"control_vmrss_mb={mem['sage_control']['rss']:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
