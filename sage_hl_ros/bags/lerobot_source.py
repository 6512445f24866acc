"""A LeRobotDataset v3.0 folder -> the SequenceBatch stream the sleep trainer takes from bags.

``LeRobotSource`` offers what the trainer uses of ``BagDataset`` (``episodes``, ``split_ids``,
``iter_sequences``, ``normalizer_arrays``), so ``sage-hl-sleep --lerobot DIR`` trains on a LeRobot
dataset (one exported from bags, or any v3.x dataset whose robot the model's contract describes).

Mapping
    grid        every ``fps / dataset.rate_hz``-th frame of an episode (a whole ratio: 30 fps data
                trains a 10 Hz model on frames 0, 3, 6, ...); episodes are never crossed
    proprio     ``observation.state`` columns named as the model's joints (a dataset name may end in
                ``.pos``: ``shoulder_pan.pos`` is joint ``shoulder_pan``; an unnamed state of the same
                width is taken in order); velocities: ``observation.velocity`` where the dataset has
                it, else backward finite differences of the state at the full frame rate (0 at an
                episode's first frame)
    cameras     view k is ``observation.images.<name of the contract's camera k>``, decoded from
                its MP4 (PyAV) and resized by the observation schema; an all-black frame is a
                missing view (what the exporter writes for one); every camera of the model must
                have its video
    action      K targets per step: ``action`` at frame f + k * chunk spacing (``action_chunk_dt_s``,
                default one grid period, in frames), held at the episode's last frame past its end
    split       val by episode hash, as BagDataset (``split_value`` of the folder name and the
                episode index, ``val_fraction``, ``seed``, at least one val episode); an exported
                episode's ``sage/outcome`` honours ``exclude_outcomes``
    absent      depth, audio and tactile are missing (masked) at every step; ``require`` may name
                only proprio and visual

Memory: one data file's numeric columns at a time (LeRobot closes data files at 100 MB; the
numeric columns are a fraction of that), T prepared steps, one decoder per camera.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import pyarrow.parquet as pq
import torch

from ..core.config import MODALITIES, ConfigError, ObservationConfig
from ..core.observation import Observation, ObservationBatch, ObservationSchema
from ..core.robot import RobotContract, implied_robot
from ..core.system import SequenceBatch
from .align import NS
from .dataset_config import DatasetConfig, load_dataset_config
from .lerobot_format import ACTION, EPISODES_DIR, IMAGE_PREFIX, STATE, VELOCITY, feature_names, read_info, read_tasks
from .splits import SPLITS, EpisodeInfo, assign_splits

__all__ = ["LeRobotSource", "lerobot_roots"]

_VISUAL, _PROPRIO = MODALITIES.index("visual"), MODALITIES.index("proprio")


def lerobot_roots(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """Dataset folders from paths (each must hold ``meta/info.json``); order kept, duplicates dropped."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out: list[Path] = []
    for p in map(Path, paths):
        read_info(p)  # a clear error for a folder that is not one
        if p not in out:
            out.append(p)
    if not out:
        raise ValueError("no LeRobot dataset given")
    return out


def _columns(feature: dict[str, Any], key: str, joints: list[str], root: Path) -> np.ndarray:
    """Indices of the model's joints in a feature's columns."""
    names = feature_names(feature)
    width = int(feature["shape"][0])
    if names is None:
        if width != len(joints):
            raise ConfigError(f"{root}: {key} has {width} unnamed columns, the model has {len(joints)} joints "
                              f"{joints}")
        return np.arange(width)
    stripped = [n.removesuffix(".pos") for n in names]
    idx = []
    for j in joints:
        if j in names:
            idx.append(names.index(j))
        elif j in stripped:
            idx.append(stripped.index(j))
        else:
            raise ConfigError(f"{root}: {key} has no column for joint {j!r} (its names: {names}); the robot "
                              "contract's joints must be the dataset's names (a '.pos' suffix may be left off)")
    return np.array(idx)


def _vectors(table, key: str, width: int) -> np.ndarray:
    col = table.column(key).combine_chunks()
    return col.flatten().to_numpy(zero_copy_only=False).reshape(-1, width).astype(np.float32)


@dataclasses.dataclass
class _Episode:
    info: EpisodeInfo
    root: Path
    row: dict[str, Any]  # its meta/episodes row


class _Video:
    """Sequential reader of one camera's MP4 files: the frame at a time, decoding forward (seeking
    back or far ahead only when asked out of order)."""

    def __init__(self):
        self.path: Path | None = None
        self.container = None
        self.frames: Iterator | None = None
        self.pending = None  # a decoded frame later than the last one asked for
        self.time = -math.inf

    def close(self) -> None:
        if self.container is not None:
            self.container.close()
        self.container = self.frames = self.pending = None
        self.path = None

    def _open(self, path: Path, t: float) -> None:
        self.close()
        self.container = av.open(str(path))
        stream = self.container.streams.video[0]
        stream.thread_type = "AUTO"
        if t > 0:
            self.container.seek(int(t / stream.time_base), stream=stream, backward=True, any_frame=False)
        self.frames = self.container.decode(stream)
        self.path, self.time = path, -math.inf

    def frame(self, path: Path, t: float, tol: float) -> np.ndarray | None:
        """RGB (H, W, 3) uint8 of the frame within ``tol`` of ``t`` s, or None if the file has none."""
        if path != self.path or t < self.time - tol or t > self.time + 2.0:
            self._open(path, t)
        while True:
            frame = self.pending
            self.pending = None
            if frame is None:
                frame = next(self.frames, None)
                if frame is None:
                    return None
            ft = float(frame.time)
            self.time = ft
            if ft < t - tol:
                continue
            if ft > t + tol:
                self.pending = frame  # a gap: the next query may want it
                return None
            return frame.to_ndarray(format="rgb24")


class LeRobotSource:
    """Training sequences from LeRobot v3.x dataset folders (see the module docstring)."""

    def __init__(self, roots: str | Path | Iterable[str | Path], obs_cfg: ObservationConfig,
                 cfg: DatasetConfig | None = None, robot: RobotContract | None = None):
        self.roots = lerobot_roots(roots)
        self.bag_paths = self.roots  # what the trainer reports as its data
        self.obs_cfg = obs_cfg
        self.cfg = cfg if cfg is not None else load_dataset_config()
        self.schema = ObservationSchema(obs_cfg)
        robot = robot if robot is not None else implied_robot(obs_cfg)
        o = obs_cfg
        bad = [m for m in self.cfg.require if m not in ("proprio", "visual")]
        if bad:
            raise ConfigError(f"dataset.require: {bad}: a LeRobot dataset has no depth, audio or tactile stream; "
                              "a step can require proprio and visual only")
        self.cameras = [c.name for c in robot.cameras[:o.num_cameras]] if "camera" in o.sensors else []
        self.stats: Counter = Counter()
        self._info: dict[Path, dict[str, Any]] = {}
        self._layout: dict[Path, dict[str, Any]] = {}
        for root in self.roots:
            info = read_info(root)
            feats = info["features"]
            fps = float(info["fps"])
            ratio = fps / self.cfg.rate_hz
            if ratio < 1 - 1e-9 or abs(ratio - round(ratio)) > 1e-6:
                raise ConfigError(f"{root}: fps {fps:g} is not a whole multiple of dataset.rate_hz "
                                  f"{self.cfg.rate_hz:g}; set rate_hz to {fps:g} or a whole divisor of it")
            chunk = self.cfg.chunk_dt_s * fps
            if abs(chunk - round(chunk)) > 1e-6 or round(chunk) < 1:
                raise ConfigError(f"{root}: action_chunk_dt_s {self.cfg.chunk_dt_s:g} s is not a whole number of "
                                  f"frames at {fps:g} fps")
            for key in (STATE, ACTION):
                if key not in feats:
                    raise ConfigError(f"{root}: no {key!r} feature (features: {sorted(feats)})")
            keys = [IMAGE_PREFIX + c for c in self.cameras]
            missing = [k for k in keys if k not in feats]
            if missing:
                videos = sorted(k for k, f in feats.items() if f.get("dtype") == "video")
                raise ConfigError(f"{root}: no video for camera(s) {[k[len(IMAGE_PREFIX):] for k in missing]} "
                                  f"of robot {robot.name!r} (the dataset's videos: {videos}); name the contract's "
                                  "cameras after the dataset's observation.images.<name> keys")
            not_video = [k for k in keys if feats[k].get("dtype") != "video"]
            if not_video:
                raise ConfigError(f"{root}: {not_video} are stored as {feats[not_video[0]].get('dtype')!r}; "
                                  "this reader decodes video features only")
            joints = list(o.joint_names)
            vel = VELOCITY if VELOCITY in feats and int(feats[VELOCITY]["shape"][0]) == int(feats[STATE]["shape"][0]) \
                else None
            self._info[root] = info
            self._layout[root] = {
                "fps": fps, "ratio": int(round(ratio)), "chunk_frames": int(round(chunk)),
                "state": (int(feats[STATE]["shape"][0]), _columns(feats[STATE], STATE, joints, root)),
                "action": (int(feats[ACTION]["shape"][0]), _columns(feats[ACTION], ACTION, joints, root)),
                "velocity": None if vel is None else (int(feats[vel]["shape"][0]),
                                                      _columns(feats[vel], vel, joints, root)),
                "videos": keys, "tasks": read_tasks(root),
            }
        self._episodes: list[_Episode] | None = None
        self._file_key: tuple | None = None
        self._file: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ episodes and split
    def _scan(self) -> list[_Episode]:
        if self._episodes is not None:
            return self._episodes
        out: list[_Episode] = []
        for root in self.roots:
            files = sorted((root / EPISODES_DIR).glob("chunk-*/file-*.parquet"))
            if not files:
                raise ValueError(f"{root}: no {EPISODES_DIR}/chunk-*/file-*.parquet")
            lay = self._layout[root]
            rows = []
            for f in files:
                table = pq.read_table(f, columns=[c for c in pq.read_schema(f).names if not c.startswith("stats/")])
                rows += table.to_pylist()
            for row in sorted(rows, key=lambda r: r["episode_index"]):
                n = int(row["length"])
                tasks = row.get("tasks") or []
                ep = EpisodeInfo(str(root), int(row["episode_index"]), 0, int(round((n - 1) / lay["fps"] * NS)),
                                 task=str(tasks[0]) if tasks else "", outcome=str(row.get("sage/outcome") or ""))
                ep.steps = (n - 1) // lay["ratio"] + 1 if n else 0
                out.append(_Episode(ep, root, row))
        assign_splits([e.info for e in out], self.cfg.val_fraction, self.cfg.seed, self.cfg.exclude_outcomes)
        self._episodes = out
        return out

    def episodes(self) -> list[EpisodeInfo]:
        return [e.info for e in self._scan()]

    def split_ids(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {"train": [], "val": [], "excluded": []}
        for e in self.episodes():
            out[e.split].append(e.id)
        return out

    def skipped_counts(self) -> dict[str, dict[str, int]]:
        return {}

    @property
    def skipped_total(self) -> int:
        return 0

    def _wanted(self, split: str) -> list[_Episode]:
        if split not in (*SPLITS, "all"):
            raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
        return [e for e in self._scan()
                if (split == "all" and e.info.split != "excluded") or e.info.split == split]

    # ------------------------------------------------------------------ numeric data of an episode
    def _data_file(self, root: Path, chunk: int, file: int) -> dict[str, np.ndarray]:
        key = (root, chunk, file)
        if self._file_key != key:
            lay = self._layout[root]
            path = root / self._info[root]["data_path"].format(chunk_index=chunk, file_index=file)
            cols = ["episode_index", "frame_index", STATE, ACTION] + ([VELOCITY] if lay["velocity"] else [])
            try:
                table = pq.read_table(path, columns=cols)
            except (OSError, ValueError) as exc:  # ArrowInvalid is a ValueError
                raise ValueError(f"{path}: {exc}") from None
            self._file = {"episode_index": table.column("episode_index").to_numpy(),
                          "frame_index": table.column("frame_index").to_numpy(),
                          STATE: _vectors(table, STATE, lay["state"][0]),
                          ACTION: _vectors(table, ACTION, lay["action"][0])}
            if lay["velocity"]:
                self._file[VELOCITY] = _vectors(table, VELOCITY, lay["velocity"][0])
            self._file_key = key
        return self._file

    def _plan(self, e: _Episode) -> dict[str, Any]:
        """Grid frames, proprio, targets and sequence starts of one episode."""
        lay, cfg = self._layout[e.root], self.cfg
        d = self._data_file(e.root, int(e.row.get("data/chunk_index", 0)), int(e.row.get("data/file_index", 0)))
        rows = np.flatnonzero(d["episode_index"] == e.info.index)
        rows = rows[np.argsort(d["frame_index"][rows], kind="stable")]
        n = int(e.row["length"])
        if rows.size != n:
            raise ValueError(f"{e.root}: episode {e.info.index} has {rows.size} data rows, its metadata says {n}")
        state = d[STATE][rows][:, lay["state"][1]]
        action = d[ACTION][rows][:, lay["action"][1]]
        if lay["velocity"]:
            vel = d[VELOCITY][rows][:, lay["velocity"][1]]
        else:
            vel = np.zeros_like(state)
            vel[1:] = (state[1:] - state[:-1]) * np.float32(lay["fps"])
        frames = np.arange(0, n, lay["ratio"])
        k = cfg.action_chunk
        ahead = np.minimum(frames[:, None] + lay["chunk_frames"] * np.arange(k)[None], n - 1)
        targets = action[ahead]  # (G, K, J)
        g, t, stride = frames.size, cfg.sequence_steps, cfg.sequence_stride
        starts = np.arange(0, g - t + 1, stride) if g >= t else np.zeros(0, np.int64)
        used = np.unique((starts[:, None] + np.arange(t)[None]).ravel()) if starts.size else np.zeros(0, np.int64)
        e.info.counts = {"steps": int(g), "sequences": int(starts.size), "used_steps": int(used.size)}
        return {"frames": frames, "position": state[frames], "velocity": vel[frames], "targets": targets,
                "starts": starts, "used": used}

    # ------------------------------------------------------------------ public API
    def normalizer_arrays(self, split: str = "train") -> dict[str, np.ndarray]:
        """As ``BagDataset.normalizer_arrays`` (no video decoded); tactile is always empty."""
        parts: dict[str, list[np.ndarray]] = {"joint_position": [], "joint_velocity": [], "targets": []}
        for e in self._wanted(split):
            p = self._plan(e)
            u = p["used"]
            parts["joint_position"].append(p["position"][u])
            parts["joint_velocity"].append(p["velocity"][u])
            parts["targets"].append(p["targets"][u])
        j, k = self.obs_cfg.num_joints, self.cfg.action_chunk
        empty = {"joint_position": (0, j), "joint_velocity": (0, j), "targets": (0, k, j)}
        out = {name: (np.concatenate(v).astype(np.float32) if v else np.zeros(empty[name], np.float32))
               for name, v in parts.items()}
        out["tactile"] = np.zeros((0, self.obs_cfg.tactile_taxels), np.float32)
        return out

    def iter_sequences(self, split: str = "train") -> Iterator[SequenceBatch]:
        """B = 1 sequences of the split, episode by episode."""
        videos = {k: _Video() for k in self._layout[self.roots[0]]["videos"]} if self.cameras else {}
        require_visual = "visual" in self.cfg.require
        try:
            for e in self._wanted(split):
                p = self._plan(e)
                if not p["starts"].size:
                    continue
                lay = self._layout[e.root]
                fps = lay["fps"]
                t = self.cfg.sequence_steps
                action = torch.from_numpy(np.ascontiguousarray(p["targets"], np.float32))
                ready: dict[int, ObservationBatch] = {}
                usable: dict[int, bool] = {}
                starts = list(p["starts"])
                si = 0
                for g in p["used"]:
                    g = int(g)
                    views = []
                    for key in lay["videos"]:
                        path = e.root / self._info[e.root]["video_path"].format(
                            video_key=key, chunk_index=int(e.row[f"videos/{key}/chunk_index"]),
                            file_index=int(e.row[f"videos/{key}/file_index"]))
                        ts = float(e.row[f"videos/{key}/from_timestamp"]) + p["frames"][g] / fps
                        frame = videos[key].frame(path, ts, 0.5 / fps)
                        if frame is None:
                            self.stats["missing_video_frames"] += 1
                        elif not frame.any():
                            frame = None  # black: a view the exporter had no frame for
                        views.append(frame)
                    obs = Observation(image=views[0] if views else None, extra_views=views[1:],
                                      joint_position=p["position"][g], joint_velocity=p["velocity"][g])
                    batch, problems = self.schema.prepare(obs)
                    for m, why in problems.items():
                        if why != "missing":
                            self.stats[f"masked_invalid.{m}"] += 1
                    ready[g] = batch
                    usable[g] = bool(batch.mask[0, _PROPRIO]) and (not require_visual or bool(batch.mask[0, _VISUAL]))
                    while si < len(starts) and all(s in ready for s in range(starts[si], starts[si] + t)):
                        s = int(starts[si])
                        si += 1
                        if all(usable[x] for x in range(s, s + t)):
                            obs_t = ObservationBatch.cat([ready[x] for x in range(s, s + t)])
                            yield SequenceBatch(obs=obs_t, action=action[s:s + t][None].clone(), steps=t)
                        else:
                            self.stats["sequences_without_required"] += 1
                        keep_from = int(starts[si]) if si < len(starts) else g + 1
                        for old in [x for x in ready if x < keep_from]:
                            del ready[old], usable[old]
        finally:
            for v in videos.values():
                v.close()
