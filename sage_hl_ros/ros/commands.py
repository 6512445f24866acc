"""Command output messages for the three supported command interfaces (DESIGN.md section 4).

Joint order is always the configured order: the caller passes ``names`` and arrays aligned to
them. These run at up to 1 kHz, so they only check lengths (the safety filter upstream owns
limits and finiteness) and fill array fields via ``array.array`` from ``tobytes()``, the
fastest assignment rclpy accepts on both Humble and Kilted.
"""

from __future__ import annotations

import math
from array import array as _pyarray
from collections.abc import Sequence

import numpy as np
from builtin_interfaces.msg import Duration
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from ..core.robot import COMMAND_INTERFACES

__all__ = [
    "COMMAND_INTERFACES",
    "position_array_msg",
    "joint_trajectory_msg",
    "joint_state_command_msg",
    "command_topic",
    "command_msg_type",
    "gripper_command_msg",
]


_MSG_TYPES = {
    "position_array": Float64MultiArray,
    "joint_trajectory": JointTrajectory,
    "joint_state": JointState,
}


def _f64(values) -> _pyarray:
    return _pyarray("d", np.asarray(values, dtype=np.float64).tobytes())


def _check_len(what: str, values, names: Sequence[str]) -> None:
    if len(values) != len(names):
        raise ValueError(f"{what} has {len(values)} values for {len(names)} joints")


def position_array_msg(positions: np.ndarray) -> Float64MultiArray:
    """Float64MultiArray for ``/<controller>/commands`` (ros2_control forward controllers).

    The layout is left empty: forward controllers read ``data`` only, in their joint order.
    """
    msg = Float64MultiArray()
    msg.data = _f64(positions)
    return msg


def gripper_command_msg(value: float) -> Float64MultiArray:
    """Float64MultiArray with the gripper's one value, for its forward command controller
    (``<controller>/commands``; see safety/gripper.py for how the value is made)."""
    msg = Float64MultiArray()
    msg.data = _pyarray("d", (float(value),))
    return msg


def _duration(seconds: float) -> Duration:
    sec = math.floor(seconds)
    return Duration(sec=int(sec), nanosec=min(int(round((seconds - sec) * 1e9)), 999_999_999))


def _point(names: Sequence[str], positions, velocities, time_from_start_s: float) -> JointTrajectoryPoint:
    _check_len("positions", positions, names)
    point = JointTrajectoryPoint()
    point.positions = _f64(positions)
    if velocities is not None and len(velocities):
        _check_len("velocities", velocities, names)
        point.velocities = _f64(velocities)
    point.time_from_start = _duration(time_from_start_s)
    return point


def joint_trajectory_msg(
    names: Sequence[str],
    positions: np.ndarray,
    velocities: np.ndarray | None,
    stamp,
    time_from_start_s: float,
    preview_positions: np.ndarray | None = None,
    preview_velocities: np.ndarray | None = None,
    preview_dt_s: float = 0.0,
) -> JointTrajectory:
    """JointTrajectory whose first point (positions + velocities) is reached ``time_from_start_s``
    after ``stamp`` (a zero stamp means "start now" for joint_trajectory_controller). With
    ``preview_positions`` (M, J), M more points follow, ``preview_dt_s`` apart: an action chunk
    the controller interpolates between messages."""
    if not (math.isfinite(time_from_start_s) and time_from_start_s >= 0.0):
        raise ValueError(f"time_from_start_s must be finite and >= 0, got {time_from_start_s}")
    points = [_point(names, positions, velocities, time_from_start_s)]
    if preview_positions is not None and len(preview_positions):
        if not (math.isfinite(preview_dt_s) and preview_dt_s > 0.0):
            raise ValueError(f"preview_dt_s must be finite and > 0, got {preview_dt_s}")
        for m, pos in enumerate(preview_positions, start=1):
            vel = preview_velocities[m - 1] if preview_velocities is not None else None
            points.append(_point(names, pos, vel, time_from_start_s + m * preview_dt_s))
    msg = JointTrajectory()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.joint_names = list(names)
    msg.points = points
    return msg


def joint_state_command_msg(names: Sequence[str], positions: np.ndarray, stamp) -> JointState:
    """JointState position command for the Isaac Sim bridge (``/joint_command``)."""
    _check_len("positions", positions, names)
    msg = JointState()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.name = list(names)
    msg.position = _f64(positions)
    return msg


def _check_interface(interface: str) -> None:
    if interface not in _MSG_TYPES:
        raise ValueError(
            f"unknown command interface {interface!r}; choose one of {', '.join(COMMAND_INTERFACES)}"
        )


def command_topic(interface: str, controller_name: str, joint_command_topic: str = "joint_command") -> str:
    """Topic the given interface publishes on (ros2_control naming, or the Isaac Sim bridge).
    Relative, so a namespaced node commands its own robot's controller (``/<ns>/<controller>/...``)."""
    _check_interface(interface)
    if interface == "joint_state":
        return joint_command_topic
    controller = controller_name.strip("/")
    if not controller:
        raise ValueError(f"command interface {interface!r} needs a controller_name")
    suffix = "commands" if interface == "position_array" else "joint_trajectory"
    return f"{controller}/{suffix}"


def command_msg_type(interface: str) -> type:
    """Message class for the given interface."""
    _check_interface(interface)
    return _MSG_TYPES[interface]
