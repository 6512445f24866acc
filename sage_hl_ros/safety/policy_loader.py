"""load_policy: a checkpoint's L step as the control step runs it (torch-free, hash verified,
joint order checked, warmed up).

Used at configure in the control process and, for hot reloads, in the control node's helper
process (ros/worker_process.py): the result is a plain picklable LoadedPolicy.
"""

from __future__ import annotations

import time

import numpy as np

from ..core.checkpoint_files import CheckpointError
from ..core.fast_policy import NumpyLPolicy
from .control_step import LoadedPolicy

_WARMUP_CALLS = 20


def load_policy(model_dir: str, command_names: list[str] | None) -> LoadedPolicy:
    """``command_names``: the command joint order (same joint set as the checkpoint; None = the
    checkpoint's order). The warm-up calls also prove the step runs on this checkpoint."""
    t0 = time.perf_counter()
    if not model_dir:
        raise CheckpointError("model_dir is empty: set the model_dir parameter to a checkpoint directory")
    fast, info = NumpyLPolicy.from_checkpoint(model_dir)
    names = info.joint_names
    perm = None
    if command_names:
        if len(set(command_names)) != len(command_names):
            raise ValueError(f"joint_names has duplicates: {command_names}")
        missing = [n for n in names if n not in command_names]
        extra = [n for n in command_names if n not in names]
        if missing or extra:
            raise ValueError(f"joint_names {list(command_names)} is not the checkpoint's joint set {list(names)}"
                             f" (missing {missing}, unknown {extra})")
        if tuple(command_names) != names:
            perm = np.array([names.index(n) for n in command_names], dtype=np.intp)
    z = np.zeros(info.latent_dim, dtype=np.float32)
    q = np.zeros(len(names))
    for _ in range(_WARMUP_CALLS):
        fast.act(z, q, q)
    return LoadedPolicy(fast, info.model_dir, info.sha256, names, perm, info.latent_dim,
                        (time.perf_counter() - t0) * 1e3, fast.cfg.observation.input_ranges)
