"""Checkpoint directories: ``config.json`` + ``model.safetensors`` + ``normalizer.json``.

Nothing is ever unpickled. Every problem names the file and, for tensors, the tensor and both
shapes, so a robot that refuses a checkpoint says exactly why. The weights' SHA-256 is verified
against ``config.json`` on every load. The torch-free part (file names, metadata, integrity, numpy
tensors, normaliser) is :mod:`sage_hl_ros.core.checkpoint_files`; its names are re-exported here.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .. import __version__
from .checkpoint_files import (
    CONFIG_FILE,
    FORMAT_VERSION,
    GROUP_PREFIXES,
    NORMALIZER_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    UnverifiedWeightsWarning,
    read_meta,
    sha256_file,
    tensor_group_sha256,
    verify_weights,
)
from .config import ConfigError, SageConfig
from .system import SageHL, build_model

__all__ = ["CONFIG_FILE", "FORMAT_VERSION", "NORMALIZER_FILE", "WEIGHTS_FILE", "CheckpointError",
           "UnverifiedWeightsWarning", "load_checkpoint", "model_hash", "read_meta", "save_checkpoint",
           "verify_weights"]


def _weights(model: SageHL) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()
            if not k.startswith("normalizer.")}


def save_checkpoint(model: SageHL, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write the checkpoint atomically (a reader never sees half a directory's files replaced)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = _weights(model)
    tmp_weights = directory / f".{WEIGHTS_FILE}.tmp"
    save_file(tensors, str(tmp_weights), metadata={"format_version": str(FORMAT_VERSION)})
    meta = {
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "model_sha256": sha256_file(tmp_weights),
        "tensor_group_sha256": {prefix: tensor_group_sha256({k: v.numpy() for k, v in tensors.items()
                                                             if k.startswith(prefix)})
                                for prefix in GROUP_PREFIXES},
        "config": model.cfg.to_dict(),
        **(extra or {}),
    }
    _atomic_write(directory / NORMALIZER_FILE, json.dumps(model.normalizer.to_json(), indent=1))
    os.replace(tmp_weights, directory / WEIGHTS_FILE)
    _atomic_write(directory / CONFIG_FILE, json.dumps(meta, indent=2))
    return directory


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu") -> SageHL:
    """Load, verify (weights hash), validate and return the model in eval mode.

    The verified hash is ``model.checkpoint_sha256`` (what diagnostics and exports should report).
    """
    directory = Path(directory)
    meta = read_meta(directory)
    try:
        cfg = SageConfig.from_dict(meta["config"], str(directory / CONFIG_FILE))
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    model = build_model(cfg)
    weights_path = directory / WEIGHTS_FILE
    sha = verify_weights(directory)
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights_path}: not a valid safetensors file ({exc})") from None
    expected = _weights(model)
    for name, ref in expected.items():
        if name not in tensors:
            raise CheckpointError(f"{weights_path}: missing tensor '{name}' (expected shape {tuple(ref.shape)})")
        got = tensors[name]
        if got.shape != ref.shape:
            raise CheckpointError(f"{weights_path}: tensor '{name}' has shape {tuple(got.shape)}, "
                                  f"model expects {tuple(ref.shape)}")
        if got.dtype != ref.dtype:
            raise CheckpointError(f"{weights_path}: tensor '{name}' has dtype {got.dtype}, expected {ref.dtype}")
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise CheckpointError(f"{weights_path}: unexpected tensor '{unexpected[0]}' "
                              f"({len(unexpected)} unexpected in all); config and weights disagree")
    model.load_state_dict(tensors, strict=False)
    norm_path = directory / NORMALIZER_FILE
    try:
        stats = json.loads(norm_path.read_text())
        model.normalizer.load_json(stats, str(norm_path))
    except FileNotFoundError:
        raise CheckpointError(f"{norm_path}: missing") from None
    except (OSError, json.JSONDecodeError, ValueError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{norm_path}: invalid normaliser statistics ({exc})") from None
    model.checkpoint_sha256 = sha
    return model.to(device).eval()


def model_hash(directory: str | Path) -> str:
    """Verified SHA-256 of the weights file (CheckpointError on a mismatch); keys exported
    ONNX/TensorRT artefacts to the weights they came from. Free after a load of the same file."""
    return verify_weights(directory)


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
