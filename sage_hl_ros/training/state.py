"""Resumable trainer state: safetensors for tensors + JSON for everything else. Never pickle.

``<out>/trainer_state/``
    state.safetensors   model.* (every parameter and buffer, normaliser included), teacher.* (EMA
                        teacher, if any), optim.<param index>.<key> (AdamW moments and step counts),
                        rng.<name> (torch CPU / CUDA generator states as uint8), replay.<store>.priority
    state.json          format version, global step, phase position, optimiser hyper-parameters,
                        the run's configs and data fingerprint, loss history, evaluations so far

The directory is replaced atomically (written beside it, then renamed), so a run killed while
saving leaves the previous state intact.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

STATE_DIR = "trainer_state"
STATE_VERSION = 1
TENSORS = "state.safetensors"
META = "state.json"


class StateError(ValueError):
    """A trainer state is missing, malformed or belongs to a different run."""


def state_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / STATE_DIR


def has_state(out_dir: str | Path) -> bool:
    d = state_dir(out_dir)
    return (d / TENSORS).is_file() and (d / META).is_file()


def optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith("optim."):
            continue
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for idx, extra in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(extra)
    groups = meta["param_groups"]
    for g in groups:
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
    try:
        opt.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as exc:
        raise StateError(f"optimizer state does not fit the model ({exc})") from None


def save_state(out_dir: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write ``tensors`` + ``meta`` as the trainer state of ``out_dir`` (atomically replaced)."""
    final = state_dir(out_dir)
    tmp = final.with_name(final.name + ".tmp")
    old = final.with_name(final.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / TENSORS),
              metadata={"state_version": str(STATE_VERSION)})
    (tmp / META).write_text(json.dumps({"state_version": STATE_VERSION, **meta}, indent=1))
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def load_state(out_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    d = state_dir(out_dir)
    if not has_state(out_dir):
        old = d.with_name(d.name + ".old")
        if (old / TENSORS).is_file() and (old / META).is_file():
            d = old  # killed between the two renames
        else:
            raise StateError(f"{d}: no trainer state to resume from (needs {TENSORS} and {META})")
    try:
        meta = json.loads((d / META).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StateError(f"{d / META}: unreadable ({exc})") from None
    if not isinstance(meta, dict) or meta.get("state_version") != STATE_VERSION:
        raise StateError(f"{d / META}: state_version {meta.get('state_version') if isinstance(meta, dict) else '?'}"
                         f" is not {STATE_VERSION}")
    try:
        tensors = load_file(str(d / TENSORS))
    except (SafetensorError, OSError, ValueError) as exc:
        raise StateError(f"{d / TENSORS}: not a valid safetensors file ({exc})") from None
    return tensors, meta


def prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    n = len(prefix)
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix)}


def module_tensors(module: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v.detach().contiguous().cpu() for k, v in module.state_dict().items()}


def load_module(module: torch.nn.Module, tensors: dict[str, torch.Tensor], prefix: str, what: str) -> None:
    sd = prefixed(tensors, prefix)
    expected = module.state_dict()
    missing = sorted(set(expected) - set(sd))
    if missing:
        raise StateError(f"trainer state: {what} tensor '{missing[0]}' missing ({len(missing)} in all)")
    for name, ref in expected.items():
        if sd[name].shape != ref.shape:
            raise StateError(f"trainer state: {what} tensor '{name}' has shape {tuple(sd[name].shape)}, "
                             f"model expects {tuple(ref.shape)}")
    module.load_state_dict(sd, strict=True)


def rng_tensors(generators: dict[str, torch.Generator]) -> dict[str, torch.Tensor]:
    out = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda.{i}"] = s
    for name, g in generators.items():
        out[f"rng.{name}"] = g.get_state()
    return out


def restore_rng(tensors: dict[str, torch.Tensor], generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    for name, g in generators.items():
        key = f"rng.{name}"
        if key not in tensors:
            raise StateError(f"trainer state: generator '{name}' missing")
        g.set_state(tensors[key])
