"""Pure command safety (no rclpy): joint limits, the safety filter, and the e-stop latch.

Kept free of ROS so the rules that protect the hardware are unit-tested without a graph.
"""

from .estop import EStopLatch
from .filter import SafetyFilter, SafetyOutput, SafetyStatus
from .limits import JointLimit, JointLimits, LimitsError

__all__ = [
    "EStopLatch",
    "JointLimit",
    "JointLimits",
    "LimitsError",
    "SafetyFilter",
    "SafetyOutput",
    "SafetyStatus",
]
