"""Checkpoint files without torch: metadata, weights integrity, tensors and normaliser as numpy.

A separate module so that a process that only needs a few tensors (the control node's L step,
exporters, inspection tools) never imports torch: it pulls in ~1 GB of runtime and, in the control
process, competes with the loop. ``checkpoint.py`` builds the torch model on top of this module.

Directory layout (``save_checkpoint`` writes it; ``CONFIG_FILE`` etc. name the files)::

    config.json         {"format_version": 1, "package_version": ..., "model_sha256": <hex>,
                         "config": <SageConfig.to_dict()>, "training": {...} (trained checkpoints)}
    model.safetensors   every weight of the SageHL module except the normaliser buffers
    normalizer.json     {"<stat>": {"mean": [...], "std": [...], "min": [...], "max": [...]}} for the
                        stats joint_position, joint_velocity, tactile, action (JSON Infinity allowed
                        in min/max: an unfitted normaliser does not clip)

Tensor names in ``model.safetensors`` are the ``state_dict`` keys of ``SageHL`` (float32), e.g.
``h_module.pos``, ``encoders.visual...``, and for the L-module, an MLP
``Linear, LayerNorm, GELU(tanh)`` x ``l_layers`` then ``Linear``::

    l_module.net.0.weight  (l_hidden_dim, latent_dim + proprio_dim)   l_module.net.0.bias  (l_hidden_dim,)
    l_module.net.1.weight  (l_hidden_dim,)  LayerNorm                 l_module.net.1.bias  (l_hidden_dim,)
    l_module.net.3.weight  second hidden Linear ...                   (index 3k for block k; GELU has none)
    l_module.net.<3 * l_layers>.weight  (action_chunk * num_joints, l_hidden_dim)   and its .bias

Integrity: ``config.json``'s ``model_sha256`` is the SHA-256 of ``model.safetensors`` as written.
Every load verifies it (one streamed read, ~40 ms for the default 56 MB model on this machine);
a mismatch is refused with both hashes. A checkpoint whose ``config.json`` has no hash (written by
another tool or edited by hand) still loads: the hash is computed and a
:class:`UnverifiedWeightsWarning` says it could not be checked. A verified file is not hashed again
while its identity (device, inode, size, mtime) is unchanged and it was last modified more than a
second before it was hashed, so loading the same checkpoint in two steps (hash, then tensors)
costs one read.

Tensor groups: ``config.json``'s ``tensor_group_sha256`` ({prefix: hex}, written for
``GROUP_PREFIXES``) is a SHA-256 over the group's tensors (name, dtype, shape, bytes; sorted by
name). A reader that needs only that group (the control node's L step, ``L_STEP_PREFIX``) checks
its tensors against it instead of hashing the whole file: a reload then reads ~0.1 MB, not 56 MB
(the whole-file hash kept a core busy for ~55 ms and made a 200 Hz loop on a loaded 2-core
machine miss deadlines). A change to any tensor of the group is refused the same way; a change
elsewhere in the file is the whole-file readers' to find (the context node, ``load_checkpoint``).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
NORMALIZER_FILE = "normalizer.json"
L_STEP_PREFIX = "l_module.net."  # the control node's L step: all it reads of the weights
GROUP_PREFIXES = (L_STEP_PREFIX,)  # tensor groups with their own digest in config.json
NORMALIZER_STATS = ("joint_position", "joint_velocity", "tactile", "action")
NORMALIZER_FIELDS = ("mean", "std", "min", "max")


class CheckpointError(ValueError):
    """A checkpoint directory is missing, malformed, tampered with or incompatible."""


class UnverifiedWeightsWarning(UserWarning):
    """The checkpoint records no weights hash, so its weights could not be checked."""


def read_meta(directory: str | Path) -> dict[str, Any]:
    """``config.json`` checked for what every reader needs (format version, config section)."""
    path = Path(directory) / CONFIG_FILE
    if not Path(directory).is_dir():
        raise CheckpointError(f"{directory}: checkpoint directory does not exist")
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (a checkpoint needs {CONFIG_FILE}, {WEIGHTS_FILE}, "
                              f"{NORMALIZER_FILE})") from None
    except (OSError, ValueError) as exc:  # JSONDecodeError, UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"{path}: unreadable ({exc})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("format_version"), int):
        raise CheckpointError(f"{path}: no integer 'format_version'")
    if meta["format_version"] > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {meta['format_version']} is newer than this "
                              f"sage_hl_ros supports ({FORMAT_VERSION}); upgrade the package")
    if "config" not in meta:
        raise CheckpointError(f"{path}: no 'config' section")
    recorded = meta.get("model_sha256")
    if recorded not in (None, "") and not _is_sha256(recorded):
        raise CheckpointError(f"{path}: 'model_sha256' is not a SHA-256 hex digest: {recorded!r}")
    groups = meta.get("tensor_group_sha256", {})
    if not isinstance(groups, dict) or not all(isinstance(k, str) and _is_sha256(v) for k, v in groups.items()):
        raise CheckpointError(f"{path}: 'tensor_group_sha256' is not a map of prefix -> SHA-256 hex digest")
    return meta



def read_config(directory: str | Path):
    """The checkpoint's model config (``SageConfig``, its robot contract included), from config.json."""
    from .config import SageConfig  # pure; imported here so this module stays importable on its own

    return SageConfig.from_dict(read_meta(directory)["config"], str(Path(directory) / CONFIG_FILE))

def trained_on(directory: str | Path) -> list[str]:
    """The bags a checkpoint was trained on (its config.json training record: new, then replayed),
    each once, as recorded; [] for a checkpoint without a record."""
    training = read_meta(directory).get("training") or {}
    return list(dict.fromkeys([*(training.get("bags") or []), *(training.get("replay_bags") or [])]))


def tensor_group_sha256(tensors: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over ``tensors`` in name order: name, dtype, shape and the raw bytes of each."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        h.update(f"{name}|{arr.dtype.str}|{list(arr.shape)}\n".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def sha256_file(path: str | Path) -> str:
    """SHA-256 hex of a file, streamed in 1 MiB blocks (hashlib releases the GIL on each block)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_verified: dict[str, tuple[tuple[int, ...], str]] = {}  # resolved path -> (identity, sha256)
_verified_lock = threading.Lock()
# A file modified within this long of its hashing is never remembered: file timestamps are coarse
# (a few ms), so an in-place rewrite that soon could keep the identity ("racy git" has the same rule).
_RACY_WINDOW_NS = 1_000_000_000


def _identity(path: Path) -> tuple[int, ...]:
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def verify_weights(directory: str | Path) -> str:
    """SHA-256 of ``model.safetensors``, checked against ``config.json``'s ``model_sha256``.

    Raises CheckpointError naming the file and both hashes on a mismatch. Without a recorded hash
    (an older or hand-made checkpoint) returns the computed one and warns with
    :class:`UnverifiedWeightsWarning`.
    """
    directory = Path(directory)
    recorded = read_meta(directory).get("model_sha256") or None
    weights = directory / WEIGHTS_FILE
    try:
        identity = _identity(weights)
        key = str(weights.resolve())
        with _verified_lock:
            cached = _verified.get(key)
        started_ns = time.time_ns()
        actual = cached[1] if cached and cached[0] == identity else sha256_file(weights)
        if _identity(weights) != identity:
            raise CheckpointError(f"{weights}: changed while it was being verified; load again")
    except FileNotFoundError:
        raise CheckpointError(f"{weights}: missing") from None
    except OSError as exc:
        raise CheckpointError(f"{weights}: unreadable ({exc})") from None
    if recorded is None:
        warnings.warn(f"{directory / CONFIG_FILE}: no 'model_sha256' recorded, so {weights} could not be "
                      f"verified; its sha256 is {actual}", UnverifiedWeightsWarning, stacklevel=2)
    elif actual != recorded:
        raise CheckpointError(f"{weights}: sha256 {actual} does not match {directory / CONFIG_FILE}'s "
                              f"model_sha256 {recorded}: the weights were modified or belong to another "
                              "checkpoint; refusing to load them")
    if identity[3] <= started_ns - _RACY_WINDOW_NS:
        with _verified_lock:
            _verified[key] = (identity, actual)
    return actual


def load_tensors_numpy(directory: str | Path, prefix: str = "") -> dict[str, np.ndarray]:
    """The tensors whose names start with ``prefix`` (all by default), as numpy arrays; the weights
    file is verified first and must not change while the tensors are read."""
    return load_verified_tensors_numpy(directory, prefix)[1]


def load_verified_tensors_numpy(directory: str | Path, prefix: str = "") -> tuple[str, dict[str, np.ndarray]]:
    """(model sha256, tensors whose names start with ``prefix``), verified.

    With a recorded digest for ``prefix`` (``tensor_group_sha256``) only those tensors are read and
    checked; otherwise the whole file is hashed (once, also for a checkpoint written just now).
    """
    directory = Path(directory)
    meta = read_meta(directory)
    group_sha = meta.get("tensor_group_sha256", {}).get(prefix) if prefix else None
    recorded = meta.get("model_sha256") or None
    sha = verify_weights(directory) if group_sha is None or recorded is None else recorded
    weights = directory / WEIGHTS_FILE
    try:
        before = _identity(weights)
        with safe_open(str(weights), framework="np") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
        if _identity(weights) != before:
            raise CheckpointError(f"{weights}: changed while it was being read; load again")
    except FileNotFoundError:
        raise CheckpointError(f"{weights}: missing") from None
    except (SafetensorError, OSError, ValueError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{weights}: not a valid safetensors file ({exc})") from None
    if group_sha is not None and recorded is not None:
        actual = tensor_group_sha256(tensors)
        if actual != group_sha:
            raise CheckpointError(f"{weights}: tensors '{prefix}*' have sha256 {actual}, which does not match "
                                  f"{directory / CONFIG_FILE}'s tensor_group_sha256 {group_sha}: the weights "
                                  "were modified or belong to another checkpoint")
    return sha, tensors


def read_normalizer(directory: str | Path, sizes: Mapping[str, int] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """``normalizer.json`` as ``{stat: {field: float32 array}}`` for every stat in ``NORMALIZER_STATS``.

    ``sizes`` (stat -> expected length) checks the lengths; errors name the file and the entry, as
    the torch normaliser's ``load_json`` does.
    """
    path = Path(directory) / NORMALIZER_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid normaliser statistics ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: invalid normaliser statistics (not a JSON object)")
    out: dict[str, dict[str, np.ndarray]] = {}
    for name in NORMALIZER_STATS:
        entry = data.get(name)
        if not isinstance(entry, dict):
            raise CheckpointError(f"{path}: missing statistics '{name}'")
        out[name] = {}
        for field in NORMALIZER_FIELDS:
            values = entry.get(field)
            try:
                arr = np.asarray(values, dtype=np.float32)
            except (TypeError, ValueError):
                raise CheckpointError(f"{path}: '{name}.{field}' is not a list of numbers") from None
            if values is None or arr.ndim != 1:
                raise CheckpointError(f"{path}: '{name}.{field}' is not a list of numbers")
            if sizes is not None and name in sizes and arr.size != sizes[name]:
                raise CheckpointError(f"{path}: '{name}.{field}' expected {sizes[name]} values, got {arr.size}")
            if field in ("mean", "std") and not np.all(np.isfinite(arr)):
                raise CheckpointError(f"{path}: '{name}.{field}' has non-finite values")
            out[name][field] = arr
        if np.any(out[name]["std"] <= 0):
            raise CheckpointError(f"{path}: '{name}.std' must be > 0")
    return out


def _is_sha256(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


__all__ = ["CONFIG_FILE", "FORMAT_VERSION", "GROUP_PREFIXES", "L_STEP_PREFIX", "NORMALIZER_FIELDS",
           "NORMALIZER_FILE", "NORMALIZER_STATS", "WEIGHTS_FILE", "CheckpointError", "UnverifiedWeightsWarning",
           "load_tensors_numpy", "load_verified_tensors_numpy", "read_config", "read_meta", "read_normalizer",
           "sha256_file", "trained_on",
           "tensor_group_sha256", "verify_weights"]
