"""Bags -> a LeRobotDataset v3.0 folder (``sage-hl-bag export --format lerobot``), streamed.

What a frame is
    One aligned step of ``BagDataset`` (``iter_steps``) at ``dataset.rate_hz`` (= ``fps``): the
    steps that have an action label and proprioception (``dataset.require`` plus proprio), in
    time order, each once. Per frame:

        observation.state     (J,) float32   joint positions, the model's joint order (names = joints)
        observation.velocity  (J,) float32   joint velocities as recorded (zeros where none)
        action                (J,) float32   the target BagDataset trains on (first step of the chunk):
                                             the teacher label where present, else the executed command
        timestamp             float32        frame_index / fps (the grid has no gaps inside a frame run)
        frame_index, episode_index, index, task_index   int64

    ``observation.images.<camera>``: one H.264 (libx264, yuv420p) MP4 stream per camera of the
    robot contract (the model's views, in contract order), at the model's image size (the
    observation config's ``image_height_px`` x ``image_width_px``, as the model sees them); a
    camera with no frame at a step is a black frame, as the model sees it (all zeros). Episodes
    follow each other in one file; the episode's ``from_timestamp``/``to_timestamp`` say where.

    Episodes are the bags' episodes (``/sage/episode``), task = the marker's task string, in bag
    order; episodes with no usable step are left out (listed in the summary), and steps without
    a label inside an episode are dropped (counted: ``dropped_steps``), so a frame's timestamp is
    its position in the episode's frames, not its grid time. Excluded outcomes
    (``dataset.exclude_outcomes``) are not exported. The SAGE split (val by episode hash) is not
    written: the reader recomputes it; ``splits`` is ``{"train": "0:N"}``.

Not exported: depth (LeRobot v3.0 has no depth encoding: its video info carries
``video.is_depth_map`` but every reader decodes 8-bit RGB), audio, tactile.

Memory: BagDataset's bound (one episode's small arrays, a few decoded frames), plus one parquet
row group (``row_group_frames``), the encoders' few frames of look-ahead, and the numeric
features' values for the exact quantiles in ``stats.json`` (J float64 per frame per feature;
image statistics are 256-bin histograms, constant size).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..core.config import ObservationConfig
from ..core.robot import RobotContract, implied_robot
from .bag_dataset import SOURCE_COMMAND, SOURCE_TEACHER, SOURCE_TEACHER_CHUNK, AlignedStep, BagDataset
from .dataset_config import DatasetConfig, load_dataset_config
from .lerobot_format import (
    ACTION,
    CHUNKS_SIZE,
    CODEBASE_VERSION,
    DATA_FILE_MB,
    DATA_PATH,
    EPISODES_PATH,
    IMAGE_PREFIX,
    INDEX_FEATURES,
    INFO_PATH,
    STATE,
    STATS_PATH,
    TASKS_PATH,
    VELOCITY,
    VIDEO_FILE_MB,
    VIDEO_PATH,
    ImageStats,
    numeric_stats,
    write_tasks,
)

__all__ = ["VideoOptions", "export_lerobot"]

_MB = 1024 * 1024


@dataclasses.dataclass
class VideoOptions:
    """libx264 settings. ``gop`` 2 (a key frame every other frame) is LeRobot's default: any frame
    decodes after at most one other, which is what random access in training needs."""

    crf: int = 23
    gop: int = 2
    preset: str = "veryfast"


def _next_file(chunk: int, file: int) -> tuple[int, int]:
    return (chunk + 1, 0) if file + 1 >= CHUNKS_SIZE else (chunk, file + 1)


class _DataWriter:
    """Frames -> ``data/chunk-*/file-*.parquet``, one row group per ``rows`` frames."""

    def __init__(self, root: Path, joints: int, rows: int):
        self.root, self.rows = root, rows
        vec = pa.list_(pa.float32(), joints)
        self.schema = pa.schema([(STATE, vec), (VELOCITY, vec), (ACTION, vec), ("timestamp", pa.float32()),
                                 ("frame_index", pa.int64()), ("episode_index", pa.int64()), ("index", pa.int64()),
                                 ("task_index", pa.int64())])
        self.buf = {STATE: np.zeros((rows, joints), np.float32), VELOCITY: np.zeros((rows, joints), np.float32),
                    ACTION: np.zeros((rows, joints), np.float32), "timestamp": np.zeros(rows, np.float32),
                    **{k: np.zeros(rows, np.int64) for k in ("frame_index", "episode_index", "index", "task_index")}}
        self.n = 0
        self.chunk, self.file = 0, 0
        self.bytes = 0  # uncompressed bytes of the rows in the open file (what LeRobot's size limit counts)
        self.writer: pq.ParquetWriter | None = None

    def add(self, **values) -> None:
        for k, v in values.items():
            self.buf[k][self.n] = v
        self.n += 1
        if self.n == self.rows:
            self.flush()

    def flush(self) -> None:
        if not self.n:
            return
        if self.writer is None:
            path = self.root / DATA_PATH.format(chunk_index=self.chunk, file_index=self.file)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(path, self.schema)
        cols = []
        for f in self.schema:
            a = self.buf[f.name][:self.n]
            if a.ndim == 2:
                cols.append(pa.FixedSizeListArray.from_arrays(pa.array(a.ravel(), pa.float32()), a.shape[1]))
            else:
                cols.append(pa.array(a, f.type))
        table = pa.Table.from_arrays(cols, schema=self.schema)
        self.writer.write_table(table)
        self.bytes += table.nbytes
        self.n = 0

    def roll(self) -> None:
        """At an episode boundary: a new file once this one holds ``DATA_FILE_MB``."""
        pending = self.n * sum(v[:1].nbytes for v in self.buf.values())
        if self.bytes + pending >= DATA_FILE_MB * _MB:
            self.close()
            self.chunk, self.file = _next_file(self.chunk, self.file)
            self.bytes = 0

    def close(self) -> None:
        self.flush()
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class _VideoWriter:
    """One camera's frames -> ``videos/<key>/chunk-*/file-*.mp4`` (frames encoded as they come)."""

    def __init__(self, root: Path, key: str, fps: int, height: int, width: int, opts: VideoOptions):
        self.root, self.key, self.fps, self.height, self.width, self.opts = root, key, fps, height, width, opts
        self.chunk, self.file = 0, 0
        self.frames = 0  # frames in the open file
        self.bytes = 0
        self.container = None
        self.stream = None

    def _open(self) -> None:
        path = self.root / VIDEO_PATH.format(video_key=self.key, chunk_index=self.chunk, file_index=self.file)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(path), "w")
        o = self.opts
        self.stream = self.container.add_stream("libx264", rate=self.fps,
                                                options={"g": str(o.gop), "crf": str(o.crf), "preset": o.preset})
        self.stream.width, self.stream.height, self.stream.pix_fmt = self.width, self.height, "yuv420p"

    def add(self, frame: np.ndarray) -> None:
        if self.container is None:
            self._open()
        vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
        vf.pts = self.frames
        for packet in self.stream.encode(vf):
            self.bytes += packet.size
            self.container.mux(packet)
        self.frames += 1

    def roll(self) -> None:
        if self.bytes >= VIDEO_FILE_MB * _MB:
            self.close()
            self.chunk, self.file = _next_file(self.chunk, self.file)
            self.frames, self.bytes = 0, 0

    def close(self) -> None:
        if self.container is None:
            return
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
        self.container = self.stream = None


class _Numeric:
    """Values of one numeric feature (for the exact quantiles), per episode and overall."""

    def __init__(self):
        self.parts: list[np.ndarray] = []

    def add_episode(self, x: np.ndarray) -> dict[str, list]:
        x = np.asarray(x, np.float64).reshape(len(x), -1)
        self.parts.append(x)
        return numeric_stats(x)

    def to_json(self) -> dict[str, list]:
        return numeric_stats(np.concatenate(self.parts))


def _clear(out: Path, overwrite: bool) -> None:
    names = ("meta", "data", "videos")
    found = [out / n for n in names if (out / n).exists()]
    if found and not overwrite:
        raise FileExistsError(f"{out}: already holds a dataset ({', '.join(p.name for p in found)}); "
                              "pass overwrite=True (--overwrite)")
    for p in found:
        shutil.rmtree(p)


def export_lerobot(bag_paths: str | Path | Iterable[str | Path], out_dir: str | Path, *, obs_cfg: ObservationConfig,
                   dataset_cfg: DatasetConfig | None = None, robot: RobotContract | None = None,
                   overwrite: bool = False, video: VideoOptions | None = None, row_group_frames: int = 1024,
                   progress: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Write the bags' episodes to ``out_dir`` as a LeRobotDataset v3.0 (module docstring).

    ``obs_cfg`` and ``robot`` are the model's (joints, cameras, image size); ``dataset_cfg`` the
    alignment (``rate_hz`` is the fps and must be a whole number; ``action_chunk``,
    ``sequence_steps`` and ``sequence_stride`` are ignored: one frame per step, one target).
    ``meta/info.json`` is written last, so a folder without it is an unfinished export. Returns a
    summary (counts, frames per second of export).
    """
    t0 = time.perf_counter()
    say = progress or (lambda _msg: None)
    video = video or VideoOptions()
    cfg = dataset_cfg if dataset_cfg is not None else load_dataset_config()
    require = list(dict.fromkeys([*cfg.require, "proprio"]))
    cfg = dataclasses.replace(cfg, sequence_steps=1, sequence_stride=1, action_chunk=1, require=require,
                              shard_steps=max(cfg.shard_steps, 1))
    fps = int(round(cfg.rate_hz))
    if abs(cfg.rate_hz - fps) > 1e-9 or fps < 1:
        raise ValueError(f"dataset.rate_hz {cfg.rate_hz:g}: a LeRobot dataset's fps is a whole number of frames "
                         "per second; choose a whole rate_hz")
    robot = robot if robot is not None else implied_robot(obs_cfg)
    o = obs_cfg
    cameras = [c.name for c in robot.cameras[:o.num_cameras]] if "camera" in o.sensors else []
    if "camera" in o.sensors and len(cameras) != o.num_cameras:
        raise ValueError(f"robot {robot.name!r} names {len(robot.cameras)} camera(s), the model takes {o.num_cameras}")
    h, w = o.image_height_px, o.image_width_px
    if cameras and (h % 2 or w % 2):
        raise ValueError(f"image size {h}x{w}: H.264 in yuv420p needs even sizes (observation.image_height_px / "
                         "image_width_px)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _clear(out, overwrite)
    (out / "meta").mkdir()

    ds = BagDataset(bag_paths, o, cfg, robot)
    episodes = ds.episodes()
    keys = [IMAGE_PREFIX + name for name in cameras]
    j = o.num_joints
    data = _DataWriter(out, j, row_group_frames)
    videos = {k: _VideoWriter(out, k, fps, h, w, video) for k in keys}
    numeric = {k: _Numeric() for k in (STATE, VELOCITY, ACTION, *INDEX_FEATURES)}
    images = {k: ImageStats() for k in keys}
    tasks: dict[str, int] = {}
    ep_rows: list[dict[str, Any]] = []
    sources = {"teacher": 0, "teacher_chunk": 0, "command": 0}
    say(f"export: {len(ds.bag_paths)} bag(s), {len(episodes)} episode(s), {len(keys)} camera(s) "
        f"{cameras} at {h}x{w}, {fps} fps -> {out}")

    state: dict[str, Any] = {"ep": None}
    total = 0

    def start(step: AlignedStep) -> None:
        data.roll()
        for v in videos.values():
            v.roll()
        task = step.ep.task
        tasks.setdefault(task, len(tasks))
        state.update(ep=step.ep, index=len(ep_rows), task_index=tasks[task], first=total,
                     data_file=(data.chunk, data.file), video_start={k: (v.chunk, v.file, v.frames)
                                                                      for k, v in videos.items()},
                     rows={k: [] for k in numeric}, images={k: ImageStats() for k in keys})

    def finish() -> None:
        ep = state["ep"]
        n = total - state["first"]
        rows = state["rows"]
        row: dict[str, Any] = {"episode_index": state["index"], "tasks": [ep.task], "length": n,
                               "data/chunk_index": state["data_file"][0], "data/file_index": state["data_file"][1],
                               "dataset_from_index": state["first"], "dataset_to_index": total}
        for k in keys:
            chunk, file, first = state["video_start"][k]
            row.update({f"videos/{k}/chunk_index": chunk, f"videos/{k}/file_index": file,
                        f"videos/{k}/from_timestamp": first / fps, f"videos/{k}/to_timestamp": (first + n) / fps})
        row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
        for k, parts in rows.items():
            for stat, value in numeric[k].add_episode(np.stack(parts)).items():
                row[f"stats/{k}/{stat}"] = value
        for k in keys:
            images[k].merge(state["images"][k])
            for stat, value in state["images"][k].to_json().items():
                row[f"stats/{k}/{stat}"] = value
        row.update({"sage/bag": Path(ep.bag).name, "sage/bag_episode": ep.index, "sage/outcome": ep.outcome,
                     "sage/dropped_steps": int(ep.counts.get("steps", n)) - n})
        ep_rows.append(row)
        say(f"  [{len(ep_rows)}] {ep.id}: {n} frames, task {ep.task!r} {ep.outcome or '-'} "
            f"({time.perf_counter() - t0:.1f} s)")

    try:
        for step in ds.iter_steps("all"):
            if step.ep is not state["ep"]:
                if state["ep"] is not None:
                    finish()
                start(step)
            f = total - state["first"]
            obs = step.obs
            pos = obs.joint_position[0].numpy()
            vel = obs.joint_velocity[0].numpy()
            act = np.asarray(step.action[0], np.float32)
            ts = np.float32(f / fps)
            data.add(**{STATE: pos, VELOCITY: vel, ACTION: act, "timestamp": ts, "frame_index": f,
                        "episode_index": state["index"], "index": total, "task_index": state["task_index"]})
            for k, value in ((STATE, pos), (VELOCITY, vel), (ACTION, act), ("timestamp", ts), ("frame_index", f),
                             ("episode_index", state["index"]), ("index", total),
                             ("task_index", state["task_index"])):
                state["rows"][k].append(np.atleast_1d(np.asarray(value, np.float64)))
            if keys:
                # (3N, H, W) uint8; numpy, not torch: torch's thread pool costs ~10 ms a step on a busy machine
                img = np.clip(np.rint(obs.image[0].numpy() * np.float32(255.0)), 0, 255).astype(np.uint8)
                for c, k in enumerate(keys):
                    frame = np.ascontiguousarray(img[3 * c:3 * c + 3].transpose(1, 2, 0))
                    videos[k].add(frame)
                    state["images"][k].add(frame)
            name = {SOURCE_TEACHER: "teacher", SOURCE_TEACHER_CHUNK: "teacher_chunk", SOURCE_COMMAND: "command"}
            sources[name[step.source]] += 1
            total += 1
        if state["ep"] is not None:
            finish()
    finally:
        data.close()
        for v in videos.values():
            v.close()
    if not ep_rows:
        raise ValueError(f"{out}: no frames: no episode of {[str(b) for b in ds.bag_paths]} has a step with an "
                         f"action label and {'+'.join(require)} (check the dataset config's topics)")

    ep_path = out / EPISODES_PATH.format(chunk_index=0, file_index=0)
    ep_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(ep_rows), ep_path)
    write_tasks(out / TASKS_PATH, list(tasks))
    stats = {k: v.to_json() for k, v in numeric.items()}
    stats.update({k: v.to_json() for k, v in images.items()})
    (out / STATS_PATH).write_text(json.dumps(stats, indent=1))

    vec = {"dtype": "float32", "shape": [j], "names": list(o.joint_names)}
    features: dict[str, Any] = {STATE: vec, VELOCITY: dict(vec), ACTION: dict(vec)}
    for k in keys:
        features[k] = {"dtype": "video", "shape": [h, w, 3], "names": ["height", "width", "channels"],
                       "info": {"video.height": h, "video.width": w, "video.codec": "h264", "video.pix_fmt": "yuv420p",
                                "video.is_depth_map": False, "video.fps": fps, "video.channels": 3,
                                "has_audio": False}}
    features.update({k: {"dtype": dt, "shape": [1], "names": None} for k, dt in INDEX_FEATURES.items()})
    info = {
        "codebase_version": CODEBASE_VERSION, "robot_type": robot.name, "total_episodes": len(ep_rows),
        "total_frames": total, "total_tasks": len(tasks), "chunks_size": CHUNKS_SIZE,
        "data_files_size_in_mb": DATA_FILE_MB, "video_files_size_in_mb": VIDEO_FILE_MB, "fps": fps,
        "splits": {"train": f"0:{len(ep_rows)}"}, "data_path": DATA_PATH, "video_path": VIDEO_PATH if keys else None,
        "features": features,
    }
    tmp = out / (INFO_PATH + ".tmp")
    tmp.write_text(json.dumps(info, indent=4))
    os.replace(tmp, out / INFO_PATH)

    seconds = time.perf_counter() - t0
    exported = {(r["sage/bag"], r["sage/bag_episode"]) for r in ep_rows}
    left_out = [e.id for e in episodes if e.split != "excluded" and (Path(e.bag).name, e.index) not in exported]
    summary = {"out": str(out), "episodes": len(ep_rows), "frames": total, "tasks": list(tasks), "cameras": keys,
               "fps": fps, "action_sources": sources, "dropped_steps": sum(r["sage/dropped_steps"] for r in ep_rows),
               "episodes_without_frames": left_out,
               "excluded_episodes": [e.id for e in episodes if e.split == "excluded"],
               "skipped_messages": ds.skipped_counts(), "seconds": round(seconds, 3),
               "frames_per_s": round(total / seconds, 1) if seconds > 0 else None}
    say(f"export: {total} frames in {len(ep_rows)} episode(s), {len(tasks)} task(s) ({seconds:.1f} s, "
        f"{summary['frames_per_s']} frames/s)")
    return summary
