"""Which robot sensors become which GR00T keys, and how an action chunk maps back to joint names.

One YAML file per embodiment (``config/groot/<embodiment>.yaml``), shared by the teacher node and
the protocol stand-in, so both sides of the exchange read the same key names. Keys are written
without their modality prefix (``ego_view``, not ``video.ego_view``): the protocol module adds the
prefix N1.5 wants and leaves it off for N1.6.

Joint groups are matched by joint *name*, never by position in a JointState, and the action
groups' joints, in the order listed, are the order of the published labels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.config import ConfigError, SelfValidating, load_yaml
from .protocol import PROTOCOLS

__all__ = ["ModalityMap", "load_modality_map"]

PROTOCOL_CHOICES = ("auto",) + PROTOCOLS
_PREFIXES = ("video.", "state.", "action.")


@dataclass
class ModalityMap(SelfValidating):
    """``cameras``: GR00T video key -> sensor_msgs/Image topic. ``state``: GR00T state key -> joint
    names (positions, rad). ``state_points``: GR00T state key -> geometry_msgs/PointStamped topic
    (x, y, z in m; e.g. the sim's privileged target, which the protocol stand-in needs and a real
    GR00T model would see in the camera instead). ``action``: GR00T action key -> joint names
    (absolute joint positions, rad, as the server decodes them). ``action_horizon``: chunk length
    K (0 = whatever the server's modality config says). ``action_step_s``: time between chunk
    steps (the dataset's frame period the model was trained at). ``label_step``: which chunk step
    is published as the teacher label (0 = the action for the observation itself)."""

    embodiment_tag: str = "new_embodiment"  # the server's --embodiment-tag; documentation for the operator
    protocol: str = "auto"
    task_instruction: str = ""
    language_key: str = "annotation.human.task_description"
    cameras: dict[str, str] = field(default_factory=dict)
    state: dict[str, list[str]] = field(default_factory=dict)
    state_points: dict[str, str] = field(default_factory=dict)
    action: dict[str, list[str]] = field(default_factory=dict)
    action_horizon: int = 16
    action_step_s: float = 0.05
    label_step: int = 0

    def validate(self, where: str) -> None:
        if self.protocol not in PROTOCOL_CHOICES:
            raise ConfigError(f"{where}.protocol: {self.protocol!r}; choose one of {', '.join(PROTOCOL_CHOICES)}")
        if not self.language_key:
            raise ConfigError(f"{where}.language_key: must not be empty")
        for name, table in (("cameras", self.cameras), ("state", self.state), ("action", self.action)):
            if not table:
                raise ConfigError(f"{where}.{name}: declare at least one key")
        for name, table in (("cameras", self.cameras), ("state", self.state), ("state_points", self.state_points),
                            ("action", self.action)):
            for key, value in table.items():
                if not key or key.startswith(_PREFIXES):
                    raise ConfigError(f"{where}.{name}: key {key!r} must be a bare GR00T key (no video./state./"
                                      "action. prefix: the protocol adds it where N1.5 wants it)")
                if not value:
                    raise ConfigError(f"{where}.{name}.{key}: must not be empty")
        both = sorted(set(self.state) & set(self.state_points))
        if both:
            raise ConfigError(f"{where}: state key {both[0]!r} is both in state and state_points")
        for name, table in (("state", self.state), ("action", self.action)):
            seen: dict[str, str] = {}
            for key, joints in table.items():
                for joint in joints:
                    if joint in seen:
                        raise ConfigError(f"{where}.{name}.{key}: joint {joint!r} is already in {name}.{seen[joint]}")
                    seen[joint] = key
        if self.action_horizon < 0:
            raise ConfigError(f"{where}.action_horizon: must be >= 0 (0 = from the server), got {self.action_horizon}")
        if not (math.isfinite(self.action_step_s) and self.action_step_s > 0):
            raise ConfigError(f"{where}.action_step_s: must be > 0, got {self.action_step_s}")
        if self.label_step < 0 or (self.action_horizon and self.label_step >= self.action_horizon):
            raise ConfigError(f"{where}.label_step: must be in [0, action_horizon), got {self.label_step}")

    @property
    def action_joint_names(self) -> list[str]:
        """The labels' joint order: the action groups' joints, group by group, as listed."""
        return [j for joints in self.action.values() for j in joints]

    @property
    def action_dims(self) -> dict[str, int]:
        return {key: len(joints) for key, joints in self.action.items()}

    @property
    def state_joint_names(self) -> list[str]:
        return [j for joints in self.state.values() for j in joints]

    def chunk(self, actions: Mapping[str, np.ndarray]) -> np.ndarray:
        """``{group: (K, D)}`` (from :func:`protocol.parse_action`) -> (K, N) in ``action_joint_names`` order."""
        return np.concatenate([actions[key] for key in self.action], axis=1)

    def split_state(self, positions: np.ndarray) -> dict[str, np.ndarray]:
        """Positions in ``state_joint_names`` order -> ``{state key: (D,)}``."""
        out, start = {}, 0
        for key, joints in self.state.items():
            out[key] = positions[start:start + len(joints)]
            start += len(joints)
        return out


def load_modality_map(path: str | Path) -> ModalityMap:
    """Errors name the file and the key (ConfigError)."""
    return load_yaml(ModalityMap, path)
