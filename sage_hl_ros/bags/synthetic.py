"""Write bags of the synthetic reaching task (``core.synthetic``) with rosbags. Pure: no rclpy.

What a bag holds, per episode (``/sage/episode`` ``start:reach`` (``spec.tasks``) ... ``end:success``), at
``rate_hz`` (the H rate), every stream on the topics ``config/dataset.yaml`` expects:

    /camera/image_raw                        sensor_msgs/Image rgb8 (header stamp = step time)
    /camera/depth/image_raw                  sensor_msgs/Image 32FC1 metres
    /camera_<k>/image_raw                    sensor_msgs/Image rgb8: the further cameras of a model with
                                             observation.num_cameras > 1 (the default contract's topics)
    /audio/frames                            std_msgs/Float32MultiArray, sample_rate / rate_hz samples
                                             of a phase-continuous tone whose pitch encodes the goal depth
    /tactile/array                           std_msgs/Float32MultiArray, taxels (contact near the goal)
    /joint_states                            sensor_msgs/JointState position + finite-difference velocity
    /teacher/joint_command                   sensor_msgs/JointState: the expert's clean target, stamped
                                             with the observation it labels
    /forward_position_controller/commands    std_msgs/Float64MultiArray: the executed command (teacher
                                             + ``command_noise_rad`` noise, DESIGN §7), received
                                             ``command_latency_s`` after the observation

The arm tracks the executed command exactly (the next joint state is the last command). The
world (goal -> joint-goal map) comes from ``task_seed``; episodes (goals, start poses, noise) from
``seed``. Goals are drawn from the ``goal_*`` ranges, so two bag sets with disjoint goal regions
("A" and "B") test forgetting: the same robot and world, different experience.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.config import ObservationConfig
from ..core.synthetic import SyntheticReachTask

NS = 1_000_000_000
TOPICS = {
    "camera": ("/camera/image_raw", "sensor_msgs/msg/Image"),
    "depth": ("/camera/depth/image_raw", "sensor_msgs/msg/Image"),
    "audio": ("/audio/frames", "std_msgs/msg/Float32MultiArray"),
    "tactile": ("/tactile/array", "std_msgs/msg/Float32MultiArray"),
    "joint_states": ("/joint_states", "sensor_msgs/msg/JointState"),
    "teacher": ("/teacher/joint_command", "sensor_msgs/msg/JointState"),
    "commands": ("/forward_position_controller/commands", "std_msgs/msg/Float64MultiArray"),
    "episode": ("/sage/episode", "std_msgs/msg/String"),
}


@dataclass
class SyntheticBagSpec:
    """What to record. Ranges are (low, high); goals are uniform inside them."""

    episodes: int = 20
    steps_per_episode: int = 12
    rate_hz: float = 10.0
    seed: int = 0  # episodes: goals, start poses, sensor noise
    task_seed: int = 0  # the world: goal -> joint-goal map (keep it equal across bag sets)
    goal_u: tuple[float, float] = (-0.7, 0.7)  # blob image position, [-1, 1] is the image width
    goal_v: tuple[float, float] = (-0.7, 0.7)
    goal_depth_m: tuple[float, float] = (0.5, 1.5)
    start_noise_rad: float = 0.3  # start pose = joint goal + N(0, this)
    command_noise_rad: float = 0.0  # executed command = teacher + N(0, this)
    command_latency_s: float = 0.02
    teacher: bool = True  # record teacher labels beside the executed commands
    gap_s: float = 1.0  # idle time between episodes
    start_time_s: float = 1000.0
    storage: str = "mcap"  # or "sqlite3"
    tasks: tuple[str, ...] = ("reach",)  # episode e's start marker names tasks[e % len(tasks)]

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.episodes < 1 or self.steps_per_episode < 2:
            raise ValueError("need at least 1 episode of at least 2 steps")
        for name in ("goal_u", "goal_v", "goal_depth_m"):
            lo, hi = getattr(self, name)
            if not lo <= hi:
                raise ValueError(f"{name}: low {lo} > high {hi}")
        if self.storage not in ("mcap", "sqlite3"):
            raise ValueError(f"storage: 'mcap' or 'sqlite3', got {self.storage!r}")
        if not 0 <= self.command_latency_s < 0.5 / self.rate_hz:
            raise ValueError("command_latency_s must be in [0, half an H period)")
        if not self.tasks or not all(isinstance(t, str) and t and t == t.strip() for t in self.tasks):
            raise ValueError(f"tasks: non-empty names without surrounding spaces, got {self.tasks!r}")


def _typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_HUMBLE)


class _Msgs:
    """Message builders over a rosbags typestore."""

    def __init__(self, ts):
        self.ts = ts
        self.t = ts.types

    def header(self, ns: int):
        return self.t["std_msgs/msg/Header"](stamp=self.t["builtin_interfaces/msg/Time"](sec=ns // NS, nanosec=ns % NS),
                                             frame_id="camera")

    def image(self, ns: int, arr: np.ndarray, encoding: str):
        arr = np.ascontiguousarray(arr)
        h, w = arr.shape[:2]
        return self.t["sensor_msgs/msg/Image"](header=self.header(ns), height=h, width=w, encoding=encoding,
                                               is_bigendian=0, step=arr.nbytes // h,
                                               data=np.frombuffer(arr.tobytes(), np.uint8))

    def f32(self, values: np.ndarray, label: str):
        v = np.ascontiguousarray(values, np.float32)
        dim = self.t["std_msgs/msg/MultiArrayDimension"](label=label, size=v.size, stride=v.size)
        layout = self.t["std_msgs/msg/MultiArrayLayout"](dim=[dim], data_offset=0)
        return self.t["std_msgs/msg/Float32MultiArray"](layout=layout, data=v)

    def f64(self, values: np.ndarray):
        layout = self.t["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
        return self.t["std_msgs/msg/Float64MultiArray"](layout=layout, data=np.asarray(values, np.float64))

    def joint_state(self, ns: int, names: list[str], position: np.ndarray, velocity: np.ndarray | None = None):
        return self.t["sensor_msgs/msg/JointState"](
            header=self.header(ns), name=list(names), position=np.asarray(position, np.float64),
            velocity=np.zeros(0) if velocity is None else np.asarray(velocity, np.float64), effort=np.zeros(0))

    def string(self, text: str):
        return self.t["std_msgs/msg/String"](data=text)


def _uniform(gen: torch.Generator, n: int, lo_hi: tuple[float, float]) -> torch.Tensor:
    lo, hi = lo_hi
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def write_synthetic_bag(path: str | Path, obs_cfg: ObservationConfig, spec: SyntheticBagSpec | None = None) -> Path:
    """Record ``spec.episodes`` expert episodes of the synthetic reaching task into bag ``path``.

    Images are rendered at the observation config's sizes. Returns the bag directory.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer

    spec = spec or SyntheticBagSpec()
    spec.validate()
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path}: already exists")
    path.parent.mkdir(parents=True, exist_ok=True)
    ts = _typestore()
    m = _Msgs(ts)
    task = SyntheticReachTask(obs_cfg, seed=spec.task_seed)
    task.gen.manual_seed(1_000_003 * spec.seed + 17)  # episode randomness from `seed`, world from `task_seed`
    gen = task.gen
    names = list(obs_cfg.joint_names)
    j = obs_cfg.num_joints
    dt_ns = int(round(NS / spec.rate_hz))
    frame = max(1, int(round(obs_cfg.audio_sample_rate_hz / spec.rate_hz)))
    lat_ns = int(round(spec.command_latency_s * NS))
    messages: list[tuple[str, int, object]] = []
    t0 = int(round(spec.start_time_s * NS))
    goal = torch.stack([_uniform(gen, spec.episodes, spec.goal_u), _uniform(gen, spec.episodes, spec.goal_v),
                        _uniform(gen, spec.episodes, spec.goal_depth_m)], 1)
    for e in range(spec.episodes):
        g = goal[e:e + 1]
        joint_goal = task.joint_goal(g)[0]
        pos = joint_goal + torch.randn(j, generator=gen) * spec.start_noise_rad
        prev = pos.clone()
        freq = 300.0 + 400.0 * float(g[0, 2])
        sample = 0
        messages.append(("episode", t0, m.string(f"start:{spec.tasks[e % len(spec.tasks)]}")))
        for k in range(spec.steps_per_episode):
            t = t0 + k * dt_ns
            obs = task.render(g, pos[None])
            views = [(obs.image[0, 3 * v:3 * v + 3].permute(1, 2, 0).numpy() * 255.0).round().clip(0, 255)
                     .astype(np.uint8) for v in range(obs_cfg.num_cameras)]
            image = views[0]
            depth = (obs.depth[0, 0].numpy() * obs_cfg.depth_max_m).astype(np.float32)
            n = np.arange(sample, sample + frame)
            sample += frame
            audio = (0.3 * np.sin(2 * math.pi * freq * n / obs_cfg.audio_sample_rate_hz)
                     + 0.01 * torch.randn(frame, generator=gen).numpy()).astype(np.float32)
            dist2 = float((joint_goal - pos).square().sum())
            contact = math.exp(-dist2 / 0.02)
            tactile = (0.05 * torch.rand(obs_cfg.tactile_taxels, generator=gen)).numpy()
            tactile[: max(1, obs_cfg.tactile_taxels // 4)] += contact
            velocity = ((pos - prev) * spec.rate_hz).numpy()
            target = task.expert_target(g, pos[None])[0]
            executed = target + torch.randn(j, generator=gen) * spec.command_noise_rad
            messages += [
                ("camera", t, m.image(t, image, "rgb8")),
                ("depth", t, m.image(t, depth, "32FC1")),
                ("audio", t, m.f32(audio, "samples")),
                ("tactile", t, m.f32(tactile, "taxels")),
                ("joint_states", t, m.joint_state(t, names, pos.numpy(), velocity)),
                ("commands", t + lat_ns, m.f64(executed.numpy())),
            ]
            messages += [(f"camera_{v}", t, m.image(t, views[v], "rgb8")) for v in range(1, len(views))]
            if spec.teacher:
                messages.append(("teacher", t + lat_ns // 2, m.joint_state(t, names, target.numpy())))
            prev, pos = pos, executed.clone()
        end = t0 + (spec.steps_per_episode - 1) * dt_ns + dt_ns // 2
        messages.append(("episode", end, m.string("end:success")))
        t0 = end + int(round(spec.gap_s * NS))

    plugin = StoragePlugin.MCAP if spec.storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=9, storage_plugin=plugin) as w:
        conns = {}
        for role, t, msg in sorted(messages, key=lambda x: x[1]):
            topic, msgtype = TOPICS[role] if role in TOPICS else (f"/{role}/image_raw", TOPICS["camera"][1])
            if role not in conns:
                conns[role] = w.add_connection(topic, msgtype, typestore=ts)
            w.write(conns[role], t, bytes(ts.serialize_cdr(msg, msgtype)))
    return path


def goal_region(name: str) -> dict[str, tuple[float, float]]:
    """Named goal regions for forgetting studies: "A" (left of the image), "B" (right), "all"."""
    regions = {
        "A": {"goal_u": (-0.7, -0.1)},
        "B": {"goal_u": (0.1, 0.7)},
        "all": {},
    }
    if name not in regions:
        raise ValueError(f"goal region: choose from {sorted(regions)}, got {name!r}")
    return regions[name]
