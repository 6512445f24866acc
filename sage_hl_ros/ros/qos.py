"""QoS presets, each overridable by parameters (DESIGN.md section 4).

Sensors are best-effort so a slow link drops frames instead of queueing stale ones; joint
states and commands are reliable; status is transient-local so late joiners get the latest.
"""

from __future__ import annotations

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import ParameterException
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

__all__ = ["QOS_PRESETS", "declare_qos"]

# preset -> (reliability, depth, durability); history is always keep-last.
QOS_PRESETS: dict[str, dict[str, object]] = {
    "sensor": {"reliability": "best_effort", "depth": 5, "durability": "volatile"},
    "reliable": {"reliability": "reliable", "depth": 10, "durability": "volatile"},
    "status": {"reliability": "reliable", "depth": 1, "durability": "transient_local"},
    "command": {"reliability": "reliable", "depth": 1, "durability": "volatile"},
}

_RELIABILITY = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}
_DURABILITY = {"volatile": DurabilityPolicy.VOLATILE, "transient_local": DurabilityPolicy.TRANSIENT_LOCAL}


def _declare(node, name: str, default, description: str):
    """Declare (or reuse, if another caller already did) and return the parameter value."""
    if node.has_parameter(name):
        return node.get_parameter(name).value
    try:
        return node.declare_parameter(name, default, ParameterDescriptor(description=description)).value
    except ParameterException as exc:  # e.g. an override of the wrong type
        raise ValueError(f"invalid value for parameter {name!r}: {exc}") from exc


def _choice(param: str, value, choices: dict):
    key = str(value).strip().lower().replace("-", "_")
    if key not in choices:
        raise ValueError(f"parameter {param!r} is {value!r}; choose one of {', '.join(choices)}")
    return choices[key]


def declare_qos(node, name: str, preset: str) -> QoSProfile:
    """Declare ``qos.<name>.{reliability,depth,durability}`` defaulting to ``preset``; return the profile."""
    if preset not in QOS_PRESETS:
        raise ValueError(f"unknown QoS preset {preset!r}; choose one of {', '.join(QOS_PRESETS)}")
    p = QOS_PRESETS[preset]
    prefix = f"qos.{name}"
    rel = _declare(node, f"{prefix}.reliability", p["reliability"], "best_effort | reliable")
    depth = _declare(node, f"{prefix}.depth", p["depth"], "keep-last queue depth (>= 1)")
    dur = _declare(node, f"{prefix}.durability", p["durability"], "volatile | transient_local")
    reliability = _choice(f"{prefix}.reliability", rel, _RELIABILITY)
    durability = _choice(f"{prefix}.durability", dur, _DURABILITY)
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"parameter {prefix + '.depth'!r} must be an integer >= 1, got {depth!r}")
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=reliability, durability=durability
    )
