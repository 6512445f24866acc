"""sage_control: the L side. Latent z (zero-order hold) + joint states -> safe joint commands.

Lifecycle node: ``configure`` loads the checkpoint, builds joint limits (YAML, tightened by the
URDF if given) and the safety filter, creates topics/services and warms up; ``activate`` starts
the control loop; ``deactivate`` stops it (nothing is published while inactive); ``cleanup``
releases everything. ``autostart:=true`` configures and activates at start-up.

Per tick: latest latent (converted once, on arrival) and latest joint state ->
``NumpyLPolicy.act`` (numpy twin of ``model.act``) -> first step of the chunk -> ActionSmoother ->
SafetyFilter (limits, rate limits, stale-input hold, latching e-stop, enable gate) -> publish
(nothing when the filter says so; holds repeat the last command, never zeros). Staleness uses
arrival times on the node clock.

Subscribed topics (QoS overridable via ``qos.<name>.{reliability,depth,durability}``)
    /sage/latent       sensor_msgs/Image 32FC1 1xD (from sage_context)         qos.latent: reliable
    /joint_states      sensor_msgs/JointState, matched by name                 qos.joint_states: reliable
    /e_stop            std_msgs/Bool (data=true latches) or std_msgs/Empty     qos.e_stop: reliable
    /e_stop/reset      std_msgs/Empty: releases the e-stop latch                qos.e_stop: reliable
Published topics
    command_interface position_array:   std_msgs/Float64MultiArray  /<controller_name>/commands
                      joint_trajectory: trajectory_msgs/JointTrajectory /<controller_name>/joint_trajectory
                                        (one point: positions + velocities, time_from_start)
                      joint_state:      sensor_msgs/JointState      <joint_command_topic> (Isaac Sim)
                      all in the configured joint order                     qos.command: command
    /diagnostics       diagnostic_msgs/DiagnosticArray every diagnostics_period_s
Services
    ~/reload_model     std_srvs/Trigger: load the checkpoint at ``model_dir`` on a worker thread,
                       validate (same joint names and latent size), warm up, swap between ticks.
                       A bad checkpoint -> success=false + reason; commands keep flowing.
    ~/reset_e_stop     std_srvs/Trigger: release the e-stop latch
Parameters (read at configure unless marked runtime)
    model_dir (str, "")              checkpoint directory; required. Runtime: setting it reloads.
    control_rate_hz (float, 200.0)   control loop rate (sustains 500)
    torch_threads (int, 1)           torch intra-op threads for this process
    joint_names (str[], [])          command joint order; [] = the checkpoint's order. Must be the
                                     checkpoint's joint set.
    joint_limits_file (str, "")      YAML with ``joint_limits: {joint: {position_min_rad, position_max_rad,
                                     velocity_max_rad_s, acceleration_max_rad_s2}}``
    urdf_file (str, "")              optional URDF; limits = YAML tightened by URDF (either alone also works).
                                     Without any limits the node runs dry (publishes nothing) and
                                     enable_control cannot be set.
    latent_topic, joint_states_topic topic names (see above)
    latent_timeout_s (float, 0.5)    hold when the latent is older than this (arrival time)
    joint_state_timeout_s (float, 0.1)  hold when the joint state is older than this
    enable_control (bool, false)     runtime; false publishes nothing
    command_interface (str, "position_array")  position_array | joint_trajectory | joint_state
    controller_name (str, "forward_position_controller")  ros2_control controller for the topic name
    joint_command_topic (str, "/joint_command")  topic of the joint_state interface
    trajectory_time_from_start_s (float, 0.05)  time_from_start of the JointTrajectory point
    smoothing_alpha (float, 1.0)     ActionSmoother alpha in (0, 1]; 1 = no smoothing
    e_stop_topic (str, "/e_stop"), e_stop_reset_topic (str, "/e_stop/reset")
    e_stop_msg_type (str, "bool")    "bool" (std_msgs/Bool, data=true triggers) or "empty" (std_msgs/Empty)
    realtime_priority (int, 0)       >0: SCHED_FIFO priority of the control thread (needs CAP_SYS_NICE)
    diagnostics_period_s (float, 1.0)
    autostart (bool, false)          configure + activate at start-up
    use_sim_time (bool, false)       standard; the loop then ticks on /clock

Control-loop design: a dedicated thread sleeping to absolute deadlines on the node clock
(node_main.ClockLoop); subscriptions, services and the diagnostics timer on a
SingleThreadedExecutor in the main thread. Measured on the shared 2-core dev machine at 500 Hz,
with the same tick workload (model.act + clamp + publish), a 500 Hz JointState stream into the
node and a 10 Hz H workload in another process; 4 interleaved 6 s runs per option, pooled:
    option                                           period p50   p99      ticks > 1.5 periods
    timer in own callback group, MultiThreadedExecutor   could not hold 500 Hz (5-111 Hz)
    timer on internal node, own SingleThreadedExecutor   2.000 ms   4.53 ms  2.7 %
    dedicated deadline thread (chosen)                   2.000 ms   3.81 ms  1.9 %
    ... the same two with realtime_priority 10 (SCHED_FIFO): timer 2.35 ms / 0.23 %,
        dedicated thread 2.36 ms / 0.19 %
The real node in the full stack (separate processes, 500 Hz loopback arm, 10 Hz context node):
p50 2.00 ms, p99 3.51 ms, 2.4 % late ticks with normal scheduling; p99 2.31 ms, 0.16 % with
realtime_priority:=10. The MultiThreadedExecutor also dropped 14 % of a 500 Hz JointState stream,
so no node here uses it. The thread also skips (rather than bursts) deadlines it missed, and
follows /clock under use_sim_time. The tick does no logging and no heavy work; diagnostics are
built by a timer from preallocated ring buffers.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import rclpy
import torch
from builtin_interfaces.msg import Time as TimeMsg
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Empty
from std_srvs.srv import Trigger

from ..core.checkpoint import CheckpointError, load_checkpoint, model_hash
from ..core.fast_policy import NumpyLPolicy
from ..core.l_module import ActionSmoother
from ..safety import EStopLatch, JointLimits, SafetyFilter, SafetyStatus
from . import commands, convert
from .diagnostics import RollingStats, diagnostic_array, status
from .node_main import BackgroundLoader, ClockLoop, DeclaredParams, Throttle, check_checkpoint_dir, run_node
from .qos import declare_qos

STATUS_CODES = {s: i for i, s in enumerate(SafetyStatus)}  # tick log: status -> small int
_STATUS_BY_CODE = list(SafetyStatus)
TICK_LOG_SIZE = 8192  # ring of (tick time, status) for diagnostics and tests
_WARMUP_CALLS = 20


@dataclass
class Policy:
    """A loaded model plus everything the tick needs that depends on it (swapped as one object)."""

    model: object
    fast: NumpyLPolicy  # the tick's L step: numpy, same numbers as model.act
    model_dir: str
    sha256: str
    model_names: tuple  # checkpoint joint order (model input/output order)
    perm: np.ndarray | None  # command order = model order [perm]; None when identical
    latent_dim: int
    load_ms: float


def load_policy(model_dir: str, command_names: list[str] | None) -> Policy:
    """Load, check the joint set against ``command_names`` (None = use the checkpoint's), warm up."""
    t0 = time.perf_counter()
    if not model_dir:
        raise CheckpointError("model_dir is empty: set the model_dir parameter to a checkpoint directory")
    model = load_checkpoint(model_dir)
    names = tuple(model.cfg.observation.joint_names)
    perm = None
    if command_names:
        if len(set(command_names)) != len(command_names):
            raise ValueError(f"joint_names has duplicates: {command_names}")
        missing = [n for n in names if n not in command_names]
        extra = [n for n in command_names if n not in names]
        if missing or extra:
            raise ValueError(f"joint_names {list(command_names)} is not the checkpoint's joint set {list(names)}"
                             f" (missing {missing}, unknown {extra})")
        if tuple(command_names) != names:
            perm = np.array([names.index(n) for n in command_names], dtype=np.intp)
    latent_dim = int(model.cfg.model.latent_dim)
    fast = NumpyLPolicy(model)
    z = np.zeros(latent_dim, dtype=np.float32)
    q = np.zeros(len(names))
    for _ in range(_WARMUP_CALLS):
        fast.act(z, q, q)
    return Policy(model, fast, os.path.abspath(model_dir), model_hash(model_dir), names, perm, latent_dim,
                  (time.perf_counter() - t0) * 1e3)


class ControlNode(DeclaredParams, LifecycleNode):
    def __init__(self, node_name: str = "sage_control", **kwargs):
        super().__init__(node_name, **kwargs)
        p = self._param
        p("model_dir", "", "checkpoint directory; setting it at runtime reloads the model")
        p("control_rate_hz", 200.0, "control loop rate [Hz]")
        p("torch_threads", 1, "torch intra-op threads for this process")
        p("joint_names", [], "command joint order; [] = the checkpoint's order (must be the same joint set)")
        p("joint_limits_file", "", "joint limits YAML (joint_limits: {name: {position_min_rad, ...}})")
        p("urdf_file", "", "optional URDF whose <limit>s tighten the YAML limits")
        p("latent_topic", "/sage/latent", "latent from sage_context (sensor_msgs/Image 32FC1)")
        p("joint_states_topic", "/joint_states", "joint states (sensor_msgs/JointState)")
        p("latent_timeout_s", 0.5, "hold when the latest latent arrived longer ago than this [s]")
        p("joint_state_timeout_s", 0.1, "hold when the latest joint state arrived longer ago than this [s]")
        p("enable_control", False, "runtime: publish commands (false = publish nothing)")
        p("command_interface", "position_array", "position_array | joint_trajectory | joint_state")
        p("controller_name", "forward_position_controller", "ros2_control controller (topic /<name>/...)")
        p("joint_command_topic", "/joint_command", "topic of the joint_state command interface (Isaac Sim)")
        p("trajectory_time_from_start_s", 0.05, "time_from_start of the JointTrajectory point [s]")
        p("smoothing_alpha", 1.0, "first-order smoothing of targets, (0, 1]; 1 = none")
        p("e_stop_topic", "/e_stop", "e-stop trigger topic")
        p("e_stop_reset_topic", "/e_stop/reset", "e-stop reset topic (std_msgs/Empty)")
        p("e_stop_msg_type", "bool", "bool (std_msgs/Bool, data=true triggers) | empty (std_msgs/Empty)")
        p("realtime_priority", 0, "SCHED_FIFO priority for the control thread; 0 = normal scheduling")
        p("diagnostics_period_s", 1.0, "period of /diagnostics messages [s]")
        p("autostart", False, "configure and activate at start-up (no lifecycle manager needed)")
        for name, preset in (("latent", "reliable"), ("joint_states", "reliable"), ("command", "command"),
                             ("e_stop", "reliable"), ("diagnostics", "reliable")):
            declare_qos(self, name, preset)

        self._log = self.get_logger()
        self._closing = False
        self._throttle = Throttle(5.0)
        self.estop = EStopLatch()  # survives deactivate/cleanup: only a reset releases it
        self._estop_arrival_s: float | None = None
        self._enabled = bool(self._get("enable_control"))
        self._policy: Policy | None = None
        self._filter: SafetyFilter | None = None
        self._loop: ClockLoop | None = None
        self._loader = BackgroundLoader(self, self._load_job, on_done=self._note_reload, name="sage_control_loader")
        self._reload_failed, self._reload_note = False, ""
        self._subs: list = []
        self._pubs: list = []
        self._srvs: list = []
        self._diag_timer = None
        self._reset_inputs()
        self._reset_stats()
        self.add_on_set_parameters_callback(self._on_set_parameters)

    # ------------------------------------------------------------------ parameters
    def _on_set_parameters(self, params) -> SetParametersResult:
        for param in params:
            if param.name == "enable_control":
                if not isinstance(param.value, bool):
                    return SetParametersResult(successful=False, reason="enable_control must be a bool")
                if param.value and self._policy is not None and self._filter is None:
                    return SetParametersResult(
                        successful=False,
                        reason="no joint limits configured: set joint_limits_file (and/or urdf_file) and reconfigure")
            elif param.name == "model_dir" and self._policy is not None:
                path = param.value if isinstance(param.value, str) else ""
                problem = check_checkpoint_dir(path)
                if problem:
                    return SetParametersResult(successful=False, reason=problem)
                if self._loader.start(path) is None:
                    return SetParametersResult(successful=False, reason="a model reload is already running")
                self._log.info(f"model_dir changed: reloading {path} in the background")
        for param in params:  # all accepted: apply the runtime ones
            if param.name == "enable_control" and param.value != self._enabled:
                self._enabled = param.value
                self._log.warning("control ENABLED: publishing commands" if param.value
                                  else "control disabled: publishing nothing")
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._configure()
        except (ValueError, OSError) as exc:  # CheckpointError, LimitsError are ValueErrors
            self._log.error(f"configure failed: {exc}")
            self._destroy_entities()
            self._policy = self._filter = None
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def _configure(self) -> None:
        g = self._get
        threads = int(g("torch_threads"))
        if threads < 1:
            raise ValueError(f"torch_threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
        self._rate_hz = float(g("control_rate_hz"))
        if not (math.isfinite(self._rate_hz) and 0 < self._rate_hz <= 5000):
            raise ValueError(f"control_rate_hz must be in (0, 5000], got {self._rate_hz}")
        self._period_s = 1.0 / self._rate_hz
        # The control thread needs the GIL the moment it wakes; by default another thread may keep it
        # for up to 5 ms (sys.getswitchinterval). Hand it over within a tenth of a period instead.
        sys.setswitchinterval(min(sys.getswitchinterval(), max(5e-5, 0.1 * self._period_s)))
        for key in ("latent_timeout_s", "joint_state_timeout_s", "trajectory_time_from_start_s",
                    "diagnostics_period_s"):
            value = float(g(key))
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{key} must be > 0, got {value}")
        self._interface = str(g("command_interface"))
        if self._interface not in commands.COMMAND_INTERFACES:
            raise ValueError(f"command_interface {self._interface!r}: "
                             f"choose one of {list(commands.COMMAND_INTERFACES)}")
        estop_type = str(g("e_stop_msg_type")).lower()
        if estop_type not in ("bool", "empty"):
            raise ValueError(f"e_stop_msg_type {estop_type!r}: choose 'bool' or 'empty'")
        alpha = float(g("smoothing_alpha"))
        self._smoother = ActionSmoother(alpha)  # raises ValueError outside (0, 1]
        names_param = list(g("joint_names") or [])
        if not all(isinstance(n, str) and n for n in names_param):
            raise ValueError(f"joint_names must be a list of non-empty strings, got {names_param}")

        policy = load_policy(g("model_dir"), names_param or None)
        self._command_names = names_param or list(policy.model_names)
        limits = self._load_limits(self._command_names)
        if limits is None and self._enabled:
            raise ValueError("enable_control is true but no joint limits are configured: set joint_limits_file "
                             "(and/or urdf_file); refusing to command a robot without limits")
        self._policy = policy
        self._filter = None if limits is None else SafetyFilter(
            limits, self._period_s, float(g("latent_timeout_s")), float(g("joint_state_timeout_s")), self.estop)
        self._limits = limits
        self._tfs = float(g("trajectory_time_from_start_s"))
        self._reload_failed, self._reload_note = False, ""
        self._reset_inputs()
        self._log.info(
            f"loaded {policy.model_dir} (sha256 {policy.sha256[:12]}) in {policy.load_ms:.0f} ms; command order "
            f"{self._command_names}; limits: {self._limits_source or 'NONE (dry run)'}")

        q = lambda name, preset: declare_qos(self, name, preset)
        sub = self.create_subscription
        self._subs = [
            sub(Image, g("latent_topic"), self._on_latent, q("latent", "reliable")),
            sub(JointState, g("joint_states_topic"), self._on_joints, q("joint_states", "reliable")),
            sub(Bool if estop_type == "bool" else Empty, g("e_stop_topic"), self._on_estop, q("e_stop", "reliable")),
            sub(Empty, g("e_stop_reset_topic"), self._on_estop_reset, q("e_stop", "reliable")),
        ]
        self._command_topic = commands.command_topic(self._interface, g("controller_name"), g("joint_command_topic"))
        self._cmd_pub = self.create_publisher(commands.command_msg_type(self._interface), self._command_topic,
                                              q("command", "command"))
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", q("diagnostics", "reliable"))
        self._pubs = [self._cmd_pub, self._diag_pub]
        self._srvs = [self.create_service(Trigger, "~/reload_model", self._on_reload_srv,
                                          # own group: while this async callback awaits the load, the
                                          # default (mutually exclusive) group keeps taking messages
                                          callback_group=MutuallyExclusiveCallbackGroup()),
                      self.create_service(Trigger, "~/reset_e_stop", self._on_reset_srv)]
        self._publish = {"position_array": self._publish_array, "joint_trajectory": self._publish_trajectory,
                         "joint_state": self._publish_joint_state}[self._interface]
        self._diag_timer = self.create_timer(float(g("diagnostics_period_s")), self._publish_diagnostics)

    def _load_limits(self, names: list[str]) -> JointLimits | None:
        yaml_file, urdf_file = str(self._get("joint_limits_file")), str(self._get("urdf_file"))
        limits = JointLimits.from_yaml(yaml_file, names) if yaml_file else None
        if urdf_file:
            urdf = JointLimits.from_urdf(urdf_file, names)
            limits = urdf if limits is None else limits.tightened_by(urdf)
        self._limits_source = " + ".join(f for f in (yaml_file, urdf_file) if f)
        return limits

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._filter is not None:
            self._filter.reset()  # first command starts from the measured position
        self._smoother.reset()
        self._reset_stats()
        self._loop = ClockLoop(self, self._period_s, self._tick, name="sage_control_loop",
                               rt_priority=int(self._get("realtime_priority")))
        self._loop.start()
        self._log.info(f"active: {self._rate_hz:g} Hz -> {self._command_topic} ({self._interface}); "
                       f"enable_control={self._enabled}")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_loop()
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_loop()
        self._destroy_entities()
        self._policy = self._filter = None
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_loop()
        self._destroy_entities()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_loop()
        return TransitionCallbackReturn.SUCCESS

    def release(self) -> None:
        """Process exit: stop the control thread (no lifecycle transitions; the context may be gone)."""
        self._closing = True
        self._stop_loop()

    def destroy_node(self):
        self.release()
        return super().destroy_node()

    def _stop_loop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.stop()

    def _destroy_entities(self) -> None:
        for ent in self._subs:
            self.destroy_subscription(ent)
        for ent in self._pubs:
            self.destroy_publisher(ent)
        for ent in self._srvs:
            self.destroy_service(ent)
        self._subs, self._pubs, self._srvs = [], [], []
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = None

    # ------------------------------------------------------------------ inputs (executor thread)
    def _reset_inputs(self) -> None:
        self._latent = None  # (z float32 (D,), arrival_s)
        self._joints = None  # (pos (J,) model order, vel, measured float64 command order, arrival_s)
        self._rejected = {"latent": 0, "joint_states": 0}
        self._reject_reasons: dict[str, str] = {"latent": "", "joint_states": ""}
        self._received = {"latent": 0, "joint_states": 0}

    def _now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _reject(self, name: str, reason: str) -> None:
        self._rejected[name] += 1
        self._reject_reasons[name] = reason
        if self._throttle.allow(name):
            self._log.warning(f"{name}: rejected message ({self._rejected[name]} so far): {reason}")

    def _on_latent(self, msg: Image) -> None:
        now = self._now_s()
        self._received["latent"] += 1
        policy = self._policy
        if policy is None:
            return
        try:
            z = convert.msg_to_latent(msg, expected_dim=policy.latent_dim)
        except (convert.ConversionError, ValueError) as exc:
            self._reject("latent", str(exc))
            return
        self._latent = (np.array(z, dtype=np.float32), now)

    def _on_joints(self, msg: JointState) -> None:
        now = self._now_s()
        self._received["joint_states"] += 1
        policy = self._policy
        if policy is None:
            return
        try:
            pos, vel = convert.joint_state_to_arrays(msg, policy.model_names)
        except (convert.ConversionError, ValueError) as exc:
            self._reject("joint_states", str(exc))
            return
        measured = pos if policy.perm is None else pos[policy.perm]
        self._joints = (pos, vel, measured, now)

    def _on_estop(self, msg) -> None:
        if isinstance(msg, Bool) and not msg.data:
            return
        now = self._now_s()
        was = self.estop.latched
        self.estop.trigger(f"{self._get('e_stop_topic')} at t={now:.3f}")
        if not was:
            self._estop_arrival_s = now
            self._log.error(f"E-STOP latched ({self._get('e_stop_topic')}): holding the last command until reset")

    def _reset_estop(self, source: str) -> str:
        was = self.estop.latched
        self.estop.reset()  # the filter resumes from the held command, ramping up from rest
        message = f"e-stop reset via {source}" if was else f"e-stop was not latched ({source})"
        self._log.warning(message)
        return message

    def _on_estop_reset(self, msg: Empty) -> None:
        self._reset_estop(self._get("e_stop_reset_topic"))

    def _on_reset_srv(self, request, response):
        response.success = True
        response.message = self._reset_estop("~/reset_e_stop")
        return response

    # ------------------------------------------------------------------ the tick (control thread)
    def _reset_stats(self) -> None:
        self._period_stats = RollingStats(4096)  # seconds
        self._compute_stats = RollingStats(4096)  # seconds
        self._ticks = 0
        self._missed = 0
        self._published = 0
        self._last_tick_ns = 0
        self._status = SafetyStatus.HOLD_NO_INPUT
        self._status_reason = "not started"
        self._status_counts = {s: 0 for s in SafetyStatus}
        self._log_t = np.zeros(TICK_LOG_SIZE, dtype=np.int64)
        self._log_s = np.zeros(TICK_LOG_SIZE, dtype=np.int8)
        self._diag_ticks = 0
        self._diag_time = time.monotonic()
        self._last_logged_status = None

    def _tick(self, now_ns: int) -> None:
        t0 = time.perf_counter()
        last = self._last_tick_ns
        if last:
            period = (now_ns - last) * 1e-9
            self._period_stats.add(period)
            if period > 1.5 * self._period_s:
                self._missed += 1
        self._last_tick_ns = now_ns
        now_s = now_ns * 1e-9
        policy, latent, joints = self._policy, self._latent, self._joints
        target = None
        if latent is not None and joints is not None and policy is not None:
            step = policy.fast.act(latent[0], joints[0], joints[1])[0]
            target = self._smoother(step if policy.perm is None else step[policy.perm])
        filt = self._filter
        if filt is None:
            status, reason = SafetyStatus.DISABLED, "dry run: no joint limits configured"
        else:
            res = filt.step(now_s, target, latent[1] if latent is not None else None,
                            joints[3] if joints is not None else None,
                            joints[2] if joints is not None else None, self._enabled)
            status, reason = res.status, res.reason
            if res.command is not None:
                self._publish(res.command, res.velocity, now_ns)
                self._published += 1
            if status is not SafetyStatus.OK:
                self._smoother.reset()
        self._status, self._status_reason = status, reason
        self._status_counts[status] += 1
        i = self._ticks % TICK_LOG_SIZE
        self._log_t[i] = now_ns
        self._log_s[i] = STATUS_CODES[status]
        self._ticks += 1
        self._compute_stats.add(time.perf_counter() - t0)

    def _publish_array(self, command, velocity, now_ns) -> None:
        self._cmd_pub.publish(commands.position_array_msg(command))

    def _publish_trajectory(self, command, velocity, now_ns) -> None:
        # Zero stamp = "start now" for joint_trajectory_controller (immune to clock offsets).
        self._cmd_pub.publish(commands.joint_trajectory_msg(self._command_names, command, velocity, None, self._tfs))

    def _publish_joint_state(self, command, velocity, now_ns) -> None:
        stamp = TimeMsg(sec=now_ns // 1_000_000_000, nanosec=now_ns % 1_000_000_000)
        self._cmd_pub.publish(commands.joint_state_command_msg(self._command_names, command, stamp))

    def tick_log(self):
        """(tick times ns, statuses) of the last ticks, oldest first (for tests and tools)."""
        n, k = self._ticks, min(self._ticks, TICK_LOG_SIZE)
        idx = (np.arange(n - k, n) % TICK_LOG_SIZE) if k else np.zeros(0, dtype=np.intp)
        return self._log_t[idx].copy(), [_STATUS_BY_CODE[c] for c in self._log_s[idx]]

    # ------------------------------------------------------------------ reload
    def _load_job(self, path: str) -> str:
        current = self._policy
        if current is None:
            raise CheckpointError("not configured")
        new = load_policy(path, list(self._command_names))
        if new.model_names != current.model_names:
            raise CheckpointError(f"{path}: joint names {list(new.model_names)} differ from the running model's "
                                  f"{list(current.model_names)}; reconfigure the node to change robots")
        if new.latent_dim != current.latent_dim:
            raise CheckpointError(f"{path}: latent_dim {new.latent_dim} differs from the running {current.latent_dim}")
        self._policy = new  # atomic swap: the next tick uses it
        return f"loaded {new.model_dir} (sha256 {new.sha256[:12]}) in {new.load_ms:.0f} ms"

    async def _on_reload_srv(self, request, response):
        if self._policy is None:
            response.success, response.message = False, "not configured"
            return response
        future = self._loader.start(self._get("model_dir"))
        if future is None:
            response.success, response.message = False, "a model reload is already running"
            return response
        response.success, response.message = await future
        return response

    def _note_reload(self, ok: bool, message: str) -> None:
        self._reload_failed, self._reload_note = not ok, message
        if ok:
            self._log.info(f"reload: {message}")
        else:
            running = self._policy.model_dir if self._policy else "none"
            self._log.error(f"reload rejected, still running {running}: {message}")

    # ------------------------------------------------------------------ diagnostics (1 Hz timer)
    def _publish_diagnostics(self) -> None:
        try:
            self._diag_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), self._statuses()))
        except Exception as exc:  # diagnostics must never take the node down
            if not self._closing and rclpy.ok() and self._throttle.allow("diagnostics"):
                self._log.error(f"diagnostics failed: {exc}")

    def _statuses(self):
        name = self.get_name()  # status names: "<node name>: <part>"
        now = self._now_s()
        mono = time.monotonic()
        ticks = self._ticks
        elapsed = mono - self._diag_time
        rate = (ticks - self._diag_ticks) / elapsed if elapsed > 0 else 0.0
        self._diag_ticks, self._diag_time = ticks, mono
        active = self._loop is not None
        per = self._period_stats.summary()
        comp = self._compute_stats.summary()
        st, reason = self._status, self._status_reason
        if st is not self._last_logged_status and active:  # log transitions here, never in the tick
            if st in (SafetyStatus.HOLD_STALE_LATENT, SafetyStatus.HOLD_STALE_JOINTS, SafetyStatus.HOLD_INVALID_TARGET):
                self._log.warning(f"holding last command: {reason}")
            elif st is SafetyStatus.OK and self._last_logged_status is not None:
                self._log.info("commanding (inputs fresh)")
            self._last_logged_status = st
        latent, joints = self._latent, self._joints
        if not active:
            level, msg = "warn", "inactive"
        elif st is SafetyStatus.ESTOP:
            level, msg = "error", f"E-STOP: {self.estop.reason}"
        elif st in (SafetyStatus.HOLD_STALE_LATENT, SafetyStatus.HOLD_STALE_JOINTS,
                    SafetyStatus.HOLD_INVALID_TARGET, SafetyStatus.HOLD_NO_INPUT):
            level, msg = "warn", f"{st.value}: {reason}"
        elif st is SafetyStatus.DISABLED:
            level, msg = "ok", reason if self._filter is None else "control disabled (enable_control=false)"
        elif ticks > 10 and rate < 0.9 * self._rate_hz:
            level, msg = "warn", f"loop slow: {rate:.1f} Hz < {self._rate_hz:g} Hz"
        else:
            level, msg = "ok", "commanding"
        loop = self._loop
        values = {
            "state": st.value, "reason": reason, "enable_control": self._enabled,
            "e_stop_latched": self.estop.latched, "e_stop_reason": self.estop.reason or "",
            "e_stop_triggers": self.estop.trigger_count,
            "rate_hz": rate, "target_hz": getattr(self, "_rate_hz", math.nan),
            "period_p50_ms": per["p50"] * 1e3, "period_p99_ms": per["p99"] * 1e3, "period_max_ms": per["max"] * 1e3,
            "missed_ticks": self._missed, "skipped_deadlines": loop.skipped if loop else 0,
            "compute_p50_us": comp["p50"] * 1e6, "compute_p99_us": comp["p99"] * 1e6,
            "compute_max_us": comp["max"] * 1e6, "ticks": ticks, "commands_published": self._published,
            "latent_age_ms": (now - latent[1]) * 1e3 if latent is not None else math.nan,
            "joint_state_age_ms": (now - joints[3]) * 1e3 if joints is not None else math.nan,
            "latents_received": self._received["latent"], "joint_states_received": self._received["joint_states"],
            "rejected.latent": self._rejected["latent"], "rejected.joint_states": self._rejected["joint_states"],
            "last_reject.latent": self._reject_reasons["latent"],
            "last_reject.joint_states": self._reject_reasons["joint_states"],
            "loop_errors": loop.errors if loop else 0, "last_loop_error": loop.last_error if loop else "",
            "scheduling": loop.rt_status if loop else "",
            "command_interface": getattr(self, "_interface", ""), "command_topic": getattr(self, "_command_topic", ""),
        }
        for s, count in self._status_counts.items():
            values[f"ticks.{s.value}"] = count
        out = [status(f"{name}: control loop", level, msg, values)]
        policy = self._policy
        out.append(status(
            f"{name}: model", "error" if self._reload_failed else "ok",
            f"reload failed, still running the previous model: {self._reload_note}" if self._reload_failed
            else "model loaded", {
                "model_dir": policy.model_dir if policy else "", "model_sha256": policy.sha256 if policy else "",
                "model_dir_param": self._get("model_dir"), "reload_in_progress": self._loader.busy,
                "last_reload": self._reload_note, "limits": getattr(self, "_limits_source", "") or "none",
            }))
        return out


def main(args=None) -> None:
    raise SystemExit(run_node(ControlNode, args))


if __name__ == "__main__":
    main()
