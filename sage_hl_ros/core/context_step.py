"""One H tick of the context node as a pure function of its inputs: readings + now -> latent or skip.

The node is left with parameters, topics and threads; everything that decides what the model
sees and whether a latent goes out lives here, so it is tested without a ROS graph:

- **Freshness** (DESIGN §4: context assembly uses header stamps): a reading's age is
  ``max(now - arrival, now - header stamp)``, so neither a late message with an old stamp nor a
  silent sensor whose last stamp was fine counts as fresh; a stamp further ahead of the node clock
  than ``clock_skew_tolerance_s`` is rejected. Every mask names the clock that caused it.
- **Plausible ranges**: the observation schema masks values outside
  ``ObservationConfig.input_ranges`` with a reason (a 1e30 taxel never reaches the encoders).
- **Commit only on success**: the temporal state the backend returns is kept only when the latent
  and the state are finite. A failed step is a skip with a reason and the next step starts from the
  last good state, so one bad input cannot keep the latent down after it has gone stale.

The H path itself is a pluggable ``HBackend`` (the schema's numpy observation arrays + temporal
state -> z + new state). ``core.torch_backend.TorchHBackend`` wraps ``SageHL.encode``;
``deploy.onnx_backend.OnnxHPath`` runs the exported graph on ONNX Runtime. This module and the
schema's numpy path import no torch, so a process running the ONNX backend never loads it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .config import SENSOR_MODALITY, SENSORS, ConfigError, ObservationConfig
from .freshness import Freshness
from .freshness import freshness as _freshness
from .observation import Observation, ObservationSchema, view_key
from .robot import camera_input

__all__ = ["ContextStep", "ContextStepConfig", "DEFAULT_H_RATE_HZ", "Freshness", "HBackend", "Mask", "Reading",
           "StepResult", "freshness", "h_rate_for", "INPUTS", "declared_inputs"]

# The context node's inputs (topic side) and the schema modality each one feeds. A model with
# more than one camera also has the inputs camera_1, camera_2, ... (robot.camera_input), each
# feeding one view of the visual modality (schema key observation.view_key).
INPUTS = (*SENSORS, "joint_states")
SCHEMA_MODALITY = {**SENSOR_MODALITY, "joint_states": "proprio"}


def schema_key(name: str) -> str:
    """The schema's problem key of an input (``camera_2`` -> ``visual:2``)."""
    if name.startswith("camera_"):
        return view_key(int(name.removeprefix("camera_")))
    return SCHEMA_MODALITY[name]


#: H rate of a checkpoint that records none (model.h_rate_hz 0: made by init-model, or before it was kept).
DEFAULT_H_RATE_HZ = 10.0


def h_rate_for(source: str, recorded_hz: float, asked_hz: float) -> float:
    """The rate to run the H loop at: the one the checkpoint was trained at unless asked otherwise.

    ``asked_hz`` 0 means "the checkpoint's". A different rate than the recorded one is refused: the
    history the H-module attends over and the dynamics it predicts mean "this many seconds" only at
    the rate its data was aligned at (the model would run, and silently misbehave).
    """
    if not (math.isfinite(asked_hz) and asked_hz >= 0.0):
        raise ConfigError(f"h_rate_hz must be > 0 (or 0: the checkpoint's rate), got {asked_hz}")
    if recorded_hz > 0.0 and asked_hz > 0.0 and abs(asked_hz - recorded_hz) > 1e-9:
        raise ConfigError(f"h_rate_hz {asked_hz:g} Hz, but {source} was trained at {recorded_hz:g} Hz "
                          "(model.h_rate_hz): set h_rate_hz to 0 or to that rate, or train a model at yours")
    return asked_hz or recorded_hz or DEFAULT_H_RATE_HZ


def declared_inputs(cfg: ObservationConfig) -> tuple[str, ...]:
    """The inputs a robot with this observation config has: ``INPUTS`` order, the further cameras
    (``camera_1``...) right after ``camera``."""
    out = []
    for n in INPUTS:
        if SCHEMA_MODALITY[n] in cfg.modalities:
            out.append(n)
            if n == "camera":
                out += [camera_input(k) for k in range(1, cfg.num_cameras)]
    return tuple(out)


class HBackend(Protocol):
    """The H path (encoders -> context -> H -> compressor) behind one small interface."""

    observation_config: ObservationConfig
    latent_dim: int

    def initial_state(self) -> Any:
        """Temporal state for a new episode (batch of one)."""

    def encode(self, arrays: Mapping[str, np.ndarray], state: Any) -> tuple[np.ndarray, Any]:
        """Observation arrays of a batch of one (``ObservationSchema.prepare_arrays``) ->
        (z (latent_dim,) float32, new temporal state); must not modify ``state``."""

    def state_is_finite(self, state: Any) -> bool:
        """False when the state holds NaN/Inf (it must then not be kept)."""


@dataclass(frozen=True)
class ContextStepConfig:
    """Freshness rules of the H step; validated on construction."""

    observation_timeout_s: float = 0.5
    clock_skew_tolerance_s: float = 0.05  # how far a header stamp may lead the node clock

    def __post_init__(self):
        for key in ("observation_timeout_s", "clock_skew_tolerance_s"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{key}: must be a finite number, got {value!r}")
        if self.observation_timeout_s <= 0:
            raise ConfigError(f"observation_timeout_s: must be > 0, got {self.observation_timeout_s}")
        if self.clock_skew_tolerance_s < 0:
            raise ConfigError(f"clock_skew_tolerance_s: must be >= 0, got {self.clock_skew_tolerance_s}")


@dataclass(frozen=True)
class Reading:
    """The latest accepted message of one input, already converted to arrays.

    ``value``: camera (and camera_<k>) (H, W, 3) uint8 RGB; depth (H, W) metres; audio (N,) PCM; tactile (T,);
    joint_states (positions, velocities) in the model's joint order. ``problem`` set means the
    message arrived but could not be used (e.g. a compressed frame that failed to decode).
    """

    value: Any
    arrival_s: float  # node clock when it arrived
    stamp_s: float | None = None  # header stamp; None when the message has none (or it is zero)
    stamp: Any = None  # the header stamp object, passed through unchanged to the latent
    problem: str = ""


def freshness(arrival_s: float, stamp_s: float | None, now_s: float, cfg: ContextStepConfig) -> Freshness:
    """Is a reading usable now? The shared rule (core/freshness.py) with the context's timeout."""
    return _freshness(arrival_s, stamp_s, now_s, cfg.observation_timeout_s, cfg.clock_skew_tolerance_s,
                      "observation_timeout_s")


@dataclass(frozen=True)
class Mask:
    """Why an input was left out of this step."""

    state: str  # missing | stale | future | invalid (the schema refused its values)
    reason: str
    clock: str = ""


@dataclass
class StepResult:
    z: np.ndarray | None  # (latent_dim,) float32 when a latent should be published
    stamp_s: float | None = None  # newest header stamp used (newest arrival if nothing used is stamped)
    stamp: Any = None  # that header stamp object; None when stamp_s is an arrival time
    skip_reason: str = ""  # why nothing is published ("" when z is set)
    skip_kind: str = ""  # no_input | non_finite_latent | non_finite_state
    used: tuple[str, ...] = ()
    masked: dict[str, Mask] = field(default_factory=dict)  # every input not used, with its reason
    infer_ms: float = 0.0  # schema + backend time (0 when the backend did not run)


class ContextStep:
    """Owns the temporal state of one model; call it once per H tick."""

    def __init__(self, backend: HBackend, cfg: ContextStepConfig | None = None):
        self.backend = backend
        self.cfg = cfg or ContextStepConfig()
        self.schema = ObservationSchema(backend.observation_config)
        #: The inputs this model's robot has; the others are neither read nor reported as masked.
        self.declared = declared_inputs(backend.observation_config)
        self._state = backend.initial_state()

    def reset(self) -> None:
        """Forget the temporal history (a new episode, or after activation)."""
        self._state = self.backend.initial_state()

    @property
    def state(self) -> Any:
        return self._state

    def __call__(self, readings: Mapping[str, Reading | None], now_s: float) -> StepResult:
        masked: dict[str, Mask] = {}
        fresh: dict[str, Reading] = {}
        for name in self.declared:
            reading = readings.get(name)
            if reading is None:
                masked[name] = Mask("missing", "no message yet")
                continue
            f = freshness(reading.arrival_s, reading.stamp_s, now_s, self.cfg)
            if not f.ok:
                masked[name] = Mask(f.state, f.reason, f.clock)
            elif reading.problem or reading.value is None:
                masked[name] = Mask("invalid", reading.problem or "no usable value")
            else:
                fresh[name] = reading
        if not fresh:
            return StepResult(None, skip_reason="no fresh input", skip_kind="no_input", masked=masked)

        joints = fresh.get("joint_states")

        def value(name: str):
            return fresh[name].value if name in fresh else None

        views = [n for n in self.declared if n.startswith("camera_")]
        obs = Observation(image=value("camera"), extra_views=[value(n) for n in views], depth=value("depth"),
                          audio=value("audio"), tactile=value("tactile"),
                          joint_position=joints.value[0] if joints is not None else None,
                          joint_velocity=joints.value[1] if joints is not None else None,
                          stamps_s={schema_key(n): _stamp_or_arrival(r) for n, r in fresh.items()})
        t0 = time.perf_counter()
        arrays, problems = self.schema.prepare_arrays(obs)
        input_of = {schema_key(n): n for n in self.declared}
        for modality, reason in problems.items():
            name = input_of[modality]
            if name in fresh:  # "missing" ones are already in masked with their own reason
                masked[name] = Mask("invalid", reason)
                del fresh[name]
        if not fresh:
            return StepResult(None, skip_reason="no usable input: " + "; ".join(
                f"{n}: {m.reason}" for n, m in masked.items() if m.state == "invalid"),
                skip_kind="no_input", masked=masked)

        z, new_state = self.backend.encode(arrays, self._state)
        infer_ms = (time.perf_counter() - t0) * 1e3
        used = tuple(n for n in self.declared if n in fresh)
        z = np.asarray(z, dtype=np.float32).reshape(-1)
        if not np.isfinite(z).all():
            return StepResult(None, skip_reason="latent has non-finite values; temporal state not committed",
                              skip_kind="non_finite_latent", used=used, masked=masked, infer_ms=infer_ms)
        if not self.backend.state_is_finite(new_state):
            return StepResult(None, skip_reason="temporal state has non-finite values; not committed",
                              skip_kind="non_finite_state", used=used, masked=masked, infer_ms=infer_ms)
        self._state = new_state
        # The latent carries the newest header stamp among the inputs used; inputs without a
        # header (audio, tactile) count by arrival only when nothing stamped was used.
        stamped = [fresh[n] for n in used if fresh[n].stamp_s is not None]
        if stamped:
            newest = max(stamped, key=lambda r: r.stamp_s)
            stamp_s, stamp = newest.stamp_s, newest.stamp
        else:
            stamp_s, stamp = max(fresh[n].arrival_s for n in used), None
        return StepResult(z, stamp_s=stamp_s, stamp=stamp, used=used, masked=masked, infer_ms=infer_ms)


def _stamp_or_arrival(reading: Reading) -> float:
    return reading.arrival_s if reading.stamp_s is None else reading.stamp_s
