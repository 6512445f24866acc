"""loopback_robot (console script ``sage_loopback_robot``): a simulated position-controlled arm.

Used by tests, the demo and benchmarks in place of a robot.

Each joint follows its latest position command with a first-order response
(``x += (cmd - x) * (1 - exp(-dt / time_constant_s))``) and the node publishes the result as
``sensor_msgs/JointState`` (positions + velocities, header stamped with the node clock).

Subscribed topics (by ``command_interface``; the arm's joints: joint_names without gripper_joint)
    position_array:   std_msgs/Float64MultiArray  /<controller_name>/commands   (data in the arm's joint_names order)
    joint_trajectory: trajectory_msgs/JointTrajectory /<controller_name>/joint_trajectory (by name; first point)
    joint_state:      sensor_msgs/JointState      <joint_command_topic>          (by name)
    with gripper_joint: std_msgs/Float64MultiArray <gripper_topic>, one value: the gripper joint's position
                      command (the arm's command must leave that joint out, as sage_control's does)
Published topics
    /joint_states     sensor_msgs/JointState at rate_hz, reliable (qos.joint_states)
Parameters
    joint_names (str[], joint1..joint7)   the robot's joints, gripper included (and the position_array order)
    gripper_joint (str, "")               one of joint_names commanded on gripper_topic; "" = no gripper
    gripper_topic (str, "gripper_controller/commands")  the gripper's command topic (with gripper_joint)
    shuffle_names (bool, false)           publish name[] in a different (reversed) order than
                                          joint_names, to exercise by-name matching downstream
    initial_positions (float[], [])       start positions; [] = all 0.0
    rate_hz (float, 500.0)                joint_states publishing / integration rate
    time_constant_s (float, 0.05)         first-order response time constant
    command_interface (str, "position_array")  position_array | joint_trajectory | joint_state
    controller_name (str, "forward_position_controller"), joint_command_topic (str, "joint_command")
    joint_states_topic (str, "joint_states")     (topics relative: in the node's namespace)
Bad commands (wrong length, unknown joints, non-finite) are counted and ignored, logged at most
every 5 s.
"""

from __future__ import annotations

import math
from array import array

import numpy as np
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray

from . import commands
from .node_main import Throttle, run_node
from .qos import declare_qos

DEFAULT_JOINTS = [f"joint{i}" for i in range(1, 8)]


class LoopbackRobot(Node):
    def __init__(self, node_name: str = "loopback_robot", **kwargs):
        super().__init__(node_name, **kwargs)

        def p(name, default, description):
            kw = {"dynamic_typing": True} if isinstance(default, list) else {}
            return self.declare_parameter(name, default, ParameterDescriptor(description=description, **kw)).value

        names = list(p("joint_names", DEFAULT_JOINTS, "joints of the simulated arm"))
        shuffle = bool(p("shuffle_names", False, "publish name[] in reversed order"))
        initial = list(p("initial_positions", [], "initial joint positions [rad]; [] = zeros"))
        self.rate_hz = float(p("rate_hz", 500.0, "joint_states rate [Hz]"))
        self.tau = float(p("time_constant_s", 0.05, "first-order response time constant [s]"))
        interface = str(p("command_interface", "position_array", "position_array | joint_trajectory | joint_state"))
        controller = str(p("controller_name", "forward_position_controller", "controller name for the topic"))
        jc_topic = str(p("joint_command_topic", "joint_command", "joint_state interface topic"))
        js_topic = str(p("joint_states_topic", "joint_states", "published joint states"))
        gripper = str(p("gripper_joint", "", "joint commanded on gripper_topic; '' = no gripper"))
        gripper_topic = str(p("gripper_topic", "gripper_controller/commands", "the gripper's command topic"))
        if not names or not all(isinstance(n, str) for n in names):
            raise ValueError(f"joint_names must be a non-empty list of strings, got {names}")
        if initial and len(initial) != len(names):
            raise ValueError(f"initial_positions has {len(initial)} values for {len(names)} joints")
        if not (self.rate_hz > 0 and self.tau > 0):
            raise ValueError("rate_hz and time_constant_s must be > 0")
        if gripper and (gripper not in names or len(names) < 2):
            raise ValueError(f"gripper_joint {gripper!r} must be one of joint_names {names} (besides the arm's)")

        self.names = names
        self.gripper_joint = gripper
        self.arm_names = [n for n in names if n != gripper]
        self.index = {n: i for i, n in enumerate(names) if n != gripper}  # what the arm's command may name
        self.arm_index = np.array([i for i, n in enumerate(names) if n != gripper], dtype=np.intp)
        self.gripper_commands_received = 0
        self.position = np.array(initial or [0.0] * len(names), dtype=np.float64)
        self.velocity = np.zeros(len(names))
        self.command = self.position.copy()
        self.commands_received = 0
        self.commands_rejected = 0
        self._throttle = Throttle(5.0)
        order = list(range(len(names)))
        self.publish_order = np.array(order[::-1] if shuffle else order, dtype=np.intp)
        self._msg = JointState()
        self._msg.name = [names[i] for i in self.publish_order]
        self._alpha = 1.0 - math.exp(-1.0 / (self.rate_hz * self.tau))
        self._last_ns = None

        topic = commands.command_topic(interface, controller, jc_topic)
        callback = {"position_array": self._on_array, "joint_trajectory": self._on_trajectory,
                    "joint_state": self._on_joint_state}[interface]
        self.create_subscription(commands.command_msg_type(interface), topic, callback,
                                 declare_qos(self, "command", "reliable"))
        if gripper:
            self._gripper_index = names.index(gripper)
            self.create_subscription(Float64MultiArray, gripper_topic, self._on_gripper,
                                     declare_qos(self, "command", "reliable"))
        self._pub = self.create_publisher(JointState, js_topic, declare_qos(self, "joint_states", "reliable"))
        self.create_timer(1.0 / self.rate_hz, self._step)
        self.get_logger().info(f"loopback arm {self.arm_names} at {self.rate_hz:g} Hz, commands from {topic} "
                               f"({interface})" + (f"; gripper {gripper!r} from {gripper_topic}" if gripper else ""))

    # -------------------------------------------------------------- commands
    def _bad(self, reason: str) -> None:
        self.commands_rejected += 1
        if self._throttle.allow("command"):
            self.get_logger().warning(f"ignoring command ({self.commands_rejected} so far): {reason}")

    def _set(self, values) -> None:
        values = np.asarray(values, dtype=np.float64)
        if not np.isfinite(values).all():
            self._bad("non-finite command")
            return
        self.command = values
        self.commands_received += 1

    def _by_name(self, names, positions) -> None:
        if len(names) != len(positions):
            self._bad(f"{len(names)} names but {len(positions)} positions")
            return
        cmd = self.command.copy()
        for name, value in zip(names, positions, strict=True):
            i = self.index.get(name)
            if i is None:
                self._bad(f"joint {name!r} is commanded on the gripper topic" if name == self.gripper_joint
                          else f"unknown joint {name!r}")
                return
            cmd[i] = value
        self._set(cmd)

    def _on_array(self, msg) -> None:
        if len(msg.data) != len(self.arm_names):
            self._bad(f"{len(msg.data)} values for {len(self.arm_names)} joints {self.arm_names}")
            return
        cmd = self.command.copy()
        cmd[self.arm_index] = np.frombuffer(msg.data, dtype=np.float64) if isinstance(msg.data, array) else msg.data
        self._set(cmd)

    def _on_gripper(self, msg) -> None:
        if len(msg.data) != 1:
            self._bad(f"gripper command with {len(msg.data)} values (one expected)")
            return
        value = float(msg.data[0])
        if not math.isfinite(value):
            self._bad("non-finite gripper command")
            return
        self.command = self.command.copy()  # the arm's callbacks copy too: never mutate a shared array
        self.command[self._gripper_index] = value
        self.gripper_commands_received += 1

    def _on_trajectory(self, msg) -> None:
        if not msg.points:
            self._bad("trajectory without points")
            return
        self._by_name(list(msg.joint_names), list(msg.points[0].positions))

    def _on_joint_state(self, msg) -> None:
        self._by_name(list(msg.name), list(msg.position))

    # -------------------------------------------------------------- simulation
    def _step(self) -> None:
        now = self.get_clock().now()
        ns = now.nanoseconds
        alpha = self._alpha
        if self._last_ns is not None and ns > self._last_ns:  # exact dt (timer jitter, sim time)
            alpha = 1.0 - math.exp(-(ns - self._last_ns) * 1e-9 / self.tau)
            dt = (ns - self._last_ns) * 1e-9
        else:
            dt = 1.0 / self.rate_hz
        self._last_ns = ns
        new = self.position + (self.command - self.position) * alpha
        self.velocity = (new - self.position) / dt
        self.position = new
        msg = self._msg
        msg.header.stamp = now.to_msg()
        order = self.publish_order
        msg.position = array("d", self.position[order].tobytes())
        msg.velocity = array("d", self.velocity[order].tobytes())
        self._pub.publish(msg)


def main(args=None) -> None:
    raise SystemExit(run_node(LoopbackRobot, args))


if __name__ == "__main__":
    main()
