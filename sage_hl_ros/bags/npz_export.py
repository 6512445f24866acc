"""Aligned samples written to disk and read back: ``<split>-NNNNN.npz`` shards + ``index.json``
(``sage-hl-bag convert``)."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.config import MODALITIES, ObservationConfig
from ..core.observation import ObservationBatch
from ..core.system import SequenceBatch
from .bag_dataset import BagDataset, _Plan
from .dataset_config import DatasetConfig, _observation_config, load_dataset_config
from .normalizer_stats import _StatsAccumulator
from .splits import SPLITS

__all__ = ["export_samples", "iter_exported", "load_shard"]

INDEX_FILE = "index.json"
FORMAT_VERSION = 1

_ROW_FIELDS = ("image", "depth", "audio", "tactile", "joint_position", "joint_velocity", "mask")


class _ShardWriter:
    """Buffers up to ``shard_steps`` steps of one split and writes them as one compressed .npz.

    Steps are stored once; ``sequence_start`` lists where each T-step sequence begins, so
    overlapping sequences (stride < T) share steps. A sequence never crosses a shard boundary.
    """

    def __init__(self, out_dir: Path, split: str, obs_cfg: ObservationConfig, cfg: DatasetConfig):
        self.out_dir, self.split, self.cfg = out_dir, split, cfg
        c, cap = obs_cfg, cfg.shard_steps + cfg.sequence_steps
        self.buf = {
            "image": np.zeros((cap, 3 * c.num_cameras, c.image_height_px, c.image_width_px), np.uint8),
            "depth": np.zeros((cap, 1, c.depth_height_px, c.depth_width_px), np.float32),
            "audio": np.zeros((cap, c.audio_window_samples), np.float32),
            "tactile": np.zeros((cap, c.tactile_taxels), np.float32),
            "joint_position": np.zeros((cap, c.num_joints), np.float32),
            "joint_velocity": np.zeros((cap, c.num_joints), np.float32),
            "mask": np.zeros((cap, len(MODALITIES)), bool),
            "action": np.zeros((cap, cfg.action_chunk, c.num_joints), np.float32),
            "action_source": np.zeros(cap, np.int8),
            "episode": np.zeros(cap, np.int32),
            "step": np.zeros(cap, np.int32),
            "time_ns": np.zeros(cap, np.int64),
        }
        self.rows = 0
        self.row_of: dict[tuple[int, int], int] = {}
        self.starts: list[int] = []
        self.shards: list[dict[str, Any]] = []

    def add(self, ep_id: int, start: int, seq: SequenceBatch, plan: _Plan) -> None:
        t = seq.steps
        if self.rows + t > self.cfg.shard_steps and self.starts:
            self.flush()
        obs = seq.obs
        for i in range(t):
            g = start + i
            if (ep_id, g) in self.row_of:
                continue
            r = self.rows
            self.row_of[(ep_id, g)] = r
            b = self.buf
            b["image"][r] = (obs.image[i] * 255.0).round_().clamp_(0, 255).to(torch.uint8).numpy()
            for name in _ROW_FIELDS[1:]:
                b[name][r] = getattr(obs, name)[i].numpy()
            b["action"][r] = seq.action[0, i].numpy()
            b["action_source"][r] = plan.source[g]
            b["episode"][r], b["step"][r], b["time_ns"][r] = ep_id, g, plan.grid[g]
            self.rows += 1
        self.starts.append(self.row_of[(ep_id, start)])

    def flush(self) -> None:
        if not self.starts:
            return
        name = f"{self.split}-{len(self.shards):05d}.npz"
        arrays = {k: v[:self.rows] for k, v in self.buf.items()}
        arrays["sequence_start"] = np.array(self.starts, np.int64)
        arrays["sequence_steps"] = np.array(self.cfg.sequence_steps, np.int64)
        tmp = self.out_dir / (name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.replace(tmp, self.out_dir / name)
        self.shards.append({"file": name, "split": self.split, "steps": self.rows, "sequences": len(self.starts)})
        self.rows, self.row_of, self.starts = 0, {}, []


def export_samples(bag_paths: str | Path | Iterable[str | Path], out_dir: str | Path,
                   config_path: str | Path | None = None, *, obs_cfg: ObservationConfig | None = None,
                   dataset_cfg: DatasetConfig | None = None, overwrite: bool = False,
                   progress: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Align bags and write the samples to ``out_dir`` as ``<split>-NNNNN.npz`` shards + ``index.json``.

    ``config_path``: a YAML file with a ``dataset`` section (default ``config/dataset.yaml``) and
    optionally an ``observation`` section (else the observation section of ``config/model.yaml``;
    ``obs_cfg``/``dataset_cfg`` override both). Shards hold each step once: ``image`` uint8 (N, 3,
    H, W) (the model's float image x 255, rounded), ``depth`` (N, 1, H, W) normalised as the model
    sees it, ``audio``, ``tactile``, ``joint_position``, ``joint_velocity``, ``mask`` (N, 5),
    ``action`` (N, K, J) absolute targets, ``action_source`` (0 none, 1 command, 2 teacher),
    ``episode`` (index into the index's episode list), ``step``, ``time_ns``, and
    ``sequence_start`` (M,) with scalar ``sequence_steps``. ``load_shard`` turns one back into a
    ``SequenceBatch``. The index (written last, so a partial export has none) holds the counts,
    episodes, split, normaliser statistics of the train split and skipped-message counts.
    Returns the index as a dict.
    """
    t0 = time.perf_counter()
    say = progress or (lambda _msg: None)
    cfg = dataset_cfg if dataset_cfg is not None else load_dataset_config(config_path)
    ocfg, robot = (obs_cfg, None) if obs_cfg is not None else _observation_config(config_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    old = list(out.glob("*.npz")) + list(out.glob(INDEX_FILE))
    if old:
        if not overwrite:
            raise FileExistsError(f"{out}: already holds an export ({len(old)} files); pass overwrite=True")
        for f in old:
            f.unlink()
    ds = BagDataset(bag_paths, ocfg, cfg, robot)
    episodes = ds.episodes()
    ep_ids = {(e.bag, e.index): i for i, e in enumerate(episodes)}
    say(f"export: {len(ds.bag_paths)} bag(s), {len(episodes)} episode(s) "
        f"({sum(e.split == 'train' for e in episodes)} train, {sum(e.split == 'val' for e in episodes)} val) -> {out}")
    writers = {s: _ShardWriter(out, s, ocfg, cfg) for s in SPLITS}
    acc = _StatsAccumulator(ocfg.num_joints, ocfg.tactile_taxels)
    done = 0
    for bag in ds.bag_paths:
        image_reader = None
        try:
            for plan in ds._iter_plans(bag, "all"):
                ep = plan.ep
                if ep.split == "train":
                    acc.add(plan)
                if plan.starts.size:
                    if image_reader is None:
                        image_reader = ds._open(bag)
                    for _ep, start, seq in ds._sequences(image_reader, bag, plan):
                        writers[ep.split].add(ep_ids[(ep.bag, ep.index)], start, seq, plan)
                done += 1
                if not plan.starts.size:
                    seen = ", ".join(f"{k[9:]}={v}" for k, v in ep.counts.items() if k.startswith("messages."))
                    say(f"  {ep.id}: no samples ({ep.counts.get('labelled_steps', 0)} steps with an action "
                        f"label, {ep.counts.get('usable_steps', 0)} also with {'+'.join(cfg.require) or '-'}; "
                        f"messages: {seen or 'none'})")
                say(f"  [{done}/{len(episodes)}] {ep.id} {ep.split}: {ep.counts.get('steps', 0)} steps, "
                    f"{ep.counts.get('sequences', 0)} sequences, task {ep.task!r} {ep.outcome or '-'} "
                    f"({time.perf_counter() - t0:.1f} s)")
        finally:
            if image_reader is not None:
                image_reader.close()
    for w in writers.values():
        w.flush()
    shards = [s for w in writers.values() for s in w.shards]
    index = {
        "format": "sage_hl_ros.bag_samples",
        "version": FORMAT_VERSION,
        "bags": [str(b) for b in ds.bag_paths],
        "observation": dataclasses.asdict(ocfg),
        "dataset": dataclasses.asdict(cfg),
        "sequence_steps": cfg.sequence_steps,
        "action_chunk": cfg.action_chunk,
        "shards": shards,
        "episodes": [e.to_json() for e in episodes],
        "split": ds.split_ids(),
        "counts": {s: {"sequences": sum(x["sequences"] for x in shards if x["split"] == s),
                       "steps": sum(x["steps"] for x in shards if x["split"] == s),
                       "episodes": sum(e.split == s for e in episodes)} for s in SPLITS},
        "stats": {"train": acc.to_json()},
        "skipped": ds.skipped_counts(),
        "notes": dict(ds.stats),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    tmp = out / (INDEX_FILE + ".tmp")
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, out / INDEX_FILE)
    c = index["counts"]
    say(f"export: wrote {len(shards)} shard(s): train {c['train']['sequences']} sequences, "
        f"val {c['val']['sequences']} sequences, {ds.skipped_total} bad message(s) skipped "
        f"({index['seconds']:.1f} s)")
    return index


def load_shard(path: str | Path) -> SequenceBatch:
    """One exported shard as a SequenceBatch of all its sequences (images back to float [0, 1])."""
    with np.load(path) as z:
        starts = z["sequence_start"]
        t = int(z["sequence_steps"])
        rows = (starts[:, None] + np.arange(t)[None]).reshape(-1)  # b * T + t
        obs = ObservationBatch(
            image=torch.from_numpy(z["image"][rows]).float() / 255.0,
            depth=torch.from_numpy(z["depth"][rows]),
            audio=torch.from_numpy(z["audio"][rows]),
            tactile=torch.from_numpy(z["tactile"][rows]),
            joint_position=torch.from_numpy(z["joint_position"][rows]),
            joint_velocity=torch.from_numpy(z["joint_velocity"][rows]),
            mask=torch.from_numpy(z["mask"][rows]),
        )
        action = torch.from_numpy(z["action"][rows]).reshape(starts.size, t, *z["action"].shape[1:])
    return SequenceBatch(obs=obs, action=action, steps=t)


def iter_exported(out_dir: str | Path, split: str = "train") -> Iterator[SequenceBatch]:
    """Shard by shard (one SequenceBatch each) of an export's split."""
    out = Path(out_dir)
    try:
        index = json.loads((out / INDEX_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{out}: not a complete export ({INDEX_FILE}: {exc})") from None
    for shard in index["shards"]:
        if shard["split"] == split:
            yield load_shard(out / shard["file"])
