"""Export directories and their ``manifest.json``: what a runtime checks before it trusts an export.

Torch-free on purpose: the context node reads this with ONNX Runtime alone. Every refusal is an
:class:`ExportError` that names the file and the problem, so a robot that will not start its
exported model says exactly which file to fix or which command to run again.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.checkpoint_files import CheckpointError, read_meta, sha256_file, verify_weights

FORMAT_VERSION = 1
EXPORTS_DIR = "exports"
MANIFEST_FILE = "manifest.json"
H_PATH_FILE = "h_path.onnx"
L_STEP_FILE = "l_step.safetensors"
PRECISIONS = ("fp32", "fp16", "int8")
BATCH_DIM = "batch"

# Graph inputs: the model-ready observation batch (ObservationBatch fields) plus the temporal state
# (TemporalState), and outputs: z plus the new state. The caller carries the state from one step's
# outputs to the next step's inputs, exactly as SageHL.encode's caller does.
OBSERVATION_INPUTS = ("image", "depth", "audio", "tactile", "joint_position", "joint_velocity", "mask")
STATE_INPUTS = ("history", "history_valid")
INPUTS = OBSERVATION_INPUTS + STATE_INPUTS
OUTPUTS = ("z", "new_history", "new_history_valid")


class ExportError(ValueError):
    """An export is missing, corrupted, for another model, or fed inputs of the wrong shape."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: float32 | bool
    shape: tuple[int | str, ...]  # BATCH_DIM for the dynamic batch axis

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @staticmethod
    def from_json(data: Any, source: str) -> TensorSpec:
        try:
            shape = tuple(d if isinstance(d, str) else int(d) for d in data["shape"])
            return TensorSpec(str(data["name"]), str(data["dtype"]), shape)
        except (KeyError, TypeError, ValueError):
            raise ExportError(f"{source}: malformed tensor entry {data!r}") from None


@dataclass
class Manifest:
    """The parsed ``manifest.json`` of one export directory."""

    path: Path
    data: dict[str, Any]

    @property
    def directory(self) -> Path:
        return self.path.parent

    @property
    def model_hash(self) -> str:
        return self.data["model_hash"]

    @property
    def precision(self) -> str:
        return self.data["precision"]

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec.from_json(x, str(self.path)) for x in self.data["inputs"]]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec.from_json(x, str(self.path)) for x in self.data["outputs"]]

    @property
    def config(self) -> dict[str, Any]:
        return self.data["config"]

    def file(self, role: str) -> Path:
        return self.directory / self.data["files"][role]["name"]


_REQUIRED = ("format_version", "model_hash", "precision", "files", "inputs", "outputs", "config", "check")


def read_manifest(directory: str | Path, *, verify_files: bool = True, require_passed_check: bool = True) -> Manifest:
    """Parse and check an export's manifest; with ``verify_files`` every listed file must exist
    and match its recorded SHA-256 (a truncated copy or a file from another export is refused).
    ``require_passed_check=False`` is for the exporter alone, which loads an export to check it."""
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    if not directory.is_dir():
        raise ExportError(f"{directory}: export directory does not exist")
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ExportError(f"{path}: missing (not an export directory, or the export did not finish)") from None
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path}: unreadable or not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ExportError(f"{path}: not a JSON object")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise ExportError(f"{path}: missing key '{missing[0]}' (corrupted or not a sage_hl_ros export)")
    if not isinstance(data["format_version"], int) or data["format_version"] > FORMAT_VERSION:
        raise ExportError(f"{path}: format_version {data['format_version']!r} is not supported "
                          f"(this sage_hl_ros reads <= {FORMAT_VERSION})")
    if data["precision"] not in PRECISIONS:
        raise ExportError(f"{path}: precision {data['precision']!r} is not one of {list(PRECISIONS)}")
    if require_passed_check and not (isinstance(data["check"], dict) and data["check"].get("passed")):
        raise ExportError(f"{path}: the export's own check did not pass; export again")
    manifest = Manifest(path, data)
    manifest.inputs, manifest.outputs  # noqa: B018  (parse the specs now: errors name the manifest)
    files = data["files"]
    for role in ("h_path", "l_step"):
        entry = files.get(role) if isinstance(files, dict) else None
        if not isinstance(entry, dict) or "name" not in entry or "sha256" not in entry:
            raise ExportError(f"{path}: files.{role} needs 'name' and 'sha256'")
        if not verify_files:
            continue
        f = directory / entry["name"]
        if not f.is_file():
            raise ExportError(f"{f}: missing (listed in {path})")
        actual = sha256_file(f)
        if actual != entry["sha256"]:
            raise ExportError(f"{f}: corrupted or replaced: sha256 {actual} does not match {entry['sha256']} "
                              f"recorded in {path}")
    return manifest


def checkpoint_hash(model_dir: str | Path) -> str:
    """The checkpoint's weights hash, verified against its file (the key of its exports)."""
    try:
        read_meta(model_dir)
        return verify_weights(model_dir)
    except CheckpointError as exc:
        raise ExportError(str(exc)) from None


def export_root(model_dir: str | Path, model_hash: str) -> Path:
    return Path(model_dir) / EXPORTS_DIR / model_hash


def export_dir(model_dir: str | Path, model_hash: str, precision: str) -> Path:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    return export_root(model_dir, model_hash) / precision


def find_export(model_dir: str | Path, precision: str = "fp32") -> Path:
    """The export of this checkpoint's current weights at ``precision``; ExportError naming what
    is missing otherwise (an export of older weights in the same folder is never picked)."""
    h = checkpoint_hash(model_dir)
    d = export_dir(model_dir, h, precision)
    if not (d / MANIFEST_FILE).is_file():
        others = sorted(p.name for p in (Path(model_dir) / EXPORTS_DIR).glob("*") if p.is_dir() and p.name != h)
        hint = f" (exports of other weights present: {', '.join(o[:12] for o in others)})" if others else ""
        raise ExportError(f"{d}: no {precision} export for model {h[:12]}{hint}; run "
                          f"`sage-hl export {model_dir} --precision {precision}`")
    return d


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)
