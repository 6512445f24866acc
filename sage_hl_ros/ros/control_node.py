"""sage_control: the L side. Latent z (zero-order hold) + joint states -> safe joint commands.

Lifecycle node: ``configure`` loads the checkpoint, builds joint limits (YAML, tightened by the
URDF if given) and the safety filter, creates topics/services and warms up; ``activate`` starts
the control loop; ``deactivate`` stops it (nothing is published while inactive); ``cleanup``
releases everything. ``autostart:=true`` configures and activates at start-up.

The tick is the pure :class:`~sage_hl_ros.safety.control_step.ControlStep` (tested without ROS,
property-based): latest latent and joint state (converted once, on arrival, each with its header
stamp and arrival time) -> ``NumpyLPolicy.act`` -> first step of the chunk -> ActionSmoother ->
SafetyFilter (limits per elapsed time, stale-input hold, latching e-stop, enable gate) -> publish
(nothing when the step says so; holds repeat the last command, never zeros). Staleness uses both
clocks: age = max(now - arrival, now - header stamp); stamps in the future beyond
``clock_skew_tolerance_s`` are rejected. This process never imports torch: the L step is read
from the checkpoint's safetensors with numpy. A hot reload loads, verifies and warms up the new
checkpoint in a helper process (ros/worker_process.py, started on the first reload, nice +19);
this interpreter only unpickles the result and swaps it in between ticks (a torch model build in
the loop's process stalled it for ~175 ms; a numpy load on a thread still cost deadlines).

Subscribed topics (QoS overridable via ``qos.<name>.{reliability,depth,durability}``)
    /sage/latent       sensor_msgs/Image 32FC1 1xD (from sage_context)         qos.latent: reliable
    /joint_states      sensor_msgs/JointState, matched by name                 qos.joint_states: reliable
    /e_stop            std_msgs/Bool (data=true latches) or std_msgs/Empty     qos.e_stop: reliable, plus a
                                                                            best-effort twin subscription
    /e_stop/reset      std_msgs/Empty: releases the e-stop latch                (both match reliable AND
                                                                            best-effort publishers)
    <e_stop_heartbeat_topic>  optional dead-man heartbeat (Empty, or Bool data=true); silence latches
Published topics
    command_interface position_array:   std_msgs/Float64MultiArray  <controller_name>/commands
                      joint_trajectory: trajectory_msgs/JointTrajectory <controller_name>/joint_trajectory
                      (relative: in the node's namespace, /<controller_name>/... in the root one)
                                        (the command: positions + velocities at time_from_start;
                                        while a chunk plays, its remaining points follow
                                        action_chunk_dt_s apart, each safety-filtered)
                      joint_state:      sensor_msgs/JointState      <joint_command_topic> (Isaac Sim)
                      all in the configured joint order, the gripper's joint left out (below)
                                                                            qos.command: command
    <gripper_topic>    std_msgs/Float64MultiArray, one value: the gripper's command, only when the robot
                       contract has a gripper (its joint is predicted and safety-filtered with the
                       others; mode position: the filtered position, open_close: open_position or
                       closed_position, whichever it is nearer). Published on the same ticks as the
                       arm's command (holds included), never otherwise.          qos.command: command
    ~/e_stop_state     std_msgs/Bool, transient-local: true while the e-stop is latched (on every change)
    /diagnostics       diagnostic_msgs/DiagnosticArray every diagnostics_period_s
Services
    ~/reload_model     std_srvs/Trigger: load the checkpoint at ``model_dir`` in the helper process,
                       validate (same joint names and latent size), warm up, swap between ticks.
                       A bad checkpoint -> success=false + reason; commands keep flowing.
    ~/reset_e_stop     std_srvs/Trigger: release the e-stop latch
Parameters (read at configure unless marked runtime)
    model_dir (str, "")              checkpoint directory; required. Runtime: setting it reloads.
    control_rate_hz (float, 200.0)   control loop rate (sustains 500)
    joint_names (str[], [])          command joint order; [] = the checkpoint's order. Must be the
                                     checkpoint's joint set.
    joint_limits_file (str, "")      YAML with ``joint_limits: {joint: {position_min_rad, position_max_rad,
                                     velocity_max_rad_s, acceleration_max_rad_s2}}``
    urdf_file (str, "")              optional URDF file, or the robot_description XML string; each limit is the
                                     tighter of YAML and URDF, one only one gives is taken from it (either
                                     alone works; continuous joints: no position limit, velocity enforced).
                                     joint_limits_file may be the ros2_control / MoveIt joint_limits.yaml.
                                     Both empty: the robot contract's joint_limits and urdf files.
    default_acceleration_max_rad_s2 (float, 0.0)  where no source gives an acceleration limit; 0 = 10.0
                                     (stated in the limits line of the log and diagnostics)
                                     Without any limits the node runs dry (publishes nothing) and
                                     enable_control cannot be set.
    latent_topic (str, "sage/latent")   the latent from sage_context (relative: in the node's namespace)
    joint_states_topic (str, "")     joint states; "" = the checkpoint's robot contract (joint_states
                                     for a checkpoint without one: /joint_states in the root namespace)
    latent_timeout_s (float, 0.5)    hold when the latent is older than this (arrival or header stamp)
    joint_state_timeout_s (float, 0.1)  hold when the joint state is older than this (arrival or stamp)
    clock_skew_tolerance_s (float, 0.05)  header stamps up to this far in the future are accepted
    require_stamps (bool, false)     true: a zero header stamp makes an input stale (false: judged
                                     by arrival time, for drivers that do not stamp)
    enable_control (bool, false)     runtime; false publishes nothing
    command_interface (str, "")      position_array | joint_trajectory | joint_state; "" = the robot
                                     contract's command.interface (position_array without a contract)
    controller_name (str, "")        ros2_control controller for the topic name; "" = the contract's
                                     command.controller (forward_position_controller without one)
    joint_command_topic (str, "")    topic of the joint_state interface; "" = the contract's
                                     command.joint_command_topic (joint_command without one)
    gripper_topic (str, "")          the gripper's command topic; "" = the contract's gripper.topic. Set
                                     with a contract without a gripper: configure fails. open_close
                                     positions outside the joint's limits: configure fails naming them.
                                     A reload whose contract changes one of these left-empty values
                                     (or the gripper's joint, mode or open/closed positions) is refused
                                     (reconfigure to change them).
    trajectory_time_from_start_s (float, 0.05)  time_from_start of the JointTrajectory point
    smoothing_alpha (float, 1.0)     ActionSmoother alpha in (0, 1]; 1 = no smoothing
    chunk_execution (str, "auto")    "play": a K-step chunk is played between latents (time-indexed
                                     from the latent's stamp, cross-faded into the next one);
                                     "receding": every tick takes the first step of a fresh L step;
                                     "auto": play when the checkpoint has K > 1 and a chunk spacing
    action_chunk_dt_s (float, 0.0)   spacing of the chunk's steps [s]; 0 = the checkpoint's
                                     model.action_chunk_dt_s
    e_stop_topic (str, "/e_stop"), e_stop_reset_topic (str, "/e_stop/reset")
    e_stop_msg_type (str, "bool")    "bool" (std_msgs/Bool, data=true triggers) or "empty" (std_msgs/Empty)
    e_stop_heartbeat_topic (str, "")  "" = no heartbeat; else a dead-man topic that must keep arriving
    e_stop_heartbeat_timeout_s (float, 0.5)  silence longer than this latches the e-stop (also before
                                     the first heartbeat after activation)
    e_stop_heartbeat_msg_type (str, "empty")  "empty" (any message counts) or "bool" (data=true counts)
    check_controller_joints (bool, true)  position_array: read the controller's ``joints`` parameter
                                     (``/<controller_name>/get_parameters``; the arm's joints, the
                                     gripper left out); a different order or set
                                     refuses to command. Unreachable: reported in /diagnostics as
                                     unverified (the array is then sent in ``joint_names`` order).
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
import sys
import time

import numpy as np
import rclpy
from builtin_interfaces.msg import Time as TimeMsg
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rcl_interfaces.srv import GetParameters
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Empty, Float64MultiArray
from std_srvs.srv import Trigger

from ..core.checkpoint_files import CheckpointError
from ..core.robot import ROBOT_DESCRIPTION
from ..safety import (
    ControlStep,
    ControlStepConfig,
    EStopLatch,
    GripperOutput,
    JointInput,
    JointLimits,
    LatentInput,
    LoadedPolicy,
    SafetyStatus,
)
from ..safety.gripper import describe_gripper
from ..safety.policy_loader import load_policy
from . import commands, convert
from .diagnostics import RollingStats, diagnostic_array, status
from .node_main import BackgroundLoader, ClockLoop, DeclaredParams, Throttle, check_checkpoint_dir, run_node
from .qos import declare_qos
from .worker_process import WorkerProcess

STATUS_CODES = {s: i for i, s in enumerate(SafetyStatus)}  # tick log: status -> small int
_STATUS_BY_CODE = list(SafetyStatus)
TICK_LOG_SIZE = 8192  # ring of (tick time, status) for diagnostics and tests
RELOAD_LOG_SIZE = 256  # (start ns, swap ns, cpu ms) of recent reloads, node clock
_HOLDS = (SafetyStatus.HOLD_STALE_LATENT, SafetyStatus.HOLD_STALE_JOINTS, SafetyStatus.HOLD_INVALID_TARGET)


def _gripper_key(spec, keep_topic: bool):
    """What of a contract's gripper a reload may not change (its topic only where the contract names it)."""
    if spec is None:
        return None
    positions = (spec.open_position, spec.closed_position) if spec.mode == "open_close" else None  # else unused
    return spec.joint, spec.mode, positions, None if keep_topic else spec.topic


def _best_effort(profile: QoSProfile) -> QoSProfile:
    """The same profile, best-effort: a best-effort subscription matches publishers of either kind."""
    return QoSProfile(history=profile.history, depth=profile.depth, durability=profile.durability,
                      reliability=ReliabilityPolicy.BEST_EFFORT)


class ControlNode(DeclaredParams, LifecycleNode):
    def __init__(self, node_name: str = "sage_control", **kwargs):
        super().__init__(node_name, **kwargs)
        p = self._param
        p("model_dir", "", "checkpoint directory; setting it at runtime reloads the model")
        p("control_rate_hz", 200.0, "control loop rate [Hz]")
        p("joint_names", [], "command joint order; [] = the checkpoint's order (must be the same joint set)")
        p("joint_limits_file", "", "joint limits YAML (ros2_control / MoveIt joint_limits.yaml, or ours); with "
          "urdf_file also '' = the robot contract's joint_limits and urdf files")
        p("urdf_file", "", "optional URDF file (or robot_description XML string) whose <limit>s tighten the YAML")
        p("default_acceleration_max_rad_s2", 0.0,
          "acceleration limit where neither YAML nor URDF gives one (URDF never does) [rad/s^2]; 0 = 10.0")
        p("latent_topic", "sage/latent", "latent from sage_context (sensor_msgs/Image 32FC1)")
        p("joint_states_topic", "", "joint states (sensor_msgs/JointState); '' = the robot contract's")
        p("latent_timeout_s", 0.5, "hold when the latent is older than this (arrival or header stamp) [s]")
        p("joint_state_timeout_s", 0.1, "hold when the joint state is older than this (arrival or stamp) [s]")
        p("clock_skew_tolerance_s", 0.05, "header stamps up to this far in the future are accepted [s]")
        p("require_stamps", False, "true: an input with a zero header stamp is stale (false: arrival time)")
        p("enable_control", False, "runtime: publish commands (false = publish nothing)")
        p("command_interface", "", "position_array | joint_trajectory | joint_state; '' = the robot contract's")
        p("controller_name", "", "ros2_control controller (topic /<name>/...); '' = the robot contract's")
        p("check_controller_joints", True, "position_array: check the controller's joints parameter order")
        p("joint_command_topic", "", "topic of the joint_state command interface (Isaac Sim); '' = the contract's")
        p("gripper_topic", "", "the gripper's command topic (std_msgs/Float64MultiArray, one value); '' = the "
          "robot contract's gripper.topic")
        p("trajectory_time_from_start_s", 0.05, "time_from_start of the JointTrajectory point [s]")
        p("smoothing_alpha", 1.0, "first-order smoothing of targets, (0, 1]; 1 = none")
        p("chunk_execution", "auto", "auto | play | receding: how a K-step action chunk is executed")
        p("action_chunk_dt_s", 0.0, "spacing of the chunk's steps [s]; 0 = the checkpoint's model.action_chunk_dt_s")
        p("e_stop_topic", "/e_stop", "e-stop trigger topic")
        p("e_stop_reset_topic", "/e_stop/reset", "e-stop reset topic (std_msgs/Empty)")
        p("e_stop_msg_type", "bool", "bool (std_msgs/Bool, data=true triggers) | empty (std_msgs/Empty)")
        p("e_stop_heartbeat_topic", "", "dead-man heartbeat topic; '' = none")
        p("e_stop_heartbeat_timeout_s", 0.5, "heartbeat silence that latches the e-stop [s]")
        p("e_stop_heartbeat_msg_type", "empty", "empty (any message) | bool (data=true counts)")
        p("realtime_priority", 0, "SCHED_FIFO priority for the control thread; 0 = normal scheduling")
        p("diagnostics_period_s", 1.0, "period of /diagnostics messages [s]")
        p("autostart", False, "configure and activate at start-up (no lifecycle manager needed)")
        for name, preset in (("latent", "reliable"), ("joint_states", "reliable"), ("command", "command"),
                             ("e_stop", "reliable"), ("e_stop_state", "status"), ("diagnostics", "reliable")):
            declare_qos(self, name, preset)

        self._log = self.get_logger()
        self._robot = None  # the checkpoint's robot contract, set at configure
        self._robot_implied = True  # the checkpoint has none: the one its observation implies
        self._gripper: GripperOutput | None = None  # the contract's gripper, set at configure
        self._gripper_topic = ""
        self._arm_index = None  # command columns of the arm's message (None: all: no gripper)
        self._origin_ns = self.get_clock().now().nanoseconds  # 0 under use_sim_time before /clock
        self._closing = False
        self._throttle = Throttle(5.0)
        self.estop = EStopLatch()  # survives deactivate/cleanup: only a reset releases it
        self._estop_arrival_s: float | None = None
        self._estop_published: bool | None = None
        self._heartbeat_s: float | None = None
        self._enabled = bool(self._get("enable_control"))
        self._policy: LoadedPolicy | None = None
        self._step: ControlStep | None = None
        self._filter = None  # the step's SafetyFilter (None: no limits, dry run)
        self._loop: ClockLoop | None = None
        self._loader = BackgroundLoader(self, self._load_job, on_done=self._note_reload, name="sage_control_loader")
        # Reloads load, verify and warm up in a helper process: this interpreter only unpickles the result.
        self._reload_worker = WorkerProcess(f"{load_policy.__module__}:{load_policy.__name__}", "model reload")
        self._reload_failed, self._reload_note = False, ""
        self._reload_log = np.zeros((RELOAD_LOG_SIZE, 3))
        self._reloads = 0
        self._order_problem = ""  # controller joint order mismatch: refuse to command
        self._order_note = "not checked"
        self._subs: list = []
        self._pubs: list = []
        self._srvs: list = []
        self._clients: list = []
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
                if param.value and self._order_problem:
                    return SetParametersResult(successful=False, reason=self._order_problem)
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
        except Exception as exc:  # every configure failure says why (rclpy raises its own types too)
            kind = "" if isinstance(exc, (ValueError, OSError)) else f"{type(exc).__name__}: "
            self._log.error(f"configure failed: {kind}{exc}")
            self._destroy_entities()
            self._policy = self._step = self._filter = None
            self._gripper = self._arm_index = None
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def _configure(self) -> None:
        g = self._get
        self._rate_hz = float(g("control_rate_hz"))
        if not (math.isfinite(self._rate_hz) and 0 < self._rate_hz <= 5000):
            raise ValueError(f"control_rate_hz must be in (0, 5000], got {self._rate_hz}")
        self._period_s = 1.0 / self._rate_hz
        # The control thread needs the GIL the moment it wakes; by default another thread may keep it
        # for up to 5 ms (sys.getswitchinterval). Hand it over within a tenth of a period instead.
        sys.setswitchinterval(min(sys.getswitchinterval(), max(5e-5, 0.1 * self._period_s)))
        for key in ("trajectory_time_from_start_s", "diagnostics_period_s"):
            value = float(g(key))
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{key} must be > 0, got {value}")
        interface = str(g("command_interface")).strip()
        if interface and interface not in commands.COMMAND_INTERFACES:
            raise ValueError(f"command_interface {interface!r}: choose one of {list(commands.COMMAND_INTERFACES)}")
        estop_type = str(g("e_stop_msg_type")).lower()
        if estop_type not in ("bool", "empty"):
            raise ValueError(f"e_stop_msg_type {estop_type!r}: choose 'bool' or 'empty'")
        hb_topic = str(g("e_stop_heartbeat_topic"))
        hb_type = str(g("e_stop_heartbeat_msg_type")).lower()
        if hb_type not in ("bool", "empty"):
            raise ValueError(f"e_stop_heartbeat_msg_type {hb_type!r}: choose 'bool' or 'empty'")
        for key in ("latent_topic", "e_stop_topic", "e_stop_reset_topic"):
            if not str(g(key)).strip():
                raise ValueError(f"{key} is empty: give a topic name")
        names_param = list(g("joint_names") or [])
        if not all(isinstance(n, str) and n for n in names_param):
            raise ValueError(f"joint_names must be a list of non-empty strings, got {names_param}")
        policy = load_policy(g("model_dir"), names_param or None)
        # Topics, command interface and URDF: the parameter where given, else the checkpoint's robot contract.
        robot = policy.fast.cfg.robot_contract()
        self._robot, self._robot_implied = robot, policy.fast.cfg.robot is None
        self._interface = interface or robot.command.interface
        self._controller = str(g("controller_name")).strip("/") or robot.command.controller
        self._joint_states_topic = str(g("joint_states_topic")).strip() or robot.joint_states_topic
        self._joint_command_topic = str(g("joint_command_topic")).strip() or robot.command.joint_command_topic
        self._chunk_dt_s = self._chunk_spacing(policy)
        step_cfg = ControlStepConfig(
            period_s=self._period_s, latent_timeout_s=float(g("latent_timeout_s")),
            joint_state_timeout_s=float(g("joint_state_timeout_s")),
            clock_skew_tolerance_s=float(g("clock_skew_tolerance_s")),
            e_stop_heartbeat_timeout_s=float(g("e_stop_heartbeat_timeout_s")) if hb_topic else 0.0,
            require_stamps=bool(g("require_stamps")), smoothing_alpha=float(g("smoothing_alpha")),
            chunk_dt_s=self._chunk_dt_s, trajectory_preview=self._interface == "joint_trajectory")

        self._command_names = names_param or list(policy.model_names)
        limits = self._load_limits(self._command_names)
        if limits is None and self._enabled:
            raise ValueError("enable_control is true but no joint limits are configured: set joint_limits_file "
                             "(and/or urdf_file); refusing to command a robot without limits")
        gripper_topic = str(g("gripper_topic")).strip()
        spec = robot.gripper
        if spec is None and gripper_topic:
            raise ValueError(f"gripper_topic is {gripper_topic!r} but the robot contract of {policy.model_dir} has "
                             "no gripper: leave gripper_topic empty, or add gripper: to the contract")
        self._gripper = None if spec is None else GripperOutput.build(
            self._command_names, spec, limits,
            f"{policy.model_dir}/config.json (robot contract '{robot.name}'): config.robot.gripper")
        self._gripper_topic = gripper_topic or (spec.topic if spec is not None else "")
        self._arm_index = self._gripper.arm_index if self._gripper is not None else None
        self._arm_names = list(self._gripper.arm_names) if self._gripper is not None else list(self._command_names)
        self._policy = policy
        self._step = ControlStep(step_cfg, limits, self.estop)
        self._filter = self._step.filter
        self._limits = limits
        self._tfs = float(g("trajectory_time_from_start_s"))
        self._reload_failed, self._reload_note = False, ""
        self._reset_inputs()
        self._log.info(
            f"loaded {policy.model_dir} (sha256 {policy.sha256[:12]}, verified) in {policy.load_ms:.0f} ms; "
            f"command order {self._command_names}; limits: {self._limits_source or 'NONE (dry run)'}"
            + (f"; gripper {describe_gripper(spec)} -> {self._gripper_topic}" if spec is not None else ""))

        q = lambda name, preset: declare_qos(self, name, preset)  # noqa: E731
        sub = self.create_subscription
        estop_msg = Bool if estop_type == "bool" else Empty
        estop_qos = q("e_stop", "reliable")
        self._subs = [
            sub(Image, g("latent_topic"), self._on_latent, q("latent", "reliable")),
            sub(JointState, self._joint_states_topic, self._on_joints, q("joint_states", "reliable")),
        ]
        # E-stop and reset: the configured QoS and a best-effort twin, so a best-effort publisher (common
        # for joystick / teleop bridges) matches too. A reliable publisher reaches both: harmless, latching.
        for qos in (estop_qos, _best_effort(estop_qos)) if estop_qos.reliability != ReliabilityPolicy.BEST_EFFORT \
                else (estop_qos,):
            self._subs.append(sub(estop_msg, g("e_stop_topic"), self._on_estop, qos))
            self._subs.append(sub(Empty, g("e_stop_reset_topic"), self._on_estop_reset, qos))
        if hb_topic:
            hb_msg = Bool if hb_type == "bool" else Empty
            for qos in (estop_qos, _best_effort(estop_qos)):
                self._subs.append(sub(hb_msg, hb_topic, self._on_heartbeat, qos))
        self._command_topic = commands.command_topic(self._interface, self._controller, self._joint_command_topic)
        self._cmd_pub = self.create_publisher(commands.command_msg_type(self._interface), self._command_topic,
                                              q("command", "command"))
        self._command_topic = self._cmd_pub.topic_name  # resolved in the node's namespace
        self._estop_pub = self.create_publisher(Bool, "~/e_stop_state", q("e_stop_state", "status"))
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", q("diagnostics", "reliable"))
        self._pubs = [self._cmd_pub, self._estop_pub, self._diag_pub]
        self._gripper_pub = None
        if self._gripper is not None:
            self._gripper_pub = self.create_publisher(Float64MultiArray, self._gripper_topic, q("command", "command"))
            self._pubs.append(self._gripper_pub)
            self._gripper_topic = self._gripper_pub.topic_name  # resolved in the node's namespace
            if self._gripper_topic == self._command_topic:
                raise ValueError(f"the gripper's topic {self._gripper_topic} is the arm's command topic: give the "
                                 "gripper its own controller (gripper_topic, or the contract's gripper.topic)")
        self._estop_published = None
        self._publish_estop_state()
        self._srvs = [self.create_service(Trigger, "~/reload_model", self._on_reload_srv,
                                          # own group: while this async callback awaits the load, the
                                          # default (mutually exclusive) group keeps taking messages
                                          callback_group=MutuallyExclusiveCallbackGroup()),
                      self.create_service(Trigger, "~/reset_e_stop", self._on_reset_srv)]
        self._publish = {"position_array": self._publish_array, "joint_trajectory": self._publish_trajectory,
                         "joint_state": self._publish_joint_state}[self._interface]
        self._diag_timer = self.create_timer(float(g("diagnostics_period_s")), self._publish_diagnostics)
        self._start_order_check()

    def _contract_limits_files(self) -> tuple[str, str]:
        """(limits YAML, URDF) files of the checkpoint's robot contract ('' = none; a checkpoint
        without a contract names none, so without parameters it runs dry)."""
        robot = self._robot
        if robot is None or self._robot_implied:
            return "", ""
        if robot.urdf == ROBOT_DESCRIPTION:
            self._log.warning("the robot contract's urdf is robot_description: pass that XML as the urdf_file "
                              "parameter for its limits; only the contract's joint_limits file is used")
        return robot.joint_limits, robot.urdf if robot.urdf != ROBOT_DESCRIPTION else ""

    def _load_limits(self, names: list[str]) -> JointLimits | None:
        """URDF (file or robot_description XML) and/or YAML (ros2_control/MoveIt or ours): the tighter wins."""
        yaml_file, urdf = str(self._get("joint_limits_file")), str(self._get("urdf_file"))
        if not (yaml_file or urdf):
            yaml_file, urdf = self._contract_limits_files()
        self._limits_source = ""
        if not (yaml_file or urdf):
            return None
        acc = float(self._get("default_acceleration_max_rad_s2"))
        limits = JointLimits.from_sources(names, yaml_path=yaml_file, urdf=urdf,
                                          default_acceleration_max_rad_s2=acc if acc > 0.0 else None)
        self._limits_source = limits.source
        if limits.acceleration_defaulted:
            self._log.warning(f"joint limits: {limits.source}")
        return limits

    # ------------------------------------------------------------------ controller joint order
    def _start_order_check(self) -> None:
        """position_array is order-only: ask the controller for its ``joints`` parameter (async)."""
        self._order_problem = ""
        if self._interface != "position_array":
            self._order_note = "not needed (command carries joint names)"
            return
        if not self._get("check_controller_joints"):
            self._order_note = "check disabled: the array is sent in joint_names order"
            return
        controller = self._controller
        self._order_client = self.create_client(GetParameters, f"{controller}/get_parameters")
        self._clients = [self._order_client]
        self._order_note = (f"unverified: /{controller}/get_parameters not reachable yet; the array is sent in "
                            f"joint_names order {self._arm_names}")
        self._order_timer = self.create_timer(1.0, self._poll_order)
        self._order_future = None
        self._order_polls = 0

    def _poll_order(self) -> None:
        client = getattr(self, "_order_client", None)
        if client is None or self._order_future is not None:
            return
        self._order_polls += 1
        if self._order_polls > 30:  # give up after ~30 s: stays "unverified" in diagnostics
            self.destroy_timer(self._order_timer)
            return
        if not client.service_is_ready():
            return
        self._order_future = client.call_async(GetParameters.Request(names=["joints"]))
        self._order_future.add_done_callback(self._on_order_reply)

    def _on_order_reply(self, future) -> None:
        timer, self._order_timer = getattr(self, "_order_timer", None), None
        if timer is not None:
            self.destroy_timer(timer)
        try:
            values = future.result().values
            joints = list(values[0].string_array_value) if values else []
        except Exception as exc:  # the controller went away mid-call
            self._order_note = f"unverified: get_parameters failed ({exc})"
            return
        controller = self._controller
        if not joints:
            self._order_note = f"unverified: /{controller} has no 'joints' parameter"
        elif joints != list(self._arm_names):
            self._order_problem = (f"controller /{controller} expects joints {joints} but commands are in order "
                                   f"{list(self._arm_names)}"
                                   + (f" (the gripper {self._gripper.joint!r} goes to {self._gripper_topic})"
                                      if self._gripper is not None else "")
                                   + ": set joint_names to the controller's order; refusing to command")
            self._order_note = self._order_problem
            self._log.error(self._order_problem)
        else:
            self._order_note = f"verified against /{controller} joints"

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._step is not None:
            self._step.reset()  # first command starts from the measured position
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
        self._reload_worker.close()
        self._policy = self._step = self._filter = None
        self._gripper = self._arm_index = None
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_loop()
        self._destroy_entities()
        self._reload_worker.close()
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
        self._reload_worker.close()
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
        for ent in self._clients:
            self.destroy_client(ent)
        self._subs, self._pubs, self._srvs, self._clients = [], [], [], []
        self._order_client = None
        for attr in ("_diag_timer", "_order_timer"):
            timer = getattr(self, attr, None)
            if timer is not None:
                self.destroy_timer(timer)
                setattr(self, attr, None)

    # ------------------------------------------------------------------ inputs (executor thread)
    def _reset_inputs(self) -> None:
        self._latent: LatentInput | None = None
        self._joints: JointInput | None = None
        self._rejected = {"latent": 0, "joint_states": 0}
        self._reject_reasons: dict[str, str] = {"latent": "", "joint_states": ""}
        self._received = {"latent": 0, "joint_states": 0, "other_publisher": 0}

    # Times handed to the pure step are seconds since this node's time origin, not since the epoch:
    # float64 epoch seconds are only 0.24 us apart today, which made a 5 ms step's elapsed time
    # wrong by up to 1e-4 of itself (measured: pairs at 1.0001x velocity_max by their ns stamps).
    def _now_s(self) -> float:
        return (self.get_clock().now().nanoseconds - self._origin_ns) * 1e-9

    def _stamp_s(self, stamp) -> float:
        """Header stamp on the same relative clock; 0.0 stays "unstamped"."""
        ns = int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
        return 0.0 if ns == 0 else (ns - self._origin_ns) * 1e-9

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
            stamp = self._stamp_s(msg.header.stamp)
        except (convert.ConversionError, ValueError) as exc:
            self._reject("latent", str(exc))
            return
        self._latent = LatentInput(np.array(z, dtype=np.float32), stamp, now)

    def _on_joints(self, msg: JointState) -> None:
        now = self._now_s()
        self._received["joint_states"] += 1
        policy = self._policy
        if policy is None:
            return
        try:
            out = convert.joint_state_to_arrays(msg, policy.model_names, policy.input_ranges)
            stamp = self._stamp_s(msg.header.stamp)
        except (convert.ConversionError, ValueError) as exc:
            self._reject("joint_states", str(exc))
            return
        if out is None:  # none of our joints: another driver on the topic (a gripper), not an error
            self._received["other_publisher"] += 1
            return
        pos, vel = out
        measured = pos if policy.perm is None else pos[policy.perm]
        self._joints = JointInput(pos, vel, np.asarray(measured, dtype=np.float64), stamp, now)

    def _publish_estop_state(self) -> None:
        """Latched state, transient-local: an operator console joining late still sees it."""
        latched = self.estop.latched
        pub = getattr(self, "_estop_pub", None)
        if pub is None or latched == self._estop_published:
            return
        self._estop_published = latched
        try:
            pub.publish(Bool(data=latched))
        except Exception:  # shutting down
            pass

    def _on_estop(self, msg) -> None:
        if isinstance(msg, Bool) and not msg.data:
            return
        now = self._now_s()
        was = self.estop.latched
        self.estop.trigger(f"{self._get('e_stop_topic')} at t={now:.3f}")
        if not was:
            self._estop_arrival_s = now
            self._log.error(f"E-STOP latched ({self._get('e_stop_topic')}): holding the last command until reset")
        self._publish_estop_state()

    def _on_heartbeat(self, msg) -> None:
        if isinstance(msg, Bool) and not msg.data:
            return  # dead-man released: silence from here on latches after the timeout
        self._heartbeat_s = self._now_s()

    def _reset_estop(self, source: str) -> str:
        was = self.estop.latched
        self.estop.reset()  # the filter resumes from the held command, ramping up from rest
        message = f"e-stop reset via {source}" if was else f"e-stop was not latched ({source})"
        self._log.warning(message)
        self._publish_estop_state()
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
        # (ticks, commands published) as of the end of the last tick, one tuple swapped in per tick: the
        # diagnostics thread reads both from the same tick (two attribute reads can straddle ticks).
        self._counts = (0, 0)
        self._gripper_state = (0, math.nan)  # (gripper commands published, last value), swapped as one
        self._last_tick_ns = 0
        self._status = SafetyStatus.HOLD_NO_INPUT
        self._status_reason = "not started"
        self._stale_clock = ""
        self._status_counts = {s: 0 for s in SafetyStatus}
        self._log_t = np.zeros(TICK_LOG_SIZE, dtype=np.int64)
        self._log_s = np.zeros(TICK_LOG_SIZE, dtype=np.int8)
        self._diag_ticks = 0
        self._diag_time = time.monotonic()
        self._diag_clock = self._now_s()
        self._clock_limit_logged = False
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
        step = self._step
        if step is None:
            return
        enabled = self._enabled and not self._order_problem
        now_s = (now_ns - self._origin_ns) * 1e-9
        res = step.step(now_s, self._policy, self._latent, self._joints, enabled, self._heartbeat_s)
        if res.command is not None:
            self._publish(res, now_ns)
            self._published += 1
            gripper = self._gripper
            if gripper is not None:  # the same filtered vector: holds hold the gripper too
                value = gripper.value(res.command[gripper.index])
                self._gripper_pub.publish(commands.gripper_command_msg(value))
                self._gripper_state = (self._gripper_state[0] + 1, value)
        if res.status is SafetyStatus.ESTOP and self._estop_published is False:
            self._publish_estop_state()  # a heartbeat timeout latched it inside the step
        status = res.status
        self._status, self._status_reason, self._stale_clock = status, res.reason, res.stale_clock
        self._status_counts[status] += 1
        i = self._ticks % TICK_LOG_SIZE
        self._log_t[i] = now_ns
        self._log_s[i] = STATUS_CODES[status]
        self._ticks += 1
        self._counts = (self._ticks, self._published)
        self._compute_stats.add(time.perf_counter() - t0)

    def _arm(self, values):
        """The arm's columns of a (J,) or (M, J) array in command order: all of them without a gripper."""
        arm = self._arm_index
        return values if arm is None or values is None else values[..., arm]

    def _publish_array(self, res, now_ns) -> None:
        self._cmd_pub.publish(commands.position_array_msg(self._arm(res.command)))

    def _publish_trajectory(self, res, now_ns) -> None:
        # Zero stamp = "start now" for joint_trajectory_controller (immune to clock offsets). A played
        # chunk's remaining points follow the command (ControlStep's trajectory_preview).
        arm = self._arm
        self._cmd_pub.publish(commands.joint_trajectory_msg(
            self._arm_names, arm(res.command), arm(res.velocity), None, self._tfs,
            arm(res.preview_positions), arm(res.preview_velocities), self._chunk_dt_s))

    def _publish_joint_state(self, res, now_ns) -> None:
        stamp = TimeMsg(sec=now_ns // 1_000_000_000, nanosec=now_ns % 1_000_000_000)
        self._cmd_pub.publish(commands.joint_state_command_msg(self._arm_names, self._arm(res.command), stamp))

    def tick_log(self):
        """(tick times ns, statuses) of the last ticks, oldest first (for tests and tools)."""
        n, k = self._ticks, min(self._ticks, TICK_LOG_SIZE)
        idx = (np.arange(n - k, n) % TICK_LOG_SIZE) if k else np.zeros(0, dtype=np.intp)
        return self._log_t[idx].copy(), [_STATUS_BY_CODE[c] for c in self._log_s[idx]]

    def reload_log(self) -> np.ndarray:
        """(start ns, swap ns, interpreter-thread CPU ms) of the recent successful reloads, oldest first."""
        n, k = self._reloads, min(self._reloads, RELOAD_LOG_SIZE)
        idx = (np.arange(n - k, n) % RELOAD_LOG_SIZE) if k else np.zeros(0, dtype=np.intp)
        return self._reload_log[idx].copy()

    # ------------------------------------------------------------------ reload
    def _chunk_spacing(self, policy: LoadedPolicy) -> float:
        """The chunk spacing ControlStep plays at (0 = receding horizon), from parameters + checkpoint."""
        mode = str(self._get("chunk_execution")).lower()
        if mode not in ("auto", "play", "receding"):
            raise ValueError(f"chunk_execution {mode!r}: choose 'auto', 'play' or 'receding'")
        dt = float(self._get("action_chunk_dt_s"))
        if not (math.isfinite(dt) and dt >= 0.0):
            raise ValueError(f"action_chunk_dt_s must be >= 0, got {dt}")
        model = policy.fast.cfg.model
        dt = dt or float(model.action_chunk_dt_s)
        if mode == "receding" or model.action_chunk == 1:
            return 0.0
        if dt <= 0.0:
            if mode == "play":
                raise ValueError(f"chunk_execution is 'play' but {policy.model_dir} records no "
                                 "model.action_chunk_dt_s: set action_chunk_dt_s")
            return 0.0
        return dt

    def _load_job(self, path: str) -> str:
        start_ns = self.get_clock().now().nanoseconds
        cpu0 = time.thread_time()
        current = self._policy
        if current is None:
            raise CheckpointError("not configured")
        new = self._reload_worker.call(path, list(self._command_names))
        if new.model_names != current.model_names:
            raise CheckpointError(f"{path}: joint names {list(new.model_names)} differ from the running model's "
                                  f"{list(current.model_names)}; reconfigure the node to change robots")
        if new.latent_dim != current.latent_dim:
            raise CheckpointError(f"{path}: latent_dim {new.latent_dim} differs from the running {current.latent_dim}")
        robot = new.fast.cfg.robot_contract()
        moved = [f"{key} {mine!r} -> {theirs!r}" for key, param, mine, theirs in (
            ("command interface", "command_interface", self._interface, robot.command.interface),
            ("controller", "controller_name", self._controller, robot.command.controller),
            ("joint_states topic", "joint_states_topic", self._joint_states_topic, robot.joint_states_topic),
            ("joint_command topic", "joint_command_topic", self._joint_command_topic,
             robot.command.joint_command_topic))
            if not str(self._get(param)).strip() and mine != theirs]
        mine_g, theirs_g = self._robot.gripper, robot.gripper
        keep_topic = bool(str(self._get("gripper_topic")).strip())  # the parameter's topic, not the contract's
        if _gripper_key(mine_g, keep_topic) != _gripper_key(theirs_g, keep_topic):
            moved.append(f"gripper ({describe_gripper(mine_g)}) -> ({describe_gripper(theirs_g)})")
        if not (str(self._get("joint_limits_file")) or str(self._get("urdf_file"))):
            mine = (self._robot.joint_limits, self._robot.urdf) if not self._robot_implied else ("", "")
            theirs = (robot.joint_limits, robot.urdf) if new.fast.cfg.robot is not None else ("", "")
            if mine != theirs:  # the limits in force were read from the running contract's files
                moved.append(f"limits files {mine} -> {theirs}")
        if moved:
            raise CheckpointError(f"{path}: its robot contract changes the {', '.join(moved)}; reconfigure the "
                                  "node to change them")
        if self._chunk_spacing(new) != self._chunk_dt_s:
            raise CheckpointError(f"{path}: its action chunk (K={new.fast.cfg.model.action_chunk}, dt "
                                  f"{new.fast.cfg.model.action_chunk_dt_s} s) is played at another spacing than the "
                                  f"running model's ({self._chunk_dt_s} s); reconfigure the node to change it")
        self._policy = new  # atomic swap: the next tick uses it
        cpu_ms = (time.thread_time() - cpu0) * 1e3
        self._reload_log[self._reloads % RELOAD_LOG_SIZE] = (start_ns, self.get_clock().now().nanoseconds, cpu_ms)
        self._reloads += 1
        return f"loaded {new.model_dir} (sha256 {new.sha256[:12]}, verified) in {new.load_ms:.0f} ms"

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
            self._publish_estop_state()
            self._diag_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), self._statuses()))
        except Exception as exc:  # diagnostics must never take the node down
            if not self._closing and rclpy.ok() and self._throttle.allow("diagnostics"):
                self._log.error(f"diagnostics failed: {exc}")

    def _statuses(self):
        name = self.get_name()  # status names: "<node name>: <part>"
        now = self._now_s()
        mono = time.monotonic()
        ticks, published = self._counts
        gripper_published, gripper_last = self._gripper_state
        # Ticks per second of the node's clock: sim time under use_sim_time (a sim running slower
        # than real time is not a slow loop), wall time otherwise.
        sim = bool(getattr(self.get_clock(), "ros_time_is_active", False))
        elapsed = (now - self._diag_clock) if sim else (mono - self._diag_time)
        rate = (ticks - self._diag_ticks) / elapsed if elapsed > 0 else 0.0
        self._diag_ticks, self._diag_time, self._diag_clock = ticks, mono, now
        # The loop ticks at most once per /clock update: a clock that moves in steps longer than
        # the period caps the rate (a 100 Hz sim clock gives a 200 Hz loop 100 ticks per sim second).
        step = self._loop.clock_step_s if self._loop is not None else 0.0
        clock_cap = 1.0 / step if step > 1.05 * self._period_s else math.inf
        if clock_cap < math.inf and not self._clock_limit_logged:
            self._clock_limit_logged = True
            self._log.warning(f"control_rate_hz {self._rate_hz:g} Hz exceeds what /clock delivers: sim time advances "
                              f"{step * 1e3:.1f} ms per update ({clock_cap:.0f} Hz), and the loop ticks at most "
                              f"once per update; set control_rate_hz to {clock_cap:.0f} (or speed up /clock)")
        active = self._loop is not None
        per = self._period_stats.summary()
        comp = self._compute_stats.summary()
        st, reason = self._status, self._status_reason
        if st is not self._last_logged_status and active:  # log transitions here, never in the tick
            if st in _HOLDS:
                self._log.warning(f"holding last command: {reason}")
            elif st is SafetyStatus.OK and self._last_logged_status is not None:
                self._log.info("commanding (inputs fresh)")
            self._last_logged_status = st
        latent, joints = self._latent, self._joints
        if not active:
            level, msg = "warn", "inactive"
        elif self._order_problem:
            level, msg = "error", self._order_problem
        elif st is SafetyStatus.ESTOP:
            level, msg = "error", f"E-STOP: {self.estop.reason}"
        elif st in _HOLDS or st is SafetyStatus.HOLD_NO_INPUT:
            level, msg = "warn", f"{st.value}: {reason}"
        elif st is SafetyStatus.DISABLED:
            level, msg = "ok", reason if self._filter is None else "control disabled (enable_control=false)"
        elif ticks > 10 and rate < 0.9 * min(self._rate_hz, clock_cap):
            level, msg = "warn", f"loop slow: {rate:.1f} Hz < {min(self._rate_hz, clock_cap):g} Hz"
        elif clock_cap < 0.9 * self._rate_hz:
            level, msg = "ok", (f"commanding, limited by /clock: {clock_cap:.0f} Hz (sim time advances "
                                f"{step * 1e3:.1f} ms per update) < control_rate_hz {self._rate_hz:g}")
        else:
            level, msg = "ok", "commanding"
        loop = self._loop
        reloads = self.reload_log()
        values = {
            "state": st.value, "reason": reason, "stale_clock": self._stale_clock, "enable_control": self._enabled,
            "e_stop_latched": self.estop.latched, "e_stop_reason": self.estop.reason or "",
            "e_stop_triggers": self.estop.trigger_count,
            "e_stop_heartbeat_age_ms": (now - self._heartbeat_s) * 1e3 if self._heartbeat_s is not None else math.nan,
            "rate_hz": rate, "target_hz": getattr(self, "_rate_hz", math.nan),
            "clock_limit_hz": clock_cap if clock_cap < math.inf else 0.0,
            "period_p50_ms": per["p50"] * 1e3, "period_p99_ms": per["p99"] * 1e3, "period_max_ms": per["max"] * 1e3,
            "missed_ticks": self._missed, "skipped_deadlines": loop.skipped if loop else 0,
            "chunk_execution": f"play (dt {self._chunk_dt_s:g} s)" if self._chunk_dt_s else "receding horizon",
            "compute_p50_us": comp["p50"] * 1e6, "compute_p99_us": comp["p99"] * 1e6,
            "compute_max_us": comp["max"] * 1e6, "ticks": ticks, "commands_published": published,
            "latent_age_ms": (now - latent.arrival_s) * 1e3 if latent is not None else math.nan,
            "latent_stamp_age_ms": (now - latent.stamp_s) * 1e3 if latent is not None and latent.stamp_s else math.nan,
            "joint_state_age_ms": (now - joints.arrival_s) * 1e3 if joints is not None else math.nan,
            "joint_state_stamp_age_ms": (now - joints.stamp_s) * 1e3 if joints is not None and joints.stamp_s
            else math.nan,
            "latents_received": self._received["latent"], "joint_states_received": self._received["joint_states"],
            "joint_states_other_publisher": self._received["other_publisher"],
            "rejected.latent": self._rejected["latent"], "rejected.joint_states": self._rejected["joint_states"],
            "last_reject.latent": self._reject_reasons["latent"],
            "last_reject.joint_states": self._reject_reasons["joint_states"],
            "loop_errors": loop.errors if loop else 0, "last_loop_error": loop.last_error if loop else "",
            "scheduling": loop.rt_status if loop else "",
            "command_interface": getattr(self, "_interface", ""), "command_topic": getattr(self, "_command_topic", ""),
            "controller_joint_order": self._order_note,
            "gripper_topic": self._gripper_topic if self._gripper is not None else "",
            "gripper_mode": self._gripper.mode if self._gripper is not None else "",
            "gripper_commands_published": gripper_published, "gripper_last_command": gripper_last,
            "torch_imported": "torch" in sys.modules,
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
                "model_sha256_verified": policy is not None,
                "model_dir_param": self._get("model_dir"), "reload_in_progress": self._loader.busy,
                "last_reload": self._reload_note, "limits": getattr(self, "_limits_source", "") or "none",
                "reloads": self._reloads,
                "reload_cpu_max_ms": float(reloads[:, 2].max()) if len(reloads) else math.nan,
            }))
        return out


def main(args=None) -> None:
    raise SystemExit(run_node(ControlNode, args))


if __name__ == "__main__":
    main()
