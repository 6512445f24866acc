"""Joint limits from YAML or URDF, validated up front.

Limits are the last line of defence between a learned policy and the hardware, so loading is
strict: every configured joint must be present, every number must make sense, and any error
names the file and the joint so a bad config fails at configure time, not mid-motion.

Prismatic joints use the same fields; their units are metres and m/s (the ``_rad`` suffixes
follow the revolute case, which is the common one).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["JointLimit", "JointLimits", "LimitsError"]

_FIELDS = ("position_min_rad", "position_max_rad", "velocity_max_rad_s", "acceleration_max_rad_s2")
_URDF_TYPES = ("revolute", "prismatic", "continuous")


class LimitsError(ValueError):
    """A limits file or mapping is unusable; the message names the source and the joint/key."""


@dataclass
class JointLimit:
    """Limits of one joint. Position bounds may be ±inf (continuous joints), nothing else may."""

    name: str
    position_min_rad: float
    position_max_rad: float
    velocity_max_rad_s: float
    acceleration_max_rad_s2: float


def _check_joint(limit: JointLimit, source: str) -> None:
    """Reject limits the filter cannot enforce (NaN, empty range, non-positive rates)."""
    where = f"{source}: joint '{limit.name}'"
    lo, hi = limit.position_min_rad, limit.position_max_rad
    if math.isnan(lo) or math.isnan(hi) or lo == math.inf or hi == -math.inf:
        raise LimitsError(f"{where}: position limits must be numbers (got min={lo}, max={hi})")
    if not lo < hi:
        raise LimitsError(f"{where}: position_min_rad ({lo}) must be < position_max_rad ({hi})")
    for key in ("velocity_max_rad_s", "acceleration_max_rad_s2"):
        value = getattr(limit, key)
        if not math.isfinite(value) or value <= 0.0:
            raise LimitsError(f"{where}: {key} must be finite and > 0 (got {value})")


def _check_names(joint_names: Sequence[str], source: str) -> list[str]:
    if isinstance(joint_names, str):
        raise LimitsError(f"{source}: joint_names must be a list of names, not a string")
    names = list(joint_names)
    if not names:
        raise LimitsError(f"{source}: no joints configured (joint_names is empty)")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise LimitsError(f"{source}: duplicate joint names {dup}")
    return names


@dataclass
class JointLimits:
    """Per-joint limits in the configured joint order (DESIGN §4: order follows names, not files)."""

    joints: list[JointLimit]

    def __post_init__(self) -> None:
        self.joints = list(self.joints)
        _check_names([j.name for j in self.joints], "JointLimits")
        for joint in self.joints:
            _check_joint(joint, "JointLimits")

    # ------------------------------------------------------------------ arrays
    @property
    def names(self) -> list[str]:
        return [j.name for j in self.joints]

    @property
    def lower(self) -> np.ndarray:
        return np.array([j.position_min_rad for j in self.joints], dtype=np.float64)

    @property
    def upper(self) -> np.ndarray:
        return np.array([j.position_max_rad for j in self.joints], dtype=np.float64)

    @property
    def velocity_max(self) -> np.ndarray:
        return np.array([j.velocity_max_rad_s for j in self.joints], dtype=np.float64)

    @property
    def acceleration_max(self) -> np.ndarray:
        return np.array([j.acceleration_max_rad_s2 for j in self.joints], dtype=np.float64)

    # ------------------------------------------------------------------ loaders
    @classmethod
    def from_yaml(cls, path: str | Path, joint_names: Sequence[str]) -> JointLimits:
        """Load the ``joint_limits`` mapping of a YAML file; other top-level keys are ignored."""
        import yaml

        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise LimitsError(f"{source}: cannot read limits file ({exc.strerror or exc})") from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise LimitsError(f"{source}: invalid YAML: {exc}") from exc
        return cls.from_dict(data, joint_names, source=source)

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], joint_names: Sequence[str], source: str = "<dict>"
    ) -> JointLimits:
        """Build from a parsed document holding a ``joint_limits`` mapping (as in the YAML file).

        Joints in the document but not configured are ignored (a robot-wide file may serve a
        controller that drives a subset); configured joints missing from it are an error.
        """
        names = _check_names(joint_names, source)
        if not isinstance(data, Mapping):
            kind = type(data).__name__
            raise LimitsError(f"{source}: expected a mapping with a 'joint_limits' key, got {kind}")
        if "joint_limits" not in data:
            raise LimitsError(f"{source}: missing top-level key 'joint_limits'")
        table = data["joint_limits"]
        if not isinstance(table, Mapping):
            raise LimitsError(f"{source}: 'joint_limits' must be a mapping of joint name -> limits")
        missing = [n for n in names if n not in table]
        if missing:
            raise LimitsError(f"{source}: joint_limits is missing configured joints {missing}")
        joints = []
        for name in names:
            entry = table[name]
            where = f"{source}: joint '{name}'"
            if not isinstance(entry, Mapping):
                raise LimitsError(f"{where}: limits must be a mapping with keys {list(_FIELDS)}")
            unknown = sorted(str(k) for k in entry if k not in _FIELDS)
            if unknown:
                raise LimitsError(f"{where}: unknown keys {unknown} (allowed: {list(_FIELDS)})")
            absent = [k for k in _FIELDS if k not in entry]
            if absent:
                raise LimitsError(f"{where}: missing keys {absent}")
            values = {}
            for key in _FIELDS:
                value = entry[key]
                # bool is an int subclass; 'true' as a limit is a typo, not a number.
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise LimitsError(f"{where}: {key} must be a number (got {value!r})")
                value = float(value)
                if not math.isfinite(value):
                    raise LimitsError(f"{where}: {key} must be finite (got {value})")
                values[key] = value
            limit = JointLimit(name=name, **values)
            _check_joint(limit, source)
            joints.append(limit)
        return cls(joints)

    @classmethod
    def from_urdf(
        cls,
        path: str | Path,
        joint_names: Sequence[str],
        default_acceleration_max_rad_s2: float = 10.0,
    ) -> JointLimits:
        """Read ``<limit>`` of revolute/prismatic/continuous joints from a URDF.

        URDF has no acceleration limit, so one default applies to all joints (tighten it with
        :meth:`tightened_by` and a YAML file). Continuous joints get ±inf position limits; their
        velocity still comes from ``<limit velocity=...>``, which is required.
        """
        source = str(path)
        names = _check_names(joint_names, source)
        acc = float(default_acceleration_max_rad_s2)
        if not math.isfinite(acc) or acc <= 0.0:
            raise LimitsError(f"{source}: default_acceleration_max_rad_s2 must be finite and > 0 (got {acc})")
        try:
            root = ET.parse(source).getroot()
        except ET.ParseError as exc:
            raise LimitsError(f"{source}: malformed URDF XML: {exc}") from exc
        except OSError as exc:
            raise LimitsError(f"{source}: cannot read URDF ({exc.strerror or exc})") from exc
        elements: dict[str, ET.Element] = {}
        for joint in root.iter("joint"):
            jname = joint.get("name")
            # <joint> also appears inside <transmission>; only the kinematic ones carry a type.
            if jname is None or joint.get("type") is None:
                continue
            if jname in elements:
                raise LimitsError(f"{source}: joint '{jname}' is defined more than once")
            elements[jname] = joint
        missing = [n for n in names if n not in elements]
        if missing:
            raise LimitsError(f"{source}: URDF has no joints named {missing}")
        joints = []
        for name in names:
            joint = elements[name]
            where = f"{source}: joint '{name}'"
            jtype = joint.get("type")
            if jtype not in _URDF_TYPES:
                raise LimitsError(
                    f"{where}: type '{jtype}' cannot be commanded (expected one of {list(_URDF_TYPES)})"
                )
            limit = joint.find("limit")
            if limit is None:
                raise LimitsError(f"{where}: missing <limit> element (needed for its velocity limit)")

            def attr(key: str, limit: ET.Element = limit, where: str = where) -> float:
                raw = limit.get(key)
                if raw is None:
                    raise LimitsError(f"{where}: <limit> has no '{key}' attribute")
                try:
                    value = float(raw)
                except ValueError:
                    raise LimitsError(f"{where}: <limit {key}=\"{raw}\"> is not a number") from None
                if not math.isfinite(value):
                    raise LimitsError(f"{where}: <limit {key}=\"{raw}\"> must be finite")
                return value

            if jtype == "continuous":
                lo, hi = -math.inf, math.inf
            else:
                lo, hi = attr("lower"), attr("upper")
            joint_limit = JointLimit(name, lo, hi, attr("velocity"), acc)
            _check_joint(joint_limit, source)
            joints.append(joint_limit)
        return cls(joints)

    # ------------------------------------------------------------------ combine
    def tightened_by(self, other: JointLimits) -> JointLimits:
        """Per joint, the tighter of each bound (e.g. URDF hardware limits ∩ YAML task limits).

        Matched by name and returned in this object's order; ``other`` may hold extra joints.
        """
        by_name = {j.name: j for j in other.joints}
        missing = [j.name for j in self.joints if j.name not in by_name]
        if missing:
            raise LimitsError(f"tightened_by: other limits lack joints {missing}")
        joints = []
        for mine in self.joints:
            theirs = by_name[mine.name]
            lo = max(mine.position_min_rad, theirs.position_min_rad)
            hi = min(mine.position_max_rad, theirs.position_max_rad)
            if not lo < hi:
                raise LimitsError(
                    f"tightened_by: joint '{mine.name}': position ranges do not overlap "
                    f"([{mine.position_min_rad}, {mine.position_max_rad}] vs "
                    f"[{theirs.position_min_rad}, {theirs.position_max_rad}])"
                )
            joints.append(
                JointLimit(
                    mine.name,
                    lo,
                    hi,
                    min(mine.velocity_max_rad_s, theirs.velocity_max_rad_s),
                    min(mine.acceleration_max_rad_s2, theirs.acceleration_max_rad_s2),
                )
            )
        return JointLimits(joints)
