"""``sage-hl``: command-line entry points (model set-up and the demo main job).

    sage-hl init-model --out models/synthetic [--config config/model.yaml] [--robot ROBOT.yaml] [--synthetic-steps 300]
    sage-hl demo [--workdir runs/x] [--quick] [--robot sim_ur6] [--demos N] [--eval-episodes M] [--set wake.steps=800]
    sage-hl demo --evaluate runs/sim_demo_<date>_<time>/models/round0
    sage-hl demo --demos 30 --online-cycles 3      # online sleep: sage_sleeper learns while the arm idles
    sage-hl runtime-demo [--duration-s 20] [--quick]
    sage-hl export MODEL_DIR [--precision fp32 fp16 int8] [--calibration-bags BAG ...]
    sage-hl audit MODEL_DIR --bags BAG ... [--dataset-config config/sim_dataset.yaml]

Node executables have their own entry points (``ros2 run sage_hl_ros <node>``); see README.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .paths import share_dir


def _init_model(args: argparse.Namespace) -> int:
    import torch

    from .core.config import ConfigError
    from .tools.models import make_synthetic_checkpoint

    torch.set_num_threads(args.threads)
    try:
        make_synthetic_checkpoint(args.config, args.out, steps=args.synthetic_steps, image_px=args.image_px,
                                  robot=args.robot)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _runtime_demo(args: argparse.Namespace) -> int:
    from .tools.demo import run_demo

    return run_demo(duration_s=args.duration_s, quick=args.quick, workdir=Path(args.workdir))


# --quick: a few episodes and a short training, for tests and a first look (about 3 minutes).
QUICK = {"demos": 16, "eval_episodes": 5, "val_episodes": 2, "dagger_rounds": 0}
QUICK_TRAIN = ["wake.steps=250", "sleep.steps=20", "dream.steps=20", "eval.probes=false"]


def _demo(args: argparse.Namespace) -> int:
    from .tools.sim_demo import run_sim_demo

    overrides = dict(QUICK) if args.quick else {}
    for key in ("demos", "eval_episodes", "dagger_rounds", "online_cycles", "online_episodes"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.teacher is not None:
        overrides["teacher"] = args.teacher
    if args.robot is not None:
        overrides["robot"] = args.robot
    if args.groot_endpoint is not None:
        overrides["groot_endpoint"] = args.groot_endpoint
    if args.backend is not None:
        overrides["inference_backend"] = args.backend
    train = (QUICK_TRAIN if args.quick else []) + list(args.set)
    workdir = Path(args.workdir or time.strftime("runs/sim_demo_%Y%m%d_%H%M%S"))
    return run_sim_demo(workdir, config=args.config, overrides=overrides, sleep_overrides=train,
                        evaluate=args.evaluate)


def _audit(args: argparse.Namespace) -> int:
    import torch

    from .bags.dataset_config import load_dataset_config
    from .bags.errors import BagError
    from .core.checkpoint import CheckpointError, load_checkpoint
    from .core.config import ConfigError
    from .training.policy_audit import audit_policy, format_audit

    torch.set_num_threads(args.threads)
    try:
        model = load_checkpoint(args.model_dir)
        result = audit_policy(model, args.bags, load_dataset_config(args.dataset_config), split=args.split)
    except (CheckpointError, ConfigError, BagError, ValueError) as exc:
        print(f"sage-hl audit: error: {exc}", file=sys.stderr)
        return 2
    print(format_audit(result), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sage-hl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init-model", help="build a checkpoint from a model config (optionally trained on the "
                                          "synthetic task)")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--config", default=str(share_dir() / "config" / "model.yaml"), help="model config YAML")
    p.add_argument("--synthetic-steps", type=int, default=0, help="training steps on the synthetic reaching task")
    p.add_argument("--robot", default=None, help="robot contract YAML (config/robots/<name>.yaml): the model's "
                                                 "joints and sensors come from it, and the checkpoint stores it")
    p.add_argument("--image-px", type=int, default=0, help="override camera/depth input size (square)")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.set_defaults(func=_init_model)

    p = sub.add_parser("demo", help="main job: MuJoCo arm (Isaac Sim topics) -> expert demos -> sleep training -> "
                                    "DAgger -> SAGE nodes evaluated on held-out targets")
    p.add_argument("--workdir", default=None,
                   help="bags, checkpoints, logs and report; must be new (default runs/sim_demo_<date>_<time>)")
    p.add_argument("--config", default=None, help="demo config YAML (default: the package's config/sim_demo.yaml)")
    p.add_argument("--quick", action="store_true", help="few episodes, short training (tests; about 3 minutes)")
    from .sim.robots import SIM_ROBOTS

    p.add_argument("--robot", choices=list(SIM_ROBOTS), default=None,
                   help="the sim arm for the whole loop: sim_arm7 (7-DoF, the default) or sim_ur6 (6-DoF UR-style, "
                        "fixed + wrist camera, no audio, no tactile); the model config is the robot's")
    p.add_argument("--demos", type=int, default=None, help="expert demonstrations to record")
    p.add_argument("--eval-episodes", type=int, default=None, help="held-out evaluation episodes")
    p.add_argument("--dagger-rounds", type=int, default=None, help="DAgger rounds")
    p.add_argument("--online-cycles", type=int, default=None, metavar="C",
                   help="online sleep after round 0: C cycles of (the SAGE nodes drive, the expert labels -> idle "
                        "-> sage_sleeper trains, gates, hot-reloads -> test targets); last line 'online: ...'")
    p.add_argument("--online-episodes", type=int, default=None, help="on-policy episodes per online cycle")
    p.add_argument("--evaluate", default=None, metavar="MODEL_DIR",
                   help="only evaluate this checkpoint on the held-out targets (expert, nodes, baselines)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="sleep-training override for every round, e.g. wake.steps=800 (repeatable)")
    p.add_argument("--teacher", choices=("expert", "groot"), default=None,
                   help="who labels the demonstrations: the sim's expert, or a GR00T server through "
                        "sage_groot_teacher (default: the config's, expert)")
    p.add_argument("--groot-endpoint", default=None, metavar="tcp://HOST:PORT",
                   help="GR00T policy server for --teacher groot (default: start the protocol stand-in)")
    p.add_argument("--backend", choices=("torch", "onnxruntime"), default=None,
                   help="sage_context's H path while the learned nodes drive (default: the config's, torch); "
                        "onnxruntime exports the checkpoint first where it has no fp32 export")
    p.set_defaults(func=_demo)

    p = sub.add_parser("audit", help="where a checkpoint's steps part from the teacher's labels in some bags, by "
                                     "time in the episode (error, step sizes, gain; sage_hl_ros.training.policy_audit)")
    p.add_argument("model_dir", help="checkpoint directory")
    p.add_argument("--bags", nargs="+", required=True, help="bags with teacher labels (e.g. the policy's own rollouts)")
    p.add_argument("--dataset-config", default=None, help="YAML with a dataset section (default: config/dataset.yaml)")
    p.add_argument("--split", choices=("all", "train", "val"), default="all", help="episodes to audit")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.set_defaults(func=_audit)

    p = sub.add_parser("runtime-demo", help="the H and L nodes on synthetic sensors and a loopback arm: rates and "
                                            "latencies only (no MuJoCo, no training from bags)")
    p.add_argument("--duration-s", type=float, default=20.0, help="how long to run the nodes")
    p.add_argument("--quick", action="store_true", help="short run with a smaller model (for tests)")
    p.add_argument("--workdir", default="runs/demo", help="where the checkpoint, logs and report go")
    p.set_defaults(func=_runtime_demo)

    from .tools import export_cli

    p = sub.add_parser("export", help="ONNX export of the H path (fp32 / fp16 / int8 QDQ) + L step, checked "
                                      "against torch on held-out observations; writes MODEL_DIR/exports/<hash>/")
    export_cli.add_arguments(p)
    p.set_defaults(func=export_cli.run)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
