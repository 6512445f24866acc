"""``sage-hl export MODEL_DIR [--precision fp32|fp16|int8 ...] [--calibration-bags BAG ...] [--tensorrt]``.

Writes ``MODEL_DIR/exports/<model_hash>/<precision>/`` for each precision (see sage_hl_ros.deploy)
and prints each export's check. With ``--tensorrt`` it then builds a native TensorRT engine of each
fp32 / fp16 export, with the binding names an Isaac ROS ``isaac_ros_tensor_rt`` node needs
(deploy/tensorrt_engine.py); ``--engine-only`` builds them from the exports already there (no torch,
no re-export: on the robot, from exports made elsewhere).

Exit status 0 when everything asked for was written, 2 when an export was refused or the checkpoint /
bags / export are unusable (the message names the file and the problem), 3 when ``--tensorrt`` cannot
run on this machine (tensorrt does not import, or no CUDA GPU): said before anything is exported.
"""

from __future__ import annotations

import argparse
import sys

from ..deploy.manifest import PRECISIONS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", help="checkpoint directory (config.json, model.safetensors, normalizer.json)")
    p.add_argument("--precision", nargs="+", choices=PRECISIONS, default=["fp32"], metavar="P",
                   help="one or more of fp32 fp16 int8 (the FP32 graph is exported once for all)")
    p.add_argument("--calibration-bags", nargs="+", default=[], metavar="BAG",
                   help="bags for INT8 calibration (and held-out observations when the checkpoint has no "
                        "validation data); default: synthetic observations of the model's config")
    p.add_argument("--held-out-sequences", type=int, default=16, help="held-out sequences for the check")
    p.add_argument("--held-out-steps", type=int, default=4, help="steps per held-out sequence (state carried)")
    p.add_argument("--max-abs-dz", type=float, default=1e-4, help="FP32 check: ORT vs torch latent, absolute")
    p.add_argument("--max-action-error-ratio", type=float, default=1.05,
                   help="every precision: held-out action error with the ORT latent / with the torch latent")
    p.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads")
    p.add_argument("--tensorrt", action="store_true",
                   help="also build a native TensorRT engine (.engine + bindings JSON for isaac_ros_tensor_rt) of "
                        "each fp32/fp16 export; needs the tensorrt Python package and a CUDA GPU")
    p.add_argument("--engine-only", action="store_true",
                   help="with --tensorrt: build from the existing exports of the current weights (no re-export, "
                        "no torch)")
    p.add_argument("--tensorrt-max-batch", type=int, default=1, help="engine batch range 1..N (default 1)")
    p.add_argument("--tensorrt-workspace-mib", type=int, default=1024,
                   help="TensorRT builder workspace limit [MiB] (default 1024)")


def run(args: argparse.Namespace) -> int:
    engines = []
    if args.engine_only and not args.tensorrt:
        print("error: --engine-only builds TensorRT engines: add --tensorrt", file=sys.stderr)
        return 2
    if args.tensorrt:
        from ..deploy.tensorrt_engine import ENGINE_PRECISIONS, tensorrt_unavailable

        engines = [p for p in dict.fromkeys(args.precision) if p in ENGINE_PRECISIONS]
        if not engines:
            print(f"error: --tensorrt builds {' / '.join(ENGINE_PRECISIONS)} engines: add --precision fp16 (or "
                  f"fp32); INT8 runs on the TensorRT execution provider from the int8 export", file=sys.stderr)
            return 2
        reason = tensorrt_unavailable()
        if reason:  # before minutes of exporting, and never a pretend engine
            print(f"error: --tensorrt: {reason}", file=sys.stderr)
            return 3
    if not args.engine_only:
        code = _export(args)
        if code:
            return code
    return _engines(args, engines) if engines else 0


def _engines(args: argparse.Namespace, precisions: list[str]) -> int:
    from ..core.checkpoint_files import CheckpointError
    from ..deploy.manifest import ExportError
    from ..deploy.tensorrt_engine import TensorRTUnavailable, build_engine

    for precision in precisions:
        try:
            info = build_engine(args.model_dir, precision, max_batch=args.tensorrt_max_batch,
                                workspace_bytes=args.tensorrt_workspace_mib * 2**20)
        except TensorRTUnavailable as exc:
            print(f"error: --tensorrt: {exc}", file=sys.stderr)
            return 3
        except (ExportError, CheckpointError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"tensorrt: precision={precision} engine={info['engine_file']} "
              f"bindings={info['bindings_file']} "
              f"inputs={','.join(info['input_binding_names'])} outputs={','.join(info['output_binding_names'])}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from ..bags.errors import BagError
    from ..core.checkpoint_files import CheckpointError
    from ..core.config import ConfigError
    from ..deploy.export import ExportConfig, export_model
    from ..deploy.manifest import ExportError

    try:
        cfg = ExportConfig(precisions=list(dict.fromkeys(args.precision)), calibration_bags=args.calibration_bags,
                           held_out_sequences=args.held_out_sequences, held_out_steps=args.held_out_steps,
                           max_abs_dz=args.max_abs_dz, max_action_error_ratio=args.max_action_error_ratio,
                           threads=args.threads)
        results = export_model(args.model_dir, cfg)
    except (ExportError, CheckpointError, ConfigError, BagError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for precision, manifest in results.items():
        c = manifest["check"]
        vs = c.get("action_error_ratio_vs_fp32_onnx")
        print(f"export: precision={precision} max_abs_dz={c['max_abs_dz']:.3g} "
              f"action_error_ratio={c['action_error_ratio']:.4f}"
              + (f" action_error_ratio_vs_fp32={vs:.4f}" if vs is not None else "")
              + f" held_out={manifest['held_out']['source']}")
    return 0
