"""``sage-hl export MODEL_DIR [--precision fp32|fp16|int8 ...] [--calibration-bags BAG ...]``.

Writes ``MODEL_DIR/exports/<model_hash>/<precision>/`` for each precision (see sage_hl_ros.deploy)
and prints each export's check. Exit status 0 when every export passed its check, 2 when one was
refused or the checkpoint / bags are unusable (the message names the file and the problem).
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


def run(args: argparse.Namespace) -> int:
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
