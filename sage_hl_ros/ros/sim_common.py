"""What the sim nodes (sim_bridge, sim_expert) share: a config dataclass exposed as ROS parameters,
and the entry point that turns a bad configuration into one error line and exit code 2.

A module of its own because no node module imports another (each node is one room: importing a
node module would drag its process-level setup and its messages into the other).
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import rclpy.logging
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import ParameterException

from ..core.config import from_dict
from ..paths import config_file
from .node_main import run_node


def _ros_default(hint, value):
    """A dataclass value as a ROS parameter value (ints in float fields become floats, so the
    parameter's type matches what a YAML ``1.0`` gives)."""
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typing.get_origin(hint) is list and typing.get_args(hint) == (float,) and isinstance(value, list):
        return [float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for v in value]
    return value


def declare_config_params(node, prefix: str, cls, base, skip: tuple[str, ...] = ()) -> dict:
    """Declare ``<prefix>.<key>`` for each field of dataclass ``cls`` (default: ``base``'s value) and
    return ``{key: value}`` with any parameter overrides applied. Dynamically typed, so a wrong type
    is reported by ``from_dict`` with the key's name rather than by rclpy."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = _ros_default(hints[f.name], getattr(base, f.name))
        desc = ParameterDescriptor(description=f"{cls.__name__}.{f.name} (default from the config file)",
                                   dynamic_typing=True)
        values[f.name] = node.declare_parameter(f"{prefix}.{f.name}", default, desc).value
    return values


def config_with_overrides(cls, base, values: dict, path: Path, prefix: str):
    """``base`` with ``values`` applied, validated; errors name the file and the overriding parameters."""
    changed = [k for k, v in values.items() if v != _ros_default(typing.get_type_hints(cls)[k], getattr(base, k))]
    if not changed:
        return base
    merged = dataclasses.asdict(base)
    merged.update(values)
    source = f"{path} with parameters {', '.join(f'{prefix}.{k}' for k in changed)}"
    return from_dict(cls, merged, source)


def resolve_config_file(value: str) -> Path:
    return Path(value) if value else config_file("sim.yaml")


class _StartupError(Exception):
    pass


def run_sim_node(cls, name: str, args=None) -> int:
    """``run_node`` for the sim nodes: a bad configuration (or arguments rcl cannot parse) logs one
    error line and returns 2, no traceback; a physics thread that died returns 1."""
    made = []

    def factory():
        try:
            node = cls()
        except (ValueError, RuntimeError, ParameterException) as exc:  # ConfigError is a ValueError
            rclpy.logging.get_logger(name).error(str(exc))
            raise _StartupError from None
        made.append(node)
        return node

    try:
        code = run_node(factory, args)
    except _StartupError:
        return 2
    except Exception as exc:  # rclpy.init refused the arguments, e.g. a --params-file rcl cannot parse
        if "failed to initialize rcl" not in str(exc):
            raise
        rclpy.logging.get_logger(name).error(
            f"{exc}\n(config/sim.yaml is the world config, not a ROS parameter file: pass it as "
            "sim_config_file, and ROS parameter files such as config/mujoco_sim.yaml as --params-file)")
        return 2
    if made and getattr(made[0], "fatal", ""):
        return 1
    return code
