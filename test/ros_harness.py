"""Shared helpers for the ROS graph tests (real rclpy over DDS, localhost only).

- ``ros_env()`` / the ``ros_domain`` fixture: ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` and a
  ``ROS_DOMAIN_ID`` reserved machine-wide for this pytest process (tools/ros_domain.py), so
  parallel test runs on one machine do not see each other. Child processes inherit both.
- ``make_checkpoint``: a small model whose L-module output is a constant joint delta (``bias``),
  so commands are predictable: with ``bias=0`` a command equals the measured joint position,
  which makes joint ordering and hold behaviour visible from outside.
- ``start_process`` / ``stop_process``: nodes as separate commands in their own session, stopped
  by process group (SIGINT, then SIGKILL after a grace period; DESIGN §6).
- ``Harness``: an rclpy node that streams latents / joint states, records any topic with receive
  times, calls services; ``Spinner`` spins nodes on a background SingleThreadedExecutor.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from sage_hl_ros.tools.ros_domain import isolate_ros_graph


def ros_env() -> dict[str, str]:
    """Set (and return) the env that isolates this test process's ROS graph."""
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    return isolate_ros_graph(keep_existing=False)  # conftest reserved it already: the same id


@pytest.fixture(scope="session")
def ros_domain():
    return ros_env()


def wait_for(predicate, timeout_s: float = 10.0, interval_s: float = 0.02, what: str = "condition"):
    """Poll ``predicate`` until truthy; returns its value or fails with ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.1f} s waiting for {what}")
        time.sleep(interval_s)


# --------------------------------------------------------------------------- files


def small_config_dict(joint_names: list[str]) -> dict:
    """The default architecture on 32x32 images (same code paths, a fraction of the compute)."""
    return {
        "observation": {"joint_names": list(joint_names), "image_height_px": 32, "image_width_px": 32,
                        "depth_height_px": 32, "depth_width_px": 32, "audio_window_samples": 1024},
    }


def make_checkpoint(directory: Path, joint_names: list[str], bias: float | None = 0.0,
                    model_overrides: dict | None = None, observation_overrides: dict | None = None,
                    robot: dict | None = None) -> Path:
    """Save a small checkpoint. ``bias`` not None: the L-module outputs the constant delta ``bias``.
    ``model_overrides``: of the model config (e.g. ``{"action_chunk": 4}``); ``observation_overrides``:
    keys of its observation config (e.g. ``{"sensors": ["camera"]}``); ``robot``: its robot contract
    (the ``robot:`` mapping of a contract file; its joints must be ``joint_names``)."""
    import torch

    from sage_hl_ros.core.checkpoint import save_checkpoint
    from sage_hl_ros.core.config import SageConfig
    from sage_hl_ros.core.system import build_model

    cfg = small_config_dict(joint_names)
    if model_overrides:
        cfg["model"] = dict(model_overrides)
    cfg["observation"].update(observation_overrides or {})
    if robot is not None:
        cfg["robot"] = robot
    model = build_model(SageConfig.from_dict(cfg))
    if bias is not None:
        last = model.l_module.net[-1]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.fill_(bias)
    return save_checkpoint(model, directory)


def write_limits(path: Path, limits: dict[str, tuple[float, float, float, float]]) -> Path:
    """joint -> (position_min_rad, position_max_rad, velocity_max_rad_s, acceleration_max_rad_s2)."""
    lines = ["joint_limits:"]
    for name, (lo, hi, v, a) in limits.items():
        lines.append(f"  {name}: {{position_min_rad: {lo}, position_max_rad: {hi}, "
                     f"velocity_max_rad_s: {v}, acceleration_max_rad_s2: {a}}}")
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------- processes


def script(name: str) -> str:
    """Path of a console script installed next to this Python (the venv's bin)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        pytest.skip(f"console script {name} not installed (pip install -e .)")
    return str(path)


def ros_args(params: dict) -> list[str]:
    out = ["--ros-args"]
    for key, value in params.items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, (list, tuple)):
            value = "[" + ",".join(str(v) for v in value) + "]"
        out += ["-p", f"{key}:={value}"]
    return out


def start_process(cmd: list[str], log_path: Path) -> subprocess.Popen:
    """Start a node as its own session (its own process group); stdout+stderr to ``log_path``."""
    env = dict(os.environ)
    env.update(ros_env())
    env["PYTHONUNBUFFERED"] = "1"
    log = open(log_path, "wb")  # noqa: SIM115 - closed in stop_process
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    proc.log_file = log  # type: ignore[attr-defined]
    proc.log_path = log_path  # type: ignore[attr-defined]
    return proc


def stop_process(proc: subprocess.Popen, grace_s: float = 10.0) -> tuple[int, bool]:
    """SIGINT the process group, SIGKILL it after ``grace_s``. Returns (exit code, was_killed)."""
    killed = False
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGINT)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            killed = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(5.0)
    log = getattr(proc, "log_file", None)
    if log is not None:
        log.close()
    return proc.returncode, killed


def read_log(proc) -> str:
    return Path(proc.log_path).read_text(errors="replace")


# --------------------------------------------------------------------------- in-process graph


class Spinner:
    """Spin nodes on a SingleThreadedExecutor in a background thread.

    Nodes come and go while it spins (one per test). ``remove`` waits until the executor has
    finished a wait cycle without the node, so destroying the node afterwards cannot pull a
    handle out from under the spinning thread; an error in one cycle is kept and spinning goes
    on, so one bad teardown never silently stops every later test's traffic.
    """

    def __init__(self, *nodes):
        from rclpy.executors import SingleThreadedExecutor

        self.executor = SingleThreadedExecutor()
        for node in nodes:
            self.executor.add_node(node)
        self.errors: list[BaseException] = []
        self._cycles = 0
        self._cycle_done = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self):
        from rclpy.executors import ExternalShutdownException

        while not self._stop.is_set():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except ExternalShutdownException:
                return
            except Exception as exc:  # keep spinning: the other nodes' traffic must go on
                if self._stop.is_set():
                    return
                self.errors.append(exc)
            with self._cycle_done:
                self._cycles += 1
                self._cycle_done.notify_all()

    def add(self, node):
        self.executor.add_node(node)
        self.executor.wake()

    def remove(self, node, timeout_s: float = 5.0):
        self.executor.remove_node(node)
        with self._cycle_done:
            target = self._cycles + 2  # the cycle in flight may still hold the node; the next cannot
            deadline = time.monotonic() + timeout_s
            while self._cycles < target and self._thread.is_alive():
                self.executor.wake()
                self._cycle_done.wait(min(0.05, max(0.0, deadline - time.monotonic())))
                if time.monotonic() > deadline:
                    raise AssertionError("executor did not finish a cycle without the removed node")

    def shutdown(self):
        self._stop.set()
        self.executor.wake()
        self._thread.join(5.0)
        self.executor.shutdown(timeout_sec=2.0)
        if self.errors:
            warnings.warn(f"executor raised {len(self.errors)} time(s) while spinning: {self.errors[:3]!r}",
                          stacklevel=2)


class Recorder:
    """Thread-safe (receive monotonic time, message) log of one subscription."""

    def __init__(self):
        self.lock = threading.Lock()
        self.items: list[tuple[float, object]] = []

    def __call__(self, msg):
        t = time.monotonic()
        with self.lock:
            self.items.append((t, msg))

    def snapshot(self) -> list[tuple[float, object]]:
        with self.lock:
            return list(self.items)

    def clear(self):
        with self.lock:
            self.items.clear()

    def count(self) -> int:
        with self.lock:
            return len(self.items)

    def since(self, t0: float) -> list[tuple[float, object]]:
        return [(t, m) for t, m in self.snapshot() if t >= t0]

    def last(self):
        with self.lock:
            return self.items[-1][1] if self.items else None


def diag_statuses(array_msg) -> dict[str, tuple[int, str, dict[str, str]]]:
    """DiagnosticArray -> {status name: (level, message, {key: value})}."""
    out = {}
    for st in array_msg.status:
        level = st.level if isinstance(st.level, int) else int.from_bytes(st.level, "little")
        out[st.name] = (level, st.message, {kv.key: kv.value for kv in st.values})
    return out


class Harness:
    """Test-side node: stream latents and joint states, record topics, call services."""

    def __init__(self, name: str = "test_harness"):
        from rclpy.node import Node
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        self.node = Node(name)
        self.reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self._pubs: dict[str, object] = {}
        self.recorders: dict[str, Recorder] = {}
        self._lock = threading.Lock()
        self.joint_names: list[str] = []
        self.joint_positions: dict[str, float] = {}
        self.joint_stream = False
        self.latent_stream = False
        self.latent = np.zeros(256, dtype=np.float32)
        self.joint_stamp_offset_s = 0.0
        self._joint_timer = None
        self._latent_timer = None

    def publisher(self, msg_type, topic: str, qos=None):
        key = f"{topic}|{msg_type.__name__}"
        if key not in self._pubs:
            self._pubs[key] = self.node.create_publisher(msg_type, topic, qos or self.reliable)
        return self._pubs[key]

    def publish(self, msg_type, topic: str, msg, qos=None):
        self.publisher(msg_type, topic, qos).publish(msg)

    def record(self, msg_type, topic: str, qos=None) -> Recorder:
        rec = Recorder()
        self.node.create_subscription(msg_type, topic, rec, qos or self.reliable)
        self.recorders[topic] = rec
        return rec

    def wait_for_subscribers(self, msg_type, topic: str, count: int = 1, timeout_s: float = 15.0):
        pub = self.publisher(msg_type, topic)
        wait_for(lambda: pub.get_subscription_count() >= count, timeout_s, what=f"a subscriber on {topic}")

    # ---------------------------------------------------------------- streams
    def stream_joints(self, names: list[str], positions: dict[str, float], rate_hz: float = 100.0,
                      topic: str = "/joint_states"):
        from sensor_msgs.msg import JointState

        self.joint_names, self.joint_positions = list(names), dict(positions)
        pub = self.publisher(JointState, topic)

        def tick():
            if not self.joint_stream:
                return
            msg = JointState()
            now_ns = self.node.get_clock().now().nanoseconds + int(self.joint_stamp_offset_s * 1e9)
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now_ns, 1_000_000_000)
            msg.name = list(self.joint_names)
            msg.position = [float(self.joint_positions[n]) for n in self.joint_names]
            msg.velocity = [0.0] * len(self.joint_names)
            pub.publish(msg)

        self.joint_stream = True
        if self._joint_timer is None:
            self._joint_timer = self.node.create_timer(1.0 / rate_hz, tick)

    def stream_latent(self, rate_hz: float = 10.0, topic: str = "/sage/latent"):
        from sensor_msgs.msg import Image

        from sage_hl_ros.ros.convert import latent_to_msg

        pub = self.publisher(Image, topic)

        def tick():
            if self.latent_stream:
                pub.publish(latent_to_msg(self.latent, self.node.get_clock().now().to_msg()))

        self.latent_stream = True
        if self._latent_timer is None:
            self._latent_timer = self.node.create_timer(1.0 / rate_hz, tick)

    # ---------------------------------------------------------------- services / params
    def call(self, srv_type, name: str, request=None, timeout_s: float = 20.0):
        client = self.node.create_client(srv_type, name)
        try:
            wait_for(lambda: client.service_is_ready(), timeout_s, what=f"service {name}")
            future = client.call_async(request or srv_type.Request())
            wait_for(future.done, timeout_s, what=f"response of {name}")
            return future.result()
        finally:
            self.node.destroy_client(client)

    def set_params(self, node_name: str, params: dict, timeout_s: float = 20.0):
        """Set parameters on a remote node; returns the SetParametersResult list."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        request = SetParameters.Request()
        request.parameters = [Parameter(k, value=v).to_parameter_msg() for k, v in params.items()]
        return self.call(SetParameters, f"/{node_name}/set_parameters", request, timeout_s).results

    def destroy(self):
        self.node.destroy_node()


def wait_diagnostic(harness, key: str, since: float, predicate=None, timeout_s: float = 10.0,
                    with_stamp: bool = False):
    """Newest ``key`` status (``"<node>: <part>"``) on /diagnostics received after ``since`` that
    satisfies ``predicate``; returns (level, message, values), or (header stamp [s] on the publishing
    node's clock, (level, message, values)) with ``with_stamp``."""
    rec = harness.recorders["/diagnostics"]

    def find():
        for _, msg in reversed(rec.since(since)):
            st = diag_statuses(msg).get(key)
            if st is not None and (predicate is None or predicate(st)):
                return (msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9, st) if with_stamp else st
        return None

    return wait_for(find, timeout_s, interval_s=0.05, what=f"a matching '{key}' diagnostic")
