"""``sage-hl``: command-line entry points (model set-up and the demo main job).

    sage-hl init-model --out models/synthetic [--config config/model.yaml] [--synthetic-steps 300]
    sage-hl demo [--duration-s 20] [--quick]

Node executables have their own entry points (``ros2 run sage_hl_ros <node>``); see README.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .paths import share_dir


def _init_model(args: argparse.Namespace) -> int:
    import torch

    from .core.config import ConfigError
    from .tools.models import make_synthetic_checkpoint

    torch.set_num_threads(args.threads)
    try:
        make_synthetic_checkpoint(args.config, args.out, steps=args.synthetic_steps, image_px=args.image_px)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .tools.demo import run_demo

    return run_demo(duration_s=args.duration_s, quick=args.quick, workdir=Path(args.workdir))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sage-hl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init-model", help="build a checkpoint from a model config (optionally trained on the "
                                          "synthetic task)")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--config", default=str(share_dir() / "config" / "model.yaml"), help="model config YAML")
    p.add_argument("--synthetic-steps", type=int, default=0, help="training steps on the synthetic reaching task")
    p.add_argument("--image-px", type=int, default=0, help="override camera/depth input size (square)")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.set_defaults(func=_init_model)

    p = sub.add_parser("demo", help="main job: bring the H and L nodes up on synthetic sensors and a simulated arm, "
                                    "print rates and latencies")
    p.add_argument("--duration-s", type=float, default=20.0, help="how long to run the nodes")
    p.add_argument("--quick", action="store_true", help="short run with a smaller model (for tests)")
    p.add_argument("--workdir", default="runs/demo", help="where the checkpoint, logs and report go")
    p.set_defaults(func=_demo)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
