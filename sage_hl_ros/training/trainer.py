"""SleepTrainer: bags (+ an optional checkpoint) -> wake / sleep / dream -> checkpoint + report.

    trainer = SleepTrainer(TrainConfig(), "models/night_01", ["bags/today"], init="models/current",
                           replay_bags=["bags/yesterday"])
    report = trainer.run()            # or run(resume=True) after an interruption

Output directory
    config.json, model.safetensors, normalizer.json   the new checkpoint (a node's model_dir); written
                                                       once, at the end, atomically per file
    report/report.{md,json}, report/*.png               held-out evaluation (training/report.py)
    trainer_state/                                      resumable state (training/state.py), every
                                                        ``checkpoint_every_steps``, at each phase end
                                                        and on Ctrl-C

Experience
    new    the train split of ``bags`` (episodes split by ``config/dataset.yaml``'s val_fraction)
    old    the train split of ``replay_bags``: earlier experience replayed in sleep and dream
           (default: the bags the ``init`` checkpoint was trained on, if they still exist)
Held-out
    new    ``eval_bags`` if given, else the val split of ``bags``
    old    the val split of ``replay_bags`` (forgetting is measured here)

Teacher (distillation in sleep): a frozen copy of the model the cycle starts from when ``init`` is
given (the previous model, which knows the old skills), else of the model at the start of the
sleep phase; then an EMA of the student (``sleep.ema_decay``). Dream needs no teacher: each
dreamt sequence is held to its clean twin in the same batch.

Normaliser: fitted on new + old training data when training from scratch. From a checkpoint its
mean/std are kept (the weights depend on them) and only the recorded action / joint ranges are
widened to cover the new data, so actions the new bags need are not clipped away.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..bags.bag_dataset import BagDataset, concat_sequences
from ..bags.dataset_config import DatasetConfig, load_dataset_config
from ..bags.layout import expand_bag_paths
from ..core.checkpoint import load_checkpoint, model_hash, save_checkpoint
from ..core.checkpoint_files import trained_on
from ..core.config import ConfigError, SageConfig
from ..core.system import SageHL, SequenceBatch, build_model
from ..safety.limits import JointLimits
from .augment import augment
from .config import EXTEROCEPTIVE, TrainConfig
from .distributed import Dist, average_gradients
from .fit import make_optimizer
from .phases import dream_loss, ema_update, make_teacher, modality_weights, sleep_loss, wake_loss
from .replay import ExperienceStore
from .report import DEFINITIONS, REPORT_VERSION, action_parity, evaluate, predict, write_report
from .state import (
    StateError,
    has_state,
    load_module,
    load_state,
    module_tensors,
    optimizer_from_flat,
    optimizer_to_flat,
    restore_rng,
    rng_tensors,
    save_state,
)

REPORT_DIR = "report"
REPLAY_CACHE = "replay_cache"  # replay_store: disk; removed when the run finishes
# Keys of the train config that may differ on resume (they do not change what is learned).
_RESUME_FREE = ("device", "threads", "checkpoint_every_steps", "eval")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r}: CUDA is not available on this machine (use auto or cpu)")
    return torch.device(name)


def phase_lr(base: float, step: int, total: int, warmup_fraction: float, min_fraction: float) -> float:
    """Linear warm-up over ``warmup_fraction`` of the phase, then cosine decay to ``min_fraction``."""
    warm = int(round(warmup_fraction * total))
    if step < warm:
        return base * (step + 1) / warm
    rest = max(total - warm, 1)
    progress = min((step - warm) / rest, 1.0)
    return base * (min_fraction + (1 - min_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))


class _Progress:
    """tqdm when it is installed (stderr), else a line every 10%."""

    def __init__(self, total: int, initial: int, desc: str, enabled: bool, log: Callable[[str], None]):
        self.total, self.n, self.desc, self.log = total, initial, desc, log
        self.bar = None
        self.enabled = enabled
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, initial=initial, desc=desc, file=sys.stderr, dynamic_ncols=True,
                                mininterval=0.5)
            except ImportError:
                self.bar = None

    def update(self, logs: dict[str, float]) -> None:
        self.n += 1
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{logs['total']:.4f}", bc=f"{logs['bc']:.4f}", refresh=False)
            self.bar.update(1)
        elif self.enabled and (self.n == self.total or self.n % max(1, self.total // 10) == 0):
            self.log(f"  {self.desc}: {self.n}/{self.total} loss {logs['total']:.4f} bc {logs['bc']:.4f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _is_lerobot(path) -> bool:
    return (Path(path) / "meta" / "info.json").is_file()  # lerobot_format.is_lerobot_dataset, without pyarrow


def _bag_list(paths) -> list[str]:
    if paths and not isinstance(paths, (str, Path)) and any(_is_lerobot(p) for p in paths):
        return [str(Path(p).resolve()) for p in dict.fromkeys(paths)]  # LeRobot folders: _dataset checks them
    return [str(p.resolve()) for p in expand_bag_paths(paths)] if paths else []


def _dataset(paths: list[str], obs_cfg, dcfg: DatasetConfig, robot, shard: tuple[int, int] | None = None):
    """The data of ``paths``: bags (BagDataset), or LeRobot v3 dataset folders (LeRobotSource, the
    same sequences and normaliser arrays; ``sage-hl-sleep --lerobot``). ``shard`` (rank, world):
    this rank's share of the training episodes (data-parallel training)."""
    kinds = {_is_lerobot(p) for p in paths}
    if kinds == {True}:
        if shard is not None:
            raise ValueError("data-parallel training (--nproc-per-node) reads bags only; LeRobot datasets are "
                             "not sharded yet: train on them with one process")
        from ..bags.lerobot_source import LeRobotSource

        return LeRobotSource(paths, obs_cfg, dcfg, robot)
    if len(kinds) > 1:
        raise ValueError(f"{paths}: bags and LeRobot datasets mixed in one list; give them separately")
    return BagDataset(paths, obs_cfg, dcfg, robot=robot, shard=shard)


class _WorkerSequences(torch.utils.data.IterableDataset):
    """The train sequences of one decode worker's shard (episode k of the split goes to shard
    k % (ranks x workers)): bags are decoded in ``decode_workers`` processes side by side."""

    def __init__(self, paths, obs_cfg, dcfg, robot, rank: int, world: int, workers: int):
        super().__init__()
        self.args = (paths, obs_cfg, dcfg, robot)
        self.rank, self.world, self.workers = rank, world, workers

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        w = info.id if info is not None else 0
        torch.set_num_threads(1)
        paths, obs_cfg, dcfg, robot = self.args
        ds = BagDataset(paths, obs_cfg, dcfg, robot=robot, shard=(self.rank * self.workers + w,
                                                                 self.world * self.workers))
        chunk: list[SequenceBatch] = []
        for seq in ds.iter_sequences("train"):  # handed over in chunks: one transfer per 64 sequences
            chunk.append(seq)
            if len(chunk) == 64:
                yield concat_sequences(chunk)
                chunk = []
        if chunk:
            yield concat_sequences(chunk)


def _decoded_in_workers(paths, obs_cfg, dcfg, robot, d: Dist, workers: int):
    loader = torch.utils.data.DataLoader(_WorkerSequences(paths, obs_cfg, dcfg, robot, d.rank, d.world, workers),
                                         batch_size=None, num_workers=workers)
    yield from loader


class SleepTrainer:
    def __init__(self, cfg: TrainConfig, out_dir: str | Path, bags, *, init: str | Path | None = None,
                 replay_bags=None, eval_bags=None, model_config: str | Path | None = None,
                 dataset_config: str | Path | DatasetConfig | None = None, progress: bool = True,
                 log: Callable[[str], None] | None = None):
        self.cfg = cfg
        self.out = Path(out_dir)
        self.bags = _bag_list(bags)
        self.init = str(Path(init).resolve()) if init else None
        self.parent: dict[str, Any] | None = None
        if self.init:
            self.parent = {"dir": self.init, "sha256": model_hash(self.init)}
            if replay_bags is None:
                replay_bags = [b for b in trained_on(self.init) if Path(b).exists() and b not in self.bags]
        self.replay_bags = _bag_list(replay_bags)
        self.eval_bags = _bag_list(eval_bags)
        self.model_config = model_config
        self.dataset_config = dataset_config
        self.progress = progress
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))

    # ------------------------------------------------------------------ set-up
    def _model(self, saved: dict[str, Any] | None) -> SageHL:
        if saved is not None:
            return build_model(SageConfig.from_dict(saved["model_config"], "trainer_state/state.json"))
        if self.init:
            return load_checkpoint(self.init)
        if self.model_config is not None:
            return build_model(SageConfig.from_yaml(self.model_config))
        from ..paths import config_file

        path = config_file("model.yaml")
        return build_model(SageConfig.from_yaml(path) if path.is_file() else SageConfig())

    def _dataset_cfg(self, model: SageHL) -> DatasetConfig:
        if isinstance(self.dataset_config, DatasetConfig):
            dcfg = copy.deepcopy(self.dataset_config)
        else:
            dcfg = load_dataset_config(self.dataset_config)
        # Topics the dataset config leaves unset are the model's robot contract's.
        dcfg = dataclasses.replace(dcfg, topics=dcfg.topics.for_robot(model.cfg.robot_contract()))
        m = model.cfg.model
        # The H rate the data is aligned at: the context node runs at it; data on another grid would
        # change what the model's history means.
        self._keep_recorded(m, "h_rate_hz", "rate_hz", dcfg.rate_hz, "Hz", "the dataset's grid rate")
        chunk = m.action_chunk
        if dcfg.action_chunk != chunk:
            self.log(f"dataset.action_chunk {dcfg.action_chunk} -> {chunk} (the model's action_chunk)")
            dcfg = dataclasses.replace(dcfg, action_chunk=chunk)
        if chunk > 1:
            # The checkpoint records the spacing its chunk was trained at; the control node plays it
            # at that spacing. A model that has one keeps it: data aligned at another spacing is refused.
            if m.action_chunk_dt_s > 0 and not dcfg.action_chunk_dt_s:
                dcfg = dataclasses.replace(dcfg, action_chunk_dt_s=m.action_chunk_dt_s)
            self._keep_recorded(m, "action_chunk_dt_s", "action_chunk_dt_s", dcfg.chunk_dt_s, "s",
                                "the dataset's chunk spacing")
        return dcfg

    def _keep_recorded(self, m, key: str, data_key: str, value: float, unit: str, what: str) -> None:
        """A fact the checkpoint records about the data it was trained on (model.<key>; 0 = none
        yet): recorded from the data once, and data that disagrees with it later is refused."""
        recorded = getattr(m, key)
        if recorded > 0 and abs(value - recorded) > 1e-9:
            raise ValueError(f"dataset {data_key} {value:g} {unit} differs from the model's model.{key} {recorded:g} "
                             f"{unit} (what it was trained at); use the model's value or start from a new model")
        if recorded != value:
            self.log(f"model.{key} -> {value:g} {unit} ({what})")
            setattr(m, key, value)

    def _eval_cfg(self, dcfg: DatasetConfig) -> DatasetConfig:
        e = self.cfg.eval.sequence_steps
        return dataclasses.replace(dcfg, sequence_steps=e, sequence_stride=e)

    def _sequences(self, bags: list[str], obs_cfg, dcfg: DatasetConfig, split: str, limit: int) -> SequenceBatch | None:
        seqs = []
        for seq in _dataset(bags, obs_cfg, dcfg, self._robot).iter_sequences(split):
            seqs.append(seq)
            if len(seqs) >= limit:
                break
        return concat_sequences(seqs) if seqs else None

    def _store(self, name: str, paths: list[str], obs, dcfg: DatasetConfig, seed: int) -> ExperienceStore:
        """One experience store of the train split of ``paths``: in memory (capped) or on disk
        (``replay_store``), decoded here or by ``decode_workers`` processes (each its shard)."""
        cfg, d = self.cfg, self.dist
        self.read_passes += 1
        if cfg.decode_workers > 0 and not any(_is_lerobot(p) for p in paths):
            sequences = _decoded_in_workers(paths, obs, dcfg, self._robot, d, cfg.decode_workers)
        else:
            sequences = self.datasets[name].iter_sequences("train")
        if cfg.replay_store == "disk":
            where = self.out / REPLAY_CACHE / (f"rank{d.rank}" if d.enabled else "") / name
            return ExperienceStore.on_disk(name, sequences, where)
        return ExperienceStore.from_sequences(name, sequences, cfg.max_sequences, seed)

    def _load_data(self, model: SageHL, dcfg: DatasetConfig) -> None:
        cfg, obs = self.cfg, model.cfg.observation
        t0 = time.perf_counter()
        self.stores: dict[str, ExperienceStore] = {}
        self._robot = model.cfg.robot_contract()
        d = self.dist
        shard = (d.rank, d.world) if d.enabled else None
        self.read_passes = 0  # passes over a training split with its images (store build, probes)
        self.datasets = {"new": _dataset(self.bags, obs, dcfg, self._robot, shard)}
        self.stores["new"] = self._store("new", self.bags, obs, dcfg, cfg.seed)
        if not len(self.stores["new"]):
            where = f" for rank {d.rank} of {d.world} (its share of the episodes)" if d.enabled else ""
            raise ValueError(f"no training sequences in {self.bags} (train split){where}: check the topics in the "
                             "dataset config and that the bags hold joint states and commands")
        if self.replay_bags:
            self.datasets["old"] = _dataset(self.replay_bags, obs, dcfg, self._robot, shard)
            self.stores["old"] = self._store("old", self.replay_bags, obs, dcfg, cfg.seed + 1)
        ecfg = self._eval_cfg(dcfg)
        n = cfg.eval.max_sequences
        self.eval_sets: dict[str, SequenceBatch] = {}
        self.eval_sources: dict[str, str] = {}
        self.probe_train: SequenceBatch | None = None
        if not d.is_main:  # rank 0 alone evaluates
            self.load_seconds = time.perf_counter() - t0
            return
        if self.eval_bags:
            new_eval = self._sequences(self.eval_bags, obs, ecfg, "all", n)
            self.eval_sources["new"] = f"all episodes of {len(self.eval_bags)} eval bag(s)"
        else:
            new_eval = self._sequences(self.bags, obs, ecfg, "val", n)
            self.eval_sources["new"] = "val split of the training bags"
        if new_eval is None:
            raise ValueError("no held-out sequences: give --eval-bags, or set dataset val_fraction > 0 with "
                             f"episodes of at least eval.sequence_steps = {ecfg.sequence_steps} steps")
        self.eval_sets["new"] = new_eval
        if self.replay_bags:
            old_eval = self._sequences(self.replay_bags, obs, ecfg, "val", n)
            if old_eval is not None:
                self.eval_sets["old"] = old_eval
                self.eval_sources["old"] = "val split of the replay bags"
        if cfg.eval.probes:
            self.read_passes += 1
            per = max(1, cfg.eval.probe_max_train_steps // ecfg.sequence_steps)
            self.probe_train = self._sequences(self.bags, obs, ecfg, "train", per)
        self.load_seconds = time.perf_counter() - t0
        self.log(f"data: {len(self.stores['new'])} new training sequences"
                 + (f", {len(self.stores['old'])} earlier" if "old" in self.stores else "")
                 + "; held-out " + ", ".join(f"{k} {v.num_sequences}x{v.steps}" for k, v in self.eval_sets.items())
                 + f" ({self.load_seconds:.1f} s)")

    def _normalizer(self, model: SageHL) -> None:
        n = model.normalizer
        fitted = bool(torch.isfinite(n.action_min).all())
        if not fitted:
            arrays = [a for ds in self.datasets.values() for a in self.dist.gather(ds.normalizer_arrays("train"))]
            cat = {k: torch.from_numpy(np.concatenate([a[k] for a in arrays])) for k in arrays[0]}
            taxels = model.cfg.observation.tactile_taxels
            no_tactile = cat["tactile"].shape[0] == 0
            tactile = torch.zeros(1, taxels) if no_tactile else cat["tactile"]
            model.fit_normalizer(cat["joint_position"], cat["joint_velocity"], tactile, cat["targets"])
            if no_tactile:  # as BagDataset.fit_normalizer: identity when no tactile was recorded
                with torch.no_grad():
                    n.tactile_mean.zero_()
                    n.tactile_std.fill_(1.0)
                    n.tactile_min.fill_(-math.inf)
                    n.tactile_max.fill_(math.inf)
            self.log("normaliser fitted on the training data")
            return
        for a in (a for ds in self.datasets.values() for a in self.dist.gather(ds.normalizer_arrays("train"))):
            pos, targets = torch.from_numpy(a["joint_position"]), torch.from_numpy(a["targets"])
            if not pos.shape[0]:
                continue
            act = model._from_targets(targets, pos).reshape(-1, targets.shape[-1])
            with torch.no_grad():
                n.action_min.copy_(torch.minimum(n.action_min, act.amin(0)))
                n.action_max.copy_(torch.maximum(n.action_max, act.amax(0)))
                n.joint_position_min.copy_(torch.minimum(n.joint_position_min, pos.amin(0)))
                n.joint_position_max.copy_(torch.maximum(n.joint_position_max, pos.amax(0)))
        self.log("normaliser kept from the checkpoint; action and joint ranges widened to the new data")

    def _fingerprint(self, dcfg: DatasetConfig) -> dict[str, Any]:
        train = {k: v for k, v in self.cfg.to_dict().items() if k not in _RESUME_FREE}
        return {"bags": self.bags, "replay_bags": self.replay_bags, "eval_bags": self.eval_bags,
                "init": self.parent, "train_config": train, "dataset_config": dataclasses.asdict(dcfg)}

    # ------------------------------------------------------------------ run
    def run(self, resume: bool = False, stop_after: int | None = None) -> dict[str, Any]:
        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        device = resolve_device(cfg.device)
        d = self.dist = Dist.from_env(device)
        if d.enabled:
            if cfg.batch_size % d.world:
                raise ValueError(f"batch_size {cfg.batch_size} is the global batch: it must divide by the "
                                 f"{d.world} ranks")
            if not d.is_main:  # rank 0 alone reports, shows progress and writes
                self.log, self.progress = (lambda msg: None), False
            self.log(f"data-parallel: {d.world} ranks ({'nccl' if device.type == 'cuda' else 'gloo'}), "
                     f"{cfg.batch_size // d.world} sequences per rank and step")
        self.out.mkdir(parents=True, exist_ok=True)
        tensors, saved = None, None
        if resume:
            if not has_state(self.out):
                raise StateError(f"{self.out}: no trainer state to resume from")
            tensors, saved = load_state(self.out)
        model = self._model(saved)
        dcfg = self._dataset_cfg(model)
        fingerprint = self._fingerprint(dcfg)
        if saved is not None and saved.get("world_size", 1) != d.world:
            raise StateError(f"{self.out}: cannot resume: the run had {saved.get('world_size', 1)} ranks, this "
                             f"one has {d.world} (each rank's sampler state belongs to its own data shard)")
        if saved is not None:
            for key, value in fingerprint.items():
                if json.loads(json.dumps(value)) != saved["fingerprint"].get(key):
                    raise StateError(f"{self.out}: cannot resume: '{key}' differs from the interrupted run "
                                     "(same bags, checkpoint and configs are required)")
            if saved.get("finished"):
                self.log(f"{self.out}: this run already finished at step {saved['step']}; nothing to resume")
                return json.loads((self.out / REPORT_DIR / "report.json").read_text())
        torch.manual_seed(cfg.seed)
        rank_seed = 7919 * d.rank  # each rank draws its own batches (rank 0: the single-process streams)
        gens = {"sampler": torch.Generator().manual_seed(cfg.seed + 11 + rank_seed),
                "augment": torch.Generator().manual_seed(cfg.seed + 23 + rank_seed)}
        self._load_data(model, dcfg)
        self.rate_hz = dcfg.rate_hz
        self.depth_max_m = model.cfg.observation.depth_max_m
        if saved is None:
            self._normalizer(model)
        self.joint_lower = self.joint_upper = None
        if cfg.joint_limits_file:
            lim = JointLimits.from_yaml(cfg.joint_limits_file, model.cfg.observation.joint_names)
            self.joint_lower = torch.as_tensor(lim.lower, dtype=torch.float32, device=device)
            self.joint_upper = torch.as_tensor(lim.upper, dtype=torch.float32, device=device)

        needs_teacher = "sleep" in cfg.phases
        teacher = make_teacher(model) if (needs_teacher and self.init and saved is None) else None
        model.to(device)
        if teacher is not None:
            teacher.to(device)
        if d.enabled and saved is None:  # every rank starts from rank 0's weights and normaliser
            import torch.distributed as tdist

            for t in model.state_dict().values():
                tdist.broadcast(t, 0)
        opt = _optimizer(model, cfg)

        # Run bookkeeping (restored on resume).
        st: dict[str, Any] = {"step": 0, "phase_index": 0, "phase_step": 0, "history": [], "stages": [],
                              "phases": {}, "eval_seconds": 0.0, "dream_weights": None}
        self.st = st
        if saved is not None:
            load_module(model, tensors, "model.", "model")
            if saved.get("has_teacher"):
                teacher = make_teacher(model)
                load_module(teacher, tensors, "teacher.", "teacher")
                teacher.to(device)
            optimizer_from_flat(opt, tensors, saved["optimizer"])
            own = tensors if d.rank == 0 else {k[len(f"rank{d.rank}."):]: v for k, v in tensors.items()
                                               if k.startswith(f"rank{d.rank}.")}
            restore_rng(own, gens)
            for name, store in self.stores.items():
                key = f"replay.{name}.priority"
                if key in own and own[key].shape == store.priority.shape:
                    store.priority = own[key].clone()
            st.update({k: saved.get(k, st[k]) for k in st})
            self.log(f"resuming at step {st['step']} (phase {cfg.phases[st['phase_index']]}, "
                     f"step {st['phase_step']} of it)")

        def save(finished: bool = False) -> None:
            mine = {**rng_tensors(gens), **{f"replay.{n}.priority": store.priority for n, store in self.stores.items()}}
            ranks = d.gather(mine)  # the other ranks' samplers and priorities travel to rank 0
            if not d.is_main:
                return
            t = {**module_tensors(model, "model."), **mine}
            for r, theirs in enumerate(ranks[1:], start=1):
                t.update({f"rank{r}.{k}": v for k, v in theirs.items()})
            if teacher is not None:
                t.update(module_tensors(teacher, "teacher."))
            ot, ometa = optimizer_to_flat(opt)
            t.update(ot)
            meta = {**st, "finished": finished, "has_teacher": teacher is not None, "optimizer": ometa,
                    "world_size": d.world,
                    "fingerprint": fingerprint, "model_config": model.cfg.to_dict(),
                    "saved_at": datetime.datetime.now(datetime.timezone.utc).isoformat()}
            save_state(self.out, t, json.loads(json.dumps(meta)))

        def run_eval(stage: str) -> None:
            if (not cfg.eval.after_each_phase and stage != "final") or not d.is_main:
                return
            t0 = time.perf_counter()
            metrics = {name: evaluate(model, batch.to(device), self.rate_hz, cfg.eval.dropped_modalities,
                                      cfg.eval.imagined_horizon)
                       for name, batch in self.eval_sets.items()}
            st["stages"].append({"stage": stage, "step": st["step"], "metrics": metrics})
            st["eval_seconds"] += time.perf_counter() - t0
            parts = [f"{k} {v['action_error']:.4f} rad" for k, v in metrics.items()]
            self.log(f"[{stage}] held-out action error: " + ", ".join(parts)
                     + (f"; dropped mean {metrics['new']['dropped_mean']:.4f}" if "dropped_mean" in metrics["new"]
                        else ""))

        if saved is None:
            run_eval("initial")
            save()
        total_steps = sum(cfg.phase(p).steps for p in cfg.phases)
        try:
            for pi, name in enumerate(cfg.phases):
                if pi < st["phase_index"]:
                    continue
                pc = cfg.phase(name)
                if name == "sleep" and teacher is None:
                    teacher = make_teacher(model)
                ph = st["phases"].setdefault(name, {"steps": 0, "seconds": 0.0, "samples": 0,
                                                    "loss_first": None, "loss_last": None})
                bar = _Progress(pc.steps, st["phase_step"], name, self.progress, self.log)
                model.train()
                t_phase = time.perf_counter()
                for s in range(st["phase_step"], pc.steps):
                    lr = phase_lr(pc.lr, s, pc.steps, cfg.warmup_fraction, cfg.min_lr_fraction)
                    for g in opt.param_groups:
                        g["lr"] = lr
                    logs = self._step(name, model, teacher, opt, gens, device, s)
                    logs["lr"] = lr
                    st["history"].append({"step": st["step"], "phase": name, **logs})
                    if ph["loss_first"] is None:
                        ph["loss_first"] = logs["total"]
                    ph["loss_last"] = logs["total"]
                    ph["steps"] += 1
                    ph["samples"] += (2 * max(1, cfg.batch_size // 2) if name == "dream" else cfg.batch_size) * (
                        self.stores["new"].steps)
                    st["step"] += 1
                    st["phase_step"] = s + 1
                    bar.update(logs)
                    if st["step"] % cfg.checkpoint_every_steps == 0 or (stop_after and st["step"] >= stop_after):
                        ph["seconds"] += time.perf_counter() - t_phase
                        save()
                        t_phase = time.perf_counter()
                    if stop_after and st["step"] >= stop_after:
                        bar.close()
                        self.log(f"stopped at step {st['step']} of {total_steps}; resume with --resume")
                        return {"stopped_at": st["step"]}
                bar.close()
                ph["seconds"] += time.perf_counter() - t_phase
                ph["samples_per_s"] = ph["samples"] / ph["seconds"] if ph["seconds"] > 0 else float("nan")
                st["phase_index"], st["phase_step"] = pi + 1, 0
                run_eval(name)
                save()
        except KeyboardInterrupt:
            if d.enabled:  # a collective now could wait on a rank that is already gone
                self.log(f"interrupted at step {st['step']}: resume with --resume from the last saved state "
                         f"(every {cfg.checkpoint_every_steps} steps)")
                raise
            self.log(f"interrupted at step {st['step']}: saving the trainer state (resume with --resume)")
            save()
            raise
        if not d.is_main:
            save(finished=True)  # its part of the final state, gathered when rank 0 has evaluated
            shutil.rmtree(self.out / REPLAY_CACHE / f"rank{d.rank}", ignore_errors=True)
            return {"rank": d.rank}
        return self._finish(model, device, st, save)

    # ------------------------------------------------------------------ one step
    def _step(self, phase: str, model: SageHL, teacher: SageHL | None, opt: torch.optim.Optimizer,
              gens: dict[str, torch.Generator], device: torch.device, step: int = 0) -> dict[str, float]:
        cfg = self.cfg
        d = self.dist
        b = cfg.batch_size // d.world  # this rank's share of the global batch
        new, old = self.stores["new"], self.stores.get("old")
        if phase == "wake":
            idx_new, idx_old = new.sample(b, gens["sampler"]), None
        else:
            pc = cfg.sleep if phase == "sleep" else cfg.dream
            if phase == "dream":
                b = max(1, b // 2)  # each recorded sequence is trained with its dreamt twin
            n_old = int(round(b * pc.replay_fraction)) if old is not None and len(old) else 0
            alpha = cfg.sleep.priority_alpha if phase == "sleep" else 0.0
            mix = cfg.sleep.uniform_mix
            idx_old = old.sample(n_old, gens["sampler"], alpha, mix) if n_old else None
            idx_new = new.sample(b - n_old, gens["sampler"], alpha, mix)
        parts = ([old.batch(idx_old)] if idx_old is not None else []) + [new.batch(idx_new)]
        batch = concat_sequences(parts) if len(parts) > 1 else parts[0]
        n_old = 0 if idx_old is None else idx_old.numel()
        replayed = torch.arange(b) < n_old
        if phase == "wake":
            loss, logs, per_seq = wake_loss(model, batch.to(device))
        elif phase == "sleep":
            batch = augment(batch, cfg.sleep.augment, gens["augment"], self.depth_max_m)
            loss, logs, per_seq = sleep_loss(model, teacher, batch.to(device), replayed.to(device), cfg.sleep)
        else:
            weights = None
            if cfg.dream.reweight_every:
                if step % cfg.dream.reweight_every == 0 or self.st.get("dream_weights") is None:
                    probe = new.batch(torch.arange(min(len(new), 32))).to(device)
                    self.st["dream_weights"] = d.mean(modality_weights(model, probe)).tolist()
                    model.train()
                weights = torch.tensor(self.st["dream_weights"])
                logs_w = {f"weight_{m}": float(x) for m, x in zip(EXTEROCEPTIVE, weights, strict=True)}
            loss, logs, per_seq = dream_loss(model, batch.to(device), cfg.dream, gens["augment"], self.rate_hz,
                                             self.depth_max_m, self.joint_lower, self.joint_upper, weights)
            if weights is not None:
                logs.update(logs_w)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(list(model.parameters()), d)  # data-parallel: the global batch's gradient
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        if teacher is not None and phase == "sleep":
            ema_update(teacher, model, cfg.sleep.ema_decay)
        if phase == "sleep":
            per_seq = per_seq.cpu()
            if idx_old is not None:
                old.update_priorities(idx_old, per_seq[:n_old], cfg.sleep.priority_eps)
            new.update_priorities(idx_new, per_seq[n_old:], cfg.sleep.priority_eps)
        if d.enabled:  # the logged losses are the global batch's (the mean of the ranks')
            keys = sorted(logs)
            logs = dict(zip(keys, d.mean(torch.tensor([float(logs[k]) for k in keys], dtype=torch.float64)).tolist(),
                            strict=True))
        return logs

    # ------------------------------------------------------------------ finish
    def _finish(self, model: SageHL, device: torch.device, st: dict[str, Any], save) -> dict[str, Any]:
        cfg = self.cfg
        model.eval()
        if not st["stages"] or st["stages"][-1]["step"] != st["step"] or not cfg.eval.after_each_phase:
            t0 = time.perf_counter()
            metrics = {name: evaluate(model, batch.to(device), self.rate_hz, cfg.eval.dropped_modalities,
                                      cfg.eval.imagined_horizon)
                       for name, batch in self.eval_sets.items()}
            st["stages"].append({"stage": "final", "step": st["step"], "metrics": metrics})
            st["eval_seconds"] += time.perf_counter() - t0
        final = st["stages"][-1]["metrics"]
        t0 = time.perf_counter()
        info: dict[str, Any] = {"reconstruction_1mR2": final["new"]["reconstruction_1mR2"]}
        if cfg.eval.probes and self.probe_train is not None:
            info.update(action_parity(model, self.probe_train.to(device), self.eval_sets["new"].to(device),
                                      cfg.eval.probe_steps, cfg.eval.probe_lr, cfg.eval.probe_batch_size, cfg.seed))
            self.log(f"information loss: reconstruction 1-R^2 {info['reconstruction_1mR2']:.4f}, action parity "
                     f"{info['action_parity']:+.4f} (probe z {info['probe_z_error']:.4f} vs context "
                     f"{info['probe_context_error']:.4f} rad)")
        probe_seconds = time.perf_counter() - t0

        training = {"bags": self.bags, "replay_bags": self.replay_bags, "eval_bags": self.eval_bags,
                    "parent": self.parent, "phases": list(cfg.phases), "step": st["step"],
                    "held_out_action_error": final["new"]["action_error"], "report": f"{REPORT_DIR}/report.json",
                    "trained_at": datetime.datetime.now(datetime.timezone.utc).isoformat()}
        save_checkpoint(model, self.out, extra={"training": training})
        shutil.rmtree(self.out / REPLAY_CACHE, ignore_errors=True)  # replay_store: disk
        sha = model_hash(self.out)
        first = _first(self.eval_sets["new"])
        ex = predict(model, first.to(device))
        report: dict[str, Any] = {
            "version": REPORT_VERSION,
            "checkpoint": str(self.out.resolve()),
            "model_sha256": sha,
            "parent": self.parent,
            "device": str(device),
            "seed": cfg.seed,
            "data": {
                "bags": self.bags, "replay_bags": self.replay_bags, "eval_bags": self.eval_bags,
                "train_sequences": {k: len(v) for k, v in self.stores.items()},
                "train_steps_per_sequence": self.stores["new"].steps,
                "eval": {k: {"source": self.eval_sources[k], "sequences": v.num_sequences,
                             "steps_per_sequence": v.steps} for k, v in self.eval_sets.items()},
                "rate_hz": self.rate_hz, "load_seconds": self.load_seconds, "read_passes": self.read_passes,
                "replay_store": cfg.replay_store, "decode_workers": cfg.decode_workers,
            },
            "config": cfg.to_dict(),
            "definitions": DEFINITIONS,
            "stages": st["stages"],
            "phases": self._phase_effects(st),
            "final": final,
            "information_loss": info,
            "timing": {"train_seconds": sum(p["seconds"] for p in st["phases"].values()),
                       "eval_seconds": st["eval_seconds"], "probe_seconds": probe_seconds,
                       "samples_per_s": _rate(st["phases"])},
            "history": st["history"],
            "example_trajectory": {"predicted": ex["targets"][0].T.tolist(),
                                   "recorded": first.action[0, :, 0].T.tolist()},
        }
        write_report(self.out / REPORT_DIR, report, plots=cfg.eval.plots)
        save(finished=True)
        self.log(f"wrote {self.out} (sha256 {sha[:12]}), report {self.out / REPORT_DIR / 'report.md'}")
        return report

    def _phase_effects(self, st: dict[str, Any]) -> dict[str, Any]:
        """Per phase: timing plus the held-out metrics just before and just after it."""
        stages = {s["stage"]: s for s in st["stages"]}
        order = [s["stage"] for s in st["stages"]]
        out: dict[str, Any] = {}
        for name in self.cfg.phases:
            ph = dict(st["phases"].get(name, {"steps": 0, "seconds": 0.0, "samples": 0}))
            ph.setdefault("samples_per_s", ph["samples"] / ph["seconds"] if ph.get("seconds") else float("nan"))
            if name in stages and order.index(name) > 0:
                before = stages[order[order.index(name) - 1]]["metrics"]
                after = stages[name]["metrics"]
                ph["effect"] = _effect(name, before, after)
            out[name] = ph
        return out


def _optimizer(model: SageHL, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (fit.make_optimizer); the fused kernel where this torch has it (25% faster steps on CPU)."""
    try:
        return make_optimizer(model, lr=cfg.wake.lr, weight_decay=cfg.weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return make_optimizer(model, lr=cfg.wake.lr, weight_decay=cfg.weight_decay)


def _first(batch: SequenceBatch) -> SequenceBatch:
    t = batch.steps
    return SequenceBatch(obs=batch.obs.index(slice(0, t)), action=batch.action[:1], steps=t)


def _rate(phases: dict[str, Any]) -> float:
    sec = sum(p["seconds"] for p in phases.values())
    return sum(p["samples"] for p in phases.values()) / sec if sec > 0 else float("nan")


def _effect(phase: str, before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The numbers each phase is meant to move (held-out, before -> after)."""
    def pair(split: str, key: str, sub: str | None = None):
        if split not in before or split not in after:
            return None
        b, a = before[split], after[split]
        if sub is not None:
            b, a = b.get(key, {}), a.get(key, {})
            key = sub
        if key not in b or key not in a:
            return None
        return {"before": b[key], "after": a[key]}

    wanted = {
        "wake": [("new", "action_error"), ("new", "reconstruction_1mR2"), ("new", "dynamics_error_rad"),
                 ("new", "predictive_1mR2")],
        "sleep": [("old", "action_error"), ("new", "action_error"), ("new", "dropped_mean")],
        "dream": [("new", "dropped_mean"), ("new", "jerk_rad_s3"), ("new", "imagined_limit_violation_share"),
                  ("new", "action_error")],
    }[phase]
    out = {}
    for split, key in wanted:
        p = pair(split, key)
        if p is not None:
            out[f"{split}.{key}"] = p
    return out
