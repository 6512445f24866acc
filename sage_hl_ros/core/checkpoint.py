"""Checkpoint directories: ``config.json`` + ``model.safetensors`` + ``normalizer.json``.

Nothing is ever unpickled. Every problem names the file and, for tensors, the tensor and both
shapes, so a robot that refuses a checkpoint says exactly why.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .. import __version__
from .config import ConfigError, SageConfig
from .system import SageHL, build_model

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
NORMALIZER_FILE = "normalizer.json"


class CheckpointError(ValueError):
    """A checkpoint directory is missing, malformed or incompatible."""


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
        "model_sha256": _sha256(tmp_weights),
        "config": model.cfg.to_dict(),
        **(extra or {}),
    }
    _atomic_write(directory / NORMALIZER_FILE, json.dumps(model.normalizer.to_json(), indent=1))
    os.replace(tmp_weights, directory / WEIGHTS_FILE)
    _atomic_write(directory / CONFIG_FILE, json.dumps(meta, indent=2))
    return directory


def read_meta(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG_FILE
    if not Path(directory).is_dir():
        raise CheckpointError(f"{directory}: checkpoint directory does not exist")
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (a checkpoint needs {CONFIG_FILE}, {WEIGHTS_FILE}, "
                              f"{NORMALIZER_FILE})") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable ({exc})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("format_version"), int):
        raise CheckpointError(f"{path}: no integer 'format_version'")
    if meta["format_version"] > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {meta['format_version']} is newer than this "
                              f"sage_hl_ros supports ({FORMAT_VERSION}); upgrade the package")
    if "config" not in meta:
        raise CheckpointError(f"{path}: no 'config' section")
    return meta


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu") -> SageHL:
    """Load, validate and return the model in eval mode."""
    directory = Path(directory)
    meta = read_meta(directory)
    try:
        cfg = SageConfig.from_dict(meta["config"], str(directory / CONFIG_FILE))
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    model = build_model(cfg)
    weights_path = directory / WEIGHTS_FILE
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path}: missing")
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
    return model.to(device).eval()


def model_hash(directory: str | Path) -> str:
    """Hash of the weights file; keys exported ONNX/TensorRT artefacts to the weights they came from."""
    return read_meta(directory).get("model_sha256") or _sha256(Path(directory) / WEIGHTS_FILE)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
