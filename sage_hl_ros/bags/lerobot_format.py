"""What a LeRobotDataset v3.0 folder holds (DESIGN §11), shared by the exporter and the reader.

    meta/info.json                                   codebase_version, fps, features, totals, path templates
    meta/stats.json                                  per feature: min, max, mean, std, count, q01..q99
    meta/tasks.parquet                               task string (pandas index "task") -> task_index
    meta/episodes/chunk-CCC/file-FFF.parquet         one row per episode: tasks, length, data and video
                                                     file indices, from/to timestamps, stats/<feature>/<stat>
    data/chunk-CCC/file-FFF.parquet                  one row per frame, many episodes per file
    videos/<video_key>/chunk-CCC/file-FFF.mp4        one stream per camera, consecutive episodes concatenated

Only pyarrow and numpy here (no torch, no video codec).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["CODEBASE_VERSION", "DATA_PATH", "EPISODES_PATH", "IMAGE_PREFIX", "INFO_PATH", "QUANTILES", "STATS_PATH",
           "TASKS_PATH", "VIDEO_PATH", "ImageStats", "feature_names", "is_lerobot_dataset", "numeric_stats",
           "read_info", "read_tasks", "write_tasks"]

CODEBASE_VERSION = "v3.0"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
EPISODES_PATH = EPISODES_DIR + "/" + CHUNK_FILE + ".parquet"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"
CHUNKS_SIZE = 1000  # files per chunk folder
DATA_FILE_MB = 100  # a data file is closed (at an episode boundary) past this many MB of rows
VIDEO_FILE_MB = 500  # a video file likewise
IMAGE_PREFIX = "observation.images."
STATE, VELOCITY, ACTION = "observation.state", "observation.velocity", "action"
# The per-frame bookkeeping columns every LeRobot dataset has.
INDEX_FEATURES = {"timestamp": "float32", "frame_index": "int64", "episode_index": "int64", "index": "int64",
                  "task_index": "int64"}
QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}


def is_lerobot_dataset(path: str | Path) -> bool:
    """A folder with ``meta/info.json`` (written last by the exporter: a partial export has none)."""
    return (Path(path) / INFO_PATH).is_file()


def read_info(root: str | Path) -> dict[str, Any]:
    """``meta/info.json`` of a v3.x dataset; a ValueError naming the folder otherwise."""
    path = Path(root) / INFO_PATH
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{root}: not a LeRobot dataset ({INFO_PATH}: {exc})") from None
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3."):
        raise ValueError(f"{root}: LeRobot codebase_version {version!r}; this reader takes v3.x datasets "
                         "(convert older ones with lerobot's convert_dataset_v21_to_v30)")
    for key in ("fps", "features", "data_path"):
        if key not in info:
            raise ValueError(f"{path}: no {key!r}")
    return info


def feature_names(feature: dict[str, Any]) -> list[str] | None:
    """A feature's per-dimension names: a list, or older datasets' ``{"motors": [...]}``; None if unnamed."""
    names = feature.get("names")
    if isinstance(names, dict) and len(names) == 1:
        names = next(iter(names.values()))
    if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
        return list(names)
    return None


def write_tasks(path: Path, tasks: list[str]) -> None:
    """``meta/tasks.parquet`` as pandas writes a frame indexed by task (what lerobot reads with
    ``pd.read_parquet``): columns task_index, task, and the pandas metadata naming "task" the index."""
    table = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()), "task": pa.array(tasks, pa.string())})
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
                            "metadata": {"encoding": "UTF-8"}}],
        "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
                     "metadata": None},
                    {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object",
                     "metadata": None}],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.0",
    }
    table = table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})
    pq.write_table(table, path)


def read_tasks(root: str | Path) -> dict[int, str]:
    """task_index -> task string. The strings are the pandas index: column "task", or
    ``__index_level_0__`` where the frame's index had no name."""
    table = pq.read_table(Path(root) / TASKS_PATH)
    names = table.column_names
    key = next((k for k in ("task", "__index_level_0__") if k in names), None)
    if key is None or "task_index" not in names:
        raise ValueError(f"{root}/{TASKS_PATH}: expected columns task_index and task, got {names}")
    return dict(zip(table.column("task_index").to_pylist(), table.column(key).to_pylist(), strict=True))


def numeric_stats(x: np.ndarray) -> dict[str, list]:
    """LeRobot's statistics of a (N, D) feature over its first axis (population std), as JSON lists."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    out: dict[str, list] = {"min": x.min(0).tolist(), "max": x.max(0).tolist(), "mean": x.mean(0).tolist(),
                            "std": x.std(0).tolist(), "count": [int(x.shape[0])]}
    for name, q in QUANTILES.items():
        out[name] = np.quantile(x, q, axis=0).tolist()
    return out


class ImageStats:
    """Per-channel statistics of uint8 RGB frames, normalised to [0, 1] as LeRobot stores them
    (shape (3, 1, 1) each; count = frames). Kept as one 256-bin histogram per channel, so memory
    is constant and every statistic, quantiles included, is exact over every pixel of every frame."""

    def __init__(self):
        self.hist = np.zeros((3, 256), np.int64)
        self.frames = 0
        self._offset = np.array([0, 256, 512], np.int32)

    def add(self, frame: np.ndarray) -> None:
        idx = frame.reshape(-1, 3).astype(np.int32) + self._offset
        self.hist += np.bincount(idx.ravel(), minlength=768).reshape(3, 256)
        self.frames += 1

    def merge(self, other: ImageStats) -> None:
        self.hist += other.hist
        self.frames += other.frames

    def to_json(self) -> dict[str, list]:
        if not self.frames:
            raise ValueError("no frames")
        v = np.arange(256, dtype=np.float64) / 255.0
        n = self.hist.sum(1).astype(np.float64)
        mean = (self.hist * v).sum(1) / n
        var = np.maximum((self.hist * v**2).sum(1) / n - mean**2, 0.0)
        lo = np.array([v[np.flatnonzero(h)[0]] for h in self.hist])
        hi = np.array([v[np.flatnonzero(h)[-1]] for h in self.hist])
        cum = np.cumsum(self.hist, axis=1)

        def quantile(q: float) -> np.ndarray:  # numpy's default (linear) over the sorted pixel values
            out = np.zeros(3)
            for c in range(3):
                pos = q * (n[c] - 1)
                i = int(np.floor(pos))
                a = v[np.searchsorted(cum[c], i, side="right")]
                b = v[np.searchsorted(cum[c], min(i + 1, int(n[c]) - 1), side="right")]
                out[c] = a + (pos - i) * (b - a)
            return out

        def shaped(x: np.ndarray) -> list:
            return x.reshape(3, 1, 1).tolist()

        out = {"min": shaped(lo), "max": shaped(hi), "mean": shaped(mean), "std": shaped(np.sqrt(var)),
               "count": [self.frames]}
        for name, q in QUANTILES.items():
            out[name] = shaped(quantile(q))
        return out
