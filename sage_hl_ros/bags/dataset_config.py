"""How bags become samples: the ``dataset`` section of ``config/dataset.yaml`` (topics, grid rate,
sequence length, delays, max ages, split) and the observation a model's samples are made for."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.config import MODALITIES, ConfigError, ObservationConfig, SelfValidating, from_dict, load_yaml
from ..core.robot import RobotContract, implied_robot
from .robot_topics import robot_streams

__all__ = ["DatasetConfig", "MaxAgeConfig", "TopicsConfig", "configs_for_model", "load_dataset_config"]


@dataclass
class TopicsConfig(SelfValidating):
    """Topic of each stream; an empty string ignores that stream. The robot's streams default to
    None: the model's robot contract's topics (as recorded in the root namespace), so they are
    named once, in the contract; :meth:`for_robot` fills them in."""

    camera: str | None = None
    camera_compressed: str | None = None  # used where the raw camera is absent
    # The further cameras (views 2..N, the contract's order): Image or CompressedImage topics.
    cameras: list[str] | None = None
    depth: str | None = None
    audio: str | None = None
    tactile: str | None = None
    joint_states: str | None = None
    commands: str | None = None  # executed commands (Float64MultiArray), first choice
    joint_command: str | None = None  # Isaac Sim bridge (JointState), second choice
    joint_trajectory: str | None = None  # third choice (first point)
    # A contract's gripper command (Float64MultiArray, one value): with a gripper the executed
    # commands above carry the arm's joints only, and this stream fills in the gripper's column.
    gripper: str | None = None
    teacher: str = "/teacher/joint_command"
    teacher_chunk: str = "/teacher/joint_trajectory"  # whole teacher chunks (e.g. GR00T's), preferred
    episode: str = "/sage/episode"

    def for_robot(self, robot: RobotContract) -> TopicsConfig:
        """Unset streams from the robot contract, as recorded in the root namespace."""
        streams = robot_streams(robot)
        return dataclasses.replace(self, **{k: v for k, v in streams.items() if getattr(self, k) is None})

    def validate(self, where: str) -> None:
        seen: dict[str, str] = {}
        named = [(f.name, getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "cameras"]
        named += [(f"cameras[{i}]", t) for i, t in enumerate(self.cameras or [])]
        for key, topic in named:
            if topic is not None and not isinstance(topic, str):
                raise ConfigError(f"{where}.{key}: a topic name, got {topic!r}")
            if topic and not topic.startswith("/"):
                raise ConfigError(f"{where}.{key}: topic must start with '/', got {topic!r}")
            if topic and topic in seen:
                raise ConfigError(f"{where}.{key}: topic {topic!r} is already used by {seen[topic]}")
            if topic:
                seen[topic] = key
        if self.cameras is not None and not all(self.cameras):
            raise ConfigError(f"{where}.cameras: every further camera needs its topic, got {self.cameras}")

    def topic(self, role: str) -> str:
        """The topic of a role ('' = not read); ``camera_<k>`` is ``cameras[k - 1]``."""
        if role.startswith("camera_") and role != "camera_compressed":
            k = int(role.removeprefix("camera_"))
            cams = self.cameras or []
            return cams[k - 1] if k <= len(cams) else ""
        return getattr(self, role) or ""


@dataclass
class MaxAgeConfig(SelfValidating):
    """Oldest sample (seconds before a grid time) still used; older ones are missing."""

    visual: float = 0.5
    depth: float = 0.5
    audio: float = 0.5  # also the gap that restarts the audio window
    tactile: float = 0.5
    proprio: float = 0.5
    action: float = 0.5

    def validate(self, where: str) -> None:
        for f in dataclasses.fields(self):
            if not getattr(self, f.name) > 0:
                raise ConfigError(f"{where}.{f.name}: must be > 0, got {getattr(self, f.name)}")

    def get(self, modality: str) -> float:
        return getattr(self, modality.split(":")[0])  # a camera view (visual:<k>) is visual


@dataclass
class DatasetConfig(SelfValidating):
    """How bags become samples (``config/dataset.yaml``, section ``dataset``)."""

    topics: TopicsConfig = field(default_factory=TopicsConfig)
    rate_hz: float = 10.0  # grid rate = H rate
    sequence_steps: int = 2  # T
    sequence_stride: int = 1  # grid steps between sequence starts
    action_chunk: int = 1  # K; must equal the model's action_chunk
    action_chunk_dt_s: float = 0.0  # spacing of chunk targets; 0 = one grid period
    command_delay_s: float = 0.05
    teacher_delay_s: float = 0.0
    max_age_s: MaxAgeConfig = field(default_factory=MaxAgeConfig)
    require: list[str] = field(default_factory=lambda: ["proprio"])  # modalities a usable step must have
    prefer_teacher: bool = True  # teacher labels where present, executed commands elsewhere
    exclude_outcomes: list[str] = field(default_factory=list)  # e.g. [failure]
    val_fraction: float = 0.1
    seed: int = 0
    skip_bad_messages: bool = False
    latency_slack_s: float = 1.0  # how late (receive time) a message stamped inside an episode may arrive
    max_clock_offset_s: float = 5.0
    shard_steps: int = 256  # steps per exported .npz shard

    def validate(self, where: str) -> None:
        self.topics.validate(f"{where}.topics")
        self.max_age_s.validate(f"{where}.max_age_s")
        for key in ("rate_hz", "latency_slack_s", "max_clock_offset_s"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"{where}.{key}: must be > 0, got {getattr(self, key)}")
        for key in ("sequence_steps", "sequence_stride", "action_chunk", "shard_steps"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{where}.{key}: must be >= 1, got {getattr(self, key)}")
        for key in ("action_chunk_dt_s", "command_delay_s", "teacher_delay_s"):
            if not getattr(self, key) >= 0:
                raise ConfigError(f"{where}.{key}: must be >= 0, got {getattr(self, key)}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"{where}.val_fraction: must be in [0, 1), got {self.val_fraction}")
        bad = [m for m in self.require if m not in MODALITIES]
        if bad:
            raise ConfigError(f"{where}.require: choose from {list(MODALITIES)}, got {self.require}")
        if self.shard_steps < self.sequence_steps:
            raise ConfigError(f"{where}.shard_steps: must be >= sequence_steps ({self.sequence_steps}), "
                              f"got {self.shard_steps}")

    @property
    def chunk_dt_s(self) -> float:
        return self.action_chunk_dt_s or 1.0 / self.rate_hz

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> DatasetConfig:
        return from_dict(cls, data, source)

    @classmethod
    def from_yaml(cls, path: str | Path) -> DatasetConfig:
        return load_yaml(cls, path, "dataset")


def load_dataset_config(path: str | Path | None = None) -> DatasetConfig:
    """The ``dataset`` section of ``path`` (default: the package's ``config/dataset.yaml``)."""
    if path is None:
        from ..paths import config_file

        path = config_file("dataset.yaml")
        if not path.is_file():
            return DatasetConfig()
    return DatasetConfig.from_yaml(path)


def _observation_config(config_path: str | Path | None) -> tuple[ObservationConfig, RobotContract]:
    """The observation the samples are made for and its robot: the ``observation`` section of
    ``config_path``, else the model config its top-level ``model_config`` key names (relative to
    the file), else the package's model.yaml; the robot is that model's contract (or implied)."""
    import yaml

    from ..core.config import SageConfig
    from ..paths import config_file

    candidates = [Path(config_path)] if config_path else []
    if config_path:
        try:
            data = yaml.safe_load(Path(config_path).read_text())
        except (OSError, yaml.YAMLError):
            data = None
        if isinstance(data, dict) and data.get("model_config") and "observation" not in data:
            model = Path(config_path).parent / str(data["model_config"])
            if not model.is_file():
                raise ConfigError(f"{config_path}: model_config: {model} does not exist")
            candidates.append(model)
    for path in candidates + [config_file("model.yaml")]:
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            continue
        if not (isinstance(data, dict) and ("observation" in data or "robot" in data)):
            continue
        if "dataset" in data and "observation" in data:  # a dataset file with its own observation section
            obs = load_yaml(ObservationConfig, path, "observation")
            return obs, implied_robot(obs)
        sage = SageConfig.from_yaml(path)
        return sage.observation, sage.robot_contract()
    return ObservationConfig(), implied_robot(ObservationConfig())


def configs_for_model(dataset_config: str | Path | None = None, *, model_config: str | Path | None = None,
                      checkpoint: str | Path | None = None) -> tuple[ObservationConfig, DatasetConfig]:
    """(observation, dataset) configs that make samples for one model: its ``observation``
    section and ``action_chunk`` (from ``checkpoint``'s config.json or the ``model_config`` YAML),
    with the ``dataset`` section of ``dataset_config``. What the sleep trainer does with the model
    it trains, for ``sage-hl-bag convert --checkpoint DIR`` / ``--model-config FILE``."""
    from ..core.checkpoint_files import read_config
    from ..core.config import SageConfig

    if checkpoint is not None:
        sage = read_config(checkpoint)
    elif model_config is not None:
        sage = SageConfig.from_yaml(model_config)
    else:
        raise ValueError("configs_for_model needs a checkpoint or a model config")
    dcfg = load_dataset_config(dataset_config)
    return sage.observation, dataclasses.replace(dcfg, action_chunk=sage.model.action_chunk,
                                                 topics=dcfg.topics.for_robot(sage.robot_contract()))
