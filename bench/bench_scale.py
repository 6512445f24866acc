"""Training at scale on this machine: samples/s with 1 and 2 processes, bag decoding with 0/1/2
workers, bag read passes, and peak memory against bag size (issue 15).

Everything runs through the real command line (`sage-hl-sleep`), each run in its own process, and
reads the trainer's own report (samples/s per phase, data load time, read passes); peak memory is the
sum of the RSS of the run's process tree, polled every 0.1 s.

    .venv/bin/python bench/bench_scale.py [--episodes 30] [--steps 20] [--image-px 64] [--wake-steps 60]

Last line: ``bench_scale: samples_per_s_1proc=<a> samples_per_s_2proc=<b> read_passes=<p>
mem_mb_small=<m1> mem_mb_large=<m2>`` (memory with ``replay_store=disk``; goal m2 <= 1.2 x m1 for a
4x larger bag).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil


def _bags(root: Path, image_px: int, episodes: int, steps: int) -> tuple[Path, Path, Path]:
    from sage_hl_ros.bags.synthetic import SyntheticBagSpec, write_synthetic_bag
    from sage_hl_ros.core.config import SageConfig

    model = root / "model.yaml"
    model.write_text(f"observation:\n  image_height_px: {image_px}\n  image_width_px: {image_px}\n"
                     f"  depth_height_px: {image_px}\n  depth_width_px: {image_px}\n  audio_window_samples: 1024\n")
    obs = SageConfig.from_yaml(model).observation
    spec = dict(steps_per_episode=steps, start_noise_rad=0.8)
    small = write_synthetic_bag(root / "small", obs, SyntheticBagSpec(episodes=episodes, seed=1, **spec))
    large = write_synthetic_bag(root / "large", obs, SyntheticBagSpec(episodes=4 * episodes, seed=2, **spec))
    return model, small, large


def _run(root: Path, model: Path, bag: Path, out: str, *extra: str) -> tuple[dict, float, float]:
    """(report, wall s, peak RSS MB of the process tree)."""
    (root / "dataset.yaml").write_text("dataset:\n  val_fraction: 0.1\n")
    cmd = [sys.executable, "-m", "sage_hl_ros.tools.sleep_cli", "--bags", str(bag), "--out", str(root / out),
           "--model-config", str(model), "--dataset-config", str(root / "dataset.yaml"), "--threads", "1",
           "--no-progress", "--seed", "1", "--set", "eval.probes=false", "--set", "eval.plots=false",
           "--set", "eval.sequence_steps=4", "--set", "eval.max_sequences=16", *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0.0
    parent = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            tree = [parent, *parent.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()) / 2**20)
        except psutil.Error:
            pass
        time.sleep(0.1)
    wall = time.perf_counter() - t0
    output = proc.stdout.read()
    if proc.returncode != 0:
        raise SystemExit(f"bench_scale: {out} failed (exit {proc.returncode}):\n{output[-3000:]}")
    return json.loads((root / out / "report" / "report.json").read_text()), wall, peak


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=30, help="episodes of the small bag (the large has 4x)")
    ap.add_argument("--steps", type=int, default=20, help="steps per episode")
    ap.add_argument("--image-px", type=int, default=64)
    ap.add_argument("--wake-steps", type=int, default=60)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        model, small, large = _bags(root, args.image_px, args.episodes, args.steps)
        size = {b: sum(f.stat().st_size for f in b.rglob("*") if f.is_file()) / 2**20 for b in (small, large)}
        print(f"bags: small {size[small]:.0f} MB ({args.episodes} episodes), large {size[large]:.0f} MB "
              f"({4 * args.episodes}), written in {time.perf_counter() - t0:.0f} s", flush=True)
        train = ["--set", "phases=[wake]", "--set", f"wake.steps={args.wake_steps}", "--set", "batch_size=16"]

        speed = {}
        for label, extra in (("1proc", []), ("2proc", ["--nproc-per-node", "2"])):
            rep, wall, _ = _run(root, model, small, f"speed_{label}", *train, *extra)
            speed[label] = rep["phases"]["wake"]["samples_per_s"]
            print(f"training {label}: {speed[label]:.1f} samples/s (wake, global batch 16), wall {wall:.0f} s",
                  flush=True)

        decode = {}
        for workers in (0, 1, 2):
            rep, wall, _ = _run(root, model, large, f"workers{workers}", "--set", "phases=[wake]",
                                "--set", "wake.steps=1", "--set", f"decode_workers={workers}")
            seqs = rep["data"]["train_sequences"]["new"]
            decode[workers] = seqs / rep["data"]["load_seconds"]
            print(f"decode_workers={workers}: {seqs} sequences in {rep['data']['load_seconds']:.1f} s "
                  f"({decode[workers]:.1f} sequences/s, includes the held-out set)", flush=True)

        mem, passes = {}, None
        for label, bag in (("small", small), ("large", large)):
            rep, wall, peak = _run(root, model, bag, f"mem_{label}", *train, "--set", "replay_store=disk")
            mem[label], passes = peak, rep["data"]["read_passes"]
            print(f"memory {label} bag ({size[bag]:.0f} MB, replay_store=disk): peak RSS {peak:.0f} MB; "
                  f"bag read passes (with images) {passes}", flush=True)
        _, _, peak_mem = _run(root, model, large, "mem_large_memory", *train)
        print(f"memory large bag with replay_store=memory (reference): peak RSS {peak_mem:.0f} MB", flush=True)
        ratio = mem["large"] / mem["small"]
        print(f"memory ratio large/small (4x the bag): {ratio:.2f} ({'PASS' if ratio <= 1.2 else 'MISS'} <= 1.2); "
              f"2 processes vs 1: {speed['2proc'] / speed['1proc']:.2f}x; decode 2 workers vs 0: "
              f"{decode[2] / decode[0]:.2f}x", flush=True)
        print(f"bench_scale: samples_per_s_1proc={speed['1proc']:.1f} samples_per_s_2proc={speed['2proc']:.1f} "
              f"read_passes={passes} mem_mb_small={mem['small']:.0f} mem_mb_large={mem['large']:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
