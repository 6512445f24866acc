#!/usr/bin/env python3
"""Runtime benchmark: control-loop timing and joint_states -> command latency across processes.

Processes: synthetic sensors (640x480 rgb8 camera + depth at 30 Hz), the context node (H, 10 Hz,
default model), the control node (L, at 200, 500 and 1000 Hz, control enabled, joint_state
command interface), and this process, which publishes /joint_states at 500 Hz and receives the
commands.

Measured:
- control-loop period p50/p99/max and missed ticks (> 1.5 periods), from the control node's own
  tick clock (its /diagnostics), after warm-up;
- e2e latency: for each command received here, its arrival time minus the publish time of the
  newest joint state published before the tick that produced it (the age of the freshest input
  the command could have used, as the robot sees it), p50/p99; plus tick -> arrival alone;
- CPU% per node process (psutil) over the measuring window.

    python bench/bench_ros.py                      # 15 s per rate
    python bench/bench_ros.py --quick              # 4 s per rate, to check it runs
    python bench/bench_ros.py --realtime-priority 10   # SCHED_FIFO control thread (needs CAP_SYS_NICE)

Last line: bench_ros: hz=500 period_p99_err_ms=<x> missed_ticks=<n> e2e_p99_ms=<y> cpu_pct=<c>
"""

from __future__ import annotations

import argparse
import bisect
import os
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(os.getpid() % 50 + 150))

from sage_hl_ros.launch_table import RUNTIME_NODES, STAND_IN_NODES  # noqa: E402
from sage_hl_ros.paths import config_file  # noqa: E402
from sage_hl_ros.tools.bringup import NodeProcesses, node_command  # noqa: E402
from sage_hl_ros.tools.models import make_synthetic_checkpoint  # noqa: E402

JOINTS = [f"joint{i}" for i in range(1, 8)]


def start_stack(workdir: Path, model_dir: Path, limits: Path, hz: float, rt_priority: int) -> NodeProcesses:
    nodes = NodeProcesses(workdir / f"logs_{int(hz)}")
    spec = {s.name: s for s in RUNTIME_NODES + STAND_IN_NODES}
    params = [config_file("sage_hl.yaml")]
    nodes.start("synthetic_sensors", node_command(spec["synthetic_sensors"], [], {
        "camera_width_px": 640, "camera_height_px": 480, "camera_rate_hz": 30.0, "depth_rate_hz": 30.0}))
    nodes.start("sage_context", node_command(spec["sage_context"], params, {
        "model_dir": str(model_dir), "autostart": True}))
    nodes.start("sage_control", node_command(spec["sage_control"], params, {
        "model_dir": str(model_dir), "autostart": True, "enable_control": True, "control_rate_hz": hz,
        "joint_limits_file": str(limits), "command_interface": "joint_state", "realtime_priority": rt_priority,
        "joint_state_timeout_s": 0.2}))
    return nodes


def measure(hz: float, seconds: float, workdir: Path, model_dir: Path, limits: Path, rt_priority: int) -> dict:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import JointState

    nodes = start_stack(workdir, model_dir, limits, hz, rt_priority)
    sys.setswitchinterval(1e-4)  # this process publishes and receives at 500 Hz from two threads
    rclpy.init()
    node = rclpy.create_node("bench_ros")
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    js_pub = node.create_publisher(JointState, "/joint_states", qos)
    sent_ns: list[int] = []  # publish times (CLOCK_REALTIME ns, the clock the nodes stamp with)
    recv: list[tuple[int, int]] = []  # (command stamp ns, arrival ns)
    diag: dict[str, str] = {}
    lock = threading.Lock()

    def on_cmd(raw: bytes) -> None:  # raw CDR: the stamp is the first field after the 4-byte encapsulation
        arrival = time.time_ns()
        sec, nsec = struct.unpack_from("<iI", raw, 4)
        with lock:
            recv.append((sec * 1_000_000_000 + nsec, arrival))

    def on_diag(msg: DiagnosticArray) -> None:
        for st in msg.status:
            if st.name.startswith("sage_control") and "period_p99_ms" in {kv.key for kv in st.values}:
                diag.clear()
                diag.update({kv.key: kv.value for kv in st.values})

    node.create_subscription(JointState, "/joint_command", on_cmd, qos, raw=True)
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, qos)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()

    stop = threading.Event()

    def publish_joints() -> None:  # 500 Hz on absolute deadlines
        msg = JointState(name=JOINTS, position=[0.1] * 7, velocity=[0.0] * 7)
        period, nxt = 0.002, time.monotonic()
        while not stop.is_set():
            now = time.time_ns()
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now, 1_000_000_000)
            js_pub.publish(msg)
            with lock:
                sent_ns.append(now)
            nxt += period
            time.sleep(max(0.0, nxt - time.monotonic()))

    pub_thread = threading.Thread(target=publish_joints, daemon=True)
    pub_thread.start()
    try:
        deadline = time.monotonic() + 90
        while not recv and time.monotonic() < deadline and not nodes.exited():
            time.sleep(0.2)
        if not recv:
            raise RuntimeError(f"no commands at {hz} Hz (exits: {nodes.exited()}); logs in {workdir}")
        time.sleep(3.0)  # warm-up: loops settle, first diagnostics out
        procs = {name: psutil.Process(p.pid) for name, p in nodes.procs.items()}
        for p in procs.values():
            p.cpu_percent(None)
        with lock:
            recv.clear()
        ticks0 = float(diag.get("ticks", 0))
        missed0 = float(diag.get("missed_ticks", 0))
        window = (time.time_ns(), time.time_ns() + int(seconds * 1e9))
        time.sleep(seconds)
        cpu = {name: p.cpu_percent(None) for name, p in procs.items()}
        time.sleep(1.2)  # one more diagnostics message covering the window
        with lock:
            cmds, sent = list(recv), list(sent_ns)
    finally:
        stop.set()
        pub_thread.join(timeout=1)
        executor.shutdown(timeout_sec=1)
        node.destroy_node()
        rclpy.try_shutdown()
        nodes.stop()
    e2e, tick_to_arrival = [], []
    for stamp, arrival in cmds:
        i = bisect.bisect_right(sent, stamp) - 1
        if i >= 0:
            e2e.append((arrival - sent[i]) / 1e6)
        tick_to_arrival.append((arrival - stamp) / 1e6)
    period_ms = 1000.0 / hz
    return {
        "hz": hz, "commands": len(cmds),
        "cmd_rate_hz": sum(window[0] <= a < window[1] for _, a in cmds) / seconds,
        "period_p50_ms": float(diag.get("period_p50_ms", "nan")),
        "period_p99_ms": float(diag.get("period_p99_ms", "nan")),
        "period_max_ms": float(diag.get("period_max_ms", "nan")),
        "period_p99_err_ms": abs(float(diag.get("period_p99_ms", "nan")) - period_ms),
        "missed_ticks": int(float(diag.get("missed_ticks", 0)) - missed0),
        "ticks": int(float(diag.get("ticks", 0)) - ticks0),
        "compute_p99_us": float(diag.get("compute_p99_us", "nan")),
        "e2e_p50_ms": float(np.percentile(e2e, 50)), "e2e_p99_ms": float(np.percentile(e2e, 99)),
        "tick_to_arrival_p99_ms": float(np.percentile(tick_to_arrival, 99)),
        "cpu": cpu,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 s per rate")
    parser.add_argument("--seconds", type=float, default=15.0, help="measuring window per rate")
    parser.add_argument("--rates", default="200,500,1000", help="control rates to measure, Hz")
    parser.add_argument("--realtime-priority", type=int, default=0, help="SCHED_FIFO priority of the control thread")
    args = parser.parse_args()
    seconds = 4.0 if args.quick else args.seconds
    rates = [float(r) for r in args.rates.split(",")]

    with tempfile.TemporaryDirectory(prefix="bench_ros_") as tmp:
        workdir = Path(tmp)
        model_dir = workdir / "model"
        make_synthetic_checkpoint(config_file("model.yaml"), model_dir, steps=0, log=lambda s: None)
        limits = workdir / "limits.yaml"
        limits.write_text(yaml.safe_dump({"joint_limits": {j: {
            "position_min_rad": -3.0, "position_max_rad": 3.0, "velocity_max_rad_s": 2.0,
            "acceleration_max_rad_s2": 20.0} for j in JOINTS}}))
        print(f"default model (config/model.yaml), camera 640x480 @ 30 Hz, H 10 Hz, joint states 500 Hz, "
              f"{seconds:g} s per rate, realtime_priority={args.realtime_priority}")
        results = {}
        for hz in rates:
            r = measure(hz, seconds, workdir, model_dir.resolve(), limits.resolve(), args.realtime_priority)
            results[hz] = r
            cpu = " ".join(f"{k}={v:.0f}%" for k, v in r["cpu"].items())
            print(f"{hz:6.0f} Hz: commands {r['cmd_rate_hz']:7.1f}/s  period p50 {r['period_p50_ms']:.3f} "
                  f"p99 {r['period_p99_ms']:.3f} max {r['period_max_ms']:.3f} ms (p99 err "
                  f"{r['period_p99_err_ms']:.3f} ms)  missed {r['missed_ticks']}/{r['ticks']}  "
                  f"L tick p99 {r['compute_p99_us']:.0f} us")
            print(f"          e2e joint_states->command p50 {r['e2e_p50_ms']:.3f} p99 {r['e2e_p99_ms']:.3f} ms "
                  f"(tick->arrival p99 {r['tick_to_arrival_p99_ms']:.3f} ms)  cpu: {cpu}")
    r = results.get(500.0) or next(iter(results.values()))
    print(f"budget @500 Hz: period p99 err < 0.3 ms and 0 missed -> "
          f"{'OK' if r['period_p99_err_ms'] < 0.3 and r['missed_ticks'] == 0 else 'MISSED'}; "
          f"e2e p99 < 3 ms -> {'OK' if r['e2e_p99_ms'] < 3 else 'MISSED'}")
    print(f"bench_ros: hz={r['hz']:.0f} period_p99_err_ms={r['period_p99_err_ms']:.3f} "
          f"missed_ticks={r['missed_ticks']} e2e_p99_ms={r['e2e_p99_ms']:.3f} "
          f"cpu_pct={r['cpu'].get('sage_control', float('nan')):.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
