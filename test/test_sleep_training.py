"""Sleep-cycle training from bags (sage_hl_ros.training): the CLI end to end on bags this test records
(the synthetic reaching task, a learnable sensors -> command mapping), the report against an
independent recomputation, resume, and the pure pieces (augmentation, dream situations, replay,
trainer state, config)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sage_hl_ros.bags.bag_dataset import BagDataset, concat_sequences
from sage_hl_ros.bags.dataset_config import DatasetConfig
from sage_hl_ros.bags.synthetic import SyntheticBagSpec, goal_region, write_synthetic_bag
from sage_hl_ros.core.checkpoint import load_checkpoint, model_hash, read_meta
from sage_hl_ros.core.config import MODALITIES, ConfigError, SageConfig
from sage_hl_ros.core.system import build_model
from sage_hl_ros.tools.sleep_cli import main
from sage_hl_ros.training.augment import DROPPED, FAILED, augment, dream_situations, drop_modality
from sage_hl_ros.training.config import EXTEROCEPTIVE, AugmentConfig, DreamConfig, TrainConfig, load_train_config
from sage_hl_ros.training.fit import action_error
from sage_hl_ros.training.replay import ExperienceStore
from sage_hl_ros.training.state import load_state, save_state

SMALL_MODEL = """observation:
  image_height_px: 32
  image_width_px: 32
  depth_height_px: 32
  depth_width_px: 32
  audio_window_samples: 1024
"""
EVAL_STEPS = 4
# The learnable task at test scale: many short episodes (goal diversity, not length, is what the
# visual mapping needs), start poses far from the goal.
SPEC = dict(steps_per_episode=4, start_noise_rad=0.8)


def _files(root: Path) -> dict[str, Path]:
    (root / "model.yaml").write_text(SMALL_MODEL)
    (root / "dataset.yaml").write_text("dataset:\n  val_fraction: 0.2\n")
    return {"model": root / "model.yaml", "dataset": root / "dataset.yaml"}


def _obs_cfg(files):
    return SageConfig.from_yaml(files["model"]).observation


def _held_out(bags, obs, split="val"):
    cfg = DatasetConfig(val_fraction=0.2, sequence_steps=EVAL_STEPS, sequence_stride=EVAL_STEPS)
    return concat_sequences(list(BagDataset(bags, obs, cfg).iter_sequences(split)))


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One full wake -> sleep -> dream run of the CLI on freshly recorded bags."""
    root = tmp_path_factory.mktemp("sleep")
    files = _files(root)
    obs = _obs_cfg(files)
    bags = write_synthetic_bag(root / "bags" / "day1", obs, SyntheticBagSpec(episodes=800, seed=3, **SPEC))
    out = root / "night1"
    argv = ["--bags", str(bags), "--out", str(out), "--model-config", str(files["model"]),
            "--dataset-config", str(files["dataset"]), "--threads", "2", "--no-progress",
            "--set", "wake.steps=340", "--set", "sleep.steps=20", "--set", "dream.steps=10",
            # Short consolidation phases at a low rate: here they only have to run and be measured (their
            # effects at full length are bench/bench_sleep.py's); the 5x is about the whole CLI run.
            "--set", "sleep.lr=0.0001", "--set", "dream.lr=0.0001",
            f"--set=eval.sequence_steps={EVAL_STEPS}", "--set", "eval.probe_steps=150",
            "--set", "eval.probe_max_train_steps=1024", "--set", "eval.max_sequences=1000"]
    assert main(argv) == 0
    torch.set_num_threads(1)
    return {"root": root, "files": files, "bags": bags, "out": out, "obs": obs,
            "report": json.loads((out / "report" / "report.json").read_text())}


def test_training_cuts_held_out_action_error_5x(trained):
    out, obs = trained["out"], trained["obs"]
    val = _held_out(trained["bags"], obs)
    # Independent recomputation: the untrained model (same config and seed, normaliser fitted on the
    # same training split) and the trained checkpoint, both through fit.action_error.
    model = load_checkpoint(out)
    untrained = build_model(model.cfg)
    BagDataset(trained["bags"], obs, DatasetConfig(val_fraction=0.2)).fit_normalizer(untrained, "train")
    before, after = action_error(untrained, val), action_error(model, val)
    assert before / after >= 5.0, f"held-out action error {before:.4f} -> {after:.4f} rad"
    rep = trained["report"]
    assert rep["stages"][0]["stage"] == "initial"
    assert rep["stages"][0]["metrics"]["new"]["action_error"] == pytest.approx(before, rel=1e-4)
    # The checkpoint records where it came from and what it was trained on.
    meta = read_meta(out)["training"]
    assert meta["bags"] == [str(Path(trained["bags"]).resolve())] and meta["step"] == 370


def test_report_files_exist_and_numbers_match_a_recomputation(trained):
    out, obs, rep = trained["out"], trained["obs"], trained["report"]
    for name in ("report.md", "report.json", "loss.png", "action_error.png", "dropped.png", "trajectory.png"):
        assert (out / "report" / name).is_file() and (out / "report" / name).stat().st_size > 0, name
    model = load_checkpoint(out)
    assert rep["model_sha256"] == model_hash(out)
    val = _held_out(trained["bags"], obs)
    final = rep["final"]["new"]
    assert final["sequences"] == val.num_sequences
    assert final["action_error"] == pytest.approx(action_error(model, val), rel=1e-4)
    for m in ("visual", "depth"):
        assert final["dropped"][m] == pytest.approx(action_error(model, drop_modality(val, m)), rel=1e-4)

    # Reconstruction 1 - R^2 and jerk, recomputed with numpy from the deployment path.
    ctx, rec, pred = [], [], []
    b, t = val.num_sequences, val.steps
    state = model.initial_state(b)
    for step in range(t):
        o = val.obs.index(torch.arange(b) * t + step)
        z, c, state = model.encode(o, state)
        with torch.no_grad():
            rec.append(model.decoder(z).numpy().astype(np.float64))
        ctx.append(c.vector.numpy().astype(np.float64))
        pred.append(model.act(z, o.joint_position)[:, 0].numpy())
    c, r = np.concatenate(ctx), np.concatenate(rec)
    one_minus_r2 = ((c - r) ** 2).sum() / ((c - c.mean(0)) ** 2).sum()
    assert final["reconstruction_1mR2"] == pytest.approx(one_minus_r2, rel=1e-3)
    assert rep["information_loss"]["reconstruction_1mR2"] == final["reconstruction_1mR2"]
    rate = rep["data"]["rate_hz"]
    jerk = np.abs(np.diff(np.stack(pred, 1), n=3, axis=1)).mean() * rate**3
    assert final["jerk_rad_s3"] == pytest.approx(jerk, rel=1e-3)

    # Action parity is the ratio of the two probe errors it reports.
    info = rep["information_loss"]
    assert info["action_parity"] == pytest.approx(info["probe_z_error"] / info["probe_context_error"] - 1)
    assert info["deployed_error"] == pytest.approx(final["action_error"], rel=1e-4)
    # Phases: timing and the held-out effect of each (before = the previous stage, after = its own).
    stages = {s["stage"]: s["metrics"] for s in rep["stages"]}
    assert [s["stage"] for s in rep["stages"]] == ["initial", "wake", "sleep", "dream"]
    for name, before in (("wake", "initial"), ("sleep", "wake"), ("dream", "sleep")):
        ph = rep["phases"][name]
        assert ph["samples_per_s"] == pytest.approx(ph["samples"] / ph["seconds"])
        assert ph["samples"] == ph["steps"] * 16 * 2 and ph["seconds"] > 0
        for key, pair in ph["effect"].items():
            split, metric = key.split(".", 1)
            assert pair["before"] == stages[before][split][metric] and pair["after"] == stages[name][split][metric]
    assert rep["phases"]["wake"]["effect"]["new.action_error"]["after"] < rep["stages"][0]["metrics"]["new"][
        "action_error"] / 3
    md = (out / "report" / "report.md").read_text()
    assert f"{final['action_error']:.4g}" in md and f"{info['action_parity']:.4g}" in md
    assert all(f"]({p})" in md for p in ("loss.png", "dropped.png"))


# ----------------------------------------------------------------------------- resume


def _resume_argv(bags, out, files, *extra):
    return ["--bags", str(bags), "--out", str(out), "--model-config", str(files["model"]),
            "--dataset-config", str(files["dataset"]), "--threads", "1", "--no-progress", "--seed", "5",
            "--set", "batch_size=4", "--set", "wake.steps=4", "--set", "sleep.steps=3", "--set", "dream.steps=3",
            "--set", "checkpoint_every_steps=2", f"--set=eval.sequence_steps={EVAL_STEPS}",
            "--set", "eval.probes=false", "--set", "eval.plots=false", "--set", "eval.after_each_phase=false",
            *extra]


def test_resume_continues_from_the_saved_step(tmp_path, capsys):
    files = _files(tmp_path)
    obs = _obs_cfg(files)
    bags = write_synthetic_bag(tmp_path / "bags" / "a", obs, SyntheticBagSpec(episodes=10, seed=1, **SPEC))
    assert main(_resume_argv(bags, tmp_path / "full", files)) == 0
    # Interrupted in the sleep phase (step 6 of 10), then resumed.
    assert main(_resume_argv(bags, tmp_path / "cut", files, "--stop-after", "6")) == 0
    tensors, meta = load_state(tmp_path / "cut")
    assert meta["step"] == 6 and meta["phase_index"] == 1 and meta["phase_step"] == 2 and not meta["finished"]
    assert not (tmp_path / "cut" / "model.safetensors").exists()  # no checkpoint before the run finishes
    capsys.readouterr()
    assert main(_resume_argv(bags, tmp_path / "cut", files, "--resume")) == 0
    err = capsys.readouterr().err
    assert "resuming at step 6 (phase sleep, step 2 of it)" in err
    _, meta = load_state(tmp_path / "cut")
    assert meta["step"] == 10 and meta["finished"]
    assert [h["step"] for h in meta["history"]] == list(range(10))
    # The resumed run is the uninterrupted run: same losses and, bit for bit, the same weights.
    _, full_meta = load_state(tmp_path / "full")
    assert [h["total"] for h in meta["history"]] == [h["total"] for h in full_meta["history"]]
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # A resume with different settings is refused, naming what differs.
    assert main(_resume_argv(bags, tmp_path / "cut", files, "--resume", "--set", "wake.lr=0.01")) == 3
    assert "'train_config' differs" in capsys.readouterr().err


def test_a_chunked_model_records_the_spacing_and_h_rate_it_was_trained_at(tmp_path, capsys):
    """K = 3: the checkpoint records the dataset's chunk spacing (the control node plays it at that)
    and grid rate (the context node runs at that); training it further on data aligned at another
    spacing or rate is refused, naming both."""
    files = _files(tmp_path)
    files["model"].write_text(SMALL_MODEL + "model:\n  action_chunk: 3\n")
    bags = write_synthetic_bag(tmp_path / "bags" / "a", _obs_cfg(files), SyntheticBagSpec(episodes=10, seed=1, **SPEC))
    assert main(_resume_argv(bags, tmp_path / "k3", files)) == 0
    model = read_meta(tmp_path / "k3")["config"]["model"]
    assert model["action_chunk"] == 3 and model["action_chunk_dt_s"] == pytest.approx(1 / 10.0)
    (tmp_path / "other.yaml").write_text("dataset:\n  val_fraction: 0.2\n  action_chunk_dt_s: 0.2\n")
    capsys.readouterr()
    argv = _resume_argv(bags, tmp_path / "k3b", {**files, "dataset": tmp_path / "other.yaml"},
                        "--init", str(tmp_path / "k3"))
    assert main(argv) == 2
    assert "action_chunk_dt_s 0.2 s differs from the model's model.action_chunk_dt_s 0.1 s" in capsys.readouterr().err
    assert model["h_rate_hz"] == pytest.approx(10.0)
    (tmp_path / "fast.yaml").write_text("dataset:\n  val_fraction: 0.2\n  rate_hz: 20.0\n")
    argv = _resume_argv(bags, tmp_path / "k3c", {**files, "dataset": tmp_path / "fast.yaml"},
                        "--init", str(tmp_path / "k3"))
    assert main(argv) == 2
    assert "rate_hz 20 Hz differs from the model's model.h_rate_hz 10 Hz" in capsys.readouterr().err


def test_a_robot_without_depth_audio_tactile_trains_from_bags_that_have_them(tmp_path):
    """A camera-only robot's model trains on a recording that also holds depth, audio and tactile
    (another robot's sensors on the same bag): those are not read, the dream phase never drops them,
    and the checkpoint says which sensors the model has."""
    files = _files(tmp_path)
    bags = write_synthetic_bag(tmp_path / "bags" / "a", _obs_cfg(files), SyntheticBagSpec(episodes=10, seed=1, **SPEC))
    files["model"].write_text(SMALL_MODEL + "  sensors: [camera]\n")
    assert main(_resume_argv(bags, tmp_path / "cam", files, "--set", "dream.reweight_every=1")) == 0
    meta = read_meta(tmp_path / "cam")
    assert meta["config"]["observation"]["sensors"] == ["camera"]
    state = json.loads((tmp_path / "cam" / "trainer_state" / "state.json").read_text())
    weights = dict(zip(EXTEROCEPTIVE, state["dream_weights"], strict=True))
    assert weights["visual"] == pytest.approx(1.0) and weights["depth"] == weights["audio"] == weights["tactile"] == 0


# ----------------------------------------------------------------------------- pure pieces


def _batch(n=4, t=2, seed=0):
    from sage_hl_ros.core.synthetic import SyntheticReachTask

    cfg = SageConfig.from_dict({"observation": {"image_height_px": 16, "image_width_px": 16, "depth_height_px": 16,
                                                "depth_width_px": 16, "audio_window_samples": 256,
                                                "audio_n_fft": 128, "audio_hop_samples": 64}})
    return SyntheticReachTask(cfg.observation, seed=seed).sequences(n, t)


def test_augment_keeps_labels_masks_and_ranges():
    batch = _batch(8)
    batch.obs.mask[:2, 1] = False  # depth missing on two steps
    batch.obs.depth[:2] = 0
    before = {k: v.clone() for k, v in batch.obs.__dict__.items()}
    out = augment(batch, AugmentConfig(modality_dropout=0.5, time_jitter_prob=0.5), torch.Generator().manual_seed(0))
    assert all(torch.equal(v, getattr(batch.obs, k)) for k, v in before.items())  # input untouched
    assert torch.equal(out.action, batch.action)
    assert out.obs.image.min() >= 0 and out.obs.image.max() <= 1 and out.obs.depth.max() <= 1
    assert not out.obs.mask[:2, 1].any() and (out.obs.depth[:2] == 0).all()
    assert out.obs.mask[:, MODALITIES.index("proprio")].all()
    dropped = ~out.obs.mask & batch.obs.mask
    for i, m in enumerate(MODALITIES):
        rows = dropped[:, i]
        if rows.any():
            field = {"visual": "image", "depth": "depth", "audio": "audio", "tactile": "tactile"}[m]
            assert (getattr(out.obs, field)[rows] == 0).all()
    # whole sequences are dropped: both steps of a sequence agree
    assert torch.equal(dropped.view(8, 2, -1)[:, 0], dropped.view(8, 2, -1)[:, 1])
    assert not torch.equal(out.obs.image, batch.obs.image)


def test_dream_situations_drop_and_fail_sensors():
    batch = _batch(64)
    cfg = DreamConfig(drop_prob=0.5, fail_prob=0.5, perturb_prob=0.0, max_dropped=2)
    out, situation = dream_situations(batch, cfg, torch.Generator().manual_seed(1))
    mask = out.obs.mask.view(64, 2, -1)[:, 0]
    assert set(situation.tolist()) <= {DROPPED, FAILED} and (situation == DROPPED).any()
    lost = (~mask[:, :4]).sum(1)
    assert ((lost[situation == DROPPED] >= 1) & (lost[situation == DROPPED] <= 2)).all()
    assert (lost[situation == FAILED] == 0).all() and mask[:, 4].all()  # failures stay undetected
    def seq_changed(i):
        rows = slice(2 * i, 2 * i + 2)
        return any(not torch.equal(getattr(out.obs, f)[rows], getattr(batch.obs, f)[rows])
                   for f in ("image", "depth", "audio", "tactile"))

    changed = [seq_changed(i) for i in range(64)]
    assert all(changed[i] for i in range(64) if situation[i] == DROPPED)
    assert sum(changed[i] for i in range(64) if situation[i] == FAILED) >= 0.6 * int((situation == FAILED).sum())


def test_experience_store_round_trip_and_priorities():
    batch = _batch(6, t=3)
    seqs = [type(batch)(obs=batch.obs.index(slice(3 * i, 3 * i + 3)), action=batch.action[i:i + 1], steps=3)
            for i in range(6)]
    store = ExperienceStore.from_sequences("x", seqs, capacity=10)
    back = store.batch(torch.tensor([2]))
    assert back.steps == 3 and torch.equal(back.action, batch.action[2:3])
    assert torch.allclose(back.obs.image, (batch.obs.image[6:9] * 255).round() / 255)
    assert torch.allclose(back.obs.depth, batch.obs.depth[6:9], atol=1e-3)
    assert torch.equal(back.obs.joint_position, batch.obs.joint_position[6:9])
    store.update_priorities(torch.tensor([0, 1, 2, 3, 4, 5]), torch.tensor([0, 0, 0, 0, 0, 10.0]), eps=0.01)
    idx = store.sample(2000, torch.Generator().manual_seed(0), alpha=1.0, uniform_mix=0.0)
    assert (idx == 5).float().mean() > 0.99
    capped = ExperienceStore.from_sequences("y", seqs, capacity=3, seed=1)
    assert len(capped) == 3 and capped.seen == 6


def test_an_on_disk_store_holds_every_sequence_and_batches_like_the_memory_store(tmp_path):
    batch = _batch(6, t=3)
    seqs = [type(batch)(obs=batch.obs.index(slice(3 * i, 3 * i + 3)), action=batch.action[i:i + 1], steps=3)
            for i in range(6)]
    memory = ExperienceStore.from_sequences("m", seqs, capacity=10)
    disk = ExperienceStore.on_disk("d", iter(seqs), tmp_path / "store")
    assert len(disk) == 6 and disk.steps == 3 and (tmp_path / "store" / "image.bin").is_file()
    assert isinstance(disk.t["image"], np.memmap)  # mapped, not loaded
    idx = torch.tensor([4, 0, 4])
    a, b = memory.batch(idx), disk.batch(idx)
    assert torch.equal(a.action, b.action)
    for name in ("image", "depth", "audio", "tactile", "joint_position", "joint_velocity", "mask"):
        assert torch.equal(getattr(a.obs, name), getattr(b.obs, name)), name
    again = ExperienceStore.on_disk("d", iter(seqs[:2]), tmp_path / "store")  # rebuilt, not appended
    assert len(again) == 2


def test_trainer_state_round_trip_is_safetensors_and_json(tmp_path):
    model = build_model(SageConfig())
    opt = torch.optim.AdamW(model.l_module.parameters(), lr=1e-3)
    model.l_module(torch.zeros(2, 256), torch.zeros(2, 7)).sum().backward()
    opt.step()
    from sage_hl_ros.training.state import optimizer_from_flat, optimizer_to_flat

    t, meta = optimizer_to_flat(opt)
    save_state(tmp_path, {**t, "x": torch.arange(3)}, {"step": 7, "optimizer": meta})
    files = sorted(p.name for p in (tmp_path / "trainer_state").iterdir())
    assert files == ["state.json", "state.safetensors"]
    tensors, back = load_state(tmp_path)
    assert back["step"] == 7 and torch.equal(tensors["x"], torch.arange(3))
    opt2 = torch.optim.AdamW(model.l_module.parameters(), lr=1e-3)
    optimizer_from_flat(opt2, tensors, back["optimizer"])
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert all(torch.equal(s1["state"][i]["exp_avg"], s2["state"][i]["exp_avg"]) for i in s1["state"])


def test_train_config_validates_and_overrides(tmp_path):
    cfg = load_train_config(None, ["wake.steps=7", "phases=[wake, dream]", "sleep.augment.brightness=0.5"])
    assert cfg.wake.steps == 7 and cfg.phases == ["wake", "dream"] and cfg.sleep.augment.brightness == 0.5
    assert TrainConfig.from_yaml(Path(__file__).parents[1] / "config" / "sleep.yaml") == TrainConfig()
    with pytest.raises(ConfigError, match=r"phases"):
        load_train_config(None, ["phases=[wake, nap]"])
    with pytest.raises(ConfigError, match=r"dream.drop_prob"):
        load_train_config(None, ["dream.drop_prob=0.9"])
    with pytest.raises(ConfigError, match=r"unknown key 'wake.stepz'"):
        load_train_config(None, ["wake.stepz=3"])
    bad = tmp_path / "s.yaml"
    bad.write_text("other: {}\n")
    with pytest.raises(ConfigError, match="missing top-level section 'sleep_train'"):
        load_train_config(bad)


def test_synthetic_bags_hold_the_task_and_goal_regions(tmp_path):
    obs = SageConfig.from_dict({"observation": {"image_height_px": 16, "image_width_px": 16, "depth_height_px": 16,
                                                "depth_width_px": 16}}).observation
    a = write_synthetic_bag(tmp_path / "a", obs, SyntheticBagSpec(episodes=3, steps_per_episode=5, seed=0,
                                                                  command_noise_rad=0.05, **goal_region("A")))
    ds = BagDataset(a, obs, DatasetConfig(val_fraction=0.0, sequence_steps=5, sequence_stride=5))
    seqs = list(ds.iter_sequences("train"))
    assert len(seqs) == 3 and all(s.obs.mask.all() for s in seqs)
    ep = ds.episodes()[0]
    assert (ep.task, ep.outcome) == ("reach", "success") and ep.counts["teacher_steps"] == 5
    s = seqs[0]
    pos = s.obs.joint_position
    # Teacher labels are the clean expert step; the arm then moves to the (noisy) executed command.
    step = s.action[0, :, 0] - pos
    assert step.abs().max() <= 0.2 + 1e-5
    assert not torch.allclose(pos[1:], s.action[0, :-1, 0])  # executed != teacher (command noise)
    # Region A: the blob is in the left part of the image.
    img = s.obs.image[0].mean(0)
    assert int(img.argmax()) % 16 < 8
    assert math.isfinite(float(s.obs.depth.max()))
