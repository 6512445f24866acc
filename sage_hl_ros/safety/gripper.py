"""The gripper's command output: a filtered command vector split into the arm's and the gripper's.

The gripper joint is one of the robot's joints (``core/robot.py`` GripperSpec): the model observes
and predicts it, and the SafetyFilter limits it, like any other joint. Only the output differs:
the arm's command message carries the other joints, and the gripper's controller gets one value
(std_msgs/Float64MultiArray, as ros2_control's forward command controllers take it):

- mode ``position``: the filtered position of the gripper joint (inside its limits: the filter
  guarantees it, and the value is clamped to them once more);
- mode ``open_close``: ``open_position`` or ``closed_position``, whichever the filtered position is
  nearer (a tie opens). Both must lie within the joint's position limits (checked when built).

Only vectors the filter produced are split, so the rule "nothing reaches a command topic except
through the safety filter" holds for the gripper too: a hold (e-stop, stale input) repeats the
last command, hence the last gripper value; a tick that publishes nothing to the arm publishes
nothing to the gripper.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..core.robot import GRIPPER_MODES, GripperSpec
from .limits import JointLimits

__all__ = ["GripperError", "GripperOutput", "describe_gripper"]


class GripperError(ValueError):
    """The gripper cannot be commanded as configured; the message names the keys (and limits source)."""


def describe_gripper(spec: GripperSpec | None) -> str:
    """What a reload compares and a refusal names: joint, mode (with its positions), topic."""
    if spec is None:
        return "none"
    text = f"joint {spec.joint!r}, mode {spec.mode}"
    if spec.mode == "open_close":
        text += f" (open {spec.open_position:g}, closed {spec.closed_position:g})"
    return f"{text}, topic {spec.topic!r}"


@dataclass(frozen=True)
class GripperOutput:
    """Where the gripper sits in the command vector and how its one value is made."""

    joint: str
    mode: str
    index: int  # the gripper joint's position in the command (filter) order
    arm_index: np.ndarray  # the other joints' positions, in command order
    arm_names: tuple[str, ...]
    open_position: float
    closed_position: float
    lower: float = -math.inf  # the joint's position limits (±inf without limits: a dry run)
    upper: float = math.inf

    @classmethod
    def build(cls, names: Sequence[str], spec: GripperSpec, limits: JointLimits | None,
              where: str = "robot.gripper") -> GripperOutput:
        """For commands in ``names`` order limited by ``limits`` (None: no limits, nothing is
        published, so nothing to check). ``where`` names the contract's gripper keys in errors."""
        names = list(names)
        if spec.joint not in names:
            raise GripperError(f"{where}.joint: {spec.joint!r} is not one of the commanded joints {names}")
        if len(names) < 2:
            raise GripperError(f"{where}: the gripper is the only commanded joint")
        if spec.mode not in GRIPPER_MODES:
            raise GripperError(f"{where}.mode: one of {list(GRIPPER_MODES)}, got {spec.mode!r}")
        index = names.index(spec.joint)
        lower, upper = -math.inf, math.inf
        if limits is not None:
            if spec.joint not in limits.names:
                raise GripperError(f"{where}.joint: {spec.joint!r} has no limits in {limits.source}")
            limit = limits.joints[limits.names.index(spec.joint)]
            lower, upper = limit.position_min_rad, limit.position_max_rad
            if spec.mode == "open_close":
                for key in ("open_position", "closed_position"):
                    value = getattr(spec, key)
                    if not lower <= value <= upper:  # also refuses NaN
                        raise GripperError(
                            f"{where}.{key}: {value} is outside joint {spec.joint!r}'s position limits "
                            f"[{lower}, {upper}] ({limits.source}): an open/close command must be a position "
                            "the joint may take; fix the contract or the limits")
        if spec.mode == "open_close" and not spec.open_position != spec.closed_position:
            raise GripperError(f"{where}: open_position and closed_position must differ")
        arm = [i for i in range(len(names)) if i != index]
        return cls(spec.joint, spec.mode, index, np.array(arm, dtype=np.intp), tuple(names[i] for i in arm),
                   float(spec.open_position), float(spec.closed_position), float(lower), float(upper))

    def value(self, position: float) -> float:
        """The gripper's command for a filtered position of its joint."""
        if self.mode == "open_close":
            closed, opened = self.closed_position, self.open_position
            return closed if abs(position - closed) < abs(position - opened) else opened
        return min(max(float(position), self.lower), self.upper)

    def arm(self, values: np.ndarray) -> np.ndarray:
        """The arm's columns of a (J,) vector or an (M, J) trajectory, in command order."""
        return np.asarray(values)[..., self.arm_index]

    def split(self, command: np.ndarray) -> tuple[np.ndarray, float]:
        """(arm command, gripper value) of a filtered (J,) command vector."""
        command = np.asarray(command, dtype=np.float64)
        return command[self.arm_index], self.value(float(command[self.index]))
