"""StackMonitor: an observer node for the demo and benchmarks.

Watches what the stack publishes (commands, latents, joint states, diagnostics) and records
arrival times, so rates and inter-arrival jitter are measured from outside the nodes, the way a
robot's controller would see them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray

from . import commands
from .convert import ConversionError, joint_state_to_arrays
from .qos import declare_qos


@dataclass
class Arrivals:
    times_s: list[float] = field(default_factory=list)

    def add(self) -> None:
        self.times_s.append(time.monotonic())

    def rate_hz(self, since_s: float = 0.0) -> float:
        t = [x for x in self.times_s if x >= since_s]
        return (len(t) - 1) / (t[-1] - t[0]) if len(t) > 2 else 0.0

    def gaps_ms(self, since_s: float = 0.0) -> np.ndarray:
        t = np.array([x for x in self.times_s if x >= since_s])
        return np.diff(t) * 1e3 if t.size > 2 else np.array([np.nan])


class StackMonitor(Node):
    def __init__(self, joint_names: list[str], command_interface: str = "position_array",
                 controller_name: str = "forward_position_controller", goal_topic: str = "/synthetic/goal_joints",
                 **kwargs):
        super().__init__("sage_monitor", **kwargs)
        self.joint_names = list(joint_names)
        self.commands = Arrivals()
        self.latents = Arrivals()
        self.joint_states = Arrivals()
        self.last_command: object | None = None
        self.position: np.ndarray | None = None
        self.goal: np.ndarray | None = None
        self.tracking: list[tuple[float, float]] = []  # (time, joint-space distance to goal)
        self.goal_times: list[float] = []
        self.diagnostics: dict[str, dict[str, str]] = {}
        reliable, status = declare_qos(self, "monitor", "reliable"), declare_qos(self, "goal", "status")
        self.create_subscription(commands.command_msg_type(command_interface),
                                 commands.command_topic(command_interface, controller_name),
                                 self._on_command, reliable)
        self.create_subscription(Image, "/sage/latent", lambda _: self.latents.add(), reliable)
        self.create_subscription(JointState, "/joint_states", self._on_joints, reliable)
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, reliable)
        self.create_subscription(Float64MultiArray, goal_topic, self._on_goal, status)

    def _on_command(self, msg) -> None:
        self.commands.add()
        self.last_command = msg

    def _on_joints(self, msg: JointState) -> None:
        self.joint_states.add()
        try:
            out = joint_state_to_arrays(msg, self.joint_names)
        except ConversionError:
            return
        if out is None:  # another publisher's joints
            return
        self.position = out[0]
        if self.goal is not None:
            self.tracking.append((time.monotonic(), float(np.abs(self.position - self.goal).mean())))

    def _on_goal(self, msg: Float64MultiArray) -> None:
        self.goal = np.asarray(msg.data, dtype=np.float64)
        self.goal_times.append(time.monotonic())

    def reach_per_goal(self, since_s: float = 0.0) -> list[tuple[float, float]]:
        """(distance at the first joint state after each goal change, distance just before the next)."""
        out = []
        marks = self.goal_times + [float("inf")]
        for start, end in zip(marks[:-1], marks[1:], strict=True):
            d = [dist for t, dist in self.tracking if start <= t < end]
            if start >= since_s and end != float("inf") and len(d) > 10:
                out.append((d[0], d[-1]))
        return out

    def _on_diag(self, msg: DiagnosticArray) -> None:
        for st in msg.status:
            self.diagnostics[st.name] = {kv.key: kv.value for kv in st.values} | {"_message": st.message}

    def diag_value(self, name_prefix: str, key: str) -> float:
        for name, values in self.diagnostics.items():
            if name.startswith(name_prefix) and key in values:
                try:
                    return float(values[key])
                except ValueError:
                    return float("nan")
        return float("nan")
