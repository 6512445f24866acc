"""Model and observation configs: dataclasses loaded from YAML and validated on load.

Every error names the file and the dotted key, so a typo in a robot's YAML is found before any
tensor is built. Units live in the names (``rate_hz``, ``timeout_s``, ``_px``, ``_m``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .robot import (
    RobotContract,
    check_observation,
    implied_robot,
    load_robot,
    observation_from_robot,
    observation_values,
    robot_from_mapping,
)
from .validated import ConfigError, SelfValidating, from_dict, load_json, load_yaml, read_yaml, require_positive

__all__ = ["CONTEXT_DIM", "COMPRESSORS", "LATENT_DIM", "MAX_CAMERAS", "MODALITIES", "SENSORS", "SENSOR_MODALITY",
           "ConfigError", "InputRanges", "LossConfig", "ModelConfig", "ObservationConfig", "RobotContract",
           "SageConfig", "SelfValidating", "from_dict", "load_json", "load_yaml", "range_problem", "require_positive"]

MODALITIES = ("visual", "depth", "audio", "tactile", "proprio")
#: Sensors a robot may declare (``observation.sensors``), each feeding one schema modality.
#: Joint states (``proprio``) are not optional: the L-module needs them.
SENSOR_MODALITY = {"camera": "visual", "depth": "depth", "audio": "audio", "tactile": "tactile"}
SENSORS = tuple(SENSOR_MODALITY)
COMPRESSORS = ("bottleneck", "attention", "hierarchical", "hybrid")
PROPRIO_FEATURES = ("position", "velocity")
LATENT_DIM = 256
CONTEXT_DIM = 4096
#: Most RGB views one model takes (each is a full image input of the H path).
MAX_CAMERAS = 8


@dataclass
class InputRanges(SelfValidating):
    """Plausible sensor values; anything outside masks the modality with a reason.

    ``isfinite`` alone is not enough: one finite tactile reading of 1e30 (or a joint position of
    1e308, which float32 cannot hold) overflows inside the encoders, and the non-finite context
    then poisons the temporal state. The bounds catch corrupt data, not unusual robots, so they
    are generous; they live in the checkpoint's config so training and runtime mask the same.
    """

    joint_position_abs_max_rad: float = 100.0
    joint_velocity_abs_max_rad_s: float = 1000.0
    tactile_abs_max: float = 1e6  # in the taxels' own units
    audio_abs_max: float = 10.0  # float PCM is nominally [-1, 1]; clipping sits well inside this
    # Depth pixels outside [min, max] are invalid pixels (zero, like NaN; REP 118), not a masked image.
    depth_valid_min_m: float = 0.0
    depth_valid_max_m: float = 100.0

    def validate(self, where: str) -> None:
        require_positive(self, where, "joint_position_abs_max_rad", "joint_velocity_abs_max_rad_s",
                         "tactile_abs_max", "audio_abs_max", "depth_valid_max_m")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not math.isfinite(value):
                raise ConfigError(f"{where}.{f.name}: must be finite, got {value}")
        if not 0.0 <= self.depth_valid_min_m < self.depth_valid_max_m:
            raise ConfigError(f"{where}.depth_valid_min_m: must be in [0, depth_valid_max_m "
                              f"({self.depth_valid_max_m})), got {self.depth_valid_min_m}")


def range_problem(values: np.ndarray, abs_max: float, what: str, unit: str = "",
                  names: Sequence[str] | None = None) -> str:
    """Why ``values`` are implausible ('' when all are finite and ``|v| <= abs_max``).

    One pass in the common case (NaN fails the comparison too). ``names`` label the values
    (joint names) in the message; otherwise it counts them. Shared by the schema and the
    runtime JointState decoder (which must not import torch) so both give the same verdict and words.
    """
    if values.size == 0 or np.abs(values).max() <= abs_max:
        return ""

    def which(bad: np.ndarray) -> str:
        if names is not None:
            return " for " + ", ".join(names[i] for i in bad)
        return f" ({bad.size} of {values.size} values)"

    finite = np.isfinite(values)
    if not finite.all():
        return f"non-finite {what}{which(np.flatnonzero(~finite))}"
    bad = np.flatnonzero(np.abs(values) > abs_max)
    worst = values[bad[np.argmax(np.abs(values[bad]))]]
    return f"{what} out of range{which(bad)}: {worst:.3g}{unit} (plausible |value| <= {abs_max:g}{unit})"


@dataclass
class ObservationConfig(SelfValidating):
    """What the robot senses and how it is shaped before the encoders."""

    joint_names: list[str] = field(
        default_factory=lambda: [f"joint{i}" for i in range(1, 8)]
    )
    image_height_px: int = 128
    image_width_px: int = 128
    depth_height_px: int = 128
    depth_width_px: int = 128
    depth_max_m: float = 5.0
    audio_sample_rate_hz: int = 16000
    audio_window_samples: int = 4096
    audio_n_fft: int = 512
    audio_hop_samples: int = 256
    audio_n_mels: int = 32
    tactile_taxels: int = 16
    # RGB views the model takes (the robot contract's cameras; 1 where it has none). They share the
    # visual slice of the context: see encoders.VisualViews.
    num_cameras: int = 1
    # The sensors this robot has. One left out is never subscribed, read from bags or encoded (its
    # slice of the context is zeros and its mask bit is off, as for a dead sensor) and raises no
    # stale warning; its size keys above keep their defaults.
    sensors: list[str] = field(default_factory=lambda: list(SENSORS))
    # Velocities are off by default: with them a policy learns to copy its own motion (DESIGN §7).
    proprio_features: list[str] = field(default_factory=lambda: ["position"])
    input_ranges: InputRanges = field(default_factory=InputRanges)

    def validate(self, where: str) -> None:
        self.input_ranges.validate(f"{where}.input_ranges")
        if not self.joint_names:
            raise ConfigError(f"{where}.joint_names: at least one joint is required")
        if len(set(self.joint_names)) != len(self.joint_names):
            raise ConfigError(f"{where}.joint_names: duplicate joint names {self.joint_names}")
        for key in ("image_height_px", "image_width_px", "depth_height_px", "depth_width_px"):
            if getattr(self, key) < 16:
                raise ConfigError(f"{where}.{key}: must be >= 16, got {getattr(self, key)}")
        bad = [s for s in self.sensors if s not in SENSOR_MODALITY]
        if bad or len(set(self.sensors)) != len(self.sensors):
            raise ConfigError(f"{where}.sensors: a list of distinct names from {list(SENSORS)} "
                              f"(joint states are always used), got {self.sensors}")
        if not 1 <= self.num_cameras <= MAX_CAMERAS:
            raise ConfigError(f"{where}.num_cameras: must be 1..{MAX_CAMERAS}, got {self.num_cameras}")
        if self.tactile_taxels <= 0:  # the tensor shapes keep it even where tactile is absent
            raise ConfigError(f"{where}.tactile_taxels: must be > 0, got {self.tactile_taxels} "
                              f"(a robot without tactile sensing leaves 'tactile' out of sensors)")
        require_positive(self, where, "depth_max_m", "audio_sample_rate_hz", "audio_window_samples",
                         "audio_n_fft", "audio_hop_samples", "audio_n_mels")
        if self.audio_window_samples < self.audio_n_fft:
            raise ConfigError(
                f"{where}.audio_window_samples: must be >= audio_n_fft ({self.audio_n_fft}), "
                f"got {self.audio_window_samples}"
            )
        bad = [f for f in self.proprio_features if f not in PROPRIO_FEATURES]
        if bad or not self.proprio_features:
            raise ConfigError(
                f"{where}.proprio_features: choose from {list(PROPRIO_FEATURES)}, got {self.proprio_features}"
            )

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)

    @property
    def modalities(self) -> tuple[str, ...]:
        """Schema modalities (``MODALITIES`` order) this robot has: its sensors' plus proprio."""
        have = {SENSOR_MODALITY[s] for s in self.sensors} | {"proprio"}
        return tuple(m for m in MODALITIES if m in have)

    @property
    def proprio_dim(self) -> int:
        return self.num_joints * len(self.proprio_features)


@dataclass
class ModelConfig(SelfValidating):
    """Architecture of encoders, H-module, compressor and L-module."""

    visual_backbone: str = "cnn"  # "cnn" or a local Hugging Face model directory
    history_len: int = 8  # contexts the temporal group attends over
    h_layers: int = 2
    h_heads: int = 4
    h_ff_dim: int = 512
    dropout: float = 0.0
    compressor: str = "hybrid"
    latent_dim: int = LATENT_DIM
    attention_latents: int = 8
    # Per-group share of the latent for the hierarchical compressor; must sum to latent_dim.
    hierarchical_dims: dict[str, int] = field(
        default_factory=lambda: {"sensory": 96, "semantic": 64, "physical": 48, "temporal": 48}
    )
    action_mode: str = "delta"  # "delta" (target = position + action) or "absolute"
    action_chunk: int = 1  # steps of joint targets predicted per L-module call
    action_chunk_dt_s: float = 0.0  # spacing of those steps (what the data was aligned at); 0 = not recorded
    # H steps per second the model was trained at (its dataset's grid rate): the history and the
    # temporal slices mean "this many seconds" only at that rate. Set by training; 0 = not recorded.
    h_rate_hz: float = 0.0
    l_hidden_dim: int = 256
    l_layers: int = 2

    def validate(self, where: str) -> None:
        for key in ("action_chunk_dt_s", "h_rate_hz"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0.0):
                raise ConfigError(f"{where}.{key}: must be >= 0 (0 = not recorded), got {value}")
        if self.compressor not in COMPRESSORS:
            raise ConfigError(f"{where}.compressor: choose from {list(COMPRESSORS)}, got {self.compressor!r}")
        if self.action_mode not in ("delta", "absolute"):
            raise ConfigError(f"{where}.action_mode: 'delta' or 'absolute', got {self.action_mode!r}")
        require_positive(self, where, "history_len", "h_layers", "h_heads", "h_ff_dim", "latent_dim",
                  "attention_latents", "action_chunk", "l_hidden_dim", "l_layers")
        if 256 % self.h_heads:
            raise ConfigError(f"{where}.h_heads: must divide the 256-D token size, got {self.h_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{where}.dropout: must be in [0, 1), got {self.dropout}")
        if self.latent_dim % self.attention_latents:
            raise ConfigError(
                f"{where}.attention_latents: must divide latent_dim ({self.latent_dim}), "
                f"got {self.attention_latents}"
            )
        groups = {"sensory", "semantic", "physical", "temporal"}
        if set(self.hierarchical_dims) != groups:
            raise ConfigError(f"{where}.hierarchical_dims: needs exactly the keys {sorted(groups)}, "
                              f"got {sorted(self.hierarchical_dims)}")
        if sum(self.hierarchical_dims.values()) != self.latent_dim or min(self.hierarchical_dims.values()) < 1:
            raise ConfigError(
                f"{where}.hierarchical_dims: positive sizes summing to latent_dim ({self.latent_dim}), "
                f"got {self.hierarchical_dims}"
            )


@dataclass
class LossConfig(SelfValidating):
    """Weights of the training objectives (see SageHL.losses)."""

    bc: float = 1.0  # behaviour cloning of recorded / teacher actions
    reconstruction: float = 0.1  # decoder(z) -> stop-gradient context
    kl: float = 1e-4  # variational bottleneck KL per sample
    dynamics: float = 0.5  # physical.dynamics -> next proprio
    predictive: float = 0.1  # temporal.predictive -> next sensory embedding (stop-gradient)
    semantic: float = 0.1  # cross-modal agreement
    smoothness: float = 0.0  # action-chunk smoothness

    def validate(self, where: str) -> None:
        for f in dataclasses.fields(self):
            if getattr(self, f.name) < 0:
                raise ConfigError(f"{where}.{f.name}: loss weights must be >= 0, got {getattr(self, f.name)}")


@dataclass
class SageConfig(SelfValidating):
    """Everything needed to build a SageHL model (and stored with each checkpoint)."""

    observation: ObservationConfig = field(default_factory=ObservationConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    seed: int = 0
    # The robot this model drives (core/robot.py). In a YAML file, a path to its contract (relative
    # to the file); stored inline in checkpoints. Its joints and sensors are the observation's.
    robot: RobotContract | None = None

    def validate(self, where: str) -> None:
        self.observation.validate(f"{where}.observation")
        self.model.validate(f"{where}.model")
        self.loss.validate(f"{where}.loss")
        if self.robot is not None:
            check_observation(self.observation, self.robot, where)

    def with_robot(self, robot: RobotContract) -> SageConfig:
        """This model for ``robot``: its contract, and the observation keys the contract owns."""
        observation = dataclasses.replace(self.observation, **observation_values(robot))
        return dataclasses.replace(self, observation=observation, robot=robot)

    def robot_contract(self) -> RobotContract:
        """The robot contract (``robot``), or the one its observation implies on the default topics."""
        return self.robot if self.robot is not None else implied_robot(self.observation)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> SageConfig:
        """From plain data; with a ``robot`` mapping the observation takes the contract's keys."""
        if isinstance(data, dict) and isinstance(data.get("robot"), dict):
            robot = from_dict(RobotContract, data["robot"], f"{source}: robot")
            observation = data.get("observation", {})
            if isinstance(observation, dict):
                data = {**data, "observation": observation_from_robot(observation, robot, source)}
        return from_dict(cls, data, source)

    @classmethod
    def from_yaml(cls, path: str | Path) -> SageConfig:
        """From a model YAML file; ``robot: <contract file>`` is read (relative to this file)."""
        data = read_yaml(path)
        if isinstance(data, dict) and isinstance(data.get("robot"), str):
            robot_path = Path(path).parent / data["robot"]
            try:
                robot = load_robot(robot_path)
            except ConfigError as exc:
                raise ConfigError(f"{path}: robot: {exc}") from None
            data = {**data, "robot": dataclasses.asdict(robot)}
        elif isinstance(data, dict) and isinstance(data.get("robot"), dict):  # written inline
            data = {**data, "robot": dataclasses.asdict(robot_from_mapping(data["robot"], path))}
        return cls.from_dict(data if data is not None else {}, str(path))


