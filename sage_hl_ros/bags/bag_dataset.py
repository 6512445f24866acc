"""Recorded rosbag2 bags -> aligned training sequences, streamed episode by episode. No rclpy.

What a sample is
    Each episode (between ``/sage/episode`` markers; the whole bag when there are none) is laid on
    a grid at ``rate_hz`` (the H rate) starting at its start marker. At every grid time ``t`` each
    modality holds its latest sample with header stamp ``<= t`` (zero-order hold, ``align.hold``);
    one older than ``max_age_s.<modality>`` is missing and masked, as at runtime. The action of a
    step is K absolute joint targets: the teacher label (``/teacher/joint_command``) or executed
    command held at ``t + <delay> + k * action_chunk_dt_s`` (k < K). A step is usable when it has
    an action and the ``require``-d modalities; a sample is T consecutive usable steps (grid
    starts at multiples of ``sequence_stride``), given to the model as a ``SequenceBatch`` (B = 1;
    the next step of a sequence carries the next-step proprioception).

Time
    Header stamps for stamped types, bag receive time for unstamped ones (multiarrays, markers),
    so both must be on one clock: record with the node clock (``use_sim_time`` in simulation). A
    median header-vs-receive offset above ``max_clock_offset_s`` is an error, not silent garbage.
    Executed commands are held ``command_delay_s`` after the grid time (default half an H period:
    the command the robot issued in response to that observation, which is received a little
    later); teacher labels ``teacher_delay_s`` after it (default 0: a teacher stamps its label
    with the stamp of the observation it labels). Labels stamped after the episode end are not
    used (the end may be followed by a reset motion); the last label is held instead.

Streaming and memory
    Per bag, one reader pass in receive order decodes the small streams (joint states, commands,
    teacher, tactile, audio) and reads only the header stamps of images (12 bytes, no pixel
    decode) for the episodes asked for; an episode is aligned when the pass has gone
    ``latency_slack_s`` past its end. Images are then read for that episode's window by a second
    reader and decoded only if some emitted step uses them, and released as soon as the last such
    step is emitted. Resident memory is bounded, independent of bag size and episode length for
    images, by:

        small arrays of the episode(s) whose window is open (usually one; none of them images)
        + decoded frames held per image stream <= 2 + ceil(skew_s * rate_hz)
          (skew_s = the difference in receive latency between camera and depth; peak in
          ``stats["peak_held_frames"]``)
        + T prepared steps (one SequenceBatch)
        + the two readers' current storage chunk (rosbags holds a 1 MiB MCAP chunk about three
          times while splitting it; 3-5 MB measured by tracemalloc for 60 kB frames)

    Without episode markers the whole bag is one episode, so the small arrays grow with the bag
    (about 120 B per joint-state message for 7 joints); images still do not.

Errors
    Each bag is checked once before it is first read (``verify.require_intact``: MCAP chunk CRCs
    and summary, sqlite3 ``quick_check``). A bag that fails it or cannot be opened (truncated,
    missing files, no metadata.yaml) raises ``BagError`` naming the storage file and the problem;
    a message that cannot be decoded raises one naming the bag, the topic and the message (its
    index on the topic, counted from the start of the bag, and its receive time). With ``skip_bad_messages`` bad
    messages are skipped and counted per topic and reason (``skipped_counts()``); a skipped
    message leaves the previous one held, like a rejected message at runtime.
"""


from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.config import MODALITIES, SENSORS, ConfigError, ObservationConfig
from ..core.observation import Observation, ObservationBatch, ObservationSchema
from ..core.robot import RobotContract, implied_robot
from ..core.system import SequenceBatch
from .align import NS, Held, audio_windows, grid_times, hold, seconds_to_ns
from .dataset_config import DatasetConfig, MaxAgeConfig, load_dataset_config
from .decode import (
    STAMPED_TYPES,
    BagError,
    DecodeError,
    cdr_header_stamp_ns,
    classify,
    command_positions,
    compressed_image_to_rgb,
    depth_to_meters,
    deserialize,
    image_to_rgb,
    joint_state_to_arrays,
    multiarray_to_numpy,
    trajectory_chunk,
)
from .layout import expand_bag_paths
from .normalizer_stats import _stat_rows, _StatsAccumulator
from .splits import EpisodeInfo, _check_split, assign_splits
from .verify import read_failure, require_intact

__all__ = ["AlignedStep", "BagDataset", "concat_sequences"]

_IMAGE = "sensor_msgs/msg/Image"
_COMPRESSED = "sensor_msgs/msg/CompressedImage"
_F32 = "std_msgs/msg/Float32MultiArray"
_F64 = "std_msgs/msg/Float64MultiArray"
_JOINT_STATE = "sensor_msgs/msg/JointState"
_TRAJECTORY = "trajectory_msgs/msg/JointTrajectory"
_STRING = "std_msgs/msg/String"
_LABEL_TYPES = frozenset({_F64, _JOINT_STATE, _TRAJECTORY})

# Topic role -> accepted message types.
ROLE_TYPES: dict[str, frozenset[str]] = {
    "camera": frozenset({_IMAGE}),
    "camera_compressed": frozenset({_COMPRESSED}),
    "depth": frozenset({_IMAGE}),
    "audio": frozenset({_F32}),
    "tactile": frozenset({_F32}),
    "joint_states": frozenset({_JOINT_STATE}),
    "commands": _LABEL_TYPES,
    "joint_command": _LABEL_TYPES,
    "joint_trajectory": _LABEL_TYPES,
    "gripper": frozenset({_F64}),
    "teacher": _LABEL_TYPES,
    "teacher_chunk": frozenset({_TRAJECTORY}),
    "episode": frozenset({_STRING}),
}
_IMAGE_ROLES = ("camera", "camera_compressed", "depth")
_VIEW_TYPES = frozenset({_IMAGE, _COMPRESSED})  # a further camera: raw or compressed, as recorded


def _view_role(k: int) -> str:
    """Topic role of camera view ``k`` >= 1 (``topics.cameras[k - 1]``)."""
    return f"camera_{k}"
# A sensor's roles (named as the sensor, plus the compressed camera) are read only where
# observation.sensors declares it.
_ROLE_SENSOR = {"camera_compressed": "camera"}
_COMMAND_ROLES = ("commands", "joint_command", "joint_trajectory")  # executed commands, in priority order
_SMALL_ROLES = ("joint_states", "tactile", "audio", "teacher", "teacher_chunk", *_COMMAND_ROLES, "gripper")
SOURCE_NONE, SOURCE_COMMAND, SOURCE_TEACHER, SOURCE_TEACHER_CHUNK = 0, 1, 2, 3

# ============================================================================ per-episode data


class _Stream:
    """Samples of one small stream inside one episode window (lists while reading)."""

    __slots__ = ("stamps", "values", "extra", "msgtype")

    def __init__(self):
        self.stamps: list[int] = []
        self.values: list[np.ndarray] = []
        self.extra: list[np.ndarray] = []
        self.msgtype = ""


class _ImageStream:
    __slots__ = ("stamps", "keys", "index")

    def __init__(self):
        self.stamps: list[int] = []  # effective stamp (header, or receive time if unstamped)
        self.keys: list[tuple[int, int]] = []  # (receive ns, raw header stamp ns): identifies the message
        self.index: list[int] = []  # message index on its topic from the start of the bag


class _Buffers:
    def __init__(self, ep: EpisodeInfo, win_start: int, win_stop: int, image_roles: tuple[str, ...]):
        self.ep = ep
        self.win_start, self.win_stop = win_start, win_stop
        self.small = {r: _Stream() for r in _SMALL_ROLES}
        self.images = {r: _ImageStream() for r in image_roles}
        self.offsets: dict[str, list[int]] = {}  # topic -> receive - header stamp (clock check)
        self.messages: Counter = Counter()


@dataclass
class _Plan:
    """An aligned episode: what every grid step holds, which steps are used, which images to decode."""

    ep: EpisodeInfo
    grid: np.ndarray  # (G,) int64 ns
    held: dict[str, Held]  # modality -> hold result
    joint_position: np.ndarray  # (G, J) float64 (zeros where missing)
    joint_velocity: np.ndarray
    tactile: np.ndarray  # (G, taxels) float32
    audio: np.ndarray  # flat float32 samples of the episode window
    audio_range: tuple[np.ndarray, np.ndarray]  # per step [start, end)
    image_role: dict[str, str]  # "visual"/"depth" -> topic role used
    image_keys: dict[str, list]  # modality -> per step (receive ns, raw stamp) or None
    image_index: dict[tuple, int]  # (role, receive ns, raw stamp) -> message index on the topic
    image_stamp: dict[str, np.ndarray]  # modality -> per step stamp (ns) of the held image
    action: np.ndarray  # (G, K, J) float32 absolute targets
    source: np.ndarray  # (G,) int8: 0 none, 1 command, 2 teacher label, 3 teacher chunk
    usable: np.ndarray  # (G,) bool
    starts: np.ndarray  # sequence start steps
    used: np.ndarray  # sorted steps that belong to some sequence
    win_start: int
    win_stop: int


@dataclass
class AlignedStep:
    """One used step of an episode (``BagDataset.iter_steps``)."""

    ep: EpisodeInfo
    step: int  # grid step in the episode
    time_ns: int  # its grid time
    obs: ObservationBatch  # prepared, B = 1
    action: np.ndarray  # (K, J) float32 absolute targets
    source: int  # SOURCE_COMMAND, SOURCE_TEACHER or SOURCE_TEACHER_CHUNK


# ============================================================================ dataset


class BagDataset:
    """Training sequences from one or many rosbag2 bags (see the module docstring).

    ``iter_sequences``/``batches`` stream; ``episodes()`` lists episodes (reads only the markers);
    ``normalizer_stats``/``normalizer_arrays`` read only the small streams (no image decoding).
    Bags are processed in the given order, episodes in time order.
    """

    def __init__(self, bag_paths: str | Path | Iterable[str | Path], obs_cfg: ObservationConfig,
                 cfg: DatasetConfig | None = None, robot: RobotContract | None = None,
                 shard: tuple[int, int] | None = None):
        self.bag_paths = expand_bag_paths(bag_paths)
        # (rank, world): this reader's share of the train split, episode k (in bag and time order) for
        # rank k % world; the val split is whole (data-parallel training: training.distributed).
        if shard is not None and not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
            raise ValueError(f"shard must be (rank, world) with 0 <= rank < world, got {shard}")
        self.shard = shard
        self.obs_cfg = obs_cfg
        cfg = cfg if cfg is not None else load_dataset_config()
        # Topics not set in the dataset config are the robot contract's (the model's, or the one its
        # observation implies: the default topics).
        robot = robot if robot is not None else implied_robot(obs_cfg)
        self.cfg = dataclasses.replace(cfg, topics=cfg.topics.for_robot(robot))
        self.schema = ObservationSchema(obs_cfg)
        absent = [m for m in self.cfg.require if m not in obs_cfg.modalities]
        if absent:
            raise ConfigError(f"dataset.require: {absent} not among the model's sensors "
                              f"(observation.sensors {obs_cfg.sensors}); a step cannot require them")
        # Topics of sensors the robot does not declare are never read (not even decoded).
        self._roles = [r for r in ROLE_TYPES
                       if _ROLE_SENSOR.get(r, r) not in SENSORS or _ROLE_SENSOR.get(r, r) in obs_cfg.sensors]
        # Camera views 2..N (observation.num_cameras), where the camera is declared.
        self._views = [_view_role(k) for k in range(1, obs_cfg.num_cameras)] if "camera" in obs_cfg.sensors else []
        missing = [v for v in self._views if not self.cfg.topics.topic(v)]
        if missing:
            raise ConfigError(f"dataset.topics.cameras: the model takes {obs_cfg.num_cameras} cameras, but "
                              f"{len(self.cfg.topics.cameras or [])} further camera topics are named "
                              f"({self.cfg.topics.cameras}); the robot contract's cameras[1:] fill them in")
        self._roles += self._views
        self._image_roles = (*_IMAGE_ROLES, *self._views)
        self._role_types = {**ROLE_TYPES, **dict.fromkeys(self._views, _VIEW_TYPES)}
        # A gripper commanded on its own topic: executed commands name the other joints only.
        gripper = robot.gripper
        self._gripper_col = obs_cfg.joint_names.index(gripper.joint) if gripper is not None else -1
        self._command_joints = [n for n in obs_cfg.joint_names if gripper is None or n != gripper.joint]
        self._episodes: dict[str, list[EpisodeInfo]] | None = None
        self._skipped: dict[tuple[str, str], Counter] = {}  # (bag, topic) -> reason counts
        self._seen_bad: set[tuple[str, str, int, int]] = set()
        self.stats: Counter = Counter()  # notes: unstamped, trailing_bytes, invalid_markers, peak_held_frames...
        self._typestore = None
        self._verified: set[Path] = set()

    # ------------------------------------------------------------------ public API
    def episodes(self) -> list[EpisodeInfo]:
        """All episodes of all bags, with their split. Opens each bag once and reads only markers."""
        if self._episodes is None:
            found = {str(b): self._scan_episodes(b) for b in self.bag_paths}
            self._assign_splits([e for eps in found.values() for e in eps])
            self._episodes = found
            if self.shard is not None:
                rank, world = self.shard
                train = [e for eps in found.values() for e in eps if e.split == "train"]
                self._shard_ids = {(e.bag, e.index) for k, e in enumerate(train) if k % world == rank}
        return [e for eps in self._episodes.values() for e in eps]

    def split_ids(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {"train": [], "val": [], "excluded": []}
        for e in self.episodes():
            out[e.split].append(e.id)
        return out

    def iter_steps(self, split: str = "all") -> Iterator[AlignedStep]:
        """The steps sequences are made of, one by one, episode by episode in time order (each step
        once, however many sequences share it): its prepared observation (B = 1) and its K
        targets with their source. For exporters (``lerobot_export``); images are decoded and
        released as for ``iter_sequences``."""
        _check_split(split)
        for bag in self.bag_paths:
            image_reader = None
            try:
                for plan in self._iter_plans(bag, split):
                    if plan.used.size == 0:
                        continue
                    if image_reader is None:
                        image_reader = self._open(bag)
                    for g, batch in self._steps(image_reader, bag, plan):
                        yield AlignedStep(plan.ep, g, int(plan.grid[g]), batch, plan.action[g], int(plan.source[g]))
            finally:
                if image_reader is not None:
                    image_reader.close()

    def iter_sequences(self, split: str = "train") -> Iterator[SequenceBatch]:
        """B = 1 sequences of the split ("train", "val" or "all"), episode by episode, in time order."""
        for _ep, _start, seq in self._iter_samples(split):
            yield seq

    def batches(self, split: str = "train", batch_size: int = 32, drop_last: bool = False,
                shuffle_buffer: int = 0, seed: int = 0) -> Iterator[SequenceBatch]:
        """Concatenate ``batch_size`` sequences into one SequenceBatch (obs index ``b * T + t``).

        ``shuffle_buffer`` > 0 draws each sequence at random from a buffer of that many (memory:
        buffer x T prepared steps); 0 keeps stream order.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        rng = np.random.default_rng(seed)
        pending: list[SequenceBatch] = []
        buffer: list[SequenceBatch] = []

        def source() -> Iterator[SequenceBatch]:
            for seq in self.iter_sequences(split):
                if shuffle_buffer <= 0:
                    yield seq
                    continue
                buffer.append(seq)
                if len(buffer) >= shuffle_buffer:
                    i = int(rng.integers(len(buffer)))
                    buffer[i], buffer[-1] = buffer[-1], buffer[i]
                    yield buffer.pop()
            while buffer:
                i = int(rng.integers(len(buffer)))
                buffer[i], buffer[-1] = buffer[-1], buffer[i]
                yield buffer.pop()

        for seq in source():
            pending.append(seq)
            if len(pending) == batch_size:
                yield concat_sequences(pending)
                pending = []
        if pending and not drop_last:
            yield concat_sequences(pending)

    def normalizer_stats(self, split: str = "train") -> dict[str, dict[str, Any]]:
        """Streaming count/mean/std/min/max over the steps used by the split's sequences.

        ``joint_position``/``joint_velocity`` (steps with proprioception), ``tactile`` (steps
        with tactile), ``action`` (absolute targets, every chunk entry) and ``action_delta``
        (target - position, for a model with ``action_mode: delta``). std is the population std,
        as ``Normalizer.fit`` computes it.
        """
        acc = _StatsAccumulator(self.obs_cfg.num_joints, self.obs_cfg.tactile_taxels)
        for plan in self._iter_plans_all(split):
            acc.add(plan)
        return acc.to_json()

    def normalizer_arrays(self, split: str = "train") -> dict[str, np.ndarray]:
        """The arrays ``SageHL.fit_normalizer`` takes, from the split's used steps (no images read):
        ``joint_position`` (N, J), ``joint_velocity`` (N, J), ``tactile`` (M, taxels; only steps
        where tactile was present), ``targets`` (N, K, J) absolute."""
        parts: dict[str, list[np.ndarray]] = {"joint_position": [], "joint_velocity": [], "tactile": [],
                                              "targets": []}
        for plan in self._iter_plans_all(split):
            rows = _stat_rows(plan)
            parts["joint_position"].append(plan.joint_position[rows])
            parts["joint_velocity"].append(plan.joint_velocity[rows])
            parts["targets"].append(plan.action[rows])
            parts["tactile"].append(plan.tactile[plan.used[plan.held["tactile"].valid[plan.used]]])
        j, x, k = self.obs_cfg.num_joints, self.obs_cfg.tactile_taxels, self.cfg.action_chunk
        empty = {"joint_position": (0, j), "joint_velocity": (0, j), "tactile": (0, x), "targets": (0, k, j)}
        return {name: (np.concatenate(v).astype(np.float32) if v else np.zeros(empty[name], np.float32))
                for name, v in parts.items()}

    def fit_normalizer(self, model, split: str = "train") -> dict[str, int]:
        """Fit ``model``'s normaliser from the split; tactile stays identity if none was recorded."""
        arrays = self.normalizer_arrays(split)
        if arrays["joint_position"].shape[0] == 0:
            raise ValueError(f"no usable steps in split {split!r} to fit the normaliser on")
        tactile = arrays["tactile"]
        no_tactile = tactile.shape[0] == 0
        if no_tactile:
            tactile = np.zeros((1, self.obs_cfg.tactile_taxels), np.float32)
        t = {k: torch.from_numpy(v) for k, v in arrays.items()}
        model.fit_normalizer(t["joint_position"], t["joint_velocity"], torch.from_numpy(tactile), t["targets"])
        if no_tactile:
            n = model.normalizer
            n.tactile_mean.zero_()
            n.tactile_std.fill_(1.0)
            n.tactile_min.fill_(-math.inf)
            n.tactile_max.fill_(math.inf)
        return {k: int(v.shape[0]) for k, v in arrays.items()}

    def skipped_counts(self) -> dict[str, dict[str, int]]:
        """Bad messages skipped (``skip_bad_messages``): ``{"<bag> <topic>": {reason: count}}``."""
        return {f"{bag} {topic}": dict(c) for (bag, topic), c in self._skipped.items()}

    @property
    def skipped_total(self) -> int:
        return sum(sum(c.values()) for c in self._skipped.values())

    # ------------------------------------------------------------------ bag access
    def _typestore_default(self):
        if self._typestore is None:
            from rosbags.typesys import Stores, get_typestore

            # Bags written by Humble's sqlite3 plugin carry no message definitions.
            self._typestore = get_typestore(Stores.ROS2_HUMBLE)
        return self._typestore

    def _open(self, bag: Path):
        from rosbags.highlevel import AnyReader

        if bag not in self._verified:  # once per bag: a damaged chunk is an error naming its file
            require_intact(bag)
            self._verified.add(bag)
        try:
            reader = AnyReader([Path(bag)], default_typestore=self._typestore_default())
            reader.open()
        except Exception as exc:  # AnyReaderError, ReaderError, OSError, sqlite errors...
            raise read_failure(bag, exc) from None
        return reader

    def _connections(self, reader, bag: Path) -> dict[str, list]:
        topics = self.cfg.topics
        by_topic = {topics.topic(r): r for r in self._roles if topics.topic(r)}
        out: dict[str, list] = {r: [] for r in self._role_types}
        for conn in reader.connections:
            role = by_topic.get(conn.topic)
            if role is None:
                continue
            types = self._role_types[role]
            if conn.msgtype not in types:
                key = f"cameras[{int(role[7:]) - 1}]" if role in self._views else role
                raise BagError(bag, f"has type {conn.msgtype}, expected {' or '.join(sorted(types))} "
                                    f"(dataset.topics.{key})", topic=conn.topic)
            out[role].append(conn)
        return out

    def _messages(self, reader, bag: Path, conns: list, start: int | None = None,
                  stop: int | None = None) -> Iterator[tuple[Any, int, bytes]]:
        """Reader messages; a storage error (bad chunk, truncated file) becomes a BagError naming
        the last message read."""
        if not conns:
            return
        it = reader.messages(connections=conns, start=start, stop=stop)
        last = (None, None)
        while True:
            try:
                conn, ts, raw = next(it)
            except StopIteration:
                return
            except Exception as exc:
                topic, ts_last = last
                where = f"after the message at t={ts_last} ns" if ts_last is not None else "at the first message"
                found = read_failure(bag, exc)
                raise BagError(found.bag, f"cannot read {where}: {found.problem}", topic=topic) from None
            last = (conn.topic, ts)
            yield conn, ts, raw

    def _bad(self, bag: Path, topic: str, index: int, ts: int, problem: str) -> None:
        """A message failed to decode: raise, or count it once (windows of episodes may overlap)."""
        reason = classify(problem)
        if not self.cfg.skip_bad_messages:
            raise BagError(bag, problem + " (set dataset.skip_bad_messages: true to skip such messages)",
                           topic=topic, index=index, timestamp_ns=ts, reason=reason)
        key = (str(bag), topic, index, ts)
        if key not in self._seen_bad:
            self._seen_bad.add(key)
            self._skipped.setdefault((str(bag), topic), Counter())[reason] += 1

    def _decode(self, reader, bag: Path, conn, index: int, ts: int, raw: bytes) -> Any:
        """Deserialized message, or None if it was bad and is skipped."""
        try:
            msg, trailing = deserialize(reader.typestore, raw, conn.msgtype)
        except DecodeError as exc:
            self._bad(bag, conn.topic, index, ts, str(exc))
            return None
        if trailing:
            self.stats["trailing_bytes"] += 1
        return msg

    # ------------------------------------------------------------------ episodes and split
    def _scan_episodes(self, bag: Path) -> list[EpisodeInfo]:
        from .episodes import EpisodeTracker

        reader = self._open(bag)
        try:
            conns = self._connections(reader, bag)
            if not reader.message_count:
                self.stats["empty_bags"] += 1
                return []
            bag_start, bag_end = int(reader.start_time), int(reader.end_time) - 1
            tracker = EpisodeTracker()
            for i, (conn, ts, raw) in enumerate(self._messages(reader, bag, conns["episode"])):
                msg = self._decode(reader, bag, conn, i, ts, raw)
                if msg is not None:
                    tracker.feed(ts, msg.data)
        finally:
            reader.close()
        self.stats["invalid_markers"] += tracker.invalid_markers
        self.stats["unmatched_end_markers"] += tracker.unmatched_ends
        if not tracker.episodes:
            return [EpisodeInfo(str(bag), 0, bag_start, bag_end)]
        out = []
        for e in tracker.episodes:
            end, outcome = (e.end_ns, e.outcome) if e.end_ns is not None else (bag_end, "unfinished")
            out.append(EpisodeInfo(str(bag), e.index, e.start_ns, max(end, e.start_ns), e.task, outcome))
        return out

    def _assign_splits(self, eps: list[EpisodeInfo]) -> None:
        grid_ns = seconds_to_ns(1.0 / self.cfg.rate_hz)
        for e in eps:
            e.steps = (e.end_ns - e.start_ns) // grid_ns + 1
        assign_splits(eps, self.cfg.val_fraction, self.cfg.seed, self.cfg.exclude_outcomes)

    # ------------------------------------------------------------------ pass 1: small streams
    def _iter_plans(self, bag: Path, split: str) -> Iterator[_Plan]:
        """Aligned plans of ``bag``'s episodes in ``split``, in one receive-ordered pass."""
        self.episodes()
        wanted = [e for e in self._episodes[str(bag)] if split == "all" and e.split != "excluded" or e.split == split]
        if self.shard is not None:
            wanted = [e for e in wanted if e.split != "train" or (e.bag, e.index) in self._shard_ids]
        if not wanted:
            return
        cfg = self.cfg
        lookback = seconds_to_ns(max(getattr(cfg.max_age_s, f.name) for f in dataclasses.fields(MaxAgeConfig)))
        slack = seconds_to_ns(cfg.latency_slack_s)
        windows = sorted(((e.start_ns - lookback, e.end_ns + slack + 1, e) for e in wanted), key=lambda w: w[0])
        reader = self._open(bag)
        try:
            conns = self._connections(reader, bag)
            role_of = {c.id: r for r in (*_SMALL_ROLES, *self._image_roles) for c in conns[r]}
            read = [c for r in (*_SMALL_ROLES, *self._image_roles) for c in conns[r]]
            counters: Counter = Counter()  # topic -> messages read so far (index from bag start)
            active: list[_Buffers] = []
            nxt = 0
            for conn, ts, raw in self._messages(reader, bag, read):
                index = counters[conn.topic]
                counters[conn.topic] += 1
                while active and ts >= active[0].win_stop:
                    yield self._plan(bag, active.pop(0))
                while nxt < len(windows) and ts >= windows[nxt][0]:
                    ws, we, ep = windows[nxt]
                    active.append(_Buffers(ep, ws, we, self._image_roles))
                    active.sort(key=lambda b: b.win_stop)
                    nxt += 1
                inside = [b for b in active if b.win_start <= ts < b.win_stop]
                if not inside:
                    if nxt >= len(windows) and not active:
                        break  # past the last window
                    continue
                self._take(reader, bag, role_of[conn.id], conn, index, ts, raw, inside)
            while nxt < len(windows):  # windows starting after the last message
                active.append(_Buffers(windows[nxt][2], windows[nxt][0], windows[nxt][1], self._image_roles))
                nxt += 1
            active.sort(key=lambda b: b.win_stop)
            for buf in active:
                yield self._plan(bag, buf)
        finally:
            reader.close()

    def _take(self, reader, bag: Path, role: str, conn, index: int, ts: int, raw: bytes,
              bufs: list[_Buffers]) -> None:
        joints = self.obs_cfg.joint_names
        if role in self._image_roles:
            try:
                raw_stamp = cdr_header_stamp_ns(raw)
            except DecodeError as exc:
                self._bad(bag, conn.topic, index, ts, str(exc))
                return
            stamp = raw_stamp or ts
            if not raw_stamp:
                self.stats["unstamped"] += 1
            for b in bufs:
                s = b.images[role]
                s.stamps.append(stamp)
                s.keys.append((ts, raw_stamp))
                s.index.append(index)
                b.messages[role] += 1
                if raw_stamp:
                    b.offsets.setdefault(conn.topic, []).append(ts - raw_stamp)
            return
        msg = self._decode(reader, bag, conn, index, ts, raw)
        if msg is None:
            return
        try:
            if role == "joint_states":
                out = joint_state_to_arrays(msg, joints, self.obs_cfg.input_ranges)
                value, extra = (None, None) if out is None else out
            elif role == "tactile":
                value = multiarray_to_numpy(msg, expected_size=self.obs_cfg.tactile_taxels).astype(np.float32)
                extra = None
            elif role == "audio":
                value = multiarray_to_numpy(msg).astype(np.float32)
                if value.size == 0:
                    raise DecodeError("empty audio frame (expected samples)")
                extra = None
            elif role == "teacher_chunk":
                value, extra = trajectory_chunk(msg, joints), None
            elif role == "gripper":
                value, extra = multiarray_to_numpy(msg, expected_size=1).astype(np.float64), None
                if not np.isfinite(value).all():
                    raise DecodeError("non-finite gripper command")
            elif role in _COMMAND_ROLES and self._gripper_col >= 0:  # the arm's joints; the gripper's column follows
                arm = command_positions(msg, conn.msgtype, self._command_joints, self.obs_cfg.input_ranges)
                value, extra = (None if arm is None else np.insert(arm, self._gripper_col, np.nan)), None
            else:
                value, extra = command_positions(msg, conn.msgtype, joints, self.obs_cfg.input_ranges), None
        except DecodeError as exc:
            self._bad(bag, conn.topic, index, ts, str(exc))
            return
        if value is None:  # a JointState of other joints (e.g. a gripper driver) on the same topic
            self.stats["other_joints_messages"] += 1
            return
        stamp = ts
        if conn.msgtype in STAMPED_TYPES:
            header = int(msg.header.stamp.sec) * NS + int(msg.header.stamp.nanosec)
            if header:
                stamp = header
            else:
                self.stats["unstamped"] += 1
        for b in bufs:
            s = b.small[role]
            s.stamps.append(stamp)
            s.values.append(value)
            if extra is not None:
                s.extra.append(extra)
            s.msgtype = conn.msgtype
            b.messages[role] += 1
            if stamp != ts:
                b.offsets.setdefault(conn.topic, []).append(ts - stamp)

    # ------------------------------------------------------------------ alignment
    def _plan(self, bag: Path, buf: _Buffers) -> _Plan:
        cfg, ocfg, ep = self.cfg, self.obs_cfg, buf.ep
        for topic, offsets in buf.offsets.items():
            med = float(np.median(offsets)) / NS
            if abs(med) > cfg.max_clock_offset_s:
                raise BagError(bag, f"header stamps are {med:.3f} s away from receive times (median, episode "
                                    f"{ep.index}): stamps and bag timestamps are on different clocks "
                                    "(record with the node clock, use_sim_time in simulation); "
                                    f"dataset.max_clock_offset_s is {cfg.max_clock_offset_s}", topic=topic)
        grid = grid_times(ep.start_ns, ep.end_ns, cfg.rate_hz)
        n, j = grid.size, ocfg.num_joints
        age = cfg.max_age_s
        held: dict[str, Held] = {}

        js = buf.small["joint_states"]
        held["proprio"] = h = hold(np.array(js.stamps, np.int64), grid, age.proprio)
        pos = h.take(np.array(js.values).reshape(-1, j))
        vel = h.take(np.array(js.extra).reshape(-1, j))

        tac = buf.small["tactile"]
        held["tactile"] = h = hold(np.array(tac.stamps, np.int64), grid, age.tactile)
        tactile = h.take(np.array(tac.values, np.float32).reshape(-1, ocfg.tactile_taxels)).astype(np.float32)

        au = buf.small["audio"]
        au_stamps = np.array(au.stamps, np.int64)
        held["audio"] = h = hold(au_stamps, grid, age.audio)
        sizes = np.array([v.size for v in au.values], np.int64)
        flat = np.concatenate(au.values) if au.values else np.zeros(0, np.float32)
        a_start, a_end = audio_windows(au_stamps, sizes, np.where(h.valid, h.index, -1),
                                       ocfg.audio_window_samples, age.audio)

        image_role: dict[str, str] = {}
        image_keys: dict[str, list] = {}
        image_index: dict[tuple, int] = {}
        image_stamp: dict[str, np.ndarray] = {}
        cam = "camera" if buf.images["camera"].stamps else "camera_compressed"
        views = [(f"visual:{k}", role) for k, role in enumerate(self._views, start=1)]
        for modality, role in (("visual", cam), ("depth", "depth"), *views):
            s = buf.images[role]
            stamps = np.array(s.stamps, np.int64)
            held[modality] = h = hold(stamps, grid, age.get(modality))
            image_role[modality] = role
            image_keys[modality] = [s.keys[i] if ok else None for i, ok in zip(h.index, h.valid, strict=True)]
            image_stamp[modality] = np.where(h.valid, stamps[np.maximum(h.index, 0)] if stamps.size else 0, 0)
            for key, idx in zip(s.keys, s.index, strict=True):
                image_index[(role, *key)] = idx

        action, source = self._labels(buf, grid, ep)
        usable = source != SOURCE_NONE
        for m in cfg.require:
            usable &= held[m].valid
        t, stride = cfg.sequence_steps, cfg.sequence_stride
        if n >= t:
            ok = np.concatenate([[0], np.cumsum(usable)])
            cand = np.arange(0, n - t + 1, stride)
            starts = cand[(ok[cand + t] - ok[cand]) == t]
        else:
            starts = np.zeros(0, np.int64)
        used = np.unique((starts[:, None] + np.arange(t)[None]).ravel()) if starts.size else np.zeros(0, np.int64)

        counts = {f"messages.{r}": c for r, c in sorted(buf.messages.items())}
        counts.update({"steps": int(n), "labelled_steps": int((source != SOURCE_NONE).sum()),
                       "usable_steps": int(usable.sum()), "sequences": int(starts.size),
                       "used_steps": int(used.size),
                       "teacher_steps": int((source[used] == SOURCE_TEACHER).sum()),
                       "teacher_chunk_steps": int((source[used] == SOURCE_TEACHER_CHUNK).sum()),
                       "command_steps": int((source[used] == SOURCE_COMMAND).sum())})
        for m in MODALITIES:
            counts[f"present.{m}"] = int(held[m].valid[used].sum())
        ep.counts = counts
        ep.steps = int(n)
        return _Plan(ep, grid, held, pos, vel, tactile, flat, (a_start, a_end), image_role, image_keys,
                     image_index, image_stamp, action, source, usable, starts, used, buf.win_start, buf.win_stop)

    def _labels(self, buf: _Buffers, grid: np.ndarray, ep: EpisodeInfo) -> tuple[np.ndarray, np.ndarray]:
        """(G, K, J) absolute targets and (G,) source, teacher preferred (or commands, if not)."""
        cfg, j, k = self.cfg, self.obs_cfg.num_joints, self.cfg.action_chunk
        offsets = np.array([seconds_to_ns(i * cfg.chunk_dt_s) for i in range(k)], np.int64)

        def held_labels(stream: _Stream, delay_s: float, width: int = j) -> tuple[np.ndarray, np.ndarray]:
            stamps = np.array(stream.stamps, np.int64)
            values = np.array(stream.values, np.float64).reshape(-1, width)
            keep = stamps <= ep.end_ns  # nothing after the episode's end (a reset may follow)
            times = (grid[:, None] + seconds_to_ns(delay_s) + offsets[None, :]).ravel()
            h = hold(stamps[keep], times, cfg.max_age_s.action)
            vals = h.take(values[keep]).reshape(grid.size, k, width)
            return vals, h.valid.reshape(grid.size, k).all(1)

        def chunk_labels(stream: _Stream, delay_s: float) -> tuple[np.ndarray, np.ndarray]:
            """The latest chunk stamped <= t + delay (within max_age_s.action), resampled at
            t + delay + k * dt: its first point is the teacher's command for the observation it
            answers (time_from_start is when that command is to be reached), point i the command
            time_from_start[i] - time_from_start[0] later; linear in between. A chunk that does not
            cover all K steps labels nothing there (held labels or commands fill in)."""
            vals, valid = np.zeros((grid.size, k, j)), np.zeros(grid.size, bool)
            if not stream.stamps:
                return vals, valid
            stamps = np.array(stream.stamps, np.int64)
            keep = np.flatnonzero(stamps <= ep.end_ns)
            query = grid + seconds_to_ns(delay_s)
            h = hold(stamps[keep], query, cfg.max_age_s.action)
            for g in np.flatnonzero(h.valid):
                m = keep[h.index[g]]
                times, pos = stream.values[m]
                at = times[0] + (query[g] + offsets - stamps[m]) / NS
                if at[-1] > times[-1] + 1e-9:
                    continue
                vals[g] = np.stack([np.interp(at, times, pos[:, c]) for c in range(j)], axis=1)
                valid[g] = True
            return vals, valid

        chunk = chunk_labels(buf.small["teacher_chunk"], cfg.teacher_delay_s)
        teacher = held_labels(buf.small["teacher"], cfg.teacher_delay_s)
        command_role = next((r for r in _COMMAND_ROLES if buf.small[r].stamps), _COMMAND_ROLES[0])
        command = held_labels(buf.small[command_role], cfg.command_delay_s)
        if self._gripper_col >= 0:  # the gripper's executed command, held the same way, fills its column
            vals, valid = held_labels(buf.small["gripper"], cfg.command_delay_s, width=1)
            command[0][:, :, self._gripper_col] = vals[:, :, 0]
            command = (command[0], command[1] & valid)
        teachers = [(chunk, SOURCE_TEACHER_CHUNK), (teacher, SOURCE_TEACHER)]
        order = [*teachers, (command, SOURCE_COMMAND)] if cfg.prefer_teacher else [(command, SOURCE_COMMAND), *teachers]
        action = np.zeros((grid.size, k, j), np.float32)
        source = np.full(grid.size, SOURCE_NONE, np.int8)
        for (vals, valid), src in reversed(order):  # the first choice is written last, over the others
            action[valid] = vals[valid]
            source[valid] = src
        return action, source

    def _iter_plans_all(self, split: str) -> Iterator[_Plan]:
        _check_split(split)
        for bag in self.bag_paths:
            yield from self._iter_plans(bag, split)

    # ------------------------------------------------------------------ pass 2: images -> samples
    def _iter_samples(self, split: str) -> Iterator[tuple[EpisodeInfo, int, SequenceBatch]]:
        _check_split(split)
        for bag in self.bag_paths:
            image_reader = None
            try:
                for plan in self._iter_plans(bag, split):
                    if plan.starts.size == 0:
                        continue
                    if image_reader is None:
                        image_reader = self._open(bag)
                    yield from self._sequences(image_reader, bag, plan)
            finally:
                if image_reader is not None:
                    image_reader.close()

    def _sequences(self, reader, bag: Path, plan: _Plan) -> Iterator[tuple[EpisodeInfo, int, SequenceBatch]]:
        t = self.cfg.sequence_steps
        action = torch.from_numpy(plan.action)
        ready: dict[int, ObservationBatch] = {}
        starts = list(plan.starts)
        si = 0
        for g, batch in self._steps(reader, bag, plan):
            ready[g] = batch
            while si < len(starts) and all(s in ready for s in range(starts[si], starts[si] + t)):
                s = int(starts[si])
                obs = ObservationBatch.cat([ready[x] for x in range(s, s + t)])
                yield plan.ep, s, SequenceBatch(obs=obs, action=action[s:s + t][None].clone(), steps=t)
                si += 1
                keep_from = int(starts[si]) if si < len(starts) else g + 1
                for old in [x for x in ready if x < keep_from]:
                    del ready[old]

    def _steps(self, reader, bag: Path, plan: _Plan) -> Iterator[tuple[int, ObservationBatch]]:
        """Prepared observations of the used steps, in order; images decoded once, when first needed."""
        used = plan.used
        modalities = [m for m in plan.image_keys if any(k is not None for k in (plan.image_keys[m][g] for g in used))]
        last_use: dict[tuple, int] = {}  # (role, receive ns, raw stamp) -> last position in `used`
        for p, g in enumerate(used):
            for m in modalities:
                key = plan.image_keys[m][g]
                if key is not None:
                    last_use[(plan.image_role[m], *key)] = p
        held: dict[tuple, np.ndarray | None] = {}
        released: set[tuple] = set()
        p = 0

        def step_keys(g: int) -> list[tuple]:
            return [(plan.image_role[m], *plan.image_keys[m][g]) for m in modalities
                    if plan.image_keys[m][g] is not None]

        def emit(p: int) -> tuple[int, ObservationBatch]:
            g = int(used[p])
            images = {}
            for m in modalities:
                key = plan.image_keys[m][g]
                images[m] = None if key is None else held.get((plan.image_role[m], *key))
            batch = self._prepare(plan, g, images)
            for key in step_keys(g):
                if last_use.get(key) == p:
                    held.pop(key, None)
                    released.add(key)
            return g, batch

        if last_use:
            conns = self._connections(reader, bag)
            role_of = {c.id: plan.image_role[m] for m in modalities for c in conns[plan.image_role[m]]}
            read = [c for m in modalities for c in conns[plan.image_role[m]]]
            for conn, ts, raw in self._messages(reader, bag, read, plan.win_start, plan.win_stop):
                role = role_of[conn.id]
                try:
                    raw_stamp = cdr_header_stamp_ns(raw)
                except DecodeError:
                    continue  # reported by the first pass
                key = (role, ts, raw_stamp)
                if key not in last_use or key in held or key in released:
                    continue
                held[key] = self._decode_image(reader, bag, conn, role, plan.image_index.get(key, -1), ts, raw)
                self.stats["peak_held_frames"] = max(self.stats["peak_held_frames"], len(held))
                while p < used.size and all(k in held for k in step_keys(int(used[p]))):
                    yield emit(p)
                    p += 1
        while p < used.size:  # anything not found (or no images at all)
            yield emit(p)
            p += 1

    def _decode_image(self, reader, bag: Path, conn, role: str, index: int, ts: int, raw: bytes):
        msg = self._decode(reader, bag, conn, index, ts, raw)
        if msg is None:
            return None
        try:
            if role == "camera" or (role in self._views and conn.msgtype == _IMAGE):
                arr = image_to_rgb(msg)
            elif role == "camera_compressed" or role in self._views:
                arr = compressed_image_to_rgb(msg)
            else:
                arr = depth_to_meters(msg)
            # A view on the (read-only) message bytes; torch wants writable memory.
            return arr if arr.flags.writeable else arr.copy()
        except DecodeError as exc:
            self._bad(bag, conn.topic, index, ts, str(exc))
            return None

    def _prepare(self, plan: _Plan, g: int, images: dict[str, np.ndarray | None]) -> ObservationBatch:
        held = plan.held
        obs = Observation()
        stamps: dict[str, float] = {}
        t_ns = int(plan.grid[g])
        if images.get("visual") is not None:
            obs.image = images["visual"]
            stamps["visual"] = plan.image_stamp["visual"][g] / NS
        if images.get("depth") is not None:
            obs.depth = images["depth"]
            stamps["depth"] = plan.image_stamp["depth"][g] / NS
        obs.extra_views = [images.get(f"visual:{k}") for k in range(1, len(self._views) + 1)]
        for k in range(1, len(self._views) + 1):
            if obs.extra_views[k - 1] is not None:
                stamps[f"visual:{k}"] = plan.image_stamp[f"visual:{k}"][g] / NS
        start, end = plan.audio_range[0][g], plan.audio_range[1][g]
        if held["audio"].valid[g] and end > start:
            obs.audio = plan.audio[start:end]
            stamps["audio"] = (t_ns - held["audio"].age_s[g] * NS) / NS
        if held["tactile"].valid[g]:
            obs.tactile = plan.tactile[g]
            stamps["tactile"] = (t_ns - held["tactile"].age_s[g] * NS) / NS
        if held["proprio"].valid[g]:
            obs.joint_position = plan.joint_position[g]
            obs.joint_velocity = plan.joint_velocity[g]
            stamps["proprio"] = (t_ns - held["proprio"].age_s[g] * NS) / NS
        obs.stamps_s = stamps
        batch, problems = self.schema.prepare(obs)
        for m, why in problems.items():
            if why != "missing":
                self.stats[f"masked_invalid.{m}"] += 1
        return batch


def concat_sequences(seqs: list[SequenceBatch]) -> SequenceBatch:
    """B sequences of the same T -> one SequenceBatch (observations stay in ``b * T + t`` order)."""
    steps = {s.steps for s in seqs}
    if len(steps) != 1:
        raise ValueError(f"cannot batch sequences of different lengths {sorted(steps)}")
    return SequenceBatch(obs=ObservationBatch.cat([s.obs for s in seqs]),
                         action=torch.cat([s.action for s in seqs]), steps=seqs[0].steps)
