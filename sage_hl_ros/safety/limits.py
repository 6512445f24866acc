"""Joint limits from YAML or URDF, validated up front.

Limits are the last line of defence between a learned policy and the hardware, so loading is
strict: every configured joint must be present, every number must make sense, and any error
names the file (or ``robot_description``) and the joint so a bad config fails at configure
time, not mid-motion.

Sources, read as their own tools write them (no conversion step for the user):

- **URDF** ``<limit>`` of revolute, prismatic and continuous joints, from a file or from the
  ``robot_description`` XML string as robot_state_publisher publishes it. A continuous joint
  has no position limit (±inf) but its ``velocity`` is still required and enforced.
- **ros2_control / MoveIt ``joint_limits.yaml``**: ``joint_limits: {joint: {has_position_limits,
  min_position, max_position, has_velocity_limits, max_velocity, has_acceleration_limits,
  max_acceleration, ...}}``, optionally inside ``<node>: {ros__parameters: ...}``, with the
  ``!degrees`` / ``!radians`` tags of xacro's YAML loader (Universal Robots' files use them).
- **the project's own YAML**: ``joint_limits: {joint: {position_min_rad, position_max_rad,
  velocity_max_rad_s, acceleration_max_rad_s2}}``, all four keys required.

The format is detected per joint entry from its keys. How the standard keys are read:

- ``has_X: false`` declares "no limit": no position limit means ±inf (a continuous joint); no
  velocity limit is refused unless the URDF gives one (the filter cannot bound a step without
  it); no acceleration limit means the documented default (below). A ``max_X`` given without
  its ``has_X`` flag is applied (ros2_control would drop it; a number nobody may see is a trap).
  ``has_X: true`` without its value is an error, where ros2_control silently turns the limit off.
- Position limits absent altogether (MoveIt's files carry only velocity and acceleration: MoveIt
  takes positions from the URDF) must come from the URDF: use :meth:`JointLimits.from_sources`.
- The filter has one acceleration bound for speeding up and for braking, so it takes the
  tighter of ``max_acceleration`` and ``max_deceleration``.
- Ignored, with reason: effort and jerk limits (the filter commands positions and bounds
  velocity and acceleration only); ``angle_wraparound`` (an unbounded joint is never wrapped);
  soft limits (``has_soft_limits``, ``k_position``, ``k_velocity``, ``soft_*_limit``: they shape
  ros2_control's saturation near the hard limits, which are what the filter enforces); MoveIt's
  ``default_velocity_scaling_factor`` / ``default_acceleration_scaling_factor`` (checked to be
  in (0, 1], not applied: they are the speed a planner requests by default, not what the
  hardware allows, and scaling the filter by them would make it fight the policy it protects).

URDF has no acceleration limit and the standard format may declare none. Then
``default_acceleration_max_rad_s2`` applies (the argument, else a top-level YAML key of that
name, else :data:`DEFAULT_ACCELERATION_MAX_RAD_S2`); the limits' :attr:`JointLimits.source`
says so, per joint, and a warning is logged, because a guessed limit must never look measured.

When a URDF and a YAML are both given, each bound is the tighter of the two (hardware limits
∩ task limits). Prismatic joints use the same fields; their units are metres and m/s (the
``_rad`` suffixes follow the revolute case, which is the common one).
"""

from __future__ import annotations

import logging
import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DEFAULT_ACCELERATION_MAX_RAD_S2", "JointLimit", "JointLimits", "LimitsError", "urdf_joint_names"]

_LOG = logging.getLogger(__name__)

#: Acceleration limit [rad/s^2 or m/s^2] used where no source gives one (URDF never does).
DEFAULT_ACCELERATION_MAX_RAD_S2 = 10.0

_FIELDS = ("position_min_rad", "position_max_rad", "velocity_max_rad_s", "acceleration_max_rad_s2")
_URDF_TYPES = ("revolute", "prismatic", "continuous")
_ROBOT_DESCRIPTION = "robot_description"
_DEFAULT_KEY = "default_acceleration_max_rad_s2"

# ros2_control's joint_limits parameters (joint_limits_rosparam.hpp) as flag -> value keys.
_STD_LIMITS = {
    "has_position_limits": ("min_position", "max_position"),
    "has_velocity_limits": ("max_velocity",),
    "has_acceleration_limits": ("max_acceleration",),
    "has_deceleration_limits": ("max_deceleration",),
    "has_jerk_limits": ("max_jerk",),
    "has_effort_limits": ("max_effort",),
    "has_soft_limits": ("k_position", "k_velocity", "soft_lower_limit", "soft_upper_limit"),
}
_STD_KEYS = frozenset(_STD_LIMITS) | {k for keys in _STD_LIMITS.values() for k in keys} | {"angle_wraparound"}
_MOVEIT_SCALING = ("default_velocity_scaling_factor", "default_acceleration_scaling_factor")
_STD_FORMAT = "ros2_control joint_limits format"


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


def _number(value: Any, where: str, key: str) -> float:
    # bool is an int subclass; 'true' as a limit is a typo, not a number.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LimitsError(f"{where}: {key} must be a number (got {value!r})")
    value = float(value)
    if not math.isfinite(value):
        raise LimitsError(f"{where}: {key} must be finite (got {value})")
    return value


@dataclass
class _Partial:
    """One joint's limits as one source states them; None = that source says nothing about it.

    ``why`` keeps, per missing field, what the source said instead (e.g. "has_velocity_limits
    is false"), so the error for a limit missing from every source can quote them all.
    """

    name: str
    position: tuple[float, float] | None = None
    velocity: float | None = None
    acceleration: float | None = None
    why: dict[str, list[str]] = field(default_factory=dict)

    def merged(self, other: _Partial, where: str) -> _Partial:
        """The tighter of each bound both sources give, the one given where only one does."""

        def tighter(a, b, pick):
            return b if a is None else a if b is None else pick(a, b)

        pos = tighter(self.position, other.position, lambda a, b: (max(a[0], b[0]), min(a[1], b[1])))
        if pos is not None and not pos[0] < pos[1]:
            raise LimitsError(f"{where}: joint '{self.name}': position ranges do not overlap "
                              f"({list(self.position)} vs {list(other.position)})")
        why = {k: self.why.get(k, []) + other.why.get(k, []) for k in {*self.why, *other.why}}
        return _Partial(self.name, pos, tighter(self.velocity, other.velocity, min),
                        tighter(self.acceleration, other.acceleration, min), why)


def _finish(
    partials: list[_Partial], origin: str, default_arg: float | None, default_in_file: float | None
) -> JointLimits:
    """Turn per-joint partials into checked limits: missing position/velocity are errors, missing
    acceleration takes the default (the argument, else the file's key, else the module's),
    recorded in ``source`` and warned about."""
    default_acc = next((v for v in (default_arg, default_in_file) if v is not None), DEFAULT_ACCELERATION_MAX_RAD_S2)
    if (isinstance(default_acc, bool) or not isinstance(default_acc, (int, float))
            or not math.isfinite(default_acc) or default_acc <= 0.0):
        raise LimitsError(f"{origin}: {_DEFAULT_KEY} must be finite and > 0 (got {default_acc!r})")
    joints, defaulted = [], []
    for p in partials:
        where = f"{origin}: joint '{p.name}'"
        if p.position is None:
            said = "; ".join(p.why.get("position", [])) or "no position limits given"
            raise LimitsError(
                f"{where}: no position limits ({said}); give has_position_limits: true with "
                "min_position/max_position, has_position_limits: false for a continuous joint, "
                "or a URDF with its <limit lower upper> (JointLimits.from_sources)")
        if p.velocity is None:
            said = "; ".join(p.why.get("velocity", [])) or "no velocity limit given"
            raise LimitsError(
                f"{where}: no velocity limit ({said}); the safety filter cannot bound a step without "
                "one: give has_velocity_limits: true with max_velocity, or a URDF <limit velocity>")
        acc = p.acceleration
        if acc is None:
            acc = float(default_acc)
            defaulted.append(p.name)
        limit = JointLimit(p.name, p.position[0], p.position[1], p.velocity, acc)
        _check_joint(limit, origin)
        joints.append(limit)
    limits = JointLimits(joints, origin=origin, acceleration_defaulted=tuple(defaulted))
    if defaulted:
        how = ("as configured" if default_arg is not None or default_in_file is not None
               else f"the documented default: set {_DEFAULT_KEY} to change it")
        _LOG.warning("%s (%s)", limits.source, how)
    return limits


@dataclass
class JointLimits:
    """Per-joint limits in the configured joint order (DESIGN §4: order follows names, not files).

    ``origin`` names where the limits came from and ``acceleration_defaulted`` the joints whose
    acceleration limit no source gave (see :attr:`source`); neither takes part in equality, so
    the same numbers loaded from two files compare equal.
    """

    joints: list[JointLimit]
    origin: str = field(default="", compare=False)
    acceleration_defaulted: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        self.joints = list(self.joints)
        self.acceleration_defaulted = tuple(self.acceleration_defaulted)
        _check_names([j.name for j in self.joints], "JointLimits")
        for joint in self.joints:
            _check_joint(joint, "JointLimits")
        unknown = sorted(set(self.acceleration_defaulted) - set(self.names))
        if unknown:
            raise LimitsError(f"JointLimits: acceleration_defaulted names unknown joints {unknown}")

    @property
    def source(self) -> str:
        """Where the limits came from, including which acceleration limits are a default, not data."""
        text = self.origin or "JointLimits"
        if self.acceleration_defaulted:
            by_value: dict[float, list[str]] = {}
            for j in self.joints:
                if j.name in self.acceleration_defaulted:
                    by_value.setdefault(j.acceleration_max_rad_s2, []).append(j.name)
            notes = "; ".join(
                f"acceleration limit {acc:g} rad/s^2 ({_DEFAULT_KEY}) assumed for {names}: "
                "no source gives one" for acc, names in by_value.items())
            text = f"{text}; {notes}"
        return text

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
    def from_yaml(
        cls,
        path: str | Path,
        joint_names: Sequence[str],
        default_acceleration_max_rad_s2: float | None = None,
    ) -> JointLimits:
        """Load the ``joint_limits`` mapping of a YAML file (either format; other keys ignored).

        ``default_acceleration_max_rad_s2`` (else the file's key of that name, else
        :data:`DEFAULT_ACCELERATION_MAX_RAD_S2`) applies where the standard format declares no
        acceleration limit.
        """
        names = _check_names(joint_names, str(path))
        partials, origin, file_default = _yaml_partials(path, names)
        return _finish(partials, origin, default_acceleration_max_rad_s2, file_default)

    @classmethod
    def from_dict(
        cls,
        data: Mapping[str, Any],
        joint_names: Sequence[str],
        source: str = "<dict>",
        default_acceleration_max_rad_s2: float | None = None,
    ) -> JointLimits:
        """Build from a parsed document holding a ``joint_limits`` mapping (as in the YAML file).

        Joints in the document but not configured are ignored (a robot-wide file may serve a
        controller that drives a subset); configured joints missing from it are an error.
        """
        names = _check_names(joint_names, source)
        partials, origin, file_default = _dict_partials(data, names, source)
        return _finish(partials, origin, default_acceleration_max_rad_s2, file_default)

    @classmethod
    def from_urdf(
        cls,
        path: str | Path,
        joint_names: Sequence[str],
        default_acceleration_max_rad_s2: float | None = None,
    ) -> JointLimits:
        """Read ``<limit>`` of revolute/prismatic/continuous joints from a URDF.

        ``path`` is a file, or the URDF XML itself (a string starting with ``<``, as the
        ``robot_description`` parameter/topic carries it; errors then name "robot_description").
        URDF has no acceleration limit, so ``default_acceleration_max_rad_s2`` (else
        :data:`DEFAULT_ACCELERATION_MAX_RAD_S2`) applies to all joints, said in :attr:`source`
        and warned about; tighten it with :meth:`tightened_by` or :meth:`from_sources`.
        """
        origin = _urdf_origin(path)
        names = _check_names(joint_names, origin)
        return _finish(_urdf_partials(path, names), origin, default_acceleration_max_rad_s2, None)

    @classmethod
    def from_sources(
        cls,
        joint_names: Sequence[str],
        yaml_path: str | Path = "",
        urdf: str | Path = "",
        default_acceleration_max_rad_s2: float | None = None,
    ) -> JointLimits:
        """Limits from a YAML file and/or a URDF (file or XML string), the tighter of each bound.

        Unlike ``from_yaml(...).tightened_by(from_urdf(...))`` a limit may come from one source
        only: MoveIt's joint_limits.yaml (velocity, acceleration) completed by the URDF
        (positions), or a YAML acceleration completing a URDF. A limit that neither gives is an
        error, except acceleration, which takes the default as in :meth:`from_yaml`.
        """
        yaml_given, urdf_given = str(yaml_path) != "", str(urdf) != ""
        if not (yaml_given or urdf_given):
            raise LimitsError("JointLimits.from_sources: no limits source (give a YAML file and/or a URDF)")
        names = _check_names(joint_names, "JointLimits.from_sources")
        file_default = None
        if yaml_given:
            partials, origin, file_default = _yaml_partials(yaml_path, names)
            if urdf_given:
                origin = f"{origin} + {_urdf_origin(urdf)}, tighter of each"
                pairs = zip(partials, _urdf_partials(urdf, names), strict=True)
                partials = [a.merged(b, origin) for a, b in pairs]
        else:
            partials, origin = _urdf_partials(urdf, names), _urdf_origin(urdf)
        return _finish(partials, origin, default_acceleration_max_rad_s2, file_default)

    # ------------------------------------------------------------------ combine
    def tightened_by(self, other: JointLimits) -> JointLimits:
        """Per joint, the tighter of each bound (e.g. URDF hardware limits ∩ YAML task limits).

        Matched by name and returned in this object's order; ``other`` may hold extra joints.
        An acceleration limit stays marked as defaulted only if no explicit one is as tight.
        """
        by_name = {j.name: j for j in other.joints}
        missing = [j.name for j in self.joints if j.name not in by_name]
        if missing:
            raise LimitsError(f"tightened_by: other limits lack joints {missing}")
        joints, defaulted = [], []
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
            acc = min(mine.acceleration_max_rad_s2, theirs.acceleration_max_rad_s2)
            sides = ((mine, self), (theirs, other))
            if all(lim.name in owner.acceleration_defaulted
                   for lim, owner in sides if lim.acceleration_max_rad_s2 == acc):
                defaulted.append(mine.name)
            joints.append(JointLimit(mine.name, lo, hi, min(mine.velocity_max_rad_s, theirs.velocity_max_rad_s), acc))
        origin = f"{self.origin or 'JointLimits'} tightened by {other.origin or 'JointLimits'}"
        return JointLimits(joints, origin=origin, acceleration_defaulted=tuple(defaulted))


# ---------------------------------------------------------------------- YAML


def _yaml_loader():
    """SafeLoader plus xacro's ``!degrees`` / ``!radians`` tags (Universal Robots' limits files).

    xacro evaluates an expression under the tag; only plain numbers are taken here, so
    ``!degrees 180.0`` loads and ``!degrees pi`` is an error naming the file.
    """
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def angle(scale: float):
        def construct(loader: yaml.SafeLoader, node: yaml.Node) -> float:
            raw = loader.construct_scalar(node)
            try:
                return float(raw) * scale
            except (TypeError, ValueError):
                raise yaml.constructor.ConstructorError(
                    None, None, f"{node.tag} {raw!r}: only a plain number is supported", node.start_mark) from None
        return construct

    Loader.add_constructor("!degrees", angle(math.pi / 180.0))
    Loader.add_constructor("!radians", angle(1.0))
    return Loader


def _yaml_partials(path: str | Path, names: list[str]) -> tuple[list[_Partial], str, float | None]:
    import yaml

    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise LimitsError(f"{source}: cannot read limits file ({exc.strerror or exc})") from exc
    try:
        data = yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise LimitsError(f"{source}: invalid YAML: {exc}") from exc
    return _dict_partials(data, names, source)


def _limits_table(data: Any, source: str) -> Mapping[str, Any]:
    """The mapping that holds ``joint_limits``: the document, or one node's ``ros__parameters``."""
    if not isinstance(data, Mapping):
        kind = type(data).__name__
        raise LimitsError(f"{source}: expected a mapping with a 'joint_limits' key, got {kind}")
    if "joint_limits" in data:
        return data
    nested = [v["ros__parameters"] for v in data.values()
              if isinstance(v, Mapping) and isinstance(v.get("ros__parameters"), Mapping)
              and "joint_limits" in v["ros__parameters"]]
    if len(nested) == 1:
        return nested[0]
    if nested:
        raise LimitsError(f"{source}: 'joint_limits' appears under {len(nested)} nodes' ros__parameters; "
                          "keep one per file")
    raise LimitsError(f"{source}: missing top-level key 'joint_limits'")


def _dict_partials(data: Any, names: list[str], source: str) -> tuple[list[_Partial], str, float | None]:
    doc = _limits_table(data, source)
    table = doc["joint_limits"]
    if not isinstance(table, Mapping):
        raise LimitsError(f"{source}: 'joint_limits' must be a mapping of joint name -> limits")
    for key in _MOVEIT_SCALING:  # read by MoveIt's planners, not applied here (module docstring)
        if key in doc:
            value = _number(doc[key], source, key)
            if not 0.0 < value <= 1.0:
                raise LimitsError(f"{source}: {key} must be in (0, 1] (got {value})")
    file_default = _number(doc[_DEFAULT_KEY], source, _DEFAULT_KEY) if _DEFAULT_KEY in doc else None
    missing = [n for n in names if n not in table]
    if missing:
        raise LimitsError(f"{source}: joint_limits is missing configured joints {missing}")
    partials, standard = [], False
    for name in names:
        entry = table[name]
        where = f"{source}: joint '{name}'"
        if not isinstance(entry, Mapping):
            raise LimitsError(f"{where}: limits must be a mapping with keys {list(_FIELDS)} "
                              f"or the {_STD_FORMAT} (has_velocity_limits, max_velocity, ...)")
        if any(k in _FIELDS for k in entry) or not any(k in _STD_KEYS for k in entry):
            partials.append(_project_entry(entry, name, where))
        else:
            partials.append(_standard_entry(entry, name, source))
            standard = True
    return partials, (f"{source} ({_STD_FORMAT})" if standard else source), file_default


def _project_entry(entry: Mapping[str, Any], name: str, where: str) -> _Partial:
    unknown = sorted(str(k) for k in entry if k not in _FIELDS)
    if unknown:
        hint = (f"; {[k for k in unknown if k in _STD_KEYS]} belong to the {_STD_FORMAT}: use one format per joint"
                if any(k in _STD_KEYS for k in unknown) else "")
        raise LimitsError(f"{where}: unknown keys {unknown} (allowed: {list(_FIELDS)}){hint}")
    absent = [k for k in _FIELDS if k not in entry]
    if absent:
        raise LimitsError(f"{where}: missing keys {absent}")
    v = {key: _number(entry[key], where, key) for key in _FIELDS}
    return _checked(_Partial(name, (v["position_min_rad"], v["position_max_rad"]), v["velocity_max_rad_s"],
                             v["acceleration_max_rad_s2"]), where)


def _standard_entry(entry: Mapping[str, Any], name: str, source: str) -> _Partial:
    """One joint in the ros2_control / MoveIt format; the rules are in the module docstring."""
    where = f"{source}: joint '{name}'"
    unknown = sorted(str(k) for k in entry if k not in _STD_KEYS)
    if unknown:
        raise LimitsError(f"{where}: unknown keys {unknown} (allowed in the {_STD_FORMAT}: {sorted(_STD_KEYS)})")
    for flag in (*_STD_LIMITS, "angle_wraparound"):
        if flag in entry and not isinstance(entry[flag], bool):
            raise LimitsError(f"{where}: {flag} must be true or false (got {entry[flag]!r})")
    why: dict[str, list[str]] = {}

    def enforced(flag: str, what: str) -> list[float] | None:
        """The flag's values if the limit is on: flag true, or values given without the flag."""
        keys = _STD_LIMITS[flag]
        if entry.get(flag) is False:
            why.setdefault(what, []).append(f"{source} says {flag}: false")
            return None
        present = [k for k in keys if k in entry]
        absent = [k for k in keys if k not in entry]
        if entry.get(flag) is True and absent:
            raise LimitsError(f"{where}: {flag} is true but {absent} not given")
        if present and absent:
            raise LimitsError(f"{where}: {present} given without {absent}")
        return [_number(entry[k], where, k) for k in keys] if present else None

    pos = enforced("has_position_limits", "position")
    if pos is None and entry.get("has_position_limits") is False:
        pos = [-math.inf, math.inf]  # declared unbounded: a continuous joint
    vel = enforced("has_velocity_limits", "velocity")
    rates = [v[0] for v in (enforced("has_acceleration_limits", "acceleration"),
                            enforced("has_deceleration_limits", "acceleration")) if v is not None]
    for key in ("max_jerk", "max_effort", "k_position", "k_velocity", "soft_lower_limit", "soft_upper_limit"):
        if key in entry:
            _number(entry[key], where, key)  # not enforced (module docstring), but a typo is still an error
    return _checked(_Partial(name, None if pos is None else (pos[0], pos[1]), None if vel is None else vel[0],
                             min(rates) if rates else None, why), where)


def _checked(p: _Partial, where: str) -> _Partial:
    """Each source's own numbers must make sense before they are combined with another's."""
    if p.position is not None:
        lo, hi = p.position
        if not lo < hi:
            raise LimitsError(f"{where}: position_min_rad ({lo}) must be < position_max_rad ({hi})")
    for key, value in (("velocity_max_rad_s", p.velocity), ("acceleration_max_rad_s2", p.acceleration)):
        if value is not None and value <= 0.0:
            raise LimitsError(f"{where}: {key} must be finite and > 0 (got {value})")
    return p


# ---------------------------------------------------------------------- URDF


def _is_xml(urdf: str | Path) -> bool:
    return isinstance(urdf, str) and urdf.lstrip().startswith("<")


def _urdf_origin(urdf: str | Path) -> str:
    return f"{_ROBOT_DESCRIPTION} (URDF)" if _is_xml(urdf) else f"{urdf} (URDF)"


def urdf_joint_names(urdf: str | Path) -> list[str]:
    """The URDF's commandable joints (revolute, prismatic, continuous) in file order."""
    source, elements = _urdf_joints(urdf)
    names = [name for name, joint in elements.items() if joint.get("type") in _URDF_TYPES]
    if not names:
        raise LimitsError(f"{source}: URDF has no revolute, prismatic or continuous joint")
    return names


def _urdf_joints(urdf: str | Path) -> tuple[str, dict[str, ET.Element]]:
    """(source name for messages, kinematic <joint> elements by name in file order)."""
    source = _ROBOT_DESCRIPTION if _is_xml(urdf) else str(urdf)
    try:
        root = ET.fromstring(urdf) if _is_xml(urdf) else ET.parse(source).getroot()
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
    return source, elements


def _urdf_partials(urdf: str | Path, names: list[str]) -> list[_Partial]:
    source, elements = _urdf_joints(urdf)
    missing = [n for n in names if n not in elements]
    if missing:
        raise LimitsError(f"{source}: URDF has no joints named {missing}")
    partials = []
    for name in names:
        joint = elements[name]
        where = f"{source}: joint '{name}'"
        jtype = joint.get("type")
        if jtype not in _URDF_TYPES:
            raise LimitsError(f"{where}: type '{jtype}' cannot be commanded (expected one of {list(_URDF_TYPES)})")
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

        lo, hi = (-math.inf, math.inf) if jtype == "continuous" else (attr("lower"), attr("upper"))
        partials.append(_checked(_Partial(name, (lo, hi), attr("velocity"), None), where))
    return partials
