"""sim_expert (console script ``sage_sim_expert``): the scripted reaching expert as a ROS node.

On every ``/joint_states`` message it computes :meth:`sage_hl_ros.sim.expert.ReachExpert.command`
for the current privileged target (``/sim/target`` from the sim bridge) and publishes it as a
teacher label on ``/teacher/joint_command``, stamped with the joint-states stamp it labels. With
``drive`` true it also executes it on ``/joint_command`` (what the bridge follows), optionally with
exploration noise: a random offset per joint, uniform in [-noise_rad, noise_rad], redrawn every
``noise_period_s`` of header time. The noise goes into the executed command only, never into the
label, so recorded demonstrations show recoveries from perturbed states with clean labels.
The arm is the sim config's ``sim.robot`` (as the bridge's: pass the same ``sim_config_file`` and
``sim.robot``); its joints are the ones matched and labelled.

Subscribed topics
    /joint_states            sensor_msgs/JointState (matched by name)       qos.joint_states: reliable
    /sim/target              geometry_msgs/PointStamped                      qos.target: reliable, transient-local
Published topics
    /teacher/joint_command   sensor_msgs/JointState the robot's joints' positions (joint1..7), header stamp = labelled
                             joint-states stamp                             qos.teacher: reliable
    /joint_command           the same command (+ noise) when ``drive``      qos.joint_command: reliable
    /diagnostics             "sim_expert: labels": counts of labels, skips and rejected joint states
Nothing is published for a joint state without a usable target: none received yet, stamped at or
before the target (it belongs to the previous episode), or older than ``target_timeout_s``.
A joint state whose stamp repeats the last one labelled (the bridge republishes while paused) is
skipped too.

Parameters
    sim_config_file (str, "")        YAML with ``sim:`` and optional ``expert:`` sections; "" = config/sim.yaml
    sim.robot (str, the file's)      the sim robot (sage_hl_ros.sim.robots): sim_arm7 | sim_ur6
    expert.<key>                     every ExpertConfig key (sage_hl_ros.sim.expert, e.g. gain_per_s,
                                     max_step_rad, aim_offset_m); default: the file's value
    drive (bool, false, runtime)     also publish the command on joint_command_topic
    noise_rad (float, 0.0, runtime)  exploration noise amplitude on the executed command [rad]
    noise_period_s (float, 0.3)      the noise offset is redrawn this often [s of header time]
    seed (int, 0)                    noise RNG seed
    target_timeout_s (float, 0.0)    a target older than this (joint-states stamp minus target stamp)
                                     is stale; 0 = a target holds until the next one
    joint_states_topic, target_topic, teacher_topic, joint_command_topic   (the defaults above)
    diagnostics_period_s (float, 1.0)
"""

from __future__ import annotations

import dataclasses
import math
from array import array

import numpy as np
import rclpy
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PointStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from sensor_msgs.msg import JointState

from ..core.config import ConfigError, load_yaml
from ..sim.expert import ExpertConfig, ReachExpert
from ..sim.robots import SIM_ROBOTS
from ..sim.world import SimConfig
from . import convert
from .diagnostics import diagnostic_array, status
from .node_main import DeclaredParams, Throttle
from .qos import declare_qos
from .sim_common import config_with_overrides, declare_config_params, resolve_config_file, run_sim_node


def _stamp_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class SimExpert(DeclaredParams, Node):
    def __init__(self, node_name: str = "sim_expert", **kwargs):
        super().__init__(node_name, **kwargs)
        p = self._param
        path = resolve_config_file(str(p("sim_config_file", "", "YAML with 'sim:' (and optional 'expert:') "
                                                                "sections; '' = config/sim.yaml").value))
        sim_cfg = SimConfig.from_yaml(path, section="sim")
        robot = str(p("sim.robot", sim_cfg.robot, "the sim robot (sim_arm7 | sim_ur6); default: the file's").value)
        if robot not in SIM_ROBOTS:
            raise ConfigError(f"parameter sim.robot: one of {list(SIM_ROBOTS)}, got {robot!r}")
        sim_cfg = dataclasses.replace(sim_cfg, robot=robot)
        raw = yaml.safe_load(path.read_text())  # readable and valid YAML: from_yaml just read it
        has_expert = isinstance(raw, dict) and "expert" in raw
        file_cfg = load_yaml(ExpertConfig, path, "expert") if has_expert else ExpertConfig()
        values = declare_config_params(self, "expert", ExpertConfig, file_cfg)
        cfg = config_with_overrides(ExpertConfig, file_cfg, values, path, "expert")
        self._drive = bool(p("drive", False, "also publish the command on joint_command_topic (runtime)").value)
        self._noise_rad = float(p("noise_rad", 0.0, "exploration noise on the executed command [rad] (runtime)")
                                .value)
        noise_period = float(p("noise_period_s", 0.3, "noise offset redrawn this often [s, header time]").value)
        seed = int(p("seed", 0, "noise RNG seed").value)
        self._target_timeout = float(p("target_timeout_s", 0.0, "stale target age [s]; 0 = never stale").value)
        topics = {key: str(p(f"{key}_topic", default, f"{key} topic").value) for key, default in (
            ("joint_states", "/joint_states"), ("target", "/sim/target"),
            ("teacher", "/teacher/joint_command"), ("joint_command", "/joint_command"))}
        diag_period = float(p("diagnostics_period_s", 1.0, "period of /diagnostics messages [s]").value)
        if not (math.isfinite(self._noise_rad) and self._noise_rad >= 0):
            raise ConfigError(f"parameter noise_rad: must be >= 0, got {self._noise_rad}")
        for key, value in (("noise_period_s", noise_period), ("diagnostics_period_s", diag_period)):
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"parameter {key}: must be > 0, got {value}")
        if not (math.isfinite(self._target_timeout) and self._target_timeout >= 0):
            raise ConfigError(f"parameter target_timeout_s: must be >= 0, got {self._target_timeout}")

        self.expert = ReachExpert(cfg, sim_cfg)
        self.joint_names = self.expert.joint_names
        self._lower, self._upper = self.expert.robot.lower_rad, self.expert.robot.upper_rad
        self._rng = np.random.default_rng(seed)
        self._noise_period_ns = int(round(noise_period * 1e9))
        self._noise_slot = None
        self._noise = np.zeros(len(self.joint_names))
        self._target = None  # (stamp ns, xyz)
        self._last_ns = None
        self._log = self.get_logger()
        self._throttle = Throttle(5.0)
        self.counts = {"labels": 0, "commands": 0, "no_target": 0, "before_target": 0, "stale_target": 0,
                       "repeated_stamp": 0, "rejected": 0}
        self._last_reject = ""

        q = lambda name, preset: declare_qos(self, name, preset)
        self._teacher_pub = self.create_publisher(JointState, topics["teacher"], q("teacher", "reliable"))
        self._command_pub = self.create_publisher(JointState, topics["joint_command"], q("joint_command", "reliable"))
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", q("diagnostics", "reliable"))
        self.create_subscription(PointStamped, topics["target"], self._on_target, q("target", "status"))
        self.create_subscription(JointState, topics["joint_states"], self._on_joints, q("joint_states", "reliable"))
        self.create_timer(diag_period, self._publish_diagnostics)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._msg = JointState()
        self._msg.name = list(self.joint_names)
        self._log.info(f"reach expert ({path}, {robot}): labels on {topics['teacher']}"
                       + (f", driving {topics['joint_command']} with noise {self._noise_rad:g} rad"
                          if self._drive else " (drive false: not commanding)"))

    def _on_set_parameters(self, params) -> SetParametersResult:
        for param in params:
            if param.name == "drive":
                if not isinstance(param.value, bool):
                    return SetParametersResult(successful=False, reason="drive must be true or false")
                self._drive = param.value
            elif param.name == "noise_rad":
                v = param.value
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0):
                    return SetParametersResult(successful=False, reason="noise_rad must be a number >= 0")
                self._noise_rad = float(v)
                self._noise_slot = None  # redraw at the new amplitude
            elif param.name != "use_sim_time" and self.has_parameter(param.name):
                return SetParametersResult(successful=False,
                                           reason=f"{param.name} is read at start-up; restart the node to change it")
        return SetParametersResult(successful=True)

    def _on_target(self, msg: PointStamped) -> None:
        xyz = np.array([msg.point.x, msg.point.y, msg.point.z], dtype=np.float64)
        if not np.isfinite(xyz).all():
            self._skip("rejected", "non-finite target")
            return
        self._target = (_stamp_ns(msg.header.stamp), xyz)

    def _skip(self, key: str, why: str) -> None:
        self.counts[key] += 1
        if key == "rejected":
            self._last_reject = why
        if self._throttle.allow(key):
            log = self._log.warning if key == "rejected" else self._log.info
            log(f"not labelling a joint state ({self.counts[key]} so far): {why}")

    def _on_joints(self, msg: JointState) -> None:
        try:
            out = convert.joint_state_to_arrays(msg, self.joint_names)
        except convert.ConversionError as exc:
            self._skip("rejected", str(exc))
            return
        if out is None:  # another publisher's joints
            return
        q = out[0]
        ns = _stamp_ns(msg.header.stamp)
        if ns == self._last_ns:
            self.counts["repeated_stamp"] += 1
            return
        target = self._target
        if target is None:
            self._skip("no_target", "no target on /sim/target yet")
            return
        target_ns, xyz = target
        if ns <= target_ns:
            self._skip("before_target", "joint state stamped before the current target (previous episode)")
            return
        if self._target_timeout > 0 and (ns - target_ns) * 1e-9 > self._target_timeout:
            self._skip("stale_target", f"target older than target_timeout_s ({self._target_timeout:g} s)")
            return
        self._last_ns = ns
        label = self.expert.command(q, xyz)
        out = self._msg
        out.header.stamp = msg.header.stamp
        out.position = array("d", label.tobytes())
        self._teacher_pub.publish(out)
        self.counts["labels"] += 1
        if self._drive:
            if self._noise_rad > 0:
                slot = ns // self._noise_period_ns
                if slot != self._noise_slot:
                    self._noise_slot = slot
                    self._noise = self._rng.uniform(-self._noise_rad, self._noise_rad, len(self.joint_names))
                executed = np.clip(label + self._noise, self._lower, self._upper)
                out.position = array("d", executed.tobytes())
            self._command_pub.publish(out)
            self.counts["commands"] += 1

    def _publish_diagnostics(self) -> None:
        level, message = "ok", "labelling"
        if self.counts["labels"] == 0:
            level, message = "warn", "no labels yet (waiting for /sim/target and /joint_states)"
        values = dict(self.counts, drive=self._drive, noise_rad=self._noise_rad, last_reject=self._last_reject)
        try:
            self._diag_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), [
                status(f"{self.get_name()}: labels", level, message, values)]))
        except Exception as exc:  # diagnostics must never take the node down
            if rclpy.ok() and self._throttle.allow("diagnostics"):
                self._log.error(f"diagnostics failed: {exc}")


def main(args=None) -> None:
    raise SystemExit(run_sim_node(SimExpert, "sim_expert", args))


if __name__ == "__main__":
    main()
