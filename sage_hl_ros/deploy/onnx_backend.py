"""OnnxHPath: the exported H path on ONNX Runtime (CPU, CUDA or TensorRT), without torch.

    backend = OnnxHPath.for_checkpoint("models/current", precision="int8", intra_op_threads=1)
    state = backend.initial_state()
    z, state = backend.run(arrays, state)          # arrays: the graph inputs by name, batch first
    z1, state = backend.encode(schema_arrays, state)  # core.context_step.HBackend: batch of one

Loading checks everything a robot must not guess about (ExportError naming the file): the manifest
parses and its check passed, every file matches its recorded SHA-256, the export belongs to the
checkpoint's current weights, and the ONNX graph's inputs/outputs are the ones the manifest lists.
Each step checks input names and shapes before ONNX Runtime sees them, so a wrong camera size is a
named error, not an opaque runtime failure. The process never imports torch: the context node with
this backend stays small and its H step does not hold the GIL in torch's dispatcher.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.config import ConfigError, ObservationConfig, SageConfig
from .manifest import (
    BATCH_DIM,
    INPUTS,
    OUTPUTS,
    ExportError,
    Manifest,
    checkpoint_hash,
    find_export,
    read_manifest,
)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
TRT_CACHE_DIR = "trt_cache"
# ORT's graph optimisation levels by the name the manifest records (FP16 graphs crash ORT 1.32's
# layout optimiser on CPU, so their exports record "extended").
_OPT_LEVELS = ("disable", "basic", "extended", "all")


@dataclass
class OnnxState:
    """Temporal state of the exported graph (as core.context.TemporalState, in numpy)."""

    history: np.ndarray  # (B, K, 256) float32
    valid: np.ndarray  # (B, K) bool


class OnnxHPath:
    """One loaded export; implements core.context_step.HBackend."""

    def __init__(self, export_dir: str | Path, *, expected_hash: str | None = None,
                 providers: Sequence[str | tuple[str, dict[str, Any]]] = (CPU,), intra_op_threads: int = 1,
                 allow_spinning: bool = False, trt_max_batch: int = 16, require_passed_check: bool = True):
        import onnxruntime as ort

        if intra_op_threads < 1:
            raise ValueError(f"intra_op_threads must be >= 1, got {intra_op_threads}")
        self.export_dir = Path(export_dir)
        self.manifest: Manifest = read_manifest(self.export_dir, require_passed_check=require_passed_check)
        m = self.manifest
        if expected_hash is not None and m.model_hash != expected_hash:
            raise ExportError(f"{m.path}: export is of model {m.model_hash[:12]}, the checkpoint is "
                              f"{expected_hash[:12]}; export the current checkpoint again")
        if self.export_dir.parent.name != m.model_hash:
            raise ExportError(f"{m.path}: records model {m.model_hash[:12]} but lies in folder "
                              f"{self.export_dir.parent.name!r}; the export was moved or mixed up")
        try:
            cfg = SageConfig.from_dict(m.config, f"{m.path}:config")
        except ConfigError as exc:
            raise ExportError(str(exc)) from None
        self.observation_config: ObservationConfig = cfg.observation
        self.latent_dim = int(cfg.model.latent_dim)
        self.precision = m.precision
        self.model_hash = m.model_hash
        self.onnx_path = m.file("h_path")
        self._inputs = {s.name: s for s in m.inputs}
        self._outputs = [s.name for s in m.outputs]
        if tuple(self._inputs) != INPUTS or tuple(self._outputs) != OUTPUTS:
            raise ExportError(f"{m.path}: inputs {list(self._inputs)} / outputs {self._outputs} are not the "
                              f"H-path graph's {list(INPUTS)} / {list(OUTPUTS)}")

        so = ort.SessionOptions()
        so.intra_op_num_threads = intra_op_threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3  # ORT's warnings (unfoldable casts, ...) are not the user's problem
        # A spinning pool thread burns a core between steps: on a 2-core robot computer that core
        # belongs to the 500 Hz control process.
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
        level = m.data.get("ort", {}).get("graph_optimization_level", "all")
        if level not in _OPT_LEVELS:
            raise ExportError(f"{m.path}: ort.graph_optimization_level {level!r} not in {list(_OPT_LEVELS)}")
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[level]
        self.provider_config, self.skipped_providers = provider_config(
            providers, ort.get_available_providers(), self.export_dir, m, trt_max_batch)
        try:
            self.session = ort.InferenceSession(str(self.onnx_path), so, providers=self.provider_config)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
            raise ExportError(f"{self.onnx_path}: ONNX Runtime cannot load it ({exc})") from None
        self.providers = list(self.session.get_providers())
        self._check_session()
        k = self._inputs["history"].shape[1]
        d = self._inputs["history"].shape[2]
        self._state_shape = (int(k), int(d))

    @classmethod
    def for_checkpoint(cls, model_dir: str | Path, precision: str = "fp32", **kwargs: Any) -> OnnxHPath:
        """The export of ``model_dir``'s current weights (refused if it is of other weights)."""
        return cls(find_export(model_dir, precision), expected_hash=checkpoint_hash(model_dir), **kwargs)

    def _check_session(self) -> None:
        got_in = {i.name: i.shape for i in self.session.get_inputs()}
        got_out = [o.name for o in self.session.get_outputs()]
        if list(got_in) != list(self._inputs) or got_out != self._outputs:
            raise ExportError(f"{self.onnx_path}: graph inputs {list(got_in)} / outputs {got_out} do not match "
                              f"{self.manifest.path}")
        for name, spec in self._inputs.items():
            fixed = [d if isinstance(d, int) else BATCH_DIM for d in got_in[name]]
            if fixed != list(spec.shape):
                raise ExportError(f"{self.onnx_path}: input '{name}' has shape {got_in[name]}, "
                                  f"{self.manifest.path} says {list(spec.shape)}")

    # ------------------------------------------------------------------ HBackend
    def initial_state(self, batch: int = 1) -> OnnxState:
        k, d = self._state_shape
        return OnnxState(np.zeros((batch, k, d), np.float32), np.zeros((batch, k), bool))

    def encode(self, arrays: Mapping[str, np.ndarray], state: OnnxState) -> tuple[np.ndarray, OnnxState]:
        """Observation arrays of a batch of one (``ObservationSchema.prepare_arrays``) ->
        (z (latent_dim,), new state)."""
        z, new_state = self.run(arrays, state)
        return z[0], new_state

    def state_is_finite(self, state: OnnxState) -> bool:
        return bool(np.isfinite(state.history).all())

    # ------------------------------------------------------------------ the step
    def run(self, observation: Mapping[str, np.ndarray], state: OnnxState) -> tuple[np.ndarray, OnnxState]:
        """Observation arrays (batch first) + state -> (z (B, latent_dim) float32, new state)."""
        feeds = dict(observation)
        feeds["history"], feeds["history_valid"] = state.history, state.valid
        prepared: dict[str, np.ndarray] = {}
        batch: int | None = None
        for name, spec in self._inputs.items():
            if name not in feeds:
                raise ExportError(f"{self.onnx_path}: input '{name}' not given (inputs: {list(self._inputs)})")
            arr = np.asarray(feeds[name])
            if arr.dtype != spec.dtype:
                if spec.dtype == "bool" and arr.dtype.kind not in "bui":
                    raise ExportError(f"{self.onnx_path}: input '{name}' must be boolean, got {arr.dtype}")
                arr = arr.astype(spec.dtype)
            want = [batch if d == BATCH_DIM else d for d in spec.shape]
            if arr.ndim != len(want) or any(w is not None and w != g for w, g in zip(want, arr.shape, strict=True)):
                shown = ["B" if d == BATCH_DIM else d for d in spec.shape]
                raise ExportError(f"{self.onnx_path}: input '{name}' has shape {tuple(arr.shape)}, expected "
                                  f"{tuple(shown)}" + (f" with B={batch}" if batch is not None else ""))
            batch = arr.shape[0] if batch is None else batch
            prepared[name] = np.ascontiguousarray(arr)
        z, history, valid = self.session.run(self._outputs, prepared)
        return z, OnnxState(history, valid)


def provider_config(providers: Sequence[str | tuple[str, dict[str, Any]]], available: Sequence[str],
                    export_dir: Path, manifest: Manifest, trt_max_batch: int = 16
                    ) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, str]]:
    """ONNX Runtime providers with their options, and {provider: why it was left out}.

    TensorRT gets the options that matter on a Jetson (DESIGN §9): FP16 / INT8 from the export's
    precision, the engine and timing caches under the export folder keyed by model hash, GPU name
    and TensorRT version (an engine built for one of them is never loaded for another), and a batch
    profile 1..``trt_max_batch`` so a dynamic batch does not rebuild engines. Options the caller
    passes win: as ``(name, {option: value})`` or, where only strings fit (a ROS string-array
    parameter), as ``"name;option=value;option=value"`` (see ``parse_provider``).
    """
    out: list[tuple[str, dict[str, Any]]] = []
    skipped: dict[str, str] = {}
    for entry in providers:
        name, options = parse_provider(entry) if isinstance(entry, str) else (entry[0], dict(entry[1]))
        if name not in available:
            skipped[name] = f"not in this onnxruntime build (available: {', '.join(available)})"
            continue
        if name == TENSORRT:
            cache = tensorrt_cache_dir(export_dir, manifest.model_hash)
            profile = _trt_profile(manifest)
            options = {
                "trt_fp16_enable": manifest.precision == "fp16",
                "trt_int8_enable": manifest.precision == "int8",  # explicit QDQ: no calibration table
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(cache),
                "trt_timing_cache_enable": True,
                "trt_timing_cache_path": str(cache),
                "trt_profile_min_shapes": profile(1),
                "trt_profile_opt_shapes": profile(1),
                "trt_profile_max_shapes": profile(trt_max_batch),
                **options,
            }
        out.append((name, options))
    if not out:
        raise ExportError(f"{export_dir}: none of the requested providers is available: {skipped}")
    return out, skipped


def parse_provider(entry: str) -> tuple[str, dict[str, str]]:
    """``"TensorrtExecutionProvider;trt_max_workspace_size=1073741824"`` -> (name, {option: value}).

    A plain name has no options. Values stay strings (ONNX Runtime takes provider options as
    strings); ``;`` and ``=`` separate because option values (shape profiles) contain ``,``, ``:``
    and ``x``. A malformed entry is an ExportError naming it.
    """
    name, *parts = (p.strip() for p in entry.split(";"))
    options: dict[str, str] = {}
    for part in parts:
        key, eq, value = part.partition("=")
        if not part or not eq or not key.strip():
            raise ExportError(f"provider entry {entry!r}: options are 'name;key=value;key=value', got {part!r}")
        options[key.strip()] = value.strip()
    if not name:
        raise ExportError(f"provider entry {entry!r}: no provider name before the options")
    return name, options


def _trt_profile(manifest: Manifest):
    """``batch -> "image:Bx3xHxW,depth:..."``: the TensorRT EP's shape-profile syntax."""
    specs = manifest.inputs

    def profile(b: int) -> str:
        return ",".join(f"{s.name}:" + "x".join(str(b if d == BATCH_DIM else d) for d in s.shape) for s in specs)

    return profile


def tensorrt_cache_dir(export_dir: Path, model_hash: str) -> Path:
    """``<export>/trt_cache/<hash16>_<gpu>_trt<version>``; created when first used."""
    key = f"{model_hash[:16]}_{_slug(gpu_name())}_trt{_slug(tensorrt_version())}"
    path = Path(export_dir) / TRT_CACHE_DIR / key
    path.mkdir(parents=True, exist_ok=True)
    return path


def gpu_name() -> str:
    """The GPU's name without CUDA bindings: nvidia-smi, else the Jetson's device-tree model."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip().splitlines()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        return Path("/proc/device-tree/model").read_text().strip("\x00\n ") or "unknown-gpu"
    except OSError:
        return "unknown-gpu"


def tensorrt_version() -> str:
    for dist in ("tensorrt", "tensorrt-cu12", "tensorrt_lean", "tensorrt-libs"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-") or "unknown"
