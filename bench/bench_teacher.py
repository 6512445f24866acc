#!/usr/bin/env python3
"""GR00T teacher benchmark over loopback ZeroMQ against the protocol stand-in (not a GR00T model).

Processes: the protocol stand-in (``python -m sage_hl_ros.groot.standin``, its IK expert answering
get_action), the teacher node (``python -m sage_hl_ros.ros.groot_teacher_node``), and this process.

Measured:
- get_action round trip from the pure client (encode a 224x224 rgb frame + joint state, the
  stand-in decodes and answers a 16-step chunk, decode and check it): p50/p99 over ``--iterations``
  after 20 warm-up requests. This is the transport and codec cost; a real GR00T server adds its
  model inference (tens of ms on a GPU) on top.
- teacher label rate sustained by the node at ``--rate-hz`` while this process publishes a 224x224
  rgb8 camera at 30 Hz and joint states at 100 Hz: from the node's own /diagnostics counters
  (labels over the diagnostics' header-stamp span), after warm-up.

    python bench/bench_teacher.py                 # n1.6, 300 requests, 10 s of labels at 30 Hz
    python bench/bench_teacher.py --protocol n1.5 --quick

Last line: bench_teacher: protocol=<v> rtt_p50_ms=<a> rtt_p99_ms=<b> label_hz=<c>
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(os.getpid() % 50 + 150))
os.environ.setdefault("MUJOCO_GL", "egl")

from sage_hl_ros.groot.client import GrootClient, GrootTeacher  # noqa: E402
from sage_hl_ros.groot.modality_map import load_modality_map  # noqa: E402
from sage_hl_ros.paths import config_file  # noqa: E402

HOME = np.array([0.0, 0.35, 0.0, -2.1, 0.0, 2.45, 0.0])
TARGET = np.array([0.5, 0.05, 0.04])
JOINTS = [f"joint{i}" for i in range(1, 8)]
SIDE_PX = 224


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    out = open(log, "wb")  # noqa: SIM115 - closed in _stop
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    proc.log = out  # type: ignore[attr-defined]
    return proc


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    proc.log.close()  # type: ignore[attr-defined]


def measure_rtt(endpoint: str, version: str, iterations: int) -> tuple[float, float]:
    mmap = load_modality_map(config_file("groot/sim_arm.yaml"))
    client = GrootClient(endpoint, 30.0)
    try:
        teacher = GrootTeacher(client, mmap, version)
        frame = np.random.default_rng(0).integers(0, 256, (SIDE_PX, SIDE_PX, 3), dtype=np.uint8)
        rtts = []
        for i in range(20 + iterations):
            q = HOME + 0.01 * np.sin(i + np.arange(7))
            t0 = time.perf_counter()
            chunk = teacher.query({"ego_view": frame}, q, {"target": TARGET})
            dt = time.perf_counter() - t0
            assert chunk.shape == (16, 7)
            if i >= 20:
                rtts.append(dt * 1e3)
        return float(np.percentile(rtts, 50)), float(np.percentile(rtts, 99))
    finally:
        client.close()


def measure_label_rate(endpoint: str, rate_hz: float, seconds: float, log: Path) -> float:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PointStamped
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image, JointState

    from sage_hl_ros.ros.convert import numpy_to_image

    proc = _start([sys.executable, "-m", "sage_hl_ros.ros.groot_teacher_node", "--ros-args",
                   "-p", f"endpoint:={endpoint}", "-p", f"rate_hz:={rate_hz}", "-p", "timeout_s:=1.0",
                   "-p", "diagnostics_period_s:=0.5"], log)
    rclpy.init()
    node = rclpy.create_node("bench_teacher")
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    samples: list[tuple[float, int]] = []  # (diagnostic stamp s, labels)
    lock = threading.Lock()

    def on_diag(msg: DiagnosticArray) -> None:
        for st in msg.status:
            if st.name.endswith(": teacher"):
                values = {kv.key: kv.value for kv in st.values}
                with lock:
                    samples.append((msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9, int(values["labels"])))

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, reliable)
    target_pub = node.create_publisher(PointStamped, "/sim/target", latched)
    joints_pub = node.create_publisher(JointState, "/joint_states", reliable)
    image_pub = node.create_publisher(Image, "/rgb", reliable)
    target = PointStamped()
    target.header.stamp = node.get_clock().now().to_msg()
    target.point.x, target.point.y, target.point.z = (float(v) for v in TARGET)
    target_pub.publish(target)
    frame = np.random.default_rng(1).integers(0, 256, (SIDE_PX, SIDE_PX, 3), dtype=np.uint8)
    k = [0]

    def joints() -> None:
        msg = JointState(name=JOINTS, position=[float(v) for v in HOME + 0.01 * np.sin(0.05 * k[0] + np.arange(7))])
        k[0] += 1
        msg.header.stamp = node.get_clock().now().to_msg()
        joints_pub.publish(msg)

    node.create_timer(0.01, joints)
    node.create_timer(1 / 30, lambda: image_pub.publish(
        numpy_to_image(frame, "rgb8", node.get_clock().now().to_msg(), "camera")))
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # warm-up: labels flowing
            with lock:
                if samples and samples[-1][1] >= 10:
                    break
            if proc.poll() is not None:
                raise RuntimeError(f"teacher node exited {proc.returncode}; see {log}")
            time.sleep(0.1)
        else:
            raise RuntimeError(f"no labels within 60 s; see {log}")
        with lock:
            start = samples[-1]
        time.sleep(seconds)
        with lock:
            end = samples[-1]
        return (end[1] - start[1]) / (end[0] - start[0])
    finally:
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown()
        _stop(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", choices=("n1.5", "n1.6"), default="n1.6")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--rate-hz", type=float, default=30.0, help="teacher request rate for the label-rate part")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="50 requests, 3 s of labels")
    args = parser.parse_args()
    if args.quick:
        args.iterations, args.seconds = 50, 3.0
    port = _free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="bench_teacher_") as tmp:
        standin = _start([sys.executable, "-m", "sage_hl_ros.groot.standin", "--port", str(port),
                          "--protocol", args.protocol], Path(tmp) / "standin.log")
        try:
            p50, p99 = measure_rtt(endpoint, args.protocol, args.iterations)
            print(f"get_action round trip, {SIDE_PX}x{SIDE_PX} rgb + 7 joints -> 16x7 chunk, "
                  f"{args.iterations} requests: p50 {p50:.2f} ms, p99 {p99:.2f} ms", flush=True)
            hz = measure_label_rate(endpoint, args.rate_hz, args.seconds, Path(tmp) / "teacher.log")
            print(f"teacher labels at rate_hz {args.rate_hz:g}: {hz:.1f} Hz sustained over {args.seconds:g} s",
                  flush=True)
        finally:
            _stop(standin)
    print(f"bench_teacher: protocol={args.protocol} rtt_p50_ms={p50:.2f} rtt_p99_ms={p99:.2f} label_hz={hz:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
