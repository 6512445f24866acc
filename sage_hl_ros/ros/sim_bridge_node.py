"""sim_bridge (console script ``sage_sim_bridge``): the MuJoCo reaching world, spoken the way Isaac Sim's
ROS 2 bridge speaks, so the SAGE runtime (``config/isaac_sim.yaml``) runs against it unchanged.

The arm is ``sim.robot`` (``sage_hl_ros.sim.robots``: ``sim_arm7``, the 7-DoF arm, by default, or the
6-DoF UR-style ``sim_ur6``); its robot contract (``robot_file``, by default
``config/robots/<robot>.yaml``) names the joints, the cameras and their topics, and whether there is
audio and tactile: the bridge publishes exactly the streams the contract declares, on its topics
(relative ones resolve in the node's namespace), and refuses a contract that does not describe the
sim robot (other joints, a camera it has not, another audio rate or taxel count).

The node owns a :class:`sage_hl_ros.sim.world.ReachWorld` and steps it on a dedicated physics thread
(not an executor timer): each tick advances ``1 / joint_state_rate_hz`` sim seconds, publishes
``/clock`` and ``/joint_states``, the camera when a frame is due (rendered on this thread: the GL
context is thread-bound), tactile and audio, then sleeps to keep ``real_time_factor``. Commands
arrive on the executor thread and are handed over under a lock; the physics thread applies the
newest one at the start of each tick. Sim time starts at 0 and is exact: tick count x tick period.

Between episodes the servos carry the arm to the next start pose on a minimum-jerk path
(``sim.homing_duration_s``, commands ignored meanwhile, no episode open) instead of teleporting
it: a controller's command stream and rate limits stay valid, as after a homing move on a real arm.

Published topics (QoS ``qos.<name>.{reliability,depth,durability}``); the names are sim_arm7's
contract's (sim_ur6: front/rgb, front/depth, front/camera_info, wrist/rgb, wrist/camera_info, no
tactile, no audio)
    /clock              rosgraph_msgs/Clock, every tick (sim time)                       qos.clock: reliable
    /joint_states       sensor_msgs/JointState: the robot's joints (joint1..7) position/velocity/effort,
                        header stamp = sim time, joint_state_rate_hz                     qos.joint_states: reliable
    /rgb                sensor_msgs/Image rgb8, camera_rate_hz; one per contract camera    qos.rgb: sensor
    /depth              sensor_msgs/Image 32FC1 metres (background = far clip), for a
                        contract camera with a depth_topic                                qos.depth: sensor
    /camera_info        sensor_msgs/CameraInfo plumb_bob, K/P from the pinhole camera,
                        same stamp and frame_id as the images; next to each camera's
                        image topic (<dir>/rgb -> <dir>/camera_info)                      qos.camera_info: sensor
    /tactile/array      std_msgs/Float32MultiArray dim "taxels" (4 fingertip forces, N),
                        tactile_rate_hz; if the contract declares tactile                 qos.tactile: sensor
    /audio/frames       std_msgs/Float32MultiArray dim "samples", PCM in [-1, 1]: contiguous
                        chunks of sample_rate / audio_rate_hz samples (16000 / 20 = 800)
                        that cover sim time exactly; if the contract declares audio       qos.audio: sensor
    /sage/episode       std_msgs/String "start:<episode_task>" at each reset, "end:success" /
                        "end:failure" at each episode's end (the recorder's convention)
                                                 qos.episode: reliable, transient-local, keep-last 10
    /sim/episode_result std_msgs/String JSON per episode: {"episode", "success", "final_distance_m",
                        "target_m", "seed", "sim_time_s", "ended_early", "commands_applied",
                        "max_command_gap_s"} (ticks that applied a new command; longest sim time
                        without one: how well the driver kept up); after the last
                        episode of a batch {"done": true, "episodes": N, "successes": k}
                                                 qos.episode_result: reliable, transient-local, keep-last 1000
    /sim/target         geometry_msgs/PointStamped: the target centre (world frame), stamped with
                        the reset's sim time. Privileged: for the expert and evaluation, never
                        the policy. Not an Isaac topic.   qos.target: reliable, transient-local, depth 1
    /diagnostics        diagnostic_msgs/DiagnosticArray "sim_bridge: physics": achieved vs
                        requested real-time factor, sim time, episodes, commands, render time
Subscribed topics
    /joint_command      sensor_msgs/JointState position targets matched by name[] (Isaac's "ROS2
                        Subscribe Joint State"): a message naming some joints moves only those.
                        Unknown names, duplicates, name/position length mismatch or non-finite
                        values reject the whole message (throttled warning); the arm keeps its
                        last target (never zeros). Targets are clamped to the joint ranges.
                                                                                          qos.joint_command: reliable
Services
    ~/start             std_srvs/Trigger: start a batch of ``episodes`` episodes (autostart false, or
                        after a batch ended). Fails while a batch is running.
    ~/reset             std_srvs/Trigger: end the current episode now (marker and result as at its
                        normal end, ``"ended_early": true``) and go on with the next.
Parameters (read at start-up unless marked runtime)
    sim_config_file (str, "")       YAML with a ``sim:`` section (SimConfig); "" = the package's config/sim.yaml
    sim.<key>                       every SimConfig key except seed (robot, physics_dt_s, servo_kp, servo_kv,
                                    episode_duration_s, success_tolerance_m, target_x_range_m,
                                    target_y_range_m, target_radius_m, home_noise_rad, homing_duration_s,
                                    image_width_px, image_height_px, camera_fovy_deg, audio_sample_rate_hz);
                                    default: the file's value, so one -p overrides one key
    seed (int, -1)                  RNG seed of targets and home-pose noise; -1 = the file's sim.seed
    episodes (int, 0)               episodes per batch; 0 = forever
    autostart (bool, true)          start the first batch at once; false = paused until ~/start
    real_time_factor (float, 1.0)   1 = real time, 2 = twice as fast, 0 = as fast as possible (runtime)
    joint_state_rate_hz (100.0)     physics publish tick; a multiple of sim.physics_dt_s
    camera_rate_hz (20.0), tactile_rate_hz (100.0), audio_rate_hz (20.0)
                                    each must divide joint_state_rate_hz; audio_rate_hz must divide
                                    sim.audio_sample_rate_hz
    paused_publish_hz (float, 2.0)  wall rate of /clock + /joint_states while paused (time stands still)
    idle_physics (bool, false)      between batches (before the first ~/start, after a batch) keep the
                                    world running at ``real_time_factor`` with no episode open: the arm
                                    holds its last command and every stream flows, as a real arm does
                                    between tasks (the online-sleep demo measures the control loop
                                    then); false = physics paused, time stands still
    episode_task (str, "reach")     task name in the start marker
    robot_file (str, "")            robot contract of sim.robot; "" = the package's config/robots/<robot>.yaml
    joint_states_topic, joint_command_topic, tactile_topic, audio_topic   ("" = the contract's)
    rgb_topic, depth_topic, camera_info_topic   the first camera's ("" = the contract's; camera_info
                                    next to the image topic); further cameras: the contract's only
    clock_topic, episode_topic, result_topic, target_topic   (the defaults above)
    camera_frame_id (str, "sim_camera")  frame_id of the camera's images; with several cameras
                                    <camera_frame_id>_<contract camera name>
    world_frame_id (str, "world")
    diagnostics_period_s (float, 1.0)  wall seconds between /diagnostics messages

An invalid configuration (file or parameter) logs one error naming the file/parameter and key and
the process exits with code 2 (no traceback).
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import time
from array import array
from pathlib import Path

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PointStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Float32MultiArray, String
from std_srvs.srv import Trigger

from ..core.config import ConfigError
from ..core.robot import load_robot
from ..paths import config_file
from ..sim.robots import camera_info_topic, check_contract, sim_robot
from ..sim.world import TAXEL_SITES, ReachWorld, SimConfig
from . import convert
from .diagnostics import RollingStats, diagnostic_array, status
from .node_main import DeclaredParams, Throttle
from .qos import declare_qos
from .sim_common import config_with_overrides, declare_config_params, resolve_config_file, run_sim_node

WAITING, RUNNING, DONE = "waiting for ~/start", "running", "done"
_MAX_LAG_S = 0.5  # wall seconds behind schedule before the pacing restarts (no catch-up burst)


def _ticks(name: str, rate_hz: float, tick_hz: float) -> int:
    if not (math.isfinite(rate_hz) and rate_hz > 0):
        raise ConfigError(f"parameter {name}: must be > 0, got {rate_hz}")
    ratio = tick_hz / rate_hz
    n = round(ratio)
    if n < 1 or abs(ratio - n) > 1e-6:
        raise ConfigError(f"parameter {name}: {rate_hz:g} Hz must divide joint_state_rate_hz "
                          f"({tick_hz:g} Hz) into whole ticks")
    return n


# --------------------------------------------------------------------------- node


class SimBridge(DeclaredParams, Node):
    def __init__(self, node_name: str = "sim_bridge", **kwargs):
        super().__init__(node_name, **kwargs)
        self._stop = False
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        p = self._param
        path = resolve_config_file(str(p("sim_config_file", "", "YAML with a 'sim:' section; '' = config/sim.yaml")
                                       .value))
        file_cfg = SimConfig.from_yaml(path, section="sim")
        values = declare_config_params(self, "sim", SimConfig, file_cfg, skip=("seed",))
        seed = int(p("seed", -1, "RNG seed of targets and home noise; -1 = the sim config's seed").value)
        cfg = config_with_overrides(SimConfig, file_cfg, values, path, "sim")
        if seed >= 0:
            cfg = dataclasses.replace(cfg, seed=seed)
        self.seed = int(cfg.seed)
        self.episodes = int(p("episodes", 0, "episodes per batch; 0 = forever").value)
        autostart = bool(p("autostart", True, "start the first batch at once (false: wait for ~/start)").value)
        self._rtf = float(p("real_time_factor", 1.0, "1 = real time, 0 = as fast as possible (runtime)").value)
        tick_hz = float(p("joint_state_rate_hz", 100.0, "physics publish tick and /joint_states rate [Hz, sim]").value)
        cam_hz = float(p("camera_rate_hz", 20.0, "rgb/depth/camera_info rate [Hz, sim]").value)
        tactile_hz = float(p("tactile_rate_hz", 100.0, "tactile rate [Hz, sim]").value)
        audio_hz = float(p("audio_rate_hz", 20.0, "audio frames per sim second").value)
        paused_hz = float(p("paused_publish_hz", 2.0, "wall rate of /clock and /joint_states while paused").value)
        self._idle_physics = bool(p("idle_physics", False, "between batches the world runs on, no episode open "
                                                           "(false: physics paused)").value)
        self.task = str(p("episode_task", "reach", "task name in the 'start:<task>' marker").value)
        robot = sim_robot(cfg.robot)
        robot_file = str(p("robot_file", "", "robot contract of sim.robot; '' = config/robots/<robot>.yaml").value)
        contract_path = Path(robot_file) if robot_file else config_file(robot.contract)
        contract = load_robot(contract_path)
        check_contract(robot, contract, cfg.audio_sample_rate_hz, len(TAXEL_SITES), str(contract_path))
        first = contract.camera
        from_contract = {  # "" = the contract's topic
            "joint_states": contract.joint_states_topic, "joint_command": contract.command.joint_command_topic,
            "rgb": first.topic if first else "", "depth": first.depth_topic if first else "",
            "camera_info": camera_info_topic(first.topic) if first else "",
            "tactile": contract.tactile.topic if contract.tactile else "",
            "audio": contract.audio.topic if contract.audio else ""}
        topics = {key: str(p(f"{key}_topic", "", f"{key} topic; '' = the robot contract's").value) or from_contract[key]
                  for key in from_contract}
        topics.update({key: str(p(f"{key}_topic", default, f"{key} topic").value) for key, default in (
            ("clock", "/clock"), ("episode", "/sage/episode"), ("result", "/sim/episode_result"),
            ("target", "/sim/target"))})
        camera_frame = str(p("camera_frame_id", "sim_camera", "frame_id of rgb, depth, camera_info (with "
                                                              "several cameras: <this>_<camera name>)").value)
        self.world_frame = str(p("world_frame_id", "world", "frame_id of /sim/target").value)
        diag_period = float(p("diagnostics_period_s", 1.0, "wall seconds between /diagnostics messages").value)

        if self.episodes < 0:
            raise ConfigError(f"parameter episodes: must be >= 0, got {self.episodes}")
        if not (math.isfinite(self._rtf) and self._rtf >= 0):
            raise ConfigError(f"parameter real_time_factor: must be >= 0, got {self._rtf}")
        for key, value in (("paused_publish_hz", paused_hz), ("diagnostics_period_s", diag_period),
                           ("joint_state_rate_hz", tick_hz)):
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"parameter {key}: must be > 0, got {value}")
        tick_s = 1.0 / tick_hz
        substeps = round(tick_s / cfg.physics_dt_s)
        if substeps < 1 or abs(substeps * cfg.physics_dt_s - tick_s) > 1e-9:
            raise ConfigError(f"parameter joint_state_rate_hz: the tick (1/{tick_hz:g} s) must be a whole number "
                              f"of physics steps (sim.physics_dt_s = {cfg.physics_dt_s:g} s in {path})")
        self._cam_every = _ticks("camera_rate_hz", cam_hz, tick_hz)
        self._tactile_every = _ticks("tactile_rate_hz", tactile_hz, tick_hz)
        self._audio_every = _ticks("audio_rate_hz", audio_hz, tick_hz)
        frame = cfg.audio_sample_rate_hz / audio_hz
        if abs(frame - round(frame)) > 1e-6:
            raise ConfigError(f"parameter audio_rate_hz: {audio_hz:g} Hz must divide sim.audio_sample_rate_hz "
                              f"({cfg.audio_sample_rate_hz} Hz) into whole samples")
        self.audio_frame_samples = int(round(frame))
        self.config, self.config_path = cfg, path
        self.robot, self.contract, self.contract_path = robot, contract, contract_path
        self.tick_s, self._tick_ns = tick_s, int(round(tick_s * 1e9))
        self._paused_period = 1.0 / paused_hz

        q = lambda name, preset: declare_qos(self, name, preset)
        # Low-rate event topics keep a history for late joiners (an orchestrator counting results).
        self._param("qos.episode.depth", 10, "keep-last queue depth (>= 1)")
        self._param("qos.episode_result.depth", 1000, "keep-last queue depth (>= 1)")
        pub = self.create_publisher
        self._clock_pub = pub(Clock, topics["clock"], q("clock", "reliable"))
        self._js_pub = pub(JointState, topics["joint_states"], q("joint_states", "reliable"))
        # One entry per contract camera: (sim camera, frame_id, rgb, depth or None, camera_info publishers).
        rgb_qos, depth_qos, info_qos = q("rgb", "sensor"), q("depth", "sensor"), q("camera_info", "sensor")
        self._cameras = []
        for i, cam in enumerate(contract.cameras):
            rgb_topic = topics["rgb"] if i == 0 else cam.topic
            depth_topic = (topics["depth"] if i == 0 else cam.depth_topic) if cam.depth_topic else ""
            info_topic = topics["camera_info"] if i == 0 else camera_info_topic(cam.topic)
            frame = camera_frame if len(contract.cameras) == 1 else f"{camera_frame}_{cam.name}"
            self._cameras.append((robot.camera_for_contract(cam.name).name, frame, pub(Image, rgb_topic, rgb_qos),
                                  pub(Image, depth_topic, depth_qos) if depth_topic else None,
                                  pub(CameraInfo, info_topic, info_qos)))
        self._tactile_pub = (pub(Float32MultiArray, topics["tactile"], q("tactile", "sensor"))
                             if contract.tactile else None)
        self._audio_pub = pub(Float32MultiArray, topics["audio"], q("audio", "sensor")) if contract.audio else None
        self._episode_pub = pub(String, topics["episode"], q("episode", "status"))
        self._result_pub = pub(String, topics["result"], q("episode_result", "status"))
        self._target_pub = pub(PointStamped, topics["target"], q("target", "status"))
        self._diag_pub = pub(DiagnosticArray, "/diagnostics", q("diagnostics", "reliable"))
        self.create_subscription(JointState, topics["joint_command"], self._on_command,
                                 q("joint_command", "reliable"))
        self.create_service(Trigger, "~/start", self._srv_start)
        self.create_service(Trigger, "~/reset", self._srv_reset)
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._log = self.get_logger()
        self._throttle = Throttle(5.0)
        self.world = ReachWorld(cfg)
        self._index = {n: i for i, n in enumerate(self.world.joint_names)}
        # Shared with the physics thread (under _lock).
        self._lock = threading.Lock()
        self._command = self.world.command()
        self._command_new = False
        self._state = WAITING
        self._start_requested = autostart
        self._end_requested = False
        self._homing = None  # (start sim ns, from q, to q, next target) between episodes
        # Physics-thread state (read by diagnostics without the lock: single values).
        self._sim_ns = 0
        self._ticks = 0
        self._episode = -1  # index of the current / last episode (all batches)
        self._ep_commands, self._ep_max_gap_ns, self._ep_last_command_ns = 0, 0, 0  # this episode's driving
        self._batch_done = 0
        self._batch_successes = 0
        self._successes = 0
        self._fell_behind = 0
        self._render_ms = RollingStats(256)
        self._tick_ms = RollingStats(1024)
        self.commands_received = 0
        self.commands_rejected = 0
        self._last_reject = ""
        self._diag_wall, self._diag_sim_ns = time.monotonic(), 0
        self._pacing_reset = True
        self.fatal = ""
        self._ready = threading.Event()
        self._js_msg = JointState()
        self._js_msg.name = list(self.world.joint_names)
        self._thread = threading.Thread(target=self._run, name="sim_physics", daemon=True)
        self._thread.start()
        if not self._ready.wait(60.0) or self.fatal:
            self.release()
            raise RuntimeError(self.fatal or "physics thread did not start within 60 s")
        self.create_timer(diag_period, self._publish_diagnostics)
        streams = [f"camera {name}" for name, *_ in self._cameras]
        streams += ["tactile"] if contract.tactile else []
        streams += [f"audio {self.audio_frame_samples} samples @ {audio_hz:g} Hz"] if contract.audio else []
        self._log.info(
            f"MuJoCo reach world ({robot.name}, contract {contract_path}) from {path} (seed {self.seed}): "
            f"{tick_hz:g} Hz ticks of {substeps} x {cfg.physics_dt_s:g} s, images "
            f"{cfg.image_width_px}x{cfg.image_height_px} @ {cam_hz:g} Hz; {', '.join(streams) or 'no sensors'}; "
            f"real_time_factor {self._rtf:g}, "
            f"episodes {self.episodes or 'forever'} of {cfg.episode_duration_s:g} s"
            + ("" if autostart else "; paused until ~/start"))

    # ------------------------------------------------------------------ executor side
    def _on_set_parameters(self, params) -> SetParametersResult:
        for param in params:
            if param.name == "real_time_factor":
                value = param.value
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                        math.isfinite(value) and value >= 0):
                    return SetParametersResult(successful=False, reason="real_time_factor must be a number >= 0")
                self._rtf = float(value)
                self._pacing_reset = True
                self._wake.set()
            elif param.name != "use_sim_time" and self.has_parameter(param.name):
                return SetParametersResult(successful=False,
                                           reason=f"{param.name} is read at start-up; restart the node to change it")
        return SetParametersResult(successful=True)

    def _reject(self, reason: str) -> None:
        self.commands_rejected += 1
        self._last_reject = reason
        if self._throttle.allow("command"):
            self._log.warning(f"ignoring /joint_command ({self.commands_rejected} rejected so far): {reason}; "
                              "holding the last target")

    def _on_command(self, msg: JointState) -> None:
        names, positions = list(msg.name), msg.position
        if not names:
            return self._reject("no joint names")
        if len(positions) != len(names):
            return self._reject(f"{len(names)} names but {len(positions)} positions")
        unknown = [n for n in names if n not in self._index]
        if unknown:
            return self._reject(f"unknown joints {unknown} (known: {self.world.joint_names})")
        if len(set(names)) != len(names):
            return self._reject(f"joints named more than once in {names}")
        values = np.asarray(positions, dtype=np.float64)
        if not np.isfinite(values).all():
            bad = [n for n, v in zip(names, values, strict=True) if not math.isfinite(v)]
            return self._reject(f"non-finite position for {', '.join(bad)}")
        idx = [self._index[n] for n in names]
        with self._lock:
            command = self._command.copy()
            command[idx] = values
            self._command = command
            self._command_new = True
        self.commands_received += 1

    def _srv_start(self, request, response):
        with self._lock:
            if self._state == RUNNING or self._start_requested:
                response.success = False
                response.message = f"already running (episode {self._episode})"
                return response
            self._start_requested = True
        self._wake.set()
        response.success = True
        response.message = f"starting {self.episodes or 'endless'} episode(s)"
        return response

    def _srv_reset(self, request, response):
        with self._lock:
            if self._state != RUNNING:
                response.success, response.message = False, f"no episode running ({self._state})"
                return response
            self._end_requested = True
        self._wake.set()
        response.success, response.message = True, f"ending episode {self._episode} now"
        return response

    # ------------------------------------------------------------------ physics thread
    def _run(self) -> None:
        try:
            for name, _, _, depth, _ in self._cameras:  # fail fast (and on this thread, which owns the GL context)
                self.world.render_rgb(name)
                if depth is not None:
                    self.world.render_depth(name)
        except Exception as exc:
            self.fatal = (f"offscreen rendering failed ({type(exc).__name__}: {exc}); "
                          "check MUJOCO_GL (egl or osmesa) and its libraries")
            self._ready.set()
            return
        self._ready.set()
        try:
            self._loop()
        except Exception as exc:  # the context went away under a publish (Ctrl-C) or a real fault
            if rclpy.ok() and not self._stop:
                self.fatal = f"physics thread stopped: {type(exc).__name__}: {exc}"
                self._log.error(self.fatal)
        finally:
            self.world.close()

    def _loop(self) -> None:
        wall_ref = sim_ref = 0
        while not self._stop:
            with self._lock:
                if self._start_requested:
                    self._start_requested = False
                    self._state = RUNNING
                    self._batch_done = self._batch_successes = 0
                    self._begin_episode_locked()
                state = self._state
                command = self._command if self._command_new else None
                self._command_new = False
            running = state == RUNNING
            if not running and not self._idle_physics:  # time stands still; keep publishing it for use_sim_time nodes
                self._publish_state()
                self._wake.wait(self._paused_period)
                self._wake.clear()
                self._pacing_reset = True
                continue
            t0 = time.perf_counter()
            homing = running and self._homing_step()
            if command is not None and not homing:
                self.world.set_command(command)
                if running:
                    self._ep_commands += 1
                    self._ep_max_gap_ns = max(self._ep_max_gap_ns, self._sim_ns - self._ep_last_command_ns)
                    self._ep_last_command_ns = self._sim_ns
            self.world.step(self.tick_s)
            self._sim_ns += self._tick_ns
            self._ticks += 1
            self._publish_state()
            self._publish_sensors()
            if running and not homing and (self.world.episode_over() or self._end_requested):
                self._end_episode()
            self._tick_ms.add((time.perf_counter() - t0) * 1e3)
            # Pacing: sleep to absolute wall deadlines derived from sim time.
            rtf = self._rtf
            if rtf <= 0:
                time.sleep(0)  # let the executor thread take the GIL (commands, services)
                continue
            now = time.monotonic()
            if self._pacing_reset:
                self._pacing_reset = False
                wall_ref, sim_ref = now, self._sim_ns
                continue
            delay = wall_ref + (self._sim_ns - sim_ref) * 1e-9 / rtf - now
            if delay > 0:
                if self._wake.wait(delay):
                    self._wake.clear()
            elif delay < -_MAX_LAG_S:
                self._fell_behind += 1
                wall_ref, sim_ref = now, self._sim_ns
                if self._throttle.allow("lag"):
                    self._log.warning(f"cannot keep up with real_time_factor {rtf:g}: {-delay:.2f} s behind "
                                      f"(restarted pacing {self._fell_behind} time(s)); see /diagnostics")

    def _stamp(self) -> Time:
        ns = self._sim_ns
        return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)

    def _publish_state(self) -> None:
        stamp = self._stamp()
        self._clock_pub.publish(Clock(clock=stamp))
        w, msg = self.world, self._js_msg
        msg.header.stamp = stamp
        msg.position = array("d", w.joint_positions().tobytes())
        msg.velocity = array("d", w.joint_velocities().tobytes())
        msg.effort = array("d", w.joint_efforts().tobytes())
        self._js_pub.publish(msg)

    def _publish_sensors(self) -> None:
        tick, w = self._ticks, self.world
        if self._tactile_pub is not None and tick % self._tactile_every == 0:
            self._tactile_pub.publish(convert.numpy_to_float32_multiarray(w.tactile(), "taxels"))
        if self._audio_pub is not None and tick % self._audio_every == 0:
            self._audio_pub.publish(convert.numpy_to_float32_multiarray(w.audio(self.audio_frame_samples),
                                                                        "samples"))
        if self._cameras and tick % self._cam_every == 0:
            t0 = time.perf_counter()
            frames = [(w.render_rgb(name), w.render_depth(name) if depth_pub is not None else None)
                      for name, _, _, depth_pub, _ in self._cameras]
            self._render_ms.add((time.perf_counter() - t0) * 1e3)
            stamp = self._stamp()
            for (name, frame, rgb_pub, depth_pub, info_pub), (rgb, depth) in zip(self._cameras, frames, strict=True):
                rgb_pub.publish(convert.numpy_to_image(rgb, "rgb8", stamp, frame))
                if depth_pub is not None:
                    depth_pub.publish(convert.numpy_to_image(depth, "32FC1", stamp, frame))
                info_pub.publish(self._camera_info(name, frame, stamp, rgb.shape[1], rgb.shape[0]))

    def _camera_info(self, camera: str, frame: str, stamp, width: int, height: int) -> CameraInfo:
        fx, fy, cx, cy = (float(v) for v in self.world.camera_intrinsics(camera))
        msg = CameraInfo()
        msg.header.stamp = stamp
        msg.header.frame_id = frame
        msg.width, msg.height = int(width), int(height)
        msg.distortion_model = "plumb_bob"
        msg.d = [0.0] * 5
        msg.k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
        msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        msg.p = [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
        return msg

    def _begin_episode_locked(self) -> None:
        """Draw the next start pose and target (the world's episode RNG: the targets an in-process
        ReachWorld of the same seed draws); home the arm on the servos, or teleport it when
        ``homing_duration_s`` is 0. Called with ``_lock`` held."""
        q_start, target = self.world.draw_episode()
        if self.world.config.homing_duration_s > 0:
            self._homing = (self._sim_ns, self.world.joint_positions(), q_start, target)
            return
        self.world.teleport(q_start)
        self._start_episode_locked(target)

    def _start_episode_locked(self, target) -> None:
        target = self.world.start_episode(target)
        self._command = self.world.command()  # hold the start pose until a command arrives
        self._command_new = False
        self._end_requested = False
        self._episode += 1
        self._ep_commands, self._ep_max_gap_ns, self._ep_last_command_ns = 0, 0, self._sim_ns
        msg = PointStamped()
        msg.header.stamp = self._stamp()
        msg.header.frame_id = self.world_frame
        msg.point.x, msg.point.y, msg.point.z = (float(v) for v in target)
        self._target_pub.publish(msg)
        self._episode_pub.publish(String(data=f"start:{self.task}" if self.task else "start"))

    def _homing_step(self) -> bool:
        """Drive the homing move for this tick; True while homing (commands are ignored meanwhile)."""
        with self._lock:
            homing = self._homing
            if homing is None:
                return False
            t0_ns, q_from, q_to, target = homing
            servo = self.world.homing_command(q_from, q_to, (self._sim_ns - t0_ns) * 1e-9)
            if servo is None:
                self._homing = None
                self._start_episode_locked(target)
                return False
            self._command_new = False
        self.world.set_command(servo)
        return True

    def _end_episode(self) -> None:
        w = self.world
        success = bool(w.success())
        self._episode_pub.publish(String(data="end:success" if success else "end:failure"))
        result = {"episode": self._episode, "success": success, "final_distance_m": round(w.distance_m(), 6),
                  "target_m": [round(float(v), 6) for v in w.target_position()], "seed": self.seed,
                  "sim_time_s": self._sim_ns * 1e-9, "ended_early": bool(self._end_requested),
                  "commands_applied": self._ep_commands,
                  "max_command_gap_s": round(max(self._ep_max_gap_ns, self._sim_ns - self._ep_last_command_ns) * 1e-9,
                                             6)}
        self._result_pub.publish(String(data=json.dumps(result)))
        self._successes += success
        with self._lock:
            self._batch_done += 1
            self._batch_successes += success
            if self.episodes and self._batch_done >= self.episodes:
                self._state = DONE
                self._end_requested = False
                done = {"done": True, "episodes": self._batch_done, "successes": self._batch_successes}
                self._result_pub.publish(String(data=json.dumps(done)))
                self._log.info(f"batch done: {self._batch_successes}/{self._batch_done} episodes succeeded; "
                               + ("idle, physics runs on" if self._idle_physics else "physics paused")
                               + " (call ~/start for another batch)")
            else:
                self._begin_episode_locked()

    # ------------------------------------------------------------------ run_node's autostart hook
    # run_node configures + activates a node whose ``autostart`` parameter is true (lifecycle nodes).
    # This node is not a lifecycle node: its ``autostart`` means "start the first batch at once",
    # which the constructor already arranged, so both transitions are no-ops that succeed.
    def trigger_configure(self):
        from rclpy.lifecycle import TransitionCallbackReturn

        return TransitionCallbackReturn.SUCCESS

    trigger_activate = trigger_configure

    # ------------------------------------------------------------------ diagnostics / exit
    def _publish_diagnostics(self) -> None:
        now, sim_ns = time.monotonic(), self._sim_ns
        wall = now - self._diag_wall
        achieved = (sim_ns - self._diag_sim_ns) * 1e-9 / wall if wall > 0 else 0.0
        self._diag_wall, self._diag_sim_ns = now, sim_ns
        state, rtf = self._state, self._rtf
        level, message = "ok", state
        if self.fatal:
            level, message = "error", self.fatal
        elif state == RUNNING and rtf > 0 and achieved < 0.9 * rtf:
            level, message = "warn", f"behind: real-time factor {achieved:.2f} < requested {rtf:g}"
        render, tick = self._render_ms.summary(), self._tick_ms.summary()
        values = {"state": state, "real_time_factor": achieved, "real_time_factor_requested": rtf,
                  "sim_time_s": sim_ns * 1e-9, "ticks": self._ticks, "episode": self._episode,
                  "episodes_per_batch": self.episodes, "batch_done": self._batch_done,
                  "successes": self._successes, "fell_behind": self._fell_behind,
                  "commands_received": self.commands_received, "commands_rejected": self.commands_rejected,
                  "last_reject": self._last_reject, "render_ms_p50": render["p50"], "render_ms_p99": render["p99"],
                  "tick_ms_p50": tick["p50"], "tick_ms_p99": tick["p99"]}
        try:
            self._diag_pub.publish(diagnostic_array(self._stamp(), [
                status(f"{self.get_name()}: physics", level, message, values)]))
        except Exception as exc:  # diagnostics must never take the node down
            if rclpy.ok() and self._throttle.allow("diagnostics"):
                self._log.error(f"diagnostics failed: {exc}")

    def release(self) -> None:
        """Stop the physics thread (it closes the renderers on its own thread)."""
        self._stop = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5.0)

    def destroy_node(self):
        self.release()
        return super().destroy_node()


def main(args=None) -> None:
    raise SystemExit(run_sim_node(SimBridge, "sim_bridge", args))


if __name__ == "__main__":
    main()
