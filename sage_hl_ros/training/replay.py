"""Experience for the trainer: sequences from bags, compact, sampled with priorities; held in
memory (``from_sequences``, capped) or on disk (``on_disk``: memory-mapped files, every sequence).

Storage is compact (uint8 images as the model sees them x 255, float16 depth and audio), about
``T x (3HW + 2HW + 2 audio_window_samples)`` bytes per sequence: 180 kB for T = 2 at 128x128, so
``max_sequences`` = 5000 holds about 0.9 GB. Beyond ``capacity`` a uniform reservoir sample is
kept (seeded). Priorities follow prioritized experience replay: P(i) = (1 - u) p_i^a / sum p^a + u / N
with p_i = the sequence's last behaviour-cloning error (normalised) + eps; unseen sequences start at 1, about
an untrained model's error, so each is drawn early.
No importance weights: replay here is rehearsal of what the model does worst, not an unbiased
gradient estimate; the uniform share ``u`` keeps every sequence in play.

On disk (``sleep_train.replay_store: disk``) each field is one flat file of the same compact rows,
memory-mapped read-only once written: a batch reads only its rows, so the trainer's memory no longer
grows with the experience (the OS page cache holds what is hot), and nothing is dropped.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from ..core.observation import ObservationBatch
from ..core.system import SequenceBatch

_F16 = ("depth", "audio")


class ExperienceStore:
    def __init__(self, name: str, tensors: dict[str, torch.Tensor], steps: int):
        self.name = name
        self.t = tensors  # each (N, T, ...)
        self.steps = steps
        n = self.size
        self.priority = torch.ones(n, dtype=torch.float64)

    @property
    def size(self) -> int:
        return int(self.t["mask"].shape[0]) if self.t else 0

    def __len__(self) -> int:
        return self.size

    @classmethod
    def from_sequences(cls, name: str, sequences: Iterable[SequenceBatch], capacity: int,
                       seed: int = 0) -> ExperienceStore:
        """Keep all sequences, or a uniform reservoir sample of ``capacity`` of them."""
        gen = torch.Generator().manual_seed(seed)
        kept: list[dict[str, torch.Tensor]] = []
        steps = None
        seen = 0
        for seq in sequences:
            for b in range(seq.num_sequences):
                one = _compact(seq, b)
                steps = seq.steps
                if len(kept) < capacity:
                    kept.append(one)
                else:
                    r = int(torch.randint(seen + 1, (1,), generator=gen))
                    if r < capacity:
                        kept[r] = one
                seen += 1
        if not kept:
            return cls(name, {}, 0)
        tensors = {k: torch.stack([s[k] for s in kept]) for k in kept[0]}
        store = cls(name, tensors, steps or 0)
        store.seen = seen
        return store

    @classmethod
    def on_disk(cls, name: str, sequences: Iterable[SequenceBatch], directory: str | Path) -> ExperienceStore:
        """Every sequence, written once to ``directory`` (replaced) and memory-mapped from there."""
        d = Path(directory)
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        files: dict[str, object] = {}
        layout: dict[str, tuple[str, list[int]]] = {}
        n, steps = 0, 0
        try:
            for seq in sequences:
                for b in range(seq.num_sequences):
                    one = {k: v.numpy() for k, v in _compact(seq, b).items()}
                    steps = seq.steps
                    for k, v in one.items():
                        if k not in files:
                            files[k] = open(d / f"{k}.bin", "wb")  # noqa: SIM115 - closed below
                            layout[k] = (str(v.dtype), list(v.shape))
                        files[k].write(np.ascontiguousarray(v).tobytes())
                    n += 1
        finally:
            for f in files.values():
                f.close()
        if n == 0:
            return cls(name, {}, 0)
        arrays = {k: np.memmap(d / f"{k}.bin", dtype=np.dtype(dt), mode="r", shape=(n, *shape))
                  for k, (dt, shape) in layout.items()}
        store = cls(name, arrays, steps)  # numpy memmaps: _rows reads only the rows a batch takes
        store.seen = n
        return store

    def _rows(self, name: str, idx: torch.Tensor) -> torch.Tensor:
        x = self.t[name]
        if isinstance(x, np.ndarray):  # on disk: copy the chosen rows out of the map
            return torch.from_numpy(np.ascontiguousarray(x[idx.cpu().numpy()]))
        return x[idx]

    def batch(self, idx: torch.Tensor) -> SequenceBatch:
        """Sequences ``idx`` as one SequenceBatch (observations ``b * T + t``), float tensors."""

        def rows(name: str) -> torch.Tensor:
            x = self._rows(name, idx)
            return x.reshape(-1, *x.shape[2:])

        obs = ObservationBatch(
            image=rows("image").float() / 255.0,
            depth=rows("depth").float(),
            audio=rows("audio").float(),
            tactile=rows("tactile"),
            joint_position=rows("joint_position"),
            joint_velocity=rows("joint_velocity"),
            mask=rows("mask"),
        )
        return SequenceBatch(obs=obs, action=self._rows("action", idx), steps=self.steps)

    def all(self) -> SequenceBatch:
        return self.batch(torch.arange(self.size))

    def sample(self, n: int, gen: torch.Generator, alpha: float = 0.0, uniform_mix: float = 1.0) -> torch.Tensor:
        if self.size == 0:
            raise ValueError(f"experience store '{self.name}' is empty")
        if alpha == 0.0 or uniform_mix >= 1.0:
            return torch.randint(self.size, (n,), generator=gen)
        p = self.priority.pow(alpha)
        probs = (1.0 - uniform_mix) * p / p.sum() + uniform_mix / self.size
        return torch.multinomial(probs, n, replacement=True, generator=gen)

    def update_priorities(self, idx: torch.Tensor, errors: torch.Tensor, eps: float) -> None:
        self.priority[idx.cpu()] = errors.detach().double().cpu() + eps

    def reset_priorities(self) -> None:
        self.priority.fill_(float(self.priority.max()) if self.size else 1.0)


def _compact(seq: SequenceBatch, b: int) -> dict[str, torch.Tensor]:
    t = seq.steps
    obs = seq.obs.index(slice(b * t, (b + 1) * t))
    out = {
        "image": (obs.image * 255.0).round_().clamp_(0, 255).to(torch.uint8),
        "depth": obs.depth.to(torch.float16),
        "audio": obs.audio.to(torch.float16),
        "tactile": obs.tactile.float(),
        "joint_position": obs.joint_position.float(),
        "joint_velocity": obs.joint_velocity.float(),
        "mask": obs.mask.clone(),
        "action": seq.action[b].float(),
    }
    return out
