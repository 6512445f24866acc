"""Native TensorRT engine from an export's ONNX H path, plus the binding names an Isaac ROS
``isaac_ros_tensor_rt`` node needs (``sage-hl export MODEL_DIR --tensorrt``).

    info = build_engine("models/current", "fp16")      # TensorRTUnavailable without tensorrt / a GPU
    info["isaac_ros_tensor_rt"]                        # parameters for the Isaac ROS node

Writes, under the export it was built from (engines are specific to the GPU and the TensorRT
version, so the folder is keyed like the ONNX Runtime engine cache)::

    MODEL_DIR/exports/<hash>/<precision>/tensorrt/<hash16>_<gpu>_trt<version>/
        h_path.engine        the serialized engine (``builder.build_serialized_network``)
        h_path.engine.json   I/O tensor names, shapes and dtypes read back from the engine, the
                             isaac_ros_tensor_rt parameters, how the temporal state is carried

Build: explicit-batch network (``create_network(0)`` on TensorRT >= 10, the EXPLICIT_BATCH flag
before), ``OnnxParser.parse_from_file``, a workspace memory-pool limit, the FP16 builder flag for the
fp16 export (whose graph is already FP16 inside; on TensorRT versions that dropped the flag, a
strongly typed network, the graph's own types decide), one optimization profile with batch
1..``max_batch`` (opt 1). The engine is deserialized once after the build and its I/O tensors are
checked against the manifest before anything is written; files appear atomically.

``tensorrt`` is imported only here and only when a build is asked for; where it does not import, or
no CUDA device can be used, :class:`TensorRTUnavailable` says why. Nothing here imports torch, so the
engine can be built on the robot from an export made elsewhere (``--engine-only``).
"""

from __future__ import annotations

import datetime
import os
import tempfile
from pathlib import Path
from typing import Any

from ..core.checkpoint_files import sha256_file
from .manifest import BATCH_DIM, INPUTS, OUTPUTS, ExportError, find_export, read_manifest, write_json_atomic
from .onnx_backend import _slug, gpu_name

ENGINE_DIR = "tensorrt"
ENGINE_FILE = "h_path.engine"
BINDINGS_FILE = "h_path.engine.json"
ENGINE_PRECISIONS = ("fp32", "fp16")
DEFAULT_WORKSPACE_BYTES = 1 << 30  # 1 GiB: an Orin Nano's 8 GB are shared with the CPU


class TensorRTUnavailable(RuntimeError):
    """The ``tensorrt`` package does not import here, or it cannot reach a CUDA device."""


def tensorrt_unavailable() -> str | None:
    """Why no engine can be built on this machine (None when ``tensorrt`` imports)."""
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install failing to load libnvinfer
        return (f"the tensorrt Python package does not import here ({type(exc).__name__}: {exc}); the native "
                "engine builder needs NVIDIA TensorRT's Python bindings and a CUDA GPU (JetPack 6: "
                "`sudo apt install python3-libnvinfer`, x86_64: `pip install tensorrt`); without them the context "
                "node can still run TensorRT through onnxruntime-gpu's TensorrtExecutionProvider "
                "(profile:=jetson_orin_nano), which builds its engine at the first configure")
    return None


def engine_dir(export_dir: str | Path, model_hash: str, trt_version: str) -> Path:
    """``<export>/tensorrt/<hash16>_<gpu>_trt<version>`` (not created)."""
    return Path(export_dir) / ENGINE_DIR / f"{model_hash[:16]}_{_slug(gpu_name())}_trt{_slug(trt_version)}"


def _np_dtype(trt, dtype) -> str:
    names = {"float32": "float32", "float16": "float16", "bool": "bool", "int32": "int32", "int64": "int64",
             "int8": "int8", "uint8": "uint8"}
    for attr, name in names.items():
        if hasattr(trt, attr) and dtype == getattr(trt, attr):
            return name
    return str(dtype)


def build_engine(model_dir: str | Path, precision: str = "fp16", *, max_batch: int = 1,
                 workspace_bytes: int = DEFAULT_WORKSPACE_BYTES, log=print) -> dict[str, Any]:
    """Build and write the engine of ``model_dir``'s ``precision`` export; returns the bindings JSON.

    ExportError: no valid export of the current weights, a graph TensorRT cannot parse or build, or
    an engine whose I/O differs from the manifest. TensorRTUnavailable: no tensorrt / no GPU.
    """
    if precision not in ENGINE_PRECISIONS:
        raise ValueError(f"the native TensorRT builder builds {' or '.join(ENGINE_PRECISIONS)} engines, not "
                         f"{precision!r}; for INT8 run the int8 (QDQ) export on the TensorRT execution provider")
    if max_batch < 1 or workspace_bytes < 1:
        raise ValueError(f"max_batch and workspace_bytes must be >= 1, got {max_batch}, {workspace_bytes}")
    reason = tensorrt_unavailable()
    if reason:
        raise TensorRTUnavailable(reason)
    import tensorrt as trt

    export = find_export(model_dir, precision)
    manifest = read_manifest(export)  # hashes verified: the ONNX file is the one that passed its check
    onnx_path = manifest.file("h_path")
    version = str(trt.__version__)
    logger = trt.Logger(trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
    except Exception as exc:  # no driver / no device: the bindings raise or return None
        raise TensorRTUnavailable(f"tensorrt {version} imports but cannot create a builder ({exc}); is a CUDA "
                                  "GPU visible (nvidia-smi / tegrastats)?") from None
    if builder is None:
        raise TensorRTUnavailable(f"tensorrt {version} imports but cannot create a builder; is a CUDA GPU visible?")

    major = int(version.split(".")[0])
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "no details"
        raise ExportError(f"{onnx_path}: TensorRT {version} cannot parse it ({errors})")
    got_in = [network.get_input(i).name for i in range(network.num_inputs)]
    got_out = [network.get_output(i).name for i in range(network.num_outputs)]
    if got_in != list(INPUTS) or got_out != list(OUTPUTS):
        raise ExportError(f"{onnx_path}: TensorRT sees inputs {got_in} / outputs {got_out}, the export's graph has "
                          f"{list(INPUTS)} / {list(OUTPUTS)}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    fp16_flag = precision == "fp16" and hasattr(trt.BuilderFlag, "FP16")
    if fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for spec in manifest.inputs:
        def shape(b: int, spec=spec) -> tuple[int, ...]:
            return tuple(b if d == BATCH_DIM else int(d) for d in spec.shape)

        profile.set_shape(spec.name, shape(1), shape(1), shape(max_batch))
    config.add_optimization_profile(profile)
    log(f"tensorrt {version}: building the {precision} engine of {onnx_path} (batch 1..{max_batch}, workspace "
        f"{workspace_bytes / 2**20:.0f} MiB{', FP16 flag' if fp16_flag else ''}); this takes minutes on a Jetson")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"{onnx_path}: TensorRT {version} could not build an engine (see the TensorRT log above)")
    data = bytes(serialized)

    # Read the bindings back from the engine itself (what isaac_ros_tensor_rt reads too).
    engine = trt.Runtime(logger).deserialize_cuda_engine(data)
    if engine is None:
        raise ExportError(f"{onnx_path}: the engine TensorRT {version} built does not deserialize")
    tensors: dict[str, list[dict[str, Any]]] = {"inputs": [], "outputs": []}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        kind = "inputs" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "outputs"
        tensors[kind].append({"name": name, "dtype": _np_dtype(trt, engine.get_tensor_dtype(name)),
                              "shape": [int(d) for d in engine.get_tensor_shape(name)]})
    in_names = [t["name"] for t in tensors["inputs"]]
    out_names = [t["name"] for t in tensors["outputs"]]
    if sorted(in_names) != sorted(INPUTS) or sorted(out_names) != sorted(OUTPUTS):
        raise ExportError(f"{onnx_path}: the engine's I/O {in_names} / {out_names} is not the export's "
                          f"{list(INPUTS)} / {list(OUTPUTS)}")
    order = {n: k for k, n in enumerate(INPUTS + OUTPUTS)}  # the manifest's order (order-matched lists)
    for kind in tensors:
        tensors[kind].sort(key=lambda t: order[t["name"]])
    in_names = [t["name"] for t in tensors["inputs"]]
    out_names = [t["name"] for t in tensors["outputs"]]

    out_dir = engine_dir(export, manifest.model_hash, version)
    out_dir.mkdir(parents=True, exist_ok=True)
    engine_path = out_dir / ENGINE_FILE
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{ENGINE_FILE}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, engine_path)
    info = {
        "format_version": 1, "model_hash": manifest.model_hash, "precision": precision,
        "export_dir": str(Path(export).resolve()), "onnx_file": str(Path(onnx_path).resolve()),
        "engine_file": str(engine_path.resolve()), "bindings_file": str((out_dir / BINDINGS_FILE).resolve()),
        "engine_sha256": sha256_file(engine_path),
        "engine_bytes": len(data), "tensorrt_version": version, "gpu": gpu_name(),
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "max_batch": max_batch, "workspace_bytes": int(workspace_bytes), "fp16_flag": fp16_flag,
        # -1 in a shape is the batch axis (the optimization profile's 1..max_batch).
        "inputs": tensors["inputs"], "outputs": tensors["outputs"],
        # isaac_ros_tensor_rt binds each TensorList tensor name to the engine binding of the same
        # position; the tensor names are the ones the upstream encoder node must publish.
        "input_tensor_names": in_names, "input_binding_names": in_names,
        "output_tensor_names": out_names, "output_binding_names": out_names,
        "isaac_ros_tensor_rt": {
            "model_file_path": str(Path(onnx_path).resolve()), "engine_file_path": str(engine_path.resolve()),
            "force_engine_update": False,  # the node's default (true) would rebuild from the ONNX file
            "input_tensor_names": in_names, "input_binding_names": in_names,
            "output_tensor_names": out_names, "output_binding_names": out_names,
            "max_batch_size": max_batch, "max_workspace_size": int(workspace_bytes),
            "enable_fp16": precision == "fp16",
        },
        "state": {**manifest.data.get("state", {}),
                  "note": "the H path is recurrent: every step feeds new_history / new_history_valid back as "
                          "history / history_valid; an isaac_ros_tensor_rt graph needs a node that does this "
                          "(sage_context does it with the onnxruntime backend)"},
        "notes": ["mask, history_valid and new_history_valid are bool tensors: check that the NITROS tensor "
                  "types of the Isaac ROS release in use carry them"],
    }
    write_json_atomic(out_dir / BINDINGS_FILE, info)
    log(f"tensorrt: wrote {engine_path} ({len(data) / 2**20:.1f} MiB) and {out_dir / BINDINGS_FILE}")
    return info
