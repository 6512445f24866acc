"""groot_teacher (console script ``sage_groot_teacher``): a GR00T policy server as a teacher.

GR00T (NVIDIA Isaac-GR00T N1.5 / N1.6) is a vision-language-action policy that returns action
chunks; it runs on a GPU server reached over ZeroMQ. At ``rate_hz`` this node sends the latest
observation (camera frames and joint groups mapped to GR00T keys by the modality map, plus the
task instruction), receives the chunk, and publishes it as teacher labels. It never commands the
robot: driving with GR00T goes through sage_control's safety filter, or is off.

A request blocks for up to ``timeout_s``, so it runs on the node's own loop thread
(:class:`ClockLoop`), never in the executor: subscriptions keep the latest sample meanwhile.

Subscribed topics
    <map cameras>             sensor_msgs/Image (rgb8/bgr8/rgba8/bgra8/mono8)   qos.camera: sensor
    /joint_states             sensor_msgs/JointState (matched by name)          qos.joint_states: reliable
    <map state_points>        geometry_msgs/PointStamped (e.g. /sim/target)      qos.points: status
Published topics
    /teacher/joint_command    sensor_msgs/JointState: the action joints (map order) at chunk step
                              ``label_step``; header stamp = the stamp of the joint state sent in
                              the request it answers                             qos.teacher: reliable
    /teacher/joint_trajectory trajectory_msgs/JointTrajectory: the whole chunk, K points, point i at
                              time_from_start (i + 1) x action_step_s; same stamp qos.teacher_chunk: reliable
    /diagnostics              "<node>: teacher": level, counters (labels, requests, timeouts,
                              server_errors, bad_replies, waiting, reconnects), rtt p50/p99, last_error
No label is published for a failed exchange: server down or slow (timeout: the REQ socket is
rebuilt and the next tick tries again, so labels resume when the server returns), ``{"error": ...}``,
a reply that is not the protocol's (wrong keys or shapes, non-finite, a pickle), nor for a joint
state already answered, or one stamped at or before a state point (it belongs to the previous
episode, as in sim_expert).

Parameters (read at start-up)
    endpoint (str, tcp://127.0.0.1:5555)   the GR00T server (or the protocol stand-in)
    protocol (str, "")                     n1.5 | n1.6 | auto (from get_modality_config); "" = the map's
    modality_map_file (str, "")            ""= config/groot/sim_arm.yaml
    rate_hz (float, 10.0)                  request rate (each label answers one request)
    timeout_s (float, 1.0)                 reply timeout per request
    api_token (str, "")                    "" = env SAGE_GROOT_API_TOKEN; never logged, and the
                                           parameter is cleared once read
    camera.<key>_topic, point.<key>_topic  per map key (default: the map's topic)
    joint_states_topic, teacher_topic, trajectory_topic (the defaults above)
    diagnostics_period_s (float, 1.0)
"""

from __future__ import annotations

import math
import os
import threading
from array import array

import numpy as np
import rclpy
from builtin_interfaces.msg import Duration
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PointStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image, JointState
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from ..core.config import ConfigError
from ..groot.client import API_TOKEN_ENV, GrootClient, GrootTeacher, GrootTimeout
from ..groot.modality_map import load_modality_map
from ..groot.protocol import ProtocolError, ServerError
from ..paths import config_file
from . import convert
from .commands import joint_state_command_msg
from .diagnostics import RollingStats, diagnostic_array, status
from .node_main import ClockLoop, DeclaredParams, Throttle
from .qos import declare_qos
from .sim_common import run_sim_node

DEFAULT_MAP = "groot/sim_arm.yaml"
FAILURES = ("timeouts", "server_errors", "bad_replies", "errors")


def _stamp_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _duration(seconds: float) -> Duration:
    sec = math.floor(seconds)
    return Duration(sec=int(sec), nanosec=min(int(round((seconds - sec) * 1e9)), 999_999_999))


class GrootTeacherNode(DeclaredParams, Node):
    def __init__(self, node_name: str = "groot_teacher", **kwargs):
        super().__init__(node_name, **kwargs)
        p = self._param
        map_file = str(p("modality_map_file", "", "modality map YAML; '' = config/groot/sim_arm.yaml").value)
        self.map = load_modality_map(map_file or config_file(DEFAULT_MAP))
        endpoint = str(p("endpoint", "tcp://127.0.0.1:5555", "GR00T policy server (ZeroMQ REP)").value)
        requested = str(p("protocol", "", "n1.5 | n1.6 | auto; '' = the modality map's").value) or self.map.protocol
        rate_hz = float(p("rate_hz", 10.0, "request rate [Hz]").value)
        timeout_s = float(p("timeout_s", 1.0, "reply timeout per request [s]").value)
        token = str(p("api_token", "", f"server API token; '' = env {API_TOKEN_ENV} (cleared once read)").value)
        token = token or os.environ.get(API_TOKEN_ENV, "")
        self._token = token
        cams = {k: str(p(f"camera.{k}_topic", t, f"sensor_msgs/Image for GR00T video key {k}").value)
                for k, t in self.map.cameras.items()}
        points = {k: str(p(f"point.{k}_topic", t, f"geometry_msgs/PointStamped for GR00T state key {k}").value)
                  for k, t in self.map.state_points.items()}
        topics = {key: str(p(f"{key}_topic", default, f"{key} topic").value) for key, default in (
            ("joint_states", "/joint_states"), ("teacher", "/teacher/joint_command"),
            ("trajectory", "/teacher/joint_trajectory"))}
        diag_period = float(p("diagnostics_period_s", 1.0, "period of /diagnostics messages [s]").value)
        for key, value in (("rate_hz", rate_hz), ("timeout_s", timeout_s), ("diagnostics_period_s", diag_period)):
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"parameter {key}: must be > 0, got {value}")
        if requested not in ("auto", "n1.5", "n1.6"):
            raise ConfigError(f"parameter protocol: {requested!r}; choose n1.5, n1.6 or auto")
        self.client = GrootClient(endpoint, timeout_s, token)  # ValueError names a bad endpoint
        self.teacher = GrootTeacher(self.client, self.map, requested)
        if self.get_parameter("api_token").value:
            self.set_parameters([Parameter("api_token", value="")])  # not readable via ros2 param get
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._log = self.get_logger()
        self._throttle = Throttle(5.0)
        self._lock = threading.Lock()
        self._joints = None  # (stamp msg, stamp ns, positions)
        self._images: dict[str, np.ndarray] = {}
        self._points: dict[str, tuple[int, np.ndarray]] = {}
        self._last_answered_ns = None
        self.counts = {"labels": 0, "requests": 0, "waiting": 0, "repeated_observation": 0, "before_point": 0,
                       "rejected_inputs": 0, **{k: 0 for k in FAILURES}}
        self._rtt_ms = RollingStats(1024)
        self._state = ("warn", "not connected yet")
        self._last_error = ""
        self._logged_connect = False

        q = lambda name, preset: declare_qos(self, name, preset)
        self._label_pub = self.create_publisher(JointState, topics["teacher"], q("teacher", "reliable"))
        self._chunk_pub = self.create_publisher(JointTrajectory, topics["trajectory"], q("teacher_chunk", "reliable"))
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", q("diagnostics", "reliable"))
        self.create_subscription(JointState, topics["joint_states"], self._on_joints, q("joint_states", "reliable"))
        cam_qos, point_qos = q("camera", "sensor"), q("points", "status")
        for key, topic in cams.items():
            self.create_subscription(Image, topic, lambda msg, key=key: self._on_image(key, msg), cam_qos)
        for key, topic in points.items():
            self.create_subscription(PointStamped, topic, lambda msg, key=key: self._on_point(key, msg), point_qos)
        self.create_timer(diag_period, self._publish_diagnostics)
        self._endpoint = endpoint
        self._loop = ClockLoop(self, 1.0 / rate_hz, self._tick, name="groot-teacher")
        self._loop.start()
        self._log.info(f"GR00T teacher: {endpoint} protocol {requested}, {rate_hz:g} Hz, timeout {timeout_s:g} s, "
                       f"api token {'set' if token else 'none'}; labels on {topics['teacher']} and "
                       f"{topics['trajectory']} (never commands the robot)")

    # ------------------------------------------------------------------ parameters / shutdown
    def _on_set_parameters(self, params) -> SetParametersResult:
        for param in params:
            if param.name == "api_token" and param.value == "":
                continue
            if param.name != "use_sim_time" and self.has_parameter(param.name):
                return SetParametersResult(successful=False,
                                           reason=f"{param.name} is read at start-up; restart the node to change it")
        return SetParametersResult(successful=True)

    def release(self) -> None:
        self._loop.stop(timeout_s=self.client.timeout_s + 1.0)
        self.client.close()

    def _redact(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text

    # ------------------------------------------------------------------ inputs
    def _reject(self, why: str) -> None:
        self.counts["rejected_inputs"] += 1
        if self._throttle.allow("rejected"):
            self._log.warning(f"ignoring an input ({self.counts['rejected_inputs']} so far): {why}")

    def _on_joints(self, msg: JointState) -> None:
        try:
            out = convert.joint_state_to_arrays(msg, self.map.state_joint_names)
        except convert.ConversionError as exc:
            self._reject(str(exc))
            return
        if out is None:  # another publisher's joints
            return
        positions = out[0]
        with self._lock:
            self._joints = (msg.header.stamp, _stamp_ns(msg.header.stamp), positions)

    def _on_image(self, key: str, msg: Image) -> None:
        try:
            rgb = np.array(convert.image_to_rgb(msg), dtype=np.uint8)  # a copy: the request outlives msg
        except convert.ConversionError as exc:
            self._reject(f"camera {key}: {exc}")
            return
        with self._lock:
            self._images[key] = rgb

    def _on_point(self, key: str, msg: PointStamped) -> None:
        xyz = np.array([msg.point.x, msg.point.y, msg.point.z], dtype=np.float64)
        if not np.isfinite(xyz).all():
            self._reject(f"point {key}: non-finite")
            return
        with self._lock:
            self._points[key] = (_stamp_ns(msg.header.stamp), xyz)

    # ------------------------------------------------------------------ the loop
    def _set_state(self, level: str, message: str) -> None:
        changed = (level, message) != self._state
        self._state = (level, message)
        if changed:
            self._publish_diagnostics()

    def _tick(self, _now_ns: int) -> None:
        with self._lock:
            joints, images, points = self._joints, dict(self._images), dict(self._points)
        missing = ([f"camera {k}" for k in self.map.cameras if k not in images]
                   + [f"point {k}" for k in self.map.state_points if k not in points]
                   + (["joint states"] if joints is None else []))
        if missing:
            self.counts["waiting"] += 1
            self._set_state("warn", f"waiting for {', '.join(missing)}")
            return
        stamp, ns, positions = joints
        if ns == self._last_answered_ns:
            self.counts["repeated_observation"] += 1
            return
        if any(ns <= point_ns for point_ns, _ in points.values()):
            self.counts["before_point"] += 1
            return
        self.counts["requests"] += 1
        try:
            if not self.teacher.connected:
                self.teacher.connect()
                self._on_connected()
            chunk = self.teacher.query(images, positions, {k: xyz for k, (_, xyz) in points.items()})
        except GrootTimeout as exc:
            self.teacher.connected = False  # handshake again when it answers: it may be another server now
            self._fail("timeouts", f"server down or slow: {exc}")
            return
        except ServerError as exc:
            self._fail("server_errors", f"server error: {exc}")
            return
        except ProtocolError as exc:
            self._fail("bad_replies", f"bad reply: {exc}")
            return
        except (ValueError, TypeError, KeyError) as exc:
            self._fail("errors", f"{type(exc).__name__}: {exc}")
            return
        self._rtt_ms.add(self.client.last_rtt_s * 1e3)
        self._last_answered_ns = ns
        self._publish(stamp, chunk)
        self.counts["labels"] += 1
        problems = self.teacher.problems
        self._set_state("warn" if problems else "ok",
                        "labelling" + (f" (map vs server: {'; '.join(problems)})" if problems else ""))

    def _on_connected(self) -> None:
        t = self.teacher
        self._log.info(f"connected to {self._endpoint}: protocol {t.version}, chunk {t.horizon or '?'} steps"
                       + ("" if t.server_configs else " (no modality config from the server)"))
        for problem in t.problems:
            self._log.warning(f"modality map vs server: {problem}")

    def _fail(self, key: str, message: str) -> None:
        self.counts[key] += 1
        message = self._redact(message)
        self._last_error = message
        self._set_state("error", message)
        if self._throttle.allow(key):
            self._log.warning(f"no label ({self.counts[key]} {key.replace('_', ' ')} so far): {message}")

    def _publish(self, stamp, chunk: np.ndarray) -> None:
        names = self.map.action_joint_names
        self._label_pub.publish(joint_state_command_msg(names, chunk[self.map.label_step], stamp))
        traj = JointTrajectory()
        traj.header.stamp = stamp
        traj.joint_names = list(names)
        step = self.map.action_step_s
        points = []
        for i, row in enumerate(chunk):
            point = JointTrajectoryPoint()
            point.positions = array("d", np.ascontiguousarray(row, dtype=np.float64).tobytes())
            point.time_from_start = _duration((i + 1) * step)
            points.append(point)
        traj.points = points
        self._chunk_pub.publish(traj)

    def _publish_diagnostics(self) -> None:
        level, message = self._state
        rtt = self._rtt_ms.summary()
        values = dict(self.counts, endpoint=self._endpoint, protocol=self.teacher.version or "unresolved",
                      requested_protocol=self.teacher.requested, chunk_steps=self.teacher.horizon or 0,
                      reconnects=self.client.rebuilds, rtt_p50_ms=rtt["p50"], rtt_p99_ms=rtt["p99"],
                      last_error=self._last_error, map_problems="; ".join(self.teacher.problems),
                      api_token="set" if self._token else "none", loop_errors=self._loop.errors)
        try:
            self._diag_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), [
                status(f"{self.get_name()}: teacher", level, message, values)]))
        except Exception as exc:  # diagnostics must never take the node down
            if rclpy.ok() and self._throttle.allow("diagnostics"):
                self._log.error(f"diagnostics failed: {exc}")


def main(args=None) -> None:
    raise SystemExit(run_sim_node(GrootTeacherNode, "groot_teacher", args))


if __name__ == "__main__":
    main()
