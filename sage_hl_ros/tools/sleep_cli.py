"""sage-hl-sleep (also ``ros2 run sage_hl_ros sleep_train``): sleep-cycle training from bags.

    sage-hl-sleep --bags bags/today --out models/night_01                       # from scratch
    sage-hl-sleep --bags bags/today --init models/current --out models/night_02  # continue a model
    sage-hl-sleep --bags bags/today --init models/current --replay-bags bags/week1 --out models/night_03
    sage-hl-sleep --bags bags/today --out models/night_01 --resume               # after Ctrl-C / a crash
    sage-hl-sleep --bags bags/today --out models/n1 --set wake.steps=50 --set phases=[wake,dream]
    sage-hl-sleep --bags bags/today --init models/current --out models/n4 --reload-node sage_control
    sage-hl-sleep --bags bags/big --out models/n5 --nproc-per-node 2                 # data-parallel (torchrun)
    sage-hl-sleep --lerobot data/lerobot_day1 --model-config my_model.yaml --out models/n5    # a LeRobot v3 dataset

Phases (``config/sleep.yaml``): wake (learn from the new bags), sleep (prioritized replay of earlier
and new experience + augmentation + distillation from the previous model), dream (each sequence with
a twin whose sensing is dropped / failed / out of range; imagined rollouts of the learned predictive
model are available with ``--set dream.rollout_horizon=3``, off by default). ``--out`` becomes a
checkpoint directory (what a node's ``model_dir`` points at) with ``report/`` (markdown, JSON,
PNG) and ``trainer_state/`` (resumable).
Earlier experience defaults to the bags the ``--init`` checkpoint was trained on, where they exist.
``--reload-node NODE`` sets ``model_dir`` on running nodes afterwards, so they load the new weights
without restarting. Exit codes: 0 done (or stopped by --stop-after), 2 bad config/arguments/data,
3 bad trainer state or checkpoint, 4 a node refused the reload, 130 interrupted (state saved).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sage-hl-sleep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--bags", nargs="+", help="new experience: bag dirs, .mcap/.db3, or folders of bags")
    data.add_argument("--lerobot", nargs="+", metavar="DATASET",
                      help="new experience: LeRobotDataset v3 folders (meta/info.json; e.g. `sage-hl-bag export "
                           "--format lerobot`); the model's robot contract names their joints and cameras. "
                           "--replay-bags / --eval-bags may be LeRobot folders too")
    p.add_argument("--out", required=True, help="output checkpoint directory (report/ and trainer_state/ inside)")
    p.add_argument("--init", help="checkpoint to continue from (default: a new model from --model-config)")
    p.add_argument("--replay-bags", nargs="*", default=None,
                   help="earlier experience for sleep/dream replay (default: what --init was trained on)")
    p.add_argument("--eval-bags", nargs="*", default=None, help="held-out bags (default: the val split of --bags)")
    p.add_argument("--config", help="trainer YAML with a sleep_train section (default: config/sleep.yaml)")
    p.add_argument("--model-config", help="model YAML for a new model (default: config/model.yaml)")
    p.add_argument("--dataset-config", help="YAML with a dataset section (default: config/dataset.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a sleep_train key, e.g. wake.steps=100 or phases=[wake,sleep] (repeatable)")
    p.add_argument("--seed", type=int, help="override sleep_train.seed")
    p.add_argument("--device", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, help="torch CPU threads (0 = torch default)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--stop-after", type=int, metavar="STEPS",
                   help="stop after this many optimiser steps, state saved (time-boxed runs; then --resume)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--nproc-per-node", type=int, default=1, metavar="N",
                   help="data-parallel training on N processes (re-launched under torchrun; gloo on CPU, NCCL on "
                        "CUDA); batch_size is the global batch")
    p.add_argument("--nnodes", type=int, default=1, help="machines in a multi-node job (each runs the same line)")
    p.add_argument("--rdzv-endpoint", default="", metavar="HOST:PORT",
                   help="multi-node: the c10d rendezvous every node joins (e.g. the first node's address:29400)")
    p.add_argument("--reload-node", nargs="*", default=[], metavar="NODE",
                   help="after training, set model_dir on these running nodes (e.g. sage_control sage_context)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--ros-args" in argv:  # `ros2 run` may append ROS arguments; the trainer has no node
        argv = argv[:argv.index("--ros-args")]
    args = build_parser().parse_args(argv)
    if (args.nproc_per_node > 1 or args.nnodes > 1) and "WORLD_SIZE" not in os.environ:
        return _torchrun(args, argv)

    from ..bags.errors import BagError
    from ..core.checkpoint import CheckpointError
    from ..core.config import ConfigError
    from ..training.config import load_train_config
    from ..training.state import StateError
    from ..training.trainer import SleepTrainer

    def err(msg: str) -> None:
        print(f"sage-hl-sleep: error: {msg}", file=sys.stderr, flush=True)

    overrides = list(args.overrides)
    for key, value in (("seed", args.seed), ("device", args.device), ("threads", args.threads)):
        if value is not None:
            overrides.append(f"{key}={value}")
    data = args.bags
    if args.lerobot:
        from pathlib import Path

        bad = [p for p in args.lerobot if not (Path(p) / "meta" / "info.json").is_file()]
        if bad:
            err(f"--lerobot {' '.join(bad)}: not a LeRobot dataset folder (no meta/info.json)")
            return 2
        data = args.lerobot
    try:
        cfg = load_train_config(args.config, overrides)
        trainer = SleepTrainer(cfg, args.out, data, init=args.init, replay_bags=args.replay_bags,
                               eval_bags=args.eval_bags, model_config=args.model_config,
                               dataset_config=args.dataset_config, progress=not args.no_progress)
        try:
            result = trainer.run(resume=args.resume, stop_after=args.stop_after)
        finally:
            if getattr(trainer, "dist", None) is not None:
                trainer.dist.close()
    except (ConfigError, BagError, ValueError, FileNotFoundError) as exc:
        if isinstance(exc, (StateError, CheckpointError)):
            err(str(exc))
            return 3
        err(str(exc))
        return 2
    except KeyboardInterrupt:
        return 130
    if "stopped_at" in result or "rank" in result:  # stopped, or a rank other than 0 (rank 0 reports)
        return 0
    final = result["final"]["new"]
    print(f"sage-hl-sleep: {args.out}: held-out action error {final['action_error']:.4f} rad "
          f"(before training {result['stages'][0]['metrics']['new']['action_error']:.4f}); "
          f"model sha256 {result['model_sha256'][:12]}", flush=True)
    if args.reload_node:
        from ..ros.reload_client import reload_nodes

        results = reload_nodes(str(trainer.out.resolve()), args.reload_node)
        bad = 0
        for node, (ok, reason) in results.items():
            print(f"sage-hl-sleep: reload {node}: {'started' if ok else 'REFUSED'} ({reason})", flush=True)
            bad += not ok
        if bad:
            return 4
    return 0


def _torchrun(args: argparse.Namespace, argv: list[str]) -> int:
    """Re-launch this command on N ranks under torchrun (each rank runs this main without the flags)."""
    from ..training.distributed import torchrun_command

    own = ("--nproc-per-node", "--nnodes", "--rdzv-endpoint")
    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in own:
            skip = True
            continue
        if a.split("=", 1)[0] in own:
            continue
        rest.append(a)
    try:
        cmd = torchrun_command(args.nproc_per_node, rest, args.nnodes, args.rdzv_endpoint)
    except ValueError as exc:
        print(f"sage-hl-sleep: error: {exc}", file=sys.stderr, flush=True)
        return 2
    print("sage-hl-sleep: " + " ".join(cmd), file=sys.stderr, flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(args.threads or 1))}
    code = subprocess.call(cmd, env=env)
    if code:
        print(f"sage-hl-sleep: the data-parallel job failed (exit {code}): torchrun stopped every rank; the "
              "failing rank's error is above", file=sys.stderr, flush=True)
    return code


def entry_point() -> None:
    raise SystemExit(main())


if __name__ == "__main__":
    entry_point()
