"""Data-parallel sleep training through torchrun (2 CPU ranks, gloo): the same global batch learns
the same as one process, rank 0 alone reports and writes, a DDP resume is bit-identical to an
uninterrupted DDP run, and a rank that fails or is killed ends the job with a clear error instead
of a hang."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from sage_hl_ros.bags.bag_dataset import BagDataset
from sage_hl_ros.bags.dataset_config import DatasetConfig
from sage_hl_ros.bags.synthetic import SyntheticBagSpec, write_synthetic_bag
from sage_hl_ros.core.config import SageConfig

SMALL_MODEL = """observation:
  image_height_px: 16
  image_width_px: 16
  depth_height_px: 16
  depth_width_px: 16
  audio_window_samples: 1024
"""
COMMON = ["--threads", "1", "--no-progress", "--seed", "5", "--set", "eval.sequence_steps=4",
          "--set", "eval.probes=false", "--set", "eval.plots=false"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    (root / "model.yaml").write_text(SMALL_MODEL)
    (root / "dataset.yaml").write_text("dataset:\n  val_fraction: 0.2\n")
    (root / "all_train.yaml").write_text("dataset:\n  val_fraction: 0.0\n")
    obs = SageConfig.from_yaml(root / "model.yaml").observation
    write_synthetic_bag(root / "bags" / "a", obs, SyntheticBagSpec(episodes=120, seed=3, steps_per_episode=4,
                                                                  start_noise_rad=0.8))
    # one episode only: a second rank's share of the training episodes is empty
    write_synthetic_bag(root / "bags" / "one", obs, SyntheticBagSpec(episodes=1, seed=4, steps_per_episode=8))
    return root


def _sleep(files, out, *extra, bags="a", dataset="dataset.yaml", timeout_s=900):
    cmd = [sys.executable, "-m", "sage_hl_ros.tools.sleep_cli", "--bags", str(files / "bags" / bags),
           "--out", str(files / out), "--model-config", str(files / "model.yaml"),
           "--dataset-config", str(files / dataset), *COMMON, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)


def _error(run) -> float:
    for line in run.stdout.splitlines():
        if "held-out action error" in line:
            return float(line.split("held-out action error ")[1].split(" rad")[0])
    raise AssertionError(f"no result line:\n{run.stdout}\n{run.stderr[-3000:]}")


def test_each_rank_reads_its_own_episodes(files):
    obs = SageConfig.from_yaml(files / "model.yaml").observation
    cfg = DatasetConfig(val_fraction=0.2)
    whole = BagDataset(files / "bags" / "a", obs, cfg)
    parts = [BagDataset(files / "bags" / "a", obs, cfg, shard=(r, 2)) for r in range(2)]
    n_train = sum(1 for e in whole.episodes() if e.split == "train")
    seqs = [sum(1 for _ in p.iter_sequences("train")) for p in parts]
    assert sum(seqs) == sum(1 for _ in whole.iter_sequences("train")) and min(seqs) > 0
    assert abs(seqs[0] - seqs[1]) <= 3 * (n_train % 2 + 1)  # an even split of the episodes
    # the val split is whole on every rank (rank 0 evaluates it)
    assert sum(1 for _ in parts[1].iter_sequences("val")) == sum(1 for _ in whole.iter_sequences("val"))


def test_two_ranks_learn_what_one_process_learns_and_only_rank_0_reports(files):
    train = ["--set", "batch_size=16", "--set", "phases=[wake]", "--set", "wake.steps=200",
             "--set", "checkpoint_every_steps=100"]
    one = _sleep(files, "one", *train)
    two = _sleep(files, "two", *train, "--nproc-per-node", "2")
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    e1, e2 = _error(one), _error(two)
    assert e1 < 0.6 * 0.1138 and abs(e2 - e1) <= 0.10 * e1, (e1, e2)  # both learned; the same within 10%
    assert "data-parallel: 2 ranks (gloo), 8 sequences per rank and step" in two.stderr
    assert two.stderr.count("[initial] held-out action error") == 1  # rank 0 alone logs and evaluates
    assert sum(line.startswith("wrote ") for line in two.stderr.splitlines()) == 1
    assert (files / "two" / "model.safetensors").is_file() and (files / "two" / "report" / "report.json").is_file()


def test_a_ddp_resume_is_bit_identical_to_an_uninterrupted_ddp_run(files):
    train = ["--set", "batch_size=8", "--set", "wake.steps=8", "--set", "sleep.steps=4", "--set", "dream.steps=4",
             "--set", "checkpoint_every_steps=2", "--nproc-per-node", "2"]
    full = _sleep(files, "full", *train)
    assert full.returncode == 0, full.stderr[-3000:]
    cut = _sleep(files, "cut", *train, "--stop-after", "10")  # in the sleep phase
    assert cut.returncode == 0, cut.stderr[-3000:]
    assert not (files / "cut" / "model.safetensors").exists()
    resumed = _sleep(files, "cut", *train, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming at step 10 (phase sleep, step 2 of it)" in resumed.stderr
    a, b = load_file(str(files / "full" / "model.safetensors")), load_file(str(files / "cut" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the ranks' samplers are part of the state: one process cannot resume a 2-rank run
    refused = _sleep(files, "cut", *train[:-2], "--resume")
    assert refused.returncode == 3 and "the run had 2 ranks, this one has 1" in refused.stderr


def test_a_failing_rank_ends_the_job_with_its_error(files):
    # one training episode (all episodes train; held out: the same bag): rank 1's share is empty
    run = _sleep(files, "dead", "--set", "batch_size=8", "--nproc-per-node", "2", "--eval-bags",
                 str(files / "bags" / "one"), bags="one", dataset="all_train.yaml", timeout_s=300)
    assert run.returncode != 0
    assert "no training sequences" in run.stderr and "for rank 1 of 2" in run.stderr
    assert "the data-parallel job failed" in run.stderr
    assert not (files / "dead" / "model.safetensors").exists()


def test_replay_on_disk_learns_bit_for_bit_what_memory_does_and_workers_decode_the_bags(files):
    train = ["--set", "batch_size=8", "--set", "phases=[wake]", "--set", "wake.steps=4"]
    runs = {name: _sleep(files, name, *train, *extra) for name, extra in (
        ("memory", []), ("disk", ["--set", "replay_store=disk"]),
        ("workers", ["--set", "replay_store=disk", "--set", "decode_workers=2"]))}
    for name, run in runs.items():
        assert run.returncode == 0, (name, run.stderr[-3000:])
    a, b = load_file(str(files / "memory" / "model.safetensors")), load_file(str(files / "disk" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same sequences in the same order, read from the map
    assert not (files / "disk" / "replay_cache").exists()  # removed when the run finished
    import json

    report = json.loads((files / "workers" / "report" / "report.json").read_text())
    whole = json.loads((files / "memory" / "report" / "report.json").read_text())
    assert report["data"]["decode_workers"] == 2 and report["data"]["read_passes"] == 1
    # the workers' shards together are the whole train split
    assert report["data"]["train_sequences"]["new"] == whole["data"]["train_sequences"]["new"]


def _rank_process(root_pid: int, rank: int) -> int | None:
    """The pid of ``rank`` under the job started as ``root_pid`` (torchrun sets RANK in its environment)."""
    from pathlib import Path

    parents = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                parents[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    for pid in parents:
        p = pid
        while p in parents and p != root_pid and p > 1:
            p = parents[p]
        if p != root_pid or pid == root_pid:
            continue
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and b"TORCHELASTIC_RUN_ID" in b"".join(env):
            return pid
    return None


def test_a_rank_that_dies_ends_the_job_with_a_clear_error_and_no_hang(files):
    import os
    import signal
    import time

    out = files / "killed"
    cmd = [sys.executable, "-m", "sage_hl_ros.tools.sleep_cli", "--bags", str(files / "bags" / "a"),
           "--out", str(out), "--model-config", str(files / "model.yaml"),
           "--dataset-config", str(files / "dataset.yaml"), *COMMON, "--set", "wake.steps=100000",
           "--nproc-per-node", "2"]
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        victim = None
        while victim is None and job.poll() is None and time.monotonic() < deadline:
            victim = _rank_process(job.pid, 1)
            time.sleep(0.5)
        assert victim is not None, "rank 1 never started"
        # let it load its shard and join the training (5 s of its own CPU time), then kill it
        # without a chance to clean up
        while job.poll() is None and time.monotonic() < deadline:
            try:
                ticks = int(open(f"/proc/{victim}/stat").read().rsplit(")", 1)[1].split()[11])
            except OSError:
                break
            if ticks > 5 * os.sysconf("SC_CLK_TCK"):
                break
            time.sleep(0.5)
        os.kill(victim, signal.SIGKILL)
        _, stderr = job.communicate(timeout=300)  # no hang: the job ends on its own
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode != 0
    assert "the data-parallel job failed" in stderr
    assert "SIGKILL" in stderr or "Signal 9" in stderr or "exitcode: -9" in stderr, stderr[-3000:]
    assert not (out / "model.safetensors").exists()
