"""load_model: a checkpoint's H path as the context node runs it (torch or ONNX Runtime), hash
verified and warmed up.

Used at configure in the context process and, for hot reloads with the torch backend, in the
context node's helper process (ros/worker_process.py): a torch LoadedModel pickles (its module's
tensors travel as bytes), so the build, the hash and the warm-up never hold the H loop's
interpreter. An ONNX Runtime session does not pickle; it is built where it runs.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from ..core.checkpoint_files import CheckpointError, read_meta
from ..core.config import ObservationConfig, SageConfig
from ..core.context_step import HBackend
from ..core.observation import Observation, ObservationSchema
from ..core.robot import RobotContract
from .manifest import PRECISIONS, ExportError, find_export, read_manifest

BACKENDS = ("auto", "torch", "onnxruntime")


@dataclass(frozen=True)
class BackendSpec:
    """How the node runs the H path; validated on construction (the parameters' values)."""

    backend: str = "auto"  # auto | torch | onnxruntime
    precision: str = "fp32"  # of the ONNX export
    providers: tuple[str, ...] = ("CPUExecutionProvider",)  # "name" or "name;option=value;..."
    intra_op_threads: int = 1  # ONNX Runtime
    torch_threads: int = 1

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"inference_backend must be one of {list(BACKENDS)}, got {self.backend!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"onnx_precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        if not self.providers or not all(isinstance(p, str) and p.strip() for p in self.providers):
            raise ValueError(f"onnxruntime_providers must be a non-empty list of provider names, "
                             f"got {list(self.providers)}")
        from .onnx_backend import parse_provider

        for entry in self.providers:  # "name" or "name;option=value;...": malformed -> refused here
            parse_provider(entry)
        for key in ("intra_op_threads", "torch_threads"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                name = "onnxruntime_intra_op_threads" if key == "intra_op_threads" else key
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


@dataclass
class LoadedModel:
    backend: HBackend
    backend_name: str  # torch | onnxruntime: what actually runs
    backend_reason: str  # why (auto's choice, or "requested")
    model_dir: str
    sha256: str
    joint_names: tuple
    latent_dim: int
    observation_config: ObservationConfig
    load_ms: float
    providers: tuple[str, ...] = ()  # ONNX Runtime's session providers
    export_dir: str = ""
    h_rate_hz: float = 0.0  # model.h_rate_hz: the H rate it was trained at (0 = not recorded)
    robot: RobotContract | None = None  # the checkpoint's robot contract (or the one it implies)


def resolve_backend(model_dir: str, spec: BackendSpec) -> tuple[str, str]:
    """(torch | onnxruntime, why) for ``spec.backend`` and this checkpoint. ``auto`` picks
    onnxruntime when an export of the checkpoint's current weights at ``spec.precision`` exists
    and its manifest checks out and onnxruntime imports; torch otherwise, saying why."""
    if spec.backend != "auto":
        return spec.backend, "requested (inference_backend)"
    try:
        export = find_export(model_dir, spec.precision)
        read_manifest(export)
    except (ExportError, CheckpointError) as exc:
        return "torch", f"auto: no usable {spec.precision} export ({exc})"
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        return "torch", f"auto: onnxruntime does not import ({exc}); export {export} not used"
    return "onnxruntime", f"auto: {spec.precision} export {export} of the current weights found"


def load_model(model_dir: str, spec: BackendSpec | None = None, backend: str | None = None,
               reason: str = "") -> LoadedModel:
    """Load + warm up a checkpoint (one encode) so the first real H step is not slow.

    ``backend`` (torch | onnxruntime) skips the choice (a reload keeps the running backend);
    otherwise ``resolve_backend`` decides. With onnxruntime nothing here imports torch: the hash
    comes from the verified weights file, the configuration from the export's manifest (which
    must equal the checkpoint's config.json), and the H path from the ONNX graph.
    """
    t0 = time.perf_counter()
    spec = spec or BackendSpec()
    if not model_dir:
        raise CheckpointError("model_dir is empty: set the model_dir parameter to a checkpoint directory")
    if backend is None:
        backend, reason = resolve_backend(model_dir, spec)
    providers: tuple[str, ...] = ()
    export = ""
    if backend == "onnxruntime":
        from ..deploy.onnx_backend import OnnxHPath

        meta = read_meta(model_dir)
        h = OnnxHPath.for_checkpoint(model_dir, spec.precision, providers=list(spec.providers),
                                     intra_op_threads=spec.intra_op_threads)
        if h.manifest.config != meta["config"]:
            raise ExportError(f"{h.manifest.path}: its config differs from {os.path.join(model_dir, 'config.json')} "
                              f"(the checkpoint's config changed after the export); export again")
        sha, obs_cfg, latent_dim = h.model_hash, h.observation_config, h.latent_dim
        cfg = SageConfig.from_dict(meta["config"], os.path.join(model_dir, "config.json"))
        h_rate, robot = cfg.model.h_rate_hz, cfg.robot_contract()
        providers, export = tuple(h.providers), str(h.export_dir)
        if h.skipped_providers:
            reason += "; providers skipped: " + "; ".join(f"{k}: {v}" for k, v in h.skipped_providers.items())
    else:
        import torch

        from ..core.checkpoint import load_checkpoint, model_hash
        from ..core.torch_backend import TorchHBackend

        torch.set_num_threads(spec.torch_threads)
        model = load_checkpoint(model_dir)
        sha = model_hash(model_dir)
        h = TorchHBackend(model)
        obs_cfg, latent_dim = model.cfg.observation, int(model.cfg.model.latent_dim)
        h_rate, robot = model.cfg.model.h_rate_hz, model.cfg.robot_contract()
    arrays, _ = ObservationSchema(obs_cfg).prepare_arrays(Observation())
    h.encode(arrays, h.initial_state())
    return LoadedModel(h, backend, reason, os.path.abspath(model_dir), sha, tuple(obs_cfg.joint_names),
                       int(latent_dim), obs_cfg, (time.perf_counter() - t0) * 1e3, providers, export, h_rate, robot)
