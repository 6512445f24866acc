"""sage-hl-bag: record, inspect, replay, repair and convert the runtime's bags.

    sage-hl-bag record bags/run1                      # the runtime topics -> bags/run1 (MCAP)
    sage-hl-bag record bags/run2 --storage sqlite3 --max-bag-duration-s 60 --topics /joint_states /e_stop
    sage-hl-bag info bags/run1 [--json]               # checks every chunk's CRC first
    sage-hl-bag replay bags/run1 --rate 2 --loop      # publishes /clock: run nodes with use_sim_time
    sage-hl-bag repair bags/run1                      # after a crash/SIGKILL: rebuild index + metadata.yaml
    sage-hl-bag convert bags/run1 bags/run2 --out data/ [--config config/dataset.yaml]
    sage-hl-bag convert bags/sim --out data/ --config config/sim_dataset.yaml   # sim bags (model: sim_model.yaml)
    sage-hl-bag export --format lerobot bags/run1 bags/run2 data/lerobot_run --model-dir models/current
    sage-hl-bag export --format lerobot bags/sim data/lerobot_sim --config config/sim_dataset.yaml

Replay skips command, e-stop and /diagnostics topics unless ``--include-commands``. Every
command checks the bag's storage files before using them and exits non-zero with the damaged
file and its problem named (info, convert, repair 1; replay 2 before playing, 1 during).

``record`` and ``replay`` run the ``sage_recorder`` / ``sage_replay`` nodes in this process
(anything after ``--ros-args`` is passed through, e.g. ``--ros-args -p fsync:=false``);
``info``, ``repair``, ``convert`` and ``export`` are pure Python and need no ROS graph.

``export --format lerobot`` writes a LeRobotDataset v3.0 (``bags/lerobot_export.py``): the aligned
steps at ``dataset.rate_hz`` fps, observation.state / observation.velocity / action (the teacher label
where present, else the executed command), one H.264 video per camera of the robot contract at the
model's image size. The robot, joints and image size are the checkpoint's (``--model-dir``) or a
model YAML's (``--model-config``), else the ``--config`` file's observation / model_config, else
config/model.yaml; the alignment is ``--config``'s dataset section.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from ..bags.errors import BagError


def _yaml_list(values) -> str:
    """A string list as a ROS parameter literal; [''] stands for an empty list."""
    items = list(values) or [""]
    return "[" + ",".join("'" + str(v).replace("'", "''") + "'" for v in items) + "]"


def _ros_argv(prog: str, params: dict, extra: list[str]) -> list[str]:
    argv = [prog, "--ros-args"]
    for name, value in params.items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, (list, tuple)):
            value = _yaml_list(value)
        argv += ["-p", f"{name}:={value}"]
    if extra:
        argv += extra[1:] if extra[0] == "--ros-args" else extra
    return argv


def cmd_record(args, extra) -> int:
    from ..ros import recorder_node

    params = {"output_dir": args.output_dir, "storage": args.storage,
              "humble_compatible": not args.no_humble_compatible,
              "max_bag_size_mb": float(args.max_bag_size_mb), "max_bag_duration_s": float(args.max_bag_duration_s),
              "flush_period_s": float(args.flush_period_s), "exit_on_error": True, "autostart": True}
    topic_types = list(args.topic_type or [])
    if args.all:
        params["topics"] = []
    elif args.topics:
        params["topics"] = args.topics
    elif args.model_dir:  # the checkpoint's robot: its contract's topics, with their types
        types = _robot_topic_types(args.model_dir)
        params["topics"] = list(types)
        topic_types = [f"{t}:{ty}" for t, ty in types.items()] + topic_types
    if topic_types:
        params["topic_types"] = topic_types
    if args.qos_override:
        params["qos_overrides"] = args.qos_override
    if args.use_sim_time:
        params["use_sim_time"] = True
    return recorder_node.run(_ros_argv("sage-hl-bag", params, extra))


def _robot_topic_types(model_dir: str) -> dict[str, str]:
    from ..bags.robot_topics import robot_topic_types
    from ..core.checkpoint_files import read_config

    return robot_topic_types(read_config(model_dir).robot_contract())


def cmd_replay(args, extra) -> int:
    from ..ros import replay_node

    params = {"bag": args.bag, "rate": float(args.rate), "loop": args.loop,
              "start_offset_s": float(args.start_offset_s), "publish_clock": not args.no_clock,
              "clock_rate_hz": float(args.clock_rate_hz), "start_paused": args.start_paused}
    if args.topics:
        params["topics"] = args.topics
    if args.include_commands:
        params["include_commands"] = True
    if args.no_verify:
        params["verify"] = False
    return replay_node.run(_ros_argv("sage-hl-bag", params, extra))


def cmd_info(args, extra) -> int:
    from ..bags.info import bag_info, format_info, info_json

    info = bag_info(args.bag, verify=not args.no_verify)
    print(info_json(info) if args.json else format_info(info))
    return 0


def cmd_repair(args, extra) -> int:
    """0: the bag is whole again (dropped chunks are listed); 1: a storage file had nothing readable."""
    from ..bags.repair import repair_bag

    report = repair_bag(args.bag, keep_original=args.keep_original, version=args.version)
    print(report.summary())
    if report.left_out:
        print(f"error: {args.bag}: left out {', '.join(report.left_out)}: nothing in it could be read",
              file=sys.stderr)
        return 1
    return 0


def cmd_convert(args, extra) -> int:
    try:
        from ..bags.dataset_config import configs_for_model
        from ..bags.npz_export import export_samples
    except ImportError as exc:
        print(f"error: bag conversion is not available ({exc})", file=sys.stderr)
        return 2
    obs_cfg = dataset_cfg = None
    if args.checkpoint or args.model_config:
        obs_cfg, dataset_cfg = configs_for_model(args.config, model_config=args.model_config,
                                                 checkpoint=args.checkpoint)
    result = export_samples(args.bags, args.out, args.config, obs_cfg=obs_cfg, dataset_cfg=dataset_cfg)
    if isinstance(result, dict) and "counts" in result:  # the export's index: print its summary
        print(json.dumps({"out": str(args.out), "counts": result["counts"], "seconds": result.get("seconds")}))
    elif result is not None:
        print(result)
    return 0


def cmd_export(args, extra) -> int:
    try:
        from ..bags.dataset_config import _observation_config, load_dataset_config
        from ..bags.lerobot_export import VideoOptions, export_lerobot
    except ImportError as exc:
        print(f"error: LeRobot export is not available ({exc}; pip install pyarrow av)", file=sys.stderr)
        return 2
    if args.model_dir or args.model_config:
        from ..core.checkpoint_files import read_config
        from ..core.config import SageConfig

        sage = read_config(args.model_dir) if args.model_dir else SageConfig.from_yaml(args.model_config)
        obs, robot = sage.observation, sage.robot_contract()
    else:
        obs, robot = _observation_config(args.config)
    dcfg = load_dataset_config(args.config)
    if args.rate_hz is not None:
        dcfg = dataclasses.replace(dcfg, rate_hz=args.rate_hz)
    summary = export_lerobot(args.bags, args.out, obs_cfg=obs, dataset_cfg=dcfg, robot=robot, overwrite=args.overwrite,
                             video=VideoOptions(crf=args.crf, gop=args.gop, preset=args.preset),
                             progress=None if args.quiet else print)
    print(json.dumps(summary))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sage-hl-bag", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("record", help="record topics into a new bag (sage_recorder node)")
    p.add_argument("output_dir", help="bag directory (must not exist or be empty)")
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    p.add_argument("--topics", nargs="+", metavar="TOPIC", help="topics to record (default: the runtime's topics)")
    p.add_argument("-a", "--all", action="store_true", help="record every topic in the graph")
    p.add_argument("--model-dir", default=None, help="record the topics of this checkpoint's robot (its robot "
                   "contract's sensors, joint states and command stream, plus the runtime's latent, teacher, "
                   "e-stop, episode and diagnostics topics)")
    p.add_argument("--topic-type", nargs="+", metavar="TOPIC:TYPE",
                   help="types of topics not yet advertised, added to the runtime topics' types "
                        "(subscribed at once), e.g. /e_stop:std_msgs/msg/Empty")
    p.add_argument("--qos-override", nargs="+", metavar="TOPIC:RELIABILITY[:DEPTH[:DURABILITY]]")
    p.add_argument("--max-bag-size-mb", type=float, default=0.0, help="split at this size (0: never)")
    p.add_argument("--max-bag-duration-s", type=float, default=0.0, help="split after this long (0: never)")
    p.add_argument("--flush-period-s", type=float, default=1.0)
    p.add_argument("--no-humble-compatible", action="store_true",
                   help="metadata.yaml version 9 (not readable by ROS 2 Humble) instead of 8")
    p.add_argument("--use-sim-time", action="store_true", help="stamp messages with /clock time")
    p.set_defaults(func=cmd_record)

    p = sub.add_parser("info", help="check a bag (chunk CRCs) and summarise it: topics, counts, duration, episodes")
    p.add_argument("bag")
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-verify", action="store_true",
                   help="read only the summary: do not check every chunk's CRC (says so in the output)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("replay", help="publish a bag with its original timing and /clock (sage_replay node)")
    p.add_argument("bag")
    p.add_argument("--rate", type=float, default=1.0)
    p.add_argument("--loop", action="store_true")
    p.add_argument("--start-offset-s", type=float, default=0.0)
    p.add_argument("--topics", nargs="+", metavar="TOPIC")
    p.add_argument("--no-clock", action="store_true", help="do not publish /clock")
    p.add_argument("--clock-rate-hz", type=float, default=100.0)
    p.add_argument("--start-paused", action="store_true", help="wait for the ~/resume service before playing")
    p.add_argument("--include-commands", action="store_true",
                   help="also replay command, e-stop and /diagnostics topics (skipped by default: they drive "
                        "a live robot past its safety filter)")
    p.add_argument("--no-verify", action="store_true", help="do not check the storage files before playing")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("repair", help="rebuild metadata.yaml and unclosed MCAP files after a crash; drop chunks "
                                      "that fail their CRC (listed)")
    p.add_argument("bag")
    p.add_argument("--keep-original", action="store_true", help="keep rewritten files as <file>.damaged")
    p.add_argument("--version", type=int, choices=(8, 9), default=None,
                   help="metadata.yaml version (default: that of the recording; 8 is readable by Humble)")
    p.set_defaults(func=cmd_repair)

    p = sub.add_parser("convert", help="bags -> aligned training samples (sage_hl_ros.bags.bag_dataset)")
    p.add_argument("bags", nargs="+", help="bag directories")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--config", default=None,
                   help="YAML with a `dataset` section (and optionally `observation` or `model_config`); "
                        "default config/dataset.yaml")
    model = p.add_mutually_exclusive_group()
    model.add_argument("--model-config", default=None,
                       help="model YAML whose observation section and action_chunk the samples follow")
    model.add_argument("--checkpoint", default=None,
                       help="checkpoint directory whose observation config and action_chunk the samples follow")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("export", help="bags -> a LeRobotDataset v3.0 folder (parquet + MP4 video per camera)")
    p.add_argument("--format", choices=("lerobot",), required=True, help="output format")
    p.add_argument("bags", nargs="+", metavar="BAG", help="bag directories, .mcap/.db3 files or folders of bags")
    p.add_argument("out", metavar="OUT", help="output folder (the dataset's root)")
    model = p.add_mutually_exclusive_group()
    model.add_argument("--model-dir", "--checkpoint", dest="model_dir", default=None,
                       help="checkpoint whose robot contract (joints, cameras) and observation (image size) the "
                            "dataset follows")
    model.add_argument("--model-config", default=None, help="model YAML to take them from instead")
    p.add_argument("--config", default=None, help="YAML with a `dataset` section (rate_hz = fps, topics, require, "
                   "exclude_outcomes...; optionally `observation` or `model_config`); default config/dataset.yaml")
    p.add_argument("--rate-hz", type=float, default=None, help="override dataset.rate_hz (the dataset's fps)")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset already in OUT")
    p.add_argument("--crf", type=int, default=23, help="libx264 quality (lower: better, larger)")
    p.add_argument("--gop", type=int, default=2, help="key frame interval (LeRobot's default 2: fast random access)")
    p.add_argument("--preset", default="veryfast", help="libx264 preset")
    p.add_argument("--quiet", action="store_true", help="print only the JSON summary")
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--ros-args" in argv:
        i = argv.index("--ros-args")
        argv, extra = argv[:i], argv[i:]
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args, extra) or 0)
    except (BagError, ValueError, OSError) as exc:  # bad bags, configs, paths: a message, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1


def entry_point() -> None:
    raise SystemExit(main())


if __name__ == "__main__":
    entry_point()
