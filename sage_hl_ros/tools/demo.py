"""The main job (``make run``): the whole runtime on a synthetic robot, measured from outside.

1. builds a checkpoint trained on the synthetic reaching task (the learned mapping is real: the
   goal seen by the camera decides where the joints go);
2. starts, each as its own process, the synthetic sensors, a loopback (simulated) arm, the context
   (H) node and the control (L) node with control enabled and joint limits applied;
3. watches commands, latents, joint states and diagnostics for ``duration_s`` and prints rates,
   control-loop timing, inference latency and how close the arm gets to each goal;
4. writes ``<workdir>/report.md`` and ends with one summary line.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import yaml

from ..launch_table import RUNTIME_NODES, STAND_IN_NODES
from ..paths import config_file
from .bringup import NodeProcesses, node_command
from .models import make_synthetic_checkpoint

CONTROL_RATE_HZ = 200.0


def _limits_yaml(joint_names: list[str], path: Path) -> Path:
    limits = {name: {"position_min_rad": -3.0, "position_max_rad": 3.0, "velocity_max_rad_s": 2.0,
                     "acceleration_max_rad_s2": 20.0} for name in joint_names}
    path.write_text(yaml.safe_dump({"joint_limits": limits}))
    return path


def run_demo(duration_s: float = 20.0, quick: bool = False, workdir: Path = Path("runs/demo")) -> int:
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    import torch

    torch.set_num_threads(2)
    workdir.mkdir(parents=True, exist_ok=True)
    model_dir = workdir / "model"
    steps, image_px = (20, 32) if quick else (300, 64)
    print(f"[1/3] checkpoint -> {model_dir}", flush=True)
    info = make_synthetic_checkpoint(config_file("model.yaml"), model_dir, steps=steps, image_px=image_px,
                                     log=lambda s: print("      " + s, flush=True))
    torch.set_num_threads(1)
    cfg = yaml.safe_load((config_file("model.yaml")).read_text())
    joint_names = cfg["observation"]["joint_names"]
    limits = _limits_yaml(joint_names, workdir / "joint_limits.yaml")

    print(f"[2/3] starting nodes (logs in {workdir / 'logs'})", flush=True)
    nodes = NodeProcesses(workdir / "logs")
    try:
        summary, rc = _run_nodes(nodes, model_dir, limits, joint_names, duration_s, info, workdir)
    finally:
        codes = nodes.stop()
    if summary is None:
        return rc
    bad = {k: v for k, v in codes.items() if v not in (0, -2, 130)}
    if bad:
        print(f"warning: unclean node exits {bad}")
    _report(workdir / "report.md", summary)
    print(f"report: {workdir / 'report.md'}")
    print("demo_runtime: " + " ".join(f"{k}={v}" for k, v in summary["line"].items()))
    return rc


def _run_nodes(nodes: NodeProcesses, model_dir: Path, limits: Path, joint_names: list[str], duration_s: float,
               info: dict, workdir: Path) -> tuple[dict | None, int]:
    params = [config_file("sage_hl.yaml")]
    overrides = {
        "sage_context": {"model_dir": str(model_dir.resolve()), "autostart": True},
        "sage_control": {"model_dir": str(model_dir.resolve()), "autostart": True, "enable_control": True,
                         "joint_limits_file": str(limits.resolve()), "control_rate_hz": CONTROL_RATE_HZ},
        "synthetic_sensors": {"seed": 0, "goal_period_s": 4.0},
        "loopback_robot": {"rate_hz": 500.0},
    }
    for spec in RUNTIME_NODES + STAND_IN_NODES:
        nodes.start(spec.name, node_command(spec, params if spec in RUNTIME_NODES else [], overrides[spec.name]))

    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from ..ros.monitor import StackMonitor

    rclpy.init()
    monitor = StackMonitor(joint_names)
    executor = SingleThreadedExecutor()
    executor.add_node(monitor)
    threading.Thread(target=executor.spin, daemon=True).start()
    try:
        start = time.monotonic()
        # Commands alone are not enough: the control node (torch-free) is up before the context node
        # and publishes holds until the first latent. Measure once both flow.
        while not (monitor.commands.times_s and monitor.latents.times_s) and time.monotonic() - start < 90 \
                and not nodes.exited():
            time.sleep(0.2)
        if not (monitor.commands.times_s and monitor.latents.times_s):
            print(f"error: no commands and latents within 90 s; node exits: {nodes.exited()}; see {workdir / 'logs'}")
            return None, 1
        print(f"[3/3] latents and commands flowing after {time.monotonic() - start:.1f} s; "
              f"measuring for {duration_s:g} s",
              flush=True)
        t0 = time.monotonic()
        rc = 0
        while time.monotonic() - t0 < duration_s:
            time.sleep(0.5)
            if nodes.exited():
                print(f"error: a node exited: {nodes.exited()}")
                rc = 1
                break
        return _summarize(monitor, t0, info), rc
    finally:
        executor.shutdown(timeout_sec=1.0)
        monitor.destroy_node()
        rclpy.try_shutdown()


def _summarize(m, t0: float, info: dict) -> dict:
    gaps = m.commands.gaps_ms(t0)
    cmd_hz, lat_hz, js_hz = m.commands.rate_hz(t0), m.latents.rate_hz(t0), m.joint_states.rate_hz(t0)
    ctl = "sage_control"
    values = {
        "control loop rate (node), Hz": m.diag_value(ctl, "rate_hz"),
        "control tick period p50 / p99, ms": (m.diag_value(ctl, "period_p50_ms"), m.diag_value(ctl, "period_p99_ms")),
        "control tick compute p50 / p99, us": (m.diag_value(ctl, "compute_p50_us"),
                                               m.diag_value(ctl, "compute_p99_us")),
        "H inference p50 / p99, ms": (m.diag_value("sage_context", "inference_p50_ms"),
                                      m.diag_value("sage_context", "inference_p99_ms")),
    }
    reach = np.array(m.reach_per_goal(t0)).reshape(-1, 2)
    rows = [
        ("commands received, Hz", f"{cmd_hz:.1f} (target {CONTROL_RATE_HZ:g})"),
        ("command inter-arrival p50 / p99, ms", f"{np.nanpercentile(gaps, 50):.2f} / {np.nanpercentile(gaps, 99):.2f}"),
        ("latents received, Hz", f"{lat_hz:.1f} (target 10)"),
        ("joint states received, Hz", f"{js_hz:.1f}"),
    ]
    for k, v in values.items():
        rows.append((k, " / ".join(f"{x:.2f}" for x in v) if isinstance(v, tuple) else f"{v:.1f}"))
    if info.get("held_out_error_after_rad") is not None:
        rows.append(("synthetic held-out action error, rad",
                     f"{info['held_out_error_before_rad']:.4f} -> {info['held_out_error_after_rad']:.4f}"))
    if len(reach):
        rows.append((f"mean joint distance to goal at goal change -> before next ({len(reach)} goals), rad",
                     f"{reach[:, 0].mean():.3f} -> {reach[:, 1].mean():.3f}"))
    print("\n".join(f"  {k:40s} {v}" for k, v in rows))
    line = {"cmd_hz": f"{cmd_hz:.1f}", "latent_hz": f"{lat_hz:.1f}",
            "period_p99_ms": f"{values['control tick period p50 / p99, ms'][1]:.2f}",
            "h_infer_p50_ms": f"{values['H inference p50 / p99, ms'][0]:.2f}",
            "tick_compute_p99_us": f"{values['control tick compute p50 / p99, us'][1]:.0f}",
            "goal_dist_start_rad": f"{reach[:, 0].mean():.3f}" if len(reach) else "nan",
            "goal_dist_end_rad": f"{reach[:, 1].mean():.3f}" if len(reach) else "nan"}
    return {"rows": rows, "line": line}


def _report(path: Path, summary: dict) -> None:
    lines = ["# sage_hl_ros demo", "", "| measure | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary["rows"]]
    path.write_text("\n".join(lines) + "\n")
