"""LeRobotDataset v3.0 export and import (bags/lerobot_export.py, bags/lerobot_source.py): bags this
test records are exported by the CLI and read back by an independent reader (pyarrow.parquet and
PyAV directly, not the package's reader): every frame, episode boundary and task, the actions
BagDataset trains on, and the statistics against a numpy recomputation. Then the package's reader
matches BagDataset step for step and ``sage-hl-sleep --lerobot`` trains a checkpoint from it."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sage_hl_ros.bags.bag_dataset import BagDataset
from sage_hl_ros.bags.dataset_config import DatasetConfig
from sage_hl_ros.bags.lerobot_source import LeRobotSource
from sage_hl_ros.bags.synthetic import SyntheticBagSpec, write_synthetic_bag
from sage_hl_ros.core.checkpoint import load_checkpoint, read_meta
from sage_hl_ros.core.config import MODALITIES, ConfigError, SageConfig
from sage_hl_ros.core.robot import CameraSpec, implied_robot
from sage_hl_ros.tools import bag_cli, sleep_cli

MODEL = """observation:
  image_height_px: 32
  image_width_px: 32
  depth_height_px: 32
  depth_width_px: 32
  audio_window_samples: 1024
  num_cameras: 2
model:
  h_layers: 1
  h_ff_dim: 128
  history_len: 3
  l_hidden_dim: 64
  l_layers: 1
"""
CAMERAS = ["camera", "camera_1"]  # the implied contract's camera names (a model naming no robot)
KEYS = [f"observation.images.{c}" for c in CAMERAS]
QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
VISUAL, PROPRIO = MODALITIES.index("visual"), MODALITIES.index("proprio")


def _run(main, argv) -> tuple[int, str]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(argv)
    return rc, buf.getvalue()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("lerobot")
    (root / "model.yaml").write_text(MODEL)
    (root / "dataset.yaml").write_text("dataset:\n  val_fraction: 0.25\n")
    cfg = SageConfig.from_yaml(root / "model.yaml")
    obs = cfg.observation
    # Bag a: teacher labels beside noisy executed commands, two tasks; bag b: executed commands only.
    bag_a = write_synthetic_bag(root / "bags" / "bag_a", obs, SyntheticBagSpec(
        episodes=4, steps_per_episode=8, seed=1, command_noise_rad=0.05, tasks=("reach", "push the cube")))
    bag_b = write_synthetic_bag(root / "bags" / "bag_b", obs, SyntheticBagSpec(
        episodes=3, steps_per_episode=8, seed=2, teacher=False, tasks=("stack",)))
    out = root / "lerobot"
    rc, text = _run(bag_cli.main, ["export", "--format", "lerobot", str(bag_a), str(bag_b), str(out),
                                   "--model-config", str(root / "model.yaml"), "--config", str(root / "dataset.yaml"),
                                   "--quiet"])
    assert rc == 0, text
    summary = json.loads(text.strip().splitlines()[-1])
    info = json.loads((out / "meta" / "info.json").read_text())
    data = pq.read_table(out / "data" / "chunk-000" / "file-000.parquet")
    cols = {name: data.column(name).to_numpy() for name in
            ("timestamp", "frame_index", "episode_index", "index", "task_index")}
    for name in ("observation.state", "observation.velocity", "action"):
        cols[name] = np.stack(data.column(name).to_pylist()).astype(np.float32)
    episodes = pq.read_table(out / "meta" / "episodes" / "chunk-000" / "file-000.parquet").to_pylist()
    tasks = pq.read_table(out / "meta" / "tasks.parquet").to_pydict()
    # BagDataset's view of the same bags: one sequence per step, the first target of each.
    ref_cfg = DatasetConfig(sequence_steps=1, action_chunk=1)
    ref = BagDataset([bag_a, bag_b], obs, ref_cfg, cfg.robot_contract())
    steps = list(ref.iter_sequences("all"))
    return {"root": root, "cfg": cfg, "obs": obs, "bags": [bag_a, bag_b], "out": out, "summary": summary,
            "info": info, "cols": cols, "episodes": episodes, "tasks": tasks, "ref": ref, "steps": steps,
            "video": {k: _decode(out / "videos" / k / "chunk-000" / "file-000.mp4") for k in KEYS}}


def _decode(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every frame of an MP4 (RGB uint8) and its presentation time in seconds, by PyAV."""
    frames, times = [], []
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.pix_fmt == "yuv420p"
        for f in c.decode(stream):
            frames.append(f.to_ndarray(format="rgb24"))
            times.append(float(f.time))
    return np.stack(frames), np.array(times)


# ----------------------------------------------------------------------------- the export, read back


def test_info_declares_the_format_features_and_totals(exported):
    info, obs, cols = exported["info"], exported["obs"], exported["cols"]
    n = len(cols["index"])
    assert info["codebase_version"] == "v3.0" and info["fps"] == 10 and info["robot_type"] == "robot"
    assert info["total_frames"] == n == exported["summary"]["frames"] == len(exported["steps"]) == 7 * 8
    assert info["total_episodes"] == 7 and info["total_tasks"] == 3 and info["splits"] == {"train": "0:7"}
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    f = info["features"]
    for key in ("observation.state", "observation.velocity", "action"):
        assert f[key] == {"dtype": "float32", "shape": [7], "names": list(obs.joint_names)}
    for key in ("frame_index", "episode_index", "index", "task_index"):
        assert f[key]["dtype"] == "int64" and f[key]["shape"] == [1]
    assert f["timestamp"]["dtype"] == "float32"
    for key in KEYS:
        assert f[key]["dtype"] == "video" and f[key]["shape"] == [32, 32, 3]
        assert f[key]["names"] == ["height", "width", "channels"]
        assert f[key]["info"]["video.codec"] == "h264" and f[key]["info"]["video.fps"] == 10
        assert f[key]["info"]["video.pix_fmt"] == "yuv420p"
    assert not any("depth" in k for k in f)  # depth is left out (no depth encoding in v3.0)


def test_every_frame_is_in_each_camera_video_at_its_episode_time(exported):
    cols, episodes, steps = exported["cols"], exported["episodes"], exported["steps"]
    n = len(cols["index"])
    for c, key in enumerate(KEYS):
        frames, times = exported["video"][key]
        assert len(frames) == n, key  # one video frame per data row, per camera
        np.testing.assert_allclose(times, np.arange(n) / 10.0, atol=1e-6)
        for ep in episodes:
            lo, hi = ep[f"videos/{key}/from_timestamp"], ep[f"videos/{key}/to_timestamp"]
            inside = np.flatnonzero((times >= lo - 1e-6) & (times < hi - 1e-6))
            assert inside.tolist() == list(range(ep["dataset_from_index"], ep["dataset_to_index"]))
            assert ep[f"videos/{key}/chunk_index"] == 0 and ep[f"videos/{key}/file_index"] == 0
        # The frames are the views the model sees (lossy: H.264 at crf 23), this camera's and not the other's.
        seen = np.stack([(s.obs.image[0, 3 * c:3 * c + 3] * 255).round().byte().permute(1, 2, 0).numpy()
                         for s in steps]).astype(np.float64)
        other = np.stack([(s.obs.image[0, 3 * (1 - c):3 * (1 - c) + 3] * 255).round().byte().permute(1, 2, 0).numpy()
                          for s in steps]).astype(np.float64)
        err = np.abs(frames.astype(np.float64) - seen).mean() / 255
        assert err < 0.02, (key, err)
        assert np.abs(frames.astype(np.float64) - other).mean() / 255 > 2 * err


def test_episode_boundaries_and_tasks_are_the_bags(exported):
    cols, episodes, tasks = exported["cols"], exported["episodes"], exported["tasks"]
    bag_eps = exported["ref"].episodes()
    assert len(episodes) == len(bag_eps) == 7
    task_of = dict(zip(tasks["task_index"], tasks["task"], strict=True))
    assert sorted(task_of.values()) == ["push the cube", "reach", "stack"]
    start = 0
    for i, (ep, bag_ep) in enumerate(zip(episodes, bag_eps, strict=True)):
        assert ep["episode_index"] == i and ep["tasks"] == [bag_ep.task] and ep["length"] == 8
        assert (ep["dataset_from_index"], ep["dataset_to_index"]) == (start, start + 8)
        assert (ep["sage/bag"], ep["sage/bag_episode"], ep["sage/outcome"]) == (Path(bag_ep.bag).name, bag_ep.index,
                                                                                 "success")
        rows = slice(start, start + 8)
        assert (cols["episode_index"][rows] == i).all()
        assert cols["frame_index"][rows].tolist() == list(range(8))
        assert {task_of[t] for t in cols["task_index"][rows]} == {bag_ep.task}
        np.testing.assert_allclose(cols["timestamp"][rows], np.arange(8) / 10.0, atol=1e-6)
        start += 8
    assert cols["index"].tolist() == list(range(start))
    assert [e.task for e in bag_eps] == ["reach", "push the cube", "reach", "push the cube", "stack", "stack", "stack"]


def test_actions_are_bagdatasets_targets_teacher_labels_where_present(exported):
    cols, steps = exported["cols"], exported["steps"]
    np.testing.assert_array_equal(cols["action"], np.stack([s.action[0, 0, 0].numpy() for s in steps]))
    np.testing.assert_array_equal(cols["observation.state"], np.stack([s.obs.joint_position[0].numpy() for s in steps]))
    np.testing.assert_array_equal(cols["observation.velocity"],
                                  np.stack([s.obs.joint_velocity[0].numpy() for s in steps]))
    assert exported["summary"]["action_sources"] == {"teacher": 32, "teacher_chunk": 0, "command": 24}
    # bag a's actions are its teacher labels, not its (noisy) executed commands
    commands = BagDataset(exported["bags"][0], exported["obs"], DatasetConfig(sequence_steps=1, prefer_teacher=False))
    executed = np.stack([s.action[0, 0, 0].numpy() for s in commands.iter_sequences("all")])
    assert np.abs(cols["action"][:32] - executed).max() > 0.01


def _numeric(x: np.ndarray) -> dict[str, np.ndarray]:
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    out = {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0), "count": [len(x)]}
    out.update({k: np.quantile(x, q, axis=0) for k, q in QUANTILES.items()})
    return out


def test_stats_match_a_numpy_recomputation(exported):
    stats = json.loads((exported["out"] / "meta" / "stats.json").read_text())
    cols = exported["cols"]
    for key, values in cols.items():
        want = _numeric(values)
        assert set(stats[key]) == set(want), key
        for stat, value in want.items():
            np.testing.assert_allclose(stats[key][stat], value, rtol=1e-9, atol=1e-9, err_msg=f"{key} {stat}")
    # per episode too (meta/episodes' stats/<feature>/<stat>)
    ep = exported["episodes"][2]
    rows = slice(ep["dataset_from_index"], ep["dataset_to_index"])
    for stat, value in _numeric(cols["action"][rows]).items():
        np.testing.assert_allclose(ep[f"stats/action/{stat}"], value, rtol=1e-9, atol=1e-9)
    for c, key in enumerate(KEYS):
        s = stats[key]
        # exact over the frames that were encoded (the model's views), per channel in [0, 1], shape (3, 1, 1)
        seen = np.stack([(st.obs.image[0, 3 * c:3 * c + 3] * 255).round().byte().numpy() for st in exported["steps"]])
        px = seen.transpose(1, 0, 2, 3).reshape(3, -1).astype(np.float64) / 255.0
        assert s["count"] == [len(seen)]
        for stat, fn in (("min", np.min), ("max", np.max), ("mean", np.mean), ("std", np.std)):
            np.testing.assert_allclose(np.array(s[stat]).reshape(3), fn(px, axis=1), atol=1e-9, err_msg=f"{key} {stat}")
        for stat, q in QUANTILES.items():
            assert np.array(s[stat]).shape == (3, 1, 1)
            np.testing.assert_allclose(np.array(s[stat]).reshape(3), np.quantile(px, q, axis=1), atol=1e-9)
        # and close to what a reader decodes (lossy video)
        frames = exported["video"][key][0].reshape(-1, 3).astype(np.float64) / 255.0
        np.testing.assert_allclose(np.array(s["mean"]).reshape(3), frames.mean(0), atol=0.01)
        np.testing.assert_allclose(np.array(s["std"]).reshape(3), frames.std(0), atol=0.01)


def test_an_existing_dataset_is_not_overwritten_unless_asked(exported, tmp_path):
    out = tmp_path / "lr"
    argv = ["export", "--format", "lerobot", str(exported["bags"][1]), str(out),
            "--model-config", str(exported["root"] / "model.yaml"), "--quiet"]
    assert _run(bag_cli.main, argv)[0] == 0
    assert _run(bag_cli.main, argv)[0] == 1
    rc, text = _run(bag_cli.main, [*argv, "--overwrite"])
    assert rc == 0 and json.loads(text)["frames"] == 24


# ----------------------------------------------------------------------------- import


def test_the_reader_gives_bagdatasets_sequences(exported):
    obs, cfg = exported["obs"], exported["cfg"]
    dcfg = DatasetConfig(sequence_steps=3, val_fraction=0.25)
    src = LeRobotSource(exported["out"], obs, dcfg, cfg.robot_contract())
    ref = BagDataset(exported["bags"], obs, dcfg, cfg.robot_contract())
    got, want = list(src.iter_sequences("all")), list(ref.iter_sequences("all"))
    assert len(got) == len(want) == 7 * 6
    for g, w in zip(got, want, strict=True):
        assert g.steps == w.steps == 3
        np.testing.assert_array_equal(g.action.numpy(), w.action.numpy())
        np.testing.assert_array_equal(g.obs.joint_position.numpy(), w.obs.joint_position.numpy())
        np.testing.assert_array_equal(g.obs.joint_velocity.numpy(), w.obs.joint_velocity.numpy())
        assert g.obs.mask[:, VISUAL].all() and g.obs.mask[:, PROPRIO].all()
        assert not g.obs.mask[:, [MODALITIES.index(m) for m in ("depth", "audio", "tactile")]].any()
        assert np.abs(g.obs.image.numpy() - w.obs.image.numpy()).mean() < 0.02
    # val by episode hash of the dataset folder's name, at least one; train and val partition the episodes
    ids = src.split_ids()
    assert ids["val"] and not set(ids["val"]) & set(ids["train"]) and len(ids["val"]) + len(ids["train"]) == 7
    n_train = sum(1 for _ in src.iter_sequences("train"))
    assert n_train == 6 * len(ids["train"])
    arrays = src.normalizer_arrays("train")
    assert arrays["joint_position"].shape == (8 * len(ids["train"]), 7) and arrays["tactile"].shape == (0, 16)


def test_the_reader_subsamples_chunks_within_episodes_and_differences_velocities(exported, tmp_path):
    obs, cols = exported["obs"], exported["cols"]
    # Another dataset's conventions: state named "<joint>.pos", no velocity feature, AV1 video (lerobot's
    # default codec, libsvtav1) for one camera.
    other = tmp_path / "other"
    shutil.copytree(exported["out"], other)
    frames, _ = exported["video"][KEYS[1]]
    with av.open(str(other / "videos" / KEYS[1] / "chunk-000" / "file-000.mp4"), "w") as c:
        stream = c.add_stream("libsvtav1", rate=10, options={"g": "2", "crf": "30"})
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i, x in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(x, format="rgb24")
            vf.pts = i
            for packet in stream.encode(vf):
                c.mux(packet)
        for packet in stream.encode():
            c.mux(packet)
    info = json.loads((other / "meta" / "info.json").read_text())
    info["features"]["observation.state"]["names"] = [f"{j}.pos" for j in obs.joint_names][::-1]
    del info["features"]["observation.velocity"]
    (other / "meta" / "info.json").write_text(json.dumps(info))
    # state columns reversed by name: the reader must reorder by name, so the state column data reversed too
    table = pq.read_table(other / "data" / "chunk-000" / "file-000.parquet")
    rev = pa.FixedSizeListArray.from_arrays(pa.array(cols["observation.state"][:, ::-1].ravel()), 7)
    table = table.set_column(table.schema.get_field_index("observation.state"), "observation.state", rev)
    pq.write_table(table.drop_columns(["observation.velocity"]), other / "data" / "chunk-000" / "file-000.parquet")

    dcfg = DatasetConfig(rate_hz=5.0, sequence_steps=1, action_chunk=3, val_fraction=0.0)
    src = LeRobotSource(other, obs, dcfg)
    seqs = list(src.iter_sequences("all"))
    assert len(seqs) == 7 * 4  # frames 0, 2, 4, 6 of each 8-frame episode
    for i, s in enumerate(seqs):
        ep, g = divmod(i, 4)
        f = ep * 8 + 2 * g
        np.testing.assert_array_equal(s.obs.joint_position[0].numpy(), cols["observation.state"][f])
        # K targets 0.2 s (two frames) apart, the last frame's held past the episode's end
        want = [cols["action"][min(f + 2 * k, ep * 8 + 7)] for k in range(3)]
        np.testing.assert_array_equal(s.action[0, 0].numpy(), np.stack(want))
        # velocity: backward difference at the full rate (0 at an episode's first frame)
        state = cols["observation.state"]
        vel = np.zeros(7, np.float32) if f == ep * 8 else (state[f] - state[f - 1]) * 10
        np.testing.assert_allclose(s.obs.joint_velocity[0].numpy(), vel, rtol=1e-6, atol=1e-6)
        # ... which is what the synthetic bag recorded
        np.testing.assert_allclose(s.obs.joint_velocity[0].numpy(), cols["observation.velocity"][f], atol=1e-4)
        for c, key in enumerate(KEYS):  # H.264 and AV1 views, decoded at the subsampled frames
            view = s.obs.image[0, 3 * c:3 * c + 3].permute(1, 2, 0).numpy()
            assert np.abs(view - exported["video"][key][0][f] / 255.0).mean() < 0.03, (key, f)


def test_the_reader_refuses_what_it_cannot_map(exported):
    obs, out = exported["obs"], exported["out"]
    robot = implied_robot(obs)
    robot.cameras[1] = CameraSpec(name="wrist", topic="wrist/image_raw")
    with pytest.raises(ConfigError, match=r"no video for camera\(s\) \['wrist'\]"):
        LeRobotSource(out, obs, DatasetConfig(), robot)
    with pytest.raises(ConfigError, match="fps 10 is not a whole multiple of dataset.rate_hz 3"):
        LeRobotSource(out, obs, DatasetConfig(rate_hz=3.0))
    other = SageConfig.from_dict({"observation": {"joint_names": ["a", "b", "c", "d", "e", "f", "g"],
                                                  "num_cameras": 2}}).observation
    with pytest.raises(ConfigError, match="no column for joint 'a'"):
        LeRobotSource(out, other, DatasetConfig())
    with pytest.raises(ValueError, match="not a LeRobot dataset"):
        LeRobotSource(exported["bags"][0], obs, DatasetConfig())


def test_sleep_trains_a_checkpoint_from_the_lerobot_dataset(exported, tmp_path):
    root = exported["root"]
    ckpt = tmp_path / "night"
    rc, text = _run(sleep_cli.main, [
        "--lerobot", str(exported["out"]), "--out", str(ckpt), "--model-config", str(root / "model.yaml"),
        "--dataset-config", str(root / "dataset.yaml"), "--threads", "1", "--no-progress",
        "--set", "phases=[wake,dream]", "--set", "wake.steps=4", "--set", "dream.steps=2",
        "--set", "eval.sequence_steps=4", "--set", "eval.probes=false", "--set", "eval.plots=false",
        "--set", "eval.after_each_phase=false", "--set", "batch_size=4"])
    assert rc == 0, text
    model = load_checkpoint(ckpt)
    assert model.cfg.observation.num_cameras == 2
    training = read_meta(ckpt)["training"]
    assert training["bags"] == [str(exported["out"].resolve())] and training["step"] == 6
    report = json.loads((ckpt / "report" / "report.json").read_text())
    assert report["data"]["train_sequences"]["new"] > 0
    # the normaliser was fitted on the dataset's states
    state = exported["cols"]["observation.state"]
    assert float(model.normalizer.joint_position_min.min()) >= float(state.min()) - 1e-6
    # the checkpoint's robot and observation drive an export (--model-dir), as `record --model-dir` does
    rc, text = _run(bag_cli.main, ["export", "--format", "lerobot", str(exported["bags"][1]), str(tmp_path / "again"),
                                   "--model-dir", str(ckpt), "--quiet"])
    assert rc == 0 and json.loads(text)["cameras"] == KEYS
    assert json.loads((tmp_path / "again" / "meta" / "info.json").read_text())["features"]["action"]["names"] == \
        list(model.cfg.observation.joint_names)
    # a folder that is not a LeRobot dataset is refused before training
    assert _run(sleep_cli.main, ["--lerobot", str(exported["bags"][0]), "--out", str(tmp_path / "x")])[0] == 2
