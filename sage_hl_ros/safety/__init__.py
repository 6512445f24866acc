"""Pure command safety (no rclpy): joint limits, the safety filter, and the e-stop latch.

Kept free of ROS so the rules that protect the hardware are unit-tested without a graph.
"""

from .control_step import ControlStep, ControlStepConfig, JointInput, LatentInput, LoadedPolicy, TickResult
from .estop import EStopLatch
from .filter import SafetyFilter, SafetyOutput, SafetyStatus
from .gripper import GripperError, GripperOutput
from .limits import JointLimit, JointLimits, LimitsError

__all__ = [
    "ControlStep",
    "ControlStepConfig",
    "JointInput",
    "LatentInput",
    "LoadedPolicy",
    "TickResult",
    "EStopLatch",
    "GripperError",
    "GripperOutput",
    "JointLimit",
    "JointLimits",
    "LimitsError",
    "SafetyFilter",
    "SafetyOutput",
    "SafetyStatus",
]
