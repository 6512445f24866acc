#!/usr/bin/env python3
"""Recorder benchmark (DESIGN §8): 2 cameras 640x480 rgb8 @ 30 Hz + depth 640x480 32FC1 @ 30 Hz +
joint states @ 500 Hz (+ teacher labels @ 50 Hz, so the bag makes training samples) for 60 s.

The publishers run in this process, ``sage_recorder`` in another (separate processes matter on
2 cores: one GIL each). All publishers are reliable keep-last (depth 60 for images = 2 s, 1000
for joint states), so the recorder (reliability "auto" -> reliable) loses nothing while it keeps
up; every lost message is the recorder's fault, not the transport's. A warm-up phase publishes
until the recorder reports receiving every topic (closing the DDS discovery gap), then the
measured phase stamps ``frame_id = "bench"``; only those messages are counted on both sides.

Transport: Fast DDS's default shared-memory segment is 512 KB, smaller than one 640x480 rgb8
frame (900 KB). Large samples then thrash the sender's segment; measured here (3 such streams
+ 500 Hz joint states, one publisher process): joint-state latency p50 0.4-0.7 s, seconds-long
stalls, 10-30% of messages lost over 60 s, for the recorder and for a plain counting
subscriber alike. With a 64 MB segment (the profile below, given to every process through
``FASTDDS_DEFAULT_PROFILES_FILE``): p50 0.2 ms, nothing lost. The benchmark uses that profile
unless ``--fastdds-default``; on a robot, camera drivers and recorder need it too (it is the
*sender's* segment that matters). Other RMWs ignore the file.

Reports per topic published vs recorded, dropped, recorded MB/s, recorder CPU% (psutil, % of
one core, over the measured phase), the recorder's own queue peak and DDS-lost counters, the
CPU the rest of the machine used meanwhile, and the bag -> samples throughput of
``sage_hl_ros.bags.bag_dataset.BagDataset`` (samples = T-step training sequences per second,
images decoded and resized, 1 thread). Last line:

    bench_record: published=<n> recorded=<m> dropped=<d> mb_per_s=<x> cpu_pct=<c> samples_per_s=<s>

    python bench/bench_record.py            # 60 s
    python bench/bench_record.py --quick    # 10 s
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

JOINTS = [f"joint{i}" for i in range(1, 8)]
W, H = 640, 480
TOPICS = {  # topic -> (type, rate Hz)
    "/camera/image_raw": ("sensor_msgs/msg/Image", 30.0),
    "/wrist_camera/image_raw": ("sensor_msgs/msg/Image", 30.0),
    "/camera/depth/image_raw": ("sensor_msgs/msg/Image", 30.0),
    "/joint_states": ("sensor_msgs/msg/JointState", 500.0),
    "/teacher/joint_command": ("sensor_msgs/msg/JointState", 50.0),
}
BENCH_FRAME = b"bench"

# Fast DDS profile with a 64 MB shared-memory segment (default 512 KB): config/fastdds_large_data.xml
from sage_hl_ros.paths import config_file  # noqa: E402

FASTDDS_LARGE_DATA_XML = config_file("fastdds_large_data.xml")


def frame_id(data: bytes) -> bytes:
    """frame_id of a serialized message that starts with std_msgs/Header (CDR: 4 B encapsulation,
    8 B stamp, then the string)."""
    (n,) = struct.unpack_from("<I", data, 12)
    return bytes(data[16:16 + max(0, n - 1)])


def make_messages():
    from sensor_msgs.msg import Image, JointState

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    depth = (0.5 + rng.random((H, W), dtype=np.float32)).astype(np.float32)
    msgs = {}
    for topic, arr, enc, step in (("/camera/image_raw", rgb, "rgb8", W * 3),
                                  ("/wrist_camera/image_raw", rgb[::-1].copy(), "rgb8", W * 3),
                                  ("/camera/depth/image_raw", depth, "32FC1", W * 4)):
        m = Image(height=H, width=W, encoding=enc, step=step)
        m.data = arr.tobytes()  # DESIGN §6: bytes, not an ndarray
        msgs[topic] = m
    js = JointState(name=list(JOINTS), position=[0.1] * 7, velocity=[0.0] * 7, effort=[0.0] * 7)
    teacher = JointState(name=list(JOINTS), position=[0.12] * 7)
    msgs["/joint_states"] = js
    msgs["/teacher/joint_command"] = teacher
    return msgs


def recorder_diag(latest: dict, name: str) -> dict:
    st = latest.get(f"sage_recorder: {name}")
    return st[2] if st else {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10 s instead of 60 s")
    parser.add_argument("--duration-s", type=float, default=None)
    parser.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    parser.add_argument("--out", default=None, help="bag directory parent (default: a temp dir, deleted)")
    parser.add_argument("--no-fsync", action="store_true", help="recorder fsync:=false")
    parser.add_argument("--no-samples", action="store_true", help="skip the bag -> samples measurement")
    parser.add_argument("--fastdds-default", action="store_true",
                        help="keep Fast DDS's default transports (512 KB shared-memory segment) instead of the "
                             "large-data profile")
    args = parser.parse_args()
    duration = args.duration_s or (10.0 if args.quick else 60.0)

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", str(150 + os.getpid() % 50))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import psutil
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image, JointState

    workdir = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_record_"))
    workdir.mkdir(parents=True, exist_ok=True)
    transport = "Fast DDS defaults"
    if not args.fastdds_default:
        if os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE"):
            transport = f"profile {os.environ['FASTDDS_DEFAULT_PROFILES_FILE']} (from the environment)"
        else:
            # before rclpy.init; the recorder inherits it
            os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(FASTDDS_LARGE_DATA_XML)
            transport = "64 MB shared-memory segment profile"
    bag = workdir / f"bag_{int(time.time())}"
    name = "bench_recorder"
    rec_cmd = [sys.executable, "-m", "sage_hl_ros.ros.recorder_node", "--ros-args", "-r", f"__node:={name}",
               "-p", f"output_dir:={bag}", "-p", f"storage:={args.storage}",
               "-p", "topics:=[" + ",".join(f"'{t}'" for t in TOPICS) + "]",
               "-p", "topic_types:=[" + ",".join(f"'{t}:{ty}'" for t, (ty, _) in TOPICS.items()) + "]",
               "-p", "diagnostics_period_s:=0.5", "-p", f"fsync:={'false' if args.no_fsync else 'true'}"]
    log = open(workdir / "recorder.log", "w")  # noqa: SIM115
    rec = subprocess.Popen(rec_cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                           env={**os.environ, "PYTHONUNBUFFERED": "1"})
    rec_ps = psutil.Process(rec.pid)

    rclpy.init()
    node = Node("bench_record_publisher")
    latest: dict = {}

    def on_diag(msg):
        for st in msg.status:
            lvl = st.level if isinstance(st.level, int) else int.from_bytes(st.level, "little")
            latest[st.name] = (lvl, st.message, {kv.key: kv.value for kv in st.values})

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag,
                             QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    pubs = {}
    for topic, (ty, _rate) in TOPICS.items():
        cls = Image if ty.endswith("Image") else JointState
        depth = 150 if cls is Image else 5000  # 5 s (10 s of joints): rides out scheduling stalls
        pubs[topic] = node.create_publisher(cls, topic, QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=ReliabilityPolicy.RELIABLE))
    msgs = make_messages()
    published: Counter = Counter()
    code = 0
    try:
        # Warm-up: until the recorder reports receiving every topic.
        t_warm = time.monotonic()
        while True:
            d = recorder_diag(latest, name)
            pending = [t for t in TOPICS if int(d.get(f"received {t}", "0")) == 0]
            if not pending:
                break
            if rec.poll() is not None or time.monotonic() - t_warm > 60:
                raise RuntimeError(f"recorder not receiving {pending} (see {workdir / 'recorder.log'})")
            for t in pending:
                msgs[t].header.frame_id = "warmup"
                pubs[t].publish(msgs[t])
            time.sleep(0.1)
        for m in msgs.values():
            m.header.frame_id = BENCH_FRAME.decode()

        # Measured phase: absolute deadlines per topic, one thread.
        me = psutil.Process()
        cpu0, me0, sys0 = rec_ps.cpu_times(), me.cpu_times(), psutil.cpu_times()
        t0 = time.monotonic()
        nxt = {t: t0 for t in TOPICS}
        period = {t: 1.0 / r for t, (_ty, r) in TOPICS.items()}
        late_max = 0.0
        end = t0 + duration
        while True:
            now = time.monotonic()
            if now >= end:
                break
            topic = min(nxt, key=nxt.get)
            due = nxt[topic]
            if due > now:
                time.sleep(min(due - now, end - now))
                continue
            late_max = max(late_max, now - due)
            msg = msgs[topic]
            stamp = node.get_clock().now().to_msg()
            msg.header.stamp = stamp
            if topic == "/joint_states":
                msg.position = [0.1 + 0.001 * (published[topic] % 100)] * 7
            pubs[topic].publish(msg)
            published[topic] += 1
            nxt[topic] = due + period[topic]
        t_pub = time.monotonic() - t0
        # Drain: wait until the recorder has received everything (or stops making progress).
        expect = sum(published.values())
        last, stall = -1, time.monotonic()
        while time.monotonic() - stall < 5.0:
            d = recorder_diag(latest, name)
            got = sum(int(d.get(f"received {t}", "0")) for t in TOPICS)  # includes warm-up messages
            if got != last:
                last, stall = got, time.monotonic()
            if d and float(d.get("queue_mb", "1")) == 0.0 and got >= expect:
                break
            time.sleep(0.2)
        cpu1, me1, sys1 = rec_ps.cpu_times(), me.cpu_times(), psutil.cpu_times()
        t_rec = time.monotonic() - t0
        diag = recorder_diag(latest, name)
        os.killpg(rec.pid, signal.SIGINT)
        rec.wait(120)
    finally:
        if rec.poll() is None:
            os.killpg(rec.pid, signal.SIGKILL)
            rec.wait()
        log.close()
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown()
    if rec.returncode != 0:
        print((workdir / "recorder.log").read_text()[-3000:])
        code = 1

    # Count what was recorded (measured phase only), read back with rosbags.
    from rosbags.rosbag2 import Reader

    recorded: Counter = Counter()
    latency: dict[str, list[float]] = {t: [] for t in TOPICS}
    nbytes = 0
    with Reader(bag) as reader:
        for conn, t_recv, data in reader.messages():
            if frame_id(data) == BENCH_FRAME:
                recorded[conn.topic] += 1
                nbytes += len(data)
                sec, nsec = struct.unpack_from("<iI", data, 4)  # header stamp: publish time, same clock
                latency[conn.topic].append((t_recv - (sec * 1_000_000_000 + nsec)) * 1e-6)
    bag_bytes = sum(p.stat().st_size for p in bag.iterdir())
    cpu_s = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    cpu_pct = 100.0 * cpu_s / t_rec
    pub_pct = 100.0 * ((me1.user - me0.user) + (me1.system - me0.system)) / t_rec
    busy = sum(getattr(sys1, f) - getattr(sys0, f) for f in ("user", "nice", "system", "irq", "softirq", "steal"))
    total = busy + (sys1.idle - sys0.idle) + (sys1.iowait - sys0.iowait)
    others_pct = max(0.0, 100.0 * busy / total * (os.cpu_count() or 1) - cpu_pct - pub_pct)
    iowait_pct = 100.0 * (sys1.iowait - sys0.iowait) / total * (os.cpu_count() or 1)
    mb_s = nbytes / 1e6 / t_pub

    print(f"bench_record: {duration:.0f} s, storage {args.storage}, fsync {not args.no_fsync}, "
          f"{os.cpu_count()} cores, transport: {transport}; publisher max lateness {late_max * 1e3:.1f} ms")
    print(f"{'topic':28s} {'rate':>7s} {'published':>10s} {'recorded':>9s} {'dropped':>8s} "
          f"{'latency p50':>12s} {'p99':>9s}  (publish -> recorder callback)")
    for t, (_ty, r) in TOPICS.items():
        lat = np.array(latency[t]) if latency[t] else np.array([np.nan])
        print(f"{t:28s} {r:7.0f} {published[t]:10d} {recorded[t]:9d} {published[t] - recorded[t]:8d} "
              f"{np.percentile(lat, 50):9.2f} ms {np.percentile(lat, 99):6.1f} ms")
    print(f"machine: publisher process {pub_pct:.0f}%, everything else (other users, kernel writeback) "
          f"{others_pct:.0f}%, iowait {iowait_pct:.0f}% (% of one core; {os.cpu_count()} cores = "
          f"{100 * (os.cpu_count() or 1)}%)")
    print(f"recorder: cpu {cpu_pct:.1f}% of one core over {t_rec:.1f} s; "
          f"queue peak {diag.get('queue_peak_mb', '?')} MB; dropped_queue_full {diag.get('dropped_queue_full', '?')}; "
          f"dds_messages_lost {diag.get('dds_messages_lost', '?')}")
    print(f"bag: {bag_bytes / 1e6:.1f} MB on disk in {len(list(bag.glob('*.mcap')) or list(bag.glob('*.db3')))} "
          f"file(s); payload {nbytes / 1e6:.1f} MB in {t_pub:.1f} s = {mb_s:.1f} MB/s")

    samples_per_s = "n/a"
    if not args.no_samples:
        try:
            import torch

            from sage_hl_ros.bags.bag_dataset import BagDataset
            from sage_hl_ros.bags.dataset_config import load_dataset_config
            from sage_hl_ros.core.config import SageConfig
            from sage_hl_ros.paths import config_file

            torch.set_num_threads(1)
            obs_cfg = SageConfig.from_yaml(config_file("model.yaml")).observation
            ds = BagDataset([bag], obs_cfg, load_dataset_config())
            t_s = time.perf_counter()
            n_seq = n_steps = 0
            for seq in ds.iter_sequences("all"):
                n_seq += 1
                n_steps += int(seq.obs.joint_position.shape[0]) if hasattr(seq, "obs") else 0
            dt = time.perf_counter() - t_s
            # samples = observation steps, the unit of bench_core's train_samples_per_s
            samples_per_s = f"{n_steps / dt:.1f}"
            print(f"bag -> samples: {n_seq} sequences ({n_steps} observation steps, "
                  f"{obs_cfg.image_width_px}x{obs_cfg.image_height_px} px) in {dt:.2f} s = {samples_per_s} samples/s "
                  f"(1 thread; compare bench_core train_samples_per_s)")
        except ImportError as exc:
            print(f"bag -> samples: n/a ({exc})")
    if not args.out:
        shutil.rmtree(workdir, ignore_errors=True)
    total_pub = sum(published.values())
    total_rec = sum(recorded[t] for t in TOPICS)
    print(f"bench_record: published={total_pub} recorded={total_rec} dropped={total_pub - total_rec} "
          f"mb_per_s={mb_s:.1f} cpu_pct={cpu_pct:.1f} samples_per_s={samples_per_s}")
    return code


if __name__ == "__main__":
    sys.exit(main())
