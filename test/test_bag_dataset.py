"""Bags -> aligned samples (sage_hl_ros.bags.bag_dataset): alignment, episodes, split, labels,
streaming memory, errors, statistics, export. Bags are written here with rosbags' Writer and its
typestore serializer (MCAP and sqlite3); no ROS graph."""

from __future__ import annotations

import dataclasses
import io
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from sage_hl_ros.bags.align import NS, audio_windows, grid_times, hold
from sage_hl_ros.bags.bag_dataset import BagDataset
from sage_hl_ros.bags.dataset_config import DatasetConfig, load_dataset_config
from sage_hl_ros.bags.decode import DecodeError, command_positions, compressed_image_to_rgb, depth_to_meters
from sage_hl_ros.bags.errors import BagError
from sage_hl_ros.bags.npz_export import export_samples, iter_exported, load_shard
from sage_hl_ros.core.config import ConfigError, InputRanges, ObservationConfig
from sage_hl_ros.paths import config_file

TS = get_typestore(Stores.ROS2_HUMBLE)
T = TS.types
JOINTS = ["j1", "j2", "j3"]
# Joint positions in these bags encode the message time (e.g. 200 rad at 200 ms) so every value is
# traceable; the plausibility bound is widened for them (the default masks |q| > 100 rad as corrupt).
OBS = ObservationConfig(joint_names=JOINTS, image_height_px=16, image_width_px=16, depth_height_px=16,
                        depth_width_px=16, audio_window_samples=64, audio_n_fft=32, audio_hop_samples=16,
                        audio_n_mels=8, tactile_taxels=4, input_ranges=InputRanges(joint_position_abs_max_rad=1e6))
S = NS  # ns per second
BASE = 1000 * S  # bag times start here (t0 = 1000 s)


# ----------------------------------------------------------------------------- message builders


def _time(ns: int):
    return T["builtin_interfaces/msg/Time"](sec=ns // S, nanosec=ns % S)


def _header(ns: int):
    return T["std_msgs/msg/Header"](stamp=_time(ns), frame_id="")


def joint_state(stamp_ns, positions, names=JOINTS, velocities=None):
    pos = np.asarray(positions, np.float64)
    vel = np.zeros(0) if velocities is None else np.asarray(velocities, np.float64)
    return T["sensor_msgs/msg/JointState"](header=_header(stamp_ns), name=list(names), position=pos,
                                            velocity=vel, effort=np.zeros(0))


def image(stamp_ns, arr, encoding="rgb8"):
    arr = np.ascontiguousarray(arr)
    h, w = arr.shape[:2]
    return T["sensor_msgs/msg/Image"](header=_header(stamp_ns), height=h, width=w, encoding=encoding,
                                      is_bigendian=0, step=arr.nbytes // h,
                                      data=np.frombuffer(arr.tobytes(), np.uint8))


def f32(values, label):
    v = np.asarray(values, np.float32)
    dim = T["std_msgs/msg/MultiArrayDimension"](label=label, size=v.size, stride=v.size)
    return T["std_msgs/msg/Float32MultiArray"](layout=T["std_msgs/msg/MultiArrayLayout"](dim=[dim], data_offset=0),
                                               data=v)


def f64(values):
    return T["std_msgs/msg/Float64MultiArray"](layout=T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0),
                                               data=np.asarray(values, np.float64))


def string(text):
    return T["std_msgs/msg/String"](data=text)


TYPES = {
    "/joint_states": "sensor_msgs/msg/JointState",
    "/camera/image_raw": "sensor_msgs/msg/Image",
    "/camera/image_raw/compressed": "sensor_msgs/msg/CompressedImage",
    "/camera/depth/image_raw": "sensor_msgs/msg/Image",
    "/audio/frames": "std_msgs/msg/Float32MultiArray",
    "/tactile/array": "std_msgs/msg/Float32MultiArray",
    "/forward_position_controller/commands": "std_msgs/msg/Float64MultiArray",
    "/joint_command": "sensor_msgs/msg/JointState",
    "/gripper_controller/commands": "std_msgs/msg/Float64MultiArray",
    "/teacher/joint_command": "sensor_msgs/msg/JointState",
    "/teacher/joint_trajectory": "trajectory_msgs/msg/JointTrajectory",
    "/sage/episode": "std_msgs/msg/String",
}


def write_bag(path: Path, messages, storage: str = "mcap") -> Path:
    """messages: (topic, receive ns, message object or raw bytes); written in receive order."""
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=9, storage_plugin=plugin) as w:
        conns = {}
        for topic, ts, msg in sorted(messages, key=lambda m: m[1]):
            if topic not in conns:
                conns[topic] = w.add_connection(topic, TYPES[topic], typestore=TS)
            raw = msg if isinstance(msg, (bytes, bytearray)) else bytes(TS.serialize_cdr(msg, TYPES[topic]))
            w.write(conns[topic], ts, raw)
    return path


def ms(x: float) -> int:
    return BASE + int(round(x * 1e6))  # x in milliseconds after BASE


def cfg(**kw) -> DatasetConfig:
    return DatasetConfig.from_dict({"command_delay_s": 0.0, "val_fraction": 0.0, **kw}, "test")


def pos_of(v: float):
    return [v, 10 + v, 20 + v]


def all_seqs(ds, split="train"):
    return list(ds.iter_sequences(split))


# ----------------------------------------------------------------------------- align (pure)


def test_hold_hand_computed():
    grid = grid_times(0, 1 * S, 10.0)
    assert grid.tolist() == [i * 100_000_000 for i in range(11)]
    stamps = np.array([0.0, 0.13, 0.20, 0.95]) * S
    h = hold(stamps.astype(np.int64), grid, max_age_s=0.3)
    assert h.index.tolist() == [0, 0, 2, 2, 2, 2, 2, 2, 2, 2, 3]
    np.testing.assert_allclose(h.age_s[:6], [0.0, 0.1, 0.0, 0.1, 0.2, 0.3], atol=1e-12)
    assert h.valid.tolist() == [True] * 6 + [False] * 4 + [True]  # 0.3 s old is still valid (<=)
    # Unsorted input, ties resolve to the last given; nothing before the first stamp -> invalid.
    h2 = hold(np.array([300, 100, 100]), np.array([50, 100, 299, 300]), max_age_s=1.0)
    assert h2.index.tolist() == [-1, 2, 2, 0] and h2.valid.tolist() == [False, True, True, True]
    np.testing.assert_array_equal(h2.take(np.array([[7.0], [8.0], [9.0]]), fill=-1).ravel(), [-1, 9, 9, 7])


def test_audio_windows_concatenate_and_restart_after_gap():
    stamps = np.array([0, 100, 200, 2000]) * 1_000_000  # ms -> ns; gap of 1.8 s before frame 3
    sizes = np.array([4, 4, 4, 4])
    start, end = audio_windows(stamps, sizes, np.array([0, 1, 2, 3, -1]), window=10, max_gap_s=0.5)
    assert list(zip(start.tolist(), end.tolist(), strict=True)) == [(0, 4), (0, 8), (2, 12), (12, 16), (0, 0)]


# ----------------------------------------------------------------------------- alignment through a bag


def _alignment_bag(tmp_path, storage="mcap"):
    msgs = [("/sage/episode", ms(0), string("start:reach"))]
    # Joint states at irregular stamps (ms): 0, 130, 200 (exact grid hit), 290, then a gap to 1000.
    for t, v in [(0, 0.0), (130, 1.0), (200, 2.0), (290, 3.0), (1000, 4.0), (1100, 5.0), (1200, 6.0)]:
        msgs.append(("/joint_states", ms(t) + 3_000_000, joint_state(ms(t), pos_of(v))))  # received 3 ms late
    # Tactile (unstamped: receive time) at 0 and 350 ms only.
    for t, v in [(0, 0.5), (350, 1.5)]:
        msgs.append(("/tactile/array", ms(t), f32(np.full(4, v), "taxels")))
    # Commands every 50 ms: value = 100 + t/50.
    for t in range(0, 1250, 50):
        msgs.append(("/forward_position_controller/commands", ms(t), f64(pos_of(100 + t / 50))))
    msgs.append(("/sage/episode", ms(1200), string("end:success")))
    return write_bag(tmp_path / f"align_{storage}", msgs, storage)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_zoh_alignment_matches_hand_computed_samples(tmp_path, storage):
    bag = _alignment_bag(tmp_path, storage)
    c = cfg(sequence_steps=1, require=[], max_age_s={"proprio": 0.25, "tactile": 0.3})
    ds = BagDataset(bag, OBS, c)
    seqs = all_seqs(ds)
    # Grid 0, 100, ..., 1200 ms = 13 steps, all labelled (commands every 50 ms).
    assert len(seqs) == 13
    pos = torch.stack([s.obs.joint_position[0] for s in seqs])[:, 0].tolist()
    present = [bool(s.obs.mask[0, 4]) for s in seqs]
    # held joint sample per grid time: 0->0, 100->0 (age .1), 200->2 (exact hit), 300->3, 400->3,
    # 500->3 (age .21), 600->3 (age .31 > .25: masked), ..., 1000->4, 1100->5, 1200->6
    expected = [0, 0, 2, 3, 3, 3, None, None, None, None, 4, 5, 6]
    assert present == [e is not None for e in expected]
    assert [p for p, e in zip(pos, expected, strict=True) if e is not None] == [e for e in expected if e is not None]
    assert all(p == 0 for p, e in zip(pos, expected, strict=True) if e is None)  # masked -> zeros
    # Tactile: 0.5 at 0-300 ms (age <= .3), 1.5 from 400 to 600 (350 + .3 = 650), then masked.
    tac = [float(s.obs.tactile[0, 0]) if s.obs.mask[0, 3] else None for s in seqs]
    assert tac == [0.5, 0.5, 0.5, 0.5, 1.5, 1.5, 1.5] + [None] * 6
    # Joint order by name and actions: command at exactly the grid time (delay 0), absolute.
    np.testing.assert_allclose(seqs[2].obs.joint_position[0].numpy(), pos_of(2.0))
    np.testing.assert_allclose(torch.stack([s.action[0, 0, 0, 0] for s in seqs]).numpy(),
                               [100 + t / 50 for t in range(0, 1300, 100)])
    assert seqs[0].action.shape == (1, 1, 1, 3) and seqs[0].obs.batch_size == 1
    ep = ds.episodes()[0]
    assert (ep.task, ep.outcome, ep.steps) == ("reach", "success", 13)
    assert ep.counts["present.proprio"] == 9 and ep.counts["command_steps"] == 13


def test_sequences_chunks_delay_and_require(tmp_path):
    bag = _alignment_bag(tmp_path)
    # T=3, K=2 with chunk spacing 50 ms, command delay 50 ms; proprio required (default).
    c = cfg(sequence_steps=3, action_chunk=2, action_chunk_dt_s=0.05, command_delay_s=0.05,
            max_age_s={"proprio": 0.25})
    seqs = all_seqs(BagDataset(bag, OBS, c))
    # usable steps: 0-5 and 10-12 (proprio), all labelled -> starts 0,1,2,3 and 10
    assert len(seqs) == 5
    first = seqs[0]
    assert first.action.shape == (1, 3, 2, 3) and first.obs.batch_size == 3 and first.steps == 3
    # step t, chunk k: command at t*100 + 50 + k*50 ms -> 100 + (t*100+50+k*50)/50
    np.testing.assert_allclose(first.action[0, :, :, 0].numpy(), [[101, 102], [103, 104], [105, 106]])
    # Next-step proprioception is the next row of the sequence.
    np.testing.assert_allclose(first.obs.joint_position[:, 0].numpy(), [0, 0, 2])
    # The last step's chunk runs past the episode end (1200 ms): labels after the end are not used,
    # the last command (1200 ms) is held (age 0.1 s at 1300 ms).
    np.testing.assert_allclose(seqs[-1].action[0, 2, :, 0].numpy(), [124, 124])


def test_joints_reordered_by_name_and_partial_messages_rejected(tmp_path):
    rev = list(reversed(JOINTS)) + ["gripper"]
    msgs = [("/joint_states", ms(t), joint_state(ms(t), [0.3, 0.2, 0.1, 9.9], rev,
                                                  velocities=[3.0, 2.0, 1.0, 0.0])) for t in (0, 100)]
    # A gripper-only JointState on the same topic (another publisher) is ignored, not an error.
    msgs.append(("/joint_states", ms(50), joint_state(ms(50), [1.0], ["gripper"])))
    msgs += [("/joint_command", ms(t), joint_state(ms(t), [3.0, 2.0, 1.0], list(reversed(JOINTS)))) for t in (0, 100)]
    bag = write_bag(tmp_path / "order", msgs)
    ds = BagDataset(bag, OBS, cfg(sequence_steps=1))
    seqs = all_seqs(ds)
    assert len(seqs) == 2
    np.testing.assert_allclose(seqs[0].obs.joint_position[0].numpy(), [0.1, 0.2, 0.3])
    np.testing.assert_allclose(seqs[0].obs.joint_velocity[0].numpy(), [1.0, 2.0, 3.0])
    np.testing.assert_allclose(seqs[0].action[0, 0, 0].numpy(), [1.0, 2.0, 3.0])
    assert ds.stats["other_joints_messages"] == 1

    bad = write_bag(tmp_path / "partial", [("/joint_states", ms(0), joint_state(ms(0), [1.0, 2.0], ["j1", "j2"]))])
    with pytest.raises(BagError, match=r"partial.*topic /joint_states.*message #0.*missing configured joints \['j3'\]"):
        all_seqs(BagDataset(bad, OBS, cfg()))


# ----------------------------------------------------------------------------- episodes, split, labels


def _episodes_bag(path, n_episodes=3, storage="mcap", teacher=None, gap_ms=500, ep_ms=400):
    """Episodes of ep_ms with joints+commands every 100 ms; markers start:task<i> / end:success."""
    msgs = []
    for e in range(n_episodes):
        t0 = e * (ep_ms + gap_ms)
        msgs.append(("/sage/episode", ms(t0), string(f"start:task{e}")))
        for t in range(t0, t0 + ep_ms + 1, 100):
            msgs.append(("/joint_states", ms(t), joint_state(ms(t), pos_of(t / 100))))
            msgs.append(("/forward_position_controller/commands", ms(t), f64(pos_of(1000 + t / 100))))
            if teacher and teacher(e, t):
                msgs.append(("/teacher/joint_command", ms(t), joint_state(ms(t), pos_of(5000 + t / 100))))
        msgs.append(("/sage/episode", ms(t0 + ep_ms), string("end:success" if e % 2 == 0 else "end:failure")))
    # Between episodes the arm resets: samples here must not appear.
    msgs.append(("/joint_states", ms(ep_ms + gap_ms // 2), joint_state(ms(ep_ms + gap_ms // 2), pos_of(-1))))
    return write_bag(path, msgs, storage)


def test_episodes_split_by_markers_with_tasks_and_outcomes(tmp_path):
    bag = _episodes_bag(tmp_path / "eps", 3)
    ds = BagDataset(bag, OBS, cfg(sequence_steps=2))
    eps = ds.episodes()
    assert [(e.index, e.task, e.outcome, e.steps) for e in eps] == [
        (0, "task0", "success", 5), (1, "task1", "failure", 5), (2, "task2", "success", 5)]
    assert eps[1].start_ns == ms(900) and eps[1].end_ns == ms(1300) and eps[1].id == "eps#1"
    seqs = all_seqs(ds)
    assert len(seqs) == 3 * 4  # 5 steps per episode -> 4 windows of 2; none spans a gap
    positions = torch.cat([s.obs.joint_position[:, 0] for s in seqs])
    assert (positions >= 0).all()  # the reset sample between episodes never appears
    assert eps[0].counts["sequences"] == 4 and eps[0].counts["messages.joint_states"] >= 5
    # Excluding failures drops episode 1.
    ds2 = BagDataset(bag, OBS, cfg(exclude_outcomes=["failure"]))
    assert [e.split for e in ds2.episodes()] == ["train", "excluded", "train"]
    assert len(all_seqs(ds2)) == 8


def test_whole_bag_is_one_episode_without_markers(tmp_path):
    msgs = [("/joint_states", ms(t), joint_state(ms(t), pos_of(t))) for t in range(0, 301, 100)]
    msgs += [("/forward_position_controller/commands", ms(t), f64(pos_of(t))) for t in range(0, 301, 100)]
    # Garbage appended after a complete message (serialize_message can do that, DESIGN §6): still read.
    raw = bytes(TS.serialize_cdr(joint_state(ms(200), pos_of(200)), TYPES["/joint_states"])) + b"\x00" * 8
    msgs[2] = ("/joint_states", ms(200), raw)
    ds = BagDataset(write_bag(tmp_path / "nomarkers", msgs), OBS, cfg())
    (ep,) = ds.episodes()
    assert (ep.start_ns, ep.end_ns, ep.task, ep.outcome, ep.steps) == (ms(0), ms(300), "", "", 4)
    seqs = all_seqs(ds)
    assert len(seqs) == 3 and float(seqs[2].obs.joint_position[0, 0]) == 200.0
    assert ds.stats["trailing_bytes"] == 1


def test_split_by_episode_is_deterministic_and_disjoint(tmp_path):
    bags = [_episodes_bag(tmp_path / f"bag{i}", 4, ep_ms=200, gap_ms=100) for i in range(3)]
    c = cfg(val_fraction=0.4, seed=3, sequence_steps=1)
    a, b = BagDataset(bags, OBS, c), BagDataset(list(reversed(bags)), OBS, c)
    split_a, split_b = a.split_ids(), b.split_ids()
    assert {k: sorted(v) for k, v in split_a.items()} == {k: sorted(v) for k, v in split_b.items()}
    assert split_a["val"] and split_a["train"] and not set(split_a["val"]) & set(split_a["train"])
    assert len(split_a["train"]) + len(split_a["val"]) == 12
    # Moving the dataset keeps the split (bag names are hashed, not full paths).
    moved = tmp_path / "moved"
    moved.mkdir()
    for bag in bags:
        bag.rename(moved / bag.name)
    assert BagDataset(moved, OBS, c).split_ids() == split_a
    # Samples of each split come only from that split's episodes (label encodes the time).
    ds = BagDataset(moved, OBS, c)
    val_ids = set(split_a["val"])
    val_eps = [e for e in ds.episodes() if e.id in val_ids]
    n_val = sum(1 for _ in ds.iter_sequences("val"))
    assert n_val == sum(e.steps for e in val_eps)
    n_train = sum(1 for _ in ds.iter_sequences("train"))
    assert n_train + n_val == sum(1 for _ in ds.iter_sequences("all"))
    # Another seed gives another split.
    assert BagDataset(moved, OBS, cfg(val_fraction=0.4, seed=4)).split_ids() != split_a


def test_teacher_labels_preferred_where_present_commands_elsewhere(tmp_path):
    # Teacher present in episode 0 only for t < 200 ms (labels at 0 and 100).
    bag = _episodes_bag(tmp_path / "teach", 2, teacher=lambda e, t: e == 0 and t < 200)
    c = cfg(sequence_steps=1, max_age_s={"action": 0.05})
    ds = BagDataset(bag, OBS, c)
    labels = [float(s.action[0, 0, 0, 0]) for s in ds.iter_sequences()]
    # episode 0 grid 0..400 ms: teacher 5000+t/100 at 0 and 100; commands 1000+t/100 after
    assert labels[:5] == [5000.0, 5001.0, 1002.0, 1003.0, 1004.0]
    assert labels[5:] == [1000 + t / 100 for t in range(900, 1301, 100)]
    e0, e1 = ds.episodes()
    assert (e0.counts["teacher_steps"], e0.counts["command_steps"]) == (2, 3)
    assert (e1.counts["teacher_steps"], e1.counts["command_steps"]) == (0, 5)
    # prefer_teacher false: executed commands first, the teacher only where commands are missing.
    labels_cmd = [float(s.action[0, 0, 0, 0]) for s in
                  BagDataset(bag, OBS, cfg(sequence_steps=1, prefer_teacher=False)).iter_sequences()]
    assert labels_cmd[:2] == [1000.0, 1001.0]


# ----------------------------------------------------------------------------- images, memory


def test_sensors_the_model_does_not_declare_are_not_read_from_bags(tmp_path):
    bag = _alignment_bag(tmp_path)  # has tactile messages
    no_tactile = dataclasses.replace(OBS, sensors=["camera", "depth", "audio"])
    c = cfg(sequence_steps=1, require=[], max_age_s={"proprio": 0.25, "tactile": 0.3})
    with_tactile = all_seqs(BagDataset(bag, OBS, c))
    without = all_seqs(BagDataset(bag, no_tactile, c))
    assert len(with_tactile) == len(without) == 13
    assert any(bool(s.obs.mask[0, 3]) for s in with_tactile)
    assert not any(bool(s.obs.mask[0, 3]) for s in without)
    assert all(float(s.obs.tactile.abs().sum()) == 0 for s in without)
    for a, b in zip(with_tactile, without, strict=True):  # everything else is the same
        torch.testing.assert_close(a.obs.joint_position, b.obs.joint_position)
        torch.testing.assert_close(a.action, b.action)
    with pytest.raises(ConfigError, match=r"dataset.require: \['tactile'\] not among the model's sensors"):
        BagDataset(bag, no_tactile, cfg(require=["proprio", "tactile"]))


def _image_bag(path, n_images, size=(48, 64), storage="mcap"):
    """One episode, camera at 30 Hz (bgr8) + depth at 10 Hz (16UC1), joints + commands at 50 Hz."""
    h, w = size
    msgs = []
    for i in range(n_images):
        t = i * 100 / 3
        arr = np.zeros((h, w, 3), np.uint8)
        arr[..., 2] = i % 256  # red in BGR order
        msgs.append(("/camera/image_raw", ms(t) + 20_000_000, image(ms(t), arr, "bgr8")))  # 20 ms latency
    for i in range(n_images // 3 + 1):
        d = np.full((h, w), 1000 + i, np.uint16)
        d[0, 0] = 0  # invalid pixel
        msgs.append(("/camera/depth/image_raw", ms(i * 100) + 5_000_000, image(ms(i * 100), d, "16UC1")))
    end = n_images * 100 / 3
    for t in np.arange(0, end + 1, 20):
        msgs.append(("/joint_states", ms(t), joint_state(ms(t), pos_of(t))))
        msgs.append(("/forward_position_controller/commands", ms(t), f64(pos_of(t))))
    return write_bag(path, msgs, storage)


def test_images_decoded_and_aligned(tmp_path):
    bag = _image_bag(tmp_path / "img", 12)
    obs = ObservationConfig(**{**OBS.__dict__, "image_height_px": 48, "image_width_px": 64,
                               "depth_height_px": 48, "depth_width_px": 64, "depth_max_m": 2.0})
    seqs = all_seqs(BagDataset(bag, obs, cfg(sequence_steps=1)))
    assert len(seqs) == 5  # bag spans 0..405 ms -> grid 0, 100, 200, 300, 400
    for g, s in enumerate(seqs):
        assert s.obs.mask[0, :2].all()
        # camera frame 3g is stamped exactly at the grid time (the last is frame 11, at 367 ms);
        # bgr8 -> the red channel holds the frame number
        assert s.obs.image[0, 0, 5, 5].item() == pytest.approx(min(3 * g, 11) / 255)
        assert s.obs.image[0, 2, 5, 5].item() == 0
        # 16UC1 mm -> m, / depth_max_m; the invalid 0 pixel -> NaN -> 0
        assert s.obs.depth[0, 0, 5, 5].item() == pytest.approx((1000 + g) / 1000 / 2.0)
        assert s.obs.depth[0, 0, 0, 0].item() == 0


def _peak_bytes(bag, obs) -> tuple[int, int]:
    ds = BagDataset(bag, obs, cfg(sequence_steps=2))
    tracemalloc.start()
    n = 0
    for _ in ds.iter_sequences():
        n += 1
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak, ds.stats["peak_held_frames"]


def test_streaming_memory_is_independent_of_bag_length(tmp_path):
    obs = OBS
    frame = 120 * 160 * 3  # 57.6 kB per camera image
    short = _image_bag(tmp_path / "short", 30, size=(120, 160))
    long = _image_bag(tmp_path / "long", 240, size=(120, 160))  # 13.8 MB of camera images
    peak_short, held_short = _peak_bytes(short, obs)
    peak_long, held_long = _peak_bytes(long, obs)
    assert held_short <= 4 and held_long <= 4  # decoded frames alive at once
    # What stays is the readers' current MCAP chunk (1 MiB, held ~3 times while rosbags decodes
    # it) plus a few frames, whatever the bag length: 8x more images, no more memory.
    assert peak_long < 6 * 2**20 < 240 * frame / 2, peak_long
    assert peak_long < peak_short + 10 * frame, (peak_short, peak_long)


# ----------------------------------------------------------------------------- errors


def test_truncated_bag_names_the_bag(tmp_path):
    bag = _episodes_bag(tmp_path / "trunc", 1)
    mcap = next(bag.glob("*.mcap"))
    data = mcap.read_bytes()
    mcap.write_bytes(data[: len(data) // 2])
    with pytest.raises(BagError, match=r"trunc/trunc\.mcap: truncated record.*sage-hl-bag repair"):  # the file named
        BagDataset(bag, OBS, cfg()).episodes()
    with pytest.raises(BagError, match="no such file"):
        BagDataset(tmp_path / "nope", OBS, cfg())


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_corrupt_message_error_and_skip(tmp_path, storage):
    msgs = [("/joint_states", ms(t), joint_state(ms(t), pos_of(t))) for t in range(0, 501, 100)]
    msgs += [("/forward_position_controller/commands", ms(t), f64(pos_of(t))) for t in range(0, 501, 100)]
    good = bytes(TS.serialize_cdr(joint_state(ms(300), pos_of(300)), TYPES["/joint_states"]))
    msgs[3] = ("/joint_states", ms(300), good[:30] + b"\xff" * 7)  # 4th joint state: bad bytes
    bag = write_bag(tmp_path / f"corrupt_{storage}", msgs, storage)
    with pytest.raises(BagError) as err:
        all_seqs(BagDataset(bag, OBS, cfg(sequence_steps=1)))
    e = err.value
    assert (e.topic, e.index, e.timestamp_ns, e.reason) == ("/joint_states", 3, ms(300), "corrupt")
    assert f"corrupt_{storage}: topic /joint_states: message #3 at t=1000.300000000 s" in str(e)
    ds = BagDataset(bag, OBS, cfg(sequence_steps=1, skip_bad_messages=True))
    seqs = all_seqs(ds)
    assert len(seqs) == 6  # step 300 ms holds the 200 ms sample instead
    assert float(seqs[3].obs.joint_position[0, 0]) == 200.0
    assert ds.skipped_counts() == {f"{bag} /joint_states": {"corrupt": 1}}
    assert ds.skipped_total == 1


def test_wrong_topic_type_and_undecodable_image(tmp_path):
    msgs = [("/joint_states", ms(t), joint_state(ms(t), pos_of(t))) for t in range(0, 201, 100)]
    msgs += [("/forward_position_controller/commands", ms(t), f64(pos_of(t))) for t in range(0, 201, 100)]
    msgs.append(("/camera/image_raw", ms(100), image(ms(100), np.zeros((4, 4, 2), np.uint8), "rg8")))
    bag = write_bag(tmp_path / "badimg", msgs)
    with pytest.raises(BagError, match=r"topic /camera/image_raw: message #0 at .*unsupported encoding 'rg8'"):
        all_seqs(BagDataset(bag, OBS, cfg(sequence_steps=1)))
    ds = BagDataset(bag, OBS, cfg(sequence_steps=1, skip_bad_messages=True))
    seqs = all_seqs(ds)
    assert len(seqs) == 3 and not any(bool(s.obs.mask[0, 0]) for s in seqs)
    assert ds.skipped_counts() == {f"{bag} /camera/image_raw": {"wrong_encoding": 1}}
    topics = DatasetConfig.from_dict({"topics": {"tactile": "/joint_states", "joint_states": "/js"}}, "t")
    with pytest.raises(BagError, match=r"topic /joint_states: has type sensor_msgs/msg/JointState, expected std_msgs"):
        BagDataset(bag, OBS, topics).episodes()


def test_clock_mismatch_is_an_error(tmp_path):
    # Header stamps in sim time (starting at 0) but bag timestamps in wall time.
    msgs = [("/joint_states", ms(t), joint_state(int(t * 1e6), pos_of(t))) for t in range(0, 201, 100)]
    bag = write_bag(tmp_path / "clock", msgs)
    with pytest.raises(BagError, match="different clocks"):
        all_seqs(BagDataset(bag, OBS, cfg()))


# ----------------------------------------------------------------------------- statistics, export, many bags


def _rich_bag(path, seed, storage="mcap", n=8):
    rng = np.random.default_rng(seed)
    msgs = [("/sage/episode", ms(0), string("start:stack"))]
    for i in range(n):
        t = i * 100
        msgs.append(("/joint_states", ms(t), joint_state(ms(t), rng.normal(size=3), velocities=rng.normal(size=3))))
        msgs.append(("/forward_position_controller/commands", ms(t), f64(rng.normal(size=3))))
        if i % 2 == 0:
            msgs.append(("/tactile/array", ms(t), f32(rng.random(4), "taxels")))
        msgs.append(("/audio/frames", ms(t), f32(rng.uniform(-1, 1, 40), "samples")))
        msgs.append(("/camera/image_raw", ms(t), image(ms(t), rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))))
        msgs.append(("/camera/depth/image_raw", ms(t), image(ms(t), rng.uniform(0.2, 3, (16, 16)).astype(np.float32),
                                                              "32FC1")))
    msgs.append(("/sage/episode", ms((n - 1) * 100), string("end:success")))
    return write_bag(path, msgs, storage)


def test_normalizer_stats_match_numpy(tmp_path):
    bags = [_rich_bag(tmp_path / f"rich{i}", i) for i in range(2)]
    c = cfg(sequence_steps=2, action_chunk=2, max_age_s={"tactile": 0.05})
    ds = BagDataset(bags, OBS, c)
    arrays = ds.normalizer_arrays()
    stats = ds.normalizer_stats()
    assert arrays["joint_position"].shape == (16, 3) and arrays["targets"].shape == (16, 2, 3)
    assert arrays["tactile"].shape == (8, 4)  # tactile only every other step (max age 50 ms)
    for name, data in [("joint_position", arrays["joint_position"]), ("joint_velocity", arrays["joint_velocity"]),
                       ("tactile", arrays["tactile"]), ("action", arrays["targets"].reshape(-1, 3)),
                       ("action_delta", (arrays["targets"] - arrays["joint_position"][:, None]).reshape(-1, 3))]:
        s = stats[name]
        assert s["count"] == data.shape[0]
        np.testing.assert_allclose(s["mean"], data.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(s["std"], data.std(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(s["min"], data.min(0), rtol=1e-6)
        np.testing.assert_allclose(s["max"], data.max(0), rtol=1e-6)
    # The arrays are exactly what the sequences hold.
    seqs = all_seqs(ds)
    jp = torch.cat([s.obs.joint_position for s in seqs]).numpy()
    assert set(map(tuple, np.round(jp, 5))) == set(map(tuple, np.round(arrays["joint_position"], 5)))


def test_export_round_trips_and_batches(tmp_path):
    bags = [_rich_bag(tmp_path / "r0", 0), _rich_bag(tmp_path / "r1", 1, storage="sqlite3")]
    c = cfg(sequence_steps=3, shard_steps=8, val_fraction=0.5)
    out = tmp_path / "export"
    lines = []
    index = export_samples(bags, out, obs_cfg=OBS, dataset_cfg=c, progress=lines.append)
    assert any("export: wrote" in line for line in lines)
    on_disk = json.loads((out / "index.json").read_text())
    assert on_disk["counts"] == index["counts"] and on_disk["version"] == 1
    assert index["counts"]["train"]["episodes"] == 1 and index["counts"]["val"]["episodes"] == 1
    assert index["stats"]["train"]["joint_position"]["count"] > 0
    ds = BagDataset(bags, OBS, c)
    for split in ("train", "val"):
        expected = all_seqs(ds, split)
        loaded = list(iter_exported(out, split))
        assert len(loaded) >= 2  # 8-step shards force a split of the 6 sequences
        assert sum(b.num_sequences for b in loaded) == len(expected) == index["counts"][split]["sequences"]
        got_obs = [b.obs.index(slice(i * 3, i * 3 + 3)) for b in loaded for i in range(b.num_sequences)]
        got_act = [b.action[i] for b in loaded for i in range(b.num_sequences)]
        for e, obs, act in zip(expected, got_obs, got_act, strict=True):
            torch.testing.assert_close(obs.image, e.obs.image, atol=0.5 / 255 + 1e-6, rtol=0)
            for name in ("depth", "audio", "tactile", "joint_position", "joint_velocity", "mask"):
                torch.testing.assert_close(getattr(obs, name), getattr(e.obs, name))
            torch.testing.assert_close(act, e.action[0])
    shard = load_shard(out / index["shards"][0]["file"])
    assert shard.steps == 3 and shard.obs.batch_size == shard.num_sequences * 3
    with pytest.raises(FileExistsError):
        export_samples(bags, out, obs_cfg=OBS, dataset_cfg=c, progress=None)
    # batches(): B sequences concatenated in b * T + t order.
    b = next(ds.batches("train", batch_size=4))
    assert b.num_sequences == 4 and b.obs.batch_size == 12 and b.action.shape == (4, 3, 1, 3)
    first = all_seqs(ds, "train")[:4]
    torch.testing.assert_close(b.obs.joint_position[3:6], first[1].obs.joint_position)


def test_many_bags_mixed_storage_and_folder_of_bags(tmp_path):
    folder = tmp_path / "bags"
    folder.mkdir()
    for i in range(4):
        _episodes_bag(folder / f"b{i}", 2, storage="mcap" if i % 2 else "sqlite3")
    ds = BagDataset(folder, OBS, cfg(sequence_steps=2))
    assert [p.name for p in ds.bag_paths] == ["b0", "b1", "b2", "b3"]
    assert len(ds.episodes()) == 8
    assert len(all_seqs(ds)) == 8 * 4
    assert sum(b.num_sequences for b in ds.batches("train", batch_size=5)) == 32


# ----------------------------------------------------------------------------- config and decoders


def test_dataset_yaml_matches_defaults_and_validates(tmp_path):
    assert load_dataset_config(config_file("dataset.yaml")) == DatasetConfig()
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset:\n  max_age_s: {vision: 0.2}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'max_age_s.vision'"):
        load_dataset_config(bad)
    with pytest.raises(ConfigError, match=r"require: choose from"):
        DatasetConfig.from_dict({"require": ["smell"]}, "x")
    with pytest.raises(ConfigError, match=r"topics.depth: topic must start with '/'"):
        DatasetConfig.from_dict({"topics": {"depth": "camera/depth"}}, "x")


def test_decoders_compressed_depth_and_commands():
    from PIL import Image as PILImage

    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[..., 1] = 200
    buf = io.BytesIO()
    PILImage.fromarray(rgb).save(buf, format="PNG")
    msg = T["sensor_msgs/msg/CompressedImage"](header=_header(0), format="png",
                                               data=np.frombuffer(buf.getvalue(), np.uint8))
    np.testing.assert_array_equal(compressed_image_to_rgb(msg), rgb)
    msg.data = np.frombuffer(b"not an image", np.uint8)
    with pytest.raises(DecodeError, match="cannot decode compressed image"):
        compressed_image_to_rgb(msg)
    d = depth_to_meters(image(0, np.array([[0, 1500]], np.uint16), "16UC1"))
    assert np.isnan(d[0, 0]) and d[0, 1] == pytest.approx(1.5)
    traj = T["trajectory_msgs/msg/JointTrajectory"](
        header=_header(0), joint_names=["j3", "j1", "j2"],
        points=[T["trajectory_msgs/msg/JointTrajectoryPoint"](
            positions=np.array([3.0, 1.0, 2.0]), velocities=np.zeros(0), accelerations=np.zeros(0),
            effort=np.zeros(0), time_from_start=T["builtin_interfaces/msg/Duration"](sec=0, nanosec=0))])
    np.testing.assert_allclose(command_positions(traj, "trajectory_msgs/msg/JointTrajectory", JOINTS), [1, 2, 3])
    with pytest.raises(DecodeError, match="has 2 values, expected 3"):
        command_positions(f64([1.0, 2.0]), "std_msgs/msg/Float64MultiArray", JOINTS)


def test_reads_split_bag_from_the_recorder_writer(tmp_path):
    """The recorder's BagWriter (several storage files in one bag, metadata v8) reads back whole."""
    from sage_hl_ros.bags.bag_writer import BagWriter

    path = tmp_path / "rec"
    with BagWriter(path, storage="mcap", max_bag_size_bytes=2000, chunk_bytes=500, fsync=False) as w:
        ids = {topic: w.add_connection(topic, TYPES[topic]) for topic in
               ("/sage/episode", "/joint_states", "/forward_position_controller/commands")}

        def put(topic, ts, msg):
            w.write(ids[topic], ts, bytes(TS.serialize_cdr(msg, TYPES[topic])))

        put("/sage/episode", ms(0), string("start:pick"))
        for t in range(0, 1001, 100):
            put("/joint_states", ms(t), joint_state(ms(t), pos_of(t)))
            put("/forward_position_controller/commands", ms(t), f64(pos_of(t + 1)))
        put("/sage/episode", ms(1000), string("end:success"))
    assert len(list(path.glob("*.mcap"))) > 1
    ds = BagDataset(path, OBS, cfg(sequence_steps=1))
    (ep,) = ds.episodes()
    assert (ep.task, ep.outcome) == ("pick", "success")
    seqs = all_seqs(ds)
    assert [float(s.obs.joint_position[0, 0]) for s in seqs] == [float(t) for t in range(0, 1001, 100)]


def _renamed_copy(src: Path, bag: Path, rename: dict[str, str]) -> None:
    """Copy bag ``src`` to ``bag`` with topics renamed (a robot recorded on other topic names)."""
    from rosbags.rosbag2 import Reader

    from sage_hl_ros.bags.bag_writer import BagWriter

    with Reader(src) as reader, BagWriter(bag) as writer:
        ids = {c.id: writer.add_connection(rename.get(c.topic, c.topic), c.msgtype) for c in reader.connections}
        for conn, t, data in reader.messages():
            writer.write(ids[conn.id], t, bytes(data))


def test_sim_bags_convert_with_one_command(tmp_path, capsys):
    """A bag on the sim bridge's topics (/rgb, /depth, /joint_command) with the sim model's
    observation (64x64 images, 4 taxels) converts with ``--config config/sim_dataset.yaml`` alone:
    the file names its model config, so nobody merges observation sections by hand (the package's
    model.yaml expects 16 taxels and failed with "multiarray has 4 values, expected 16")."""

    from sage_hl_ros.bags.synthetic import SyntheticBagSpec, write_synthetic_bag
    from sage_hl_ros.core.config import SageConfig
    from sage_hl_ros.tools import bag_cli

    sim_obs = SageConfig.from_yaml(config_file("sim_model.yaml")).observation
    src = write_synthetic_bag(tmp_path / "synthetic", sim_obs, SyntheticBagSpec(episodes=2, steps_per_episode=6))
    rename = {"/camera/image_raw": "/rgb", "/camera/depth/image_raw": "/depth",
              "/forward_position_controller/commands": "/joint_command"}
    bag = tmp_path / "sim_bag"
    _renamed_copy(src, bag, rename)
    assert bag_cli.main(["convert", str(bag), "--out", str(tmp_path / "a"), "--config",
                         str(config_file("sim_dataset.yaml"))]) == 0, capsys.readouterr().err
    index = json.loads((tmp_path / "a" / "index.json").read_text())
    assert index["observation"]["tactile_taxels"] == 4 and index["observation"]["image_height_px"] == 64
    assert index["counts"]["train"]["sequences"] + index["counts"]["val"]["sequences"] > 0
    # The same from an explicit model config, with a dataset file that names none.
    plain = tmp_path / "dataset.yaml"
    plain.write_text("\n".join(line for line in config_file("sim_dataset.yaml").read_text().splitlines()
                               if not line.startswith("model_config:")) + "\n")
    assert bag_cli.main(["convert", str(bag), "--out", str(tmp_path / "b"), "--config", str(plain)]) == 1
    assert "4 values" in capsys.readouterr().err  # the package's model.yaml: 16 taxels
    assert bag_cli.main(["convert", str(bag), "--out", str(tmp_path / "b"), "--config", str(plain),
                         "--model-config", str(config_file("sim_model.yaml"))]) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "b" / "index.json").read_text())["counts"] == index["counts"]


# ----------------------------------------------------------------------------- teacher chunks (GR00T)


def teacher_chunk(stamp_ns, by_joint: dict, step_s=0.1, names=("j3", "j1", "j2")):
    """A teacher's JointTrajectory chunk as sage_groot_teacher publishes it: point i at (i + 1) x step."""
    n = len(next(iter(by_joint.values())))
    points = [T["trajectory_msgs/msg/JointTrajectoryPoint"](
        positions=np.array([by_joint[j][i] for j in names], np.float64), velocities=np.zeros(0),
        accelerations=np.zeros(0), effort=np.zeros(0),
        time_from_start=T["builtin_interfaces/msg/Duration"](sec=0, nanosec=int(round((i + 1) * step_s * 1e9))))
        for i in range(n)]
    return T["trajectory_msgs/msg/JointTrajectory"](header=_header(stamp_ns), joint_names=list(names), points=points)


CHUNK_SHAPE = np.array([0.0, 10.0, 30.0, 60.0])  # j1 offsets at time_from_start 0.1, 0.2, 0.3, 0.4 s


def _chunk_bag(path, bad_times=False):
    """One 1 s episode: joint states, commands and held teacher labels every 100 ms; teacher chunks
    (joints in the order j3, j1, j2) stamped 0 ms (base 100) and 500 ms (base 200)."""
    msgs = [("/sage/episode", ms(0), string("start:reach"))]
    for t in range(0, 1001, 100):
        msgs.append(("/joint_states", ms(t), joint_state(ms(t), pos_of(t / 100))))
        msgs.append(("/forward_position_controller/commands", ms(t), f64(pos_of(1000 + t / 100))))
        msgs.append(("/teacher/joint_command", ms(t), joint_state(ms(t), pos_of(5000 + t / 100))))
    for stamp, base in ((0, 100.0), (500, 200.0)):
        by_joint = {"j1": base + CHUNK_SHAPE, "j2": base + 1 + 2 * CHUNK_SHAPE, "j3": base + 2 + 3 * CHUNK_SHAPE}
        msg = teacher_chunk(ms(stamp), by_joint)
        if bad_times:
            msg.points[2].time_from_start = msg.points[1].time_from_start
        msgs.append(("/teacher/joint_trajectory", ms(stamp) + 2_000_000, msg))
    msgs.append(("/sage/episode", ms(1000), string("end:success")))
    return write_bag(path, msgs)


def test_teacher_chunks_give_the_k_step_targets(tmp_path):
    """K = 3 targets 50 ms apart come from the latest teacher chunk, resampled on its time_from_start
    (its first point is the command for the observation it answers), joints by name; where the
    chunk does not cover all K steps the held teacher labels fill in. Hand-computed values."""
    bag = _chunk_bag(tmp_path / "chunks")
    ds = BagDataset(bag, OBS, cfg(sequence_steps=1, action_chunk=3, action_chunk_dt_s=0.05))
    seqs = all_seqs(ds)
    assert len(seqs) == 11
    act = np.stack([s.action[0, 0].numpy() for s in seqs])  # (11 grid steps, K, J)
    # Chunk at 0 ms, j1: grid 0 -> tfs 0.10/0.15/0.20 -> 100, 105, 110; grid 100 -> 110, 120, 130;
    # grid 200 -> 130, 145, 160 (the last point). Grid 300 would need tfs 0.5: held labels (5003...).
    np.testing.assert_allclose(act[0, :, 0], [100, 105, 110])
    np.testing.assert_allclose(act[1, :, 0], [110, 120, 130])
    np.testing.assert_allclose(act[2, :, 0], [130, 145, 160])
    np.testing.assert_allclose(act[3, :, 0], [5003, 5003, 5004])
    np.testing.assert_allclose(act[4, :, 0], [5004, 5004, 5005])
    np.testing.assert_allclose(act[5, :, 0], [200, 205, 210])  # the chunk at 500 ms
    np.testing.assert_allclose(act[7, :, 0], [230, 245, 260])
    np.testing.assert_allclose(act[8, :, 0], [5008, 5008, 5009])
    # j2 and j3 by name, not by the chunk's column order: base + 1 + 2 x shape, base + 2 + 3 x shape.
    np.testing.assert_allclose(act[1, :, 1], [121, 141, 161])
    np.testing.assert_allclose(act[1, :, 2], [132, 162, 192])
    counts = ds.episodes()[0].counts
    assert counts["teacher_chunk_steps"] == 6 and counts["teacher_steps"] == 5 and counts["command_steps"] == 0
    # prefer_teacher false: executed commands first, teacher chunks nowhere.
    ds2 = BagDataset(bag, OBS, cfg(sequence_steps=1, action_chunk=3, action_chunk_dt_s=0.05, prefer_teacher=False))
    assert float(all_seqs(ds2)[1].action[0, 0, 0, 0]) == 1001.0
    assert ds2.episodes()[0].counts["teacher_chunk_steps"] == 0
    # An independent reader (rosbags' own Reader, no sage code) reads the chunks back as written.
    from rosbags.rosbag2 import Reader

    with Reader(bag) as reader:
        conns = [c for c in reader.connections if c.topic == "/teacher/joint_trajectory"]
        chunks = [TS.deserialize_cdr(raw, c.msgtype) for c, _, raw in reader.messages(connections=conns)]
    assert [len(c.points) for c in chunks] == [4, 4] and list(chunks[0].joint_names) == ["j3", "j1", "j2"]
    np.testing.assert_allclose(chunks[1].points[3].positions, [202 + 180, 260, 201 + 120])


def test_teacher_chunk_with_non_rising_times_is_an_error_naming_it(tmp_path):
    bag = _chunk_bag(tmp_path / "badchunks", bad_times=True)
    with pytest.raises(BagError, match=r"/teacher/joint_trajectory.*time_from_start must rise"):
        all_seqs(BagDataset(bag, OBS, cfg(sequence_steps=1, action_chunk=3, action_chunk_dt_s=0.05)))


def test_sleep_phase_losses_train_k_step_chunks_against_teacher_chunks(tmp_path):
    """wake / sleep / dream losses with K = 3 on targets from teacher chunks: finite, and wake steps
    measurably fit the chunk targets (the per-sequence error falls)."""
    import copy
    import dataclasses as dc

    from sage_hl_ros.bags.bag_dataset import concat_sequences
    from sage_hl_ros.core.config import SageConfig
    from sage_hl_ros.core.system import build_model
    from sage_hl_ros.training.config import DreamConfig, SleepConfig
    from sage_hl_ros.training.phases import dream_loss, sleep_loss, wake_loss

    bag = _chunk_bag(tmp_path / "chunks")
    ds = BagDataset(bag, OBS, cfg(sequence_steps=2, action_chunk=3, action_chunk_dt_s=0.05))
    base = SageConfig()
    torch.manual_seed(0)  # the initial weights too: the test's outcome must not depend on the tests run before it
    model = build_model(dc.replace(base, observation=OBS, model=dc.replace(base.model, action_chunk=3)))
    ds.fit_normalizer(model)
    batch = concat_sequences(all_seqs(ds))
    assert batch.action.shape[2:] == (3, 3) and ds.episodes()[0].counts["teacher_chunk_steps"] > 0
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    first = None
    # Ten sequences whose targets the synthetic observations only partly explain: over init seeds 0-7
    # 60 steps left 0.47-0.81 of the first error (not always half: the old bound passed by the RNG
    # state earlier tests left); an untrained chunk path stays near 1.
    for _ in range(60):
        loss, _logs, per = wake_loss(model, batch)
        first = float(per.mean()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    _, _, per = wake_loss(model, batch)
    assert float(per.mean()) < 0.85 * first
    gen = torch.Generator().manual_seed(0)
    replayed = torch.zeros(batch.num_sequences, dtype=torch.bool)
    for loss, _logs, per in (sleep_loss(model, copy.deepcopy(model).eval(), batch, replayed, SleepConfig()),
                             dream_loss(model, batch, DreamConfig(), gen, rate_hz=10.0)):
        assert torch.isfinite(loss) and torch.isfinite(per).all()
        loss.backward()


def test_topics_a_dataset_config_leaves_unset_are_the_robot_contracts(tmp_path):
    """A robot on its own topics (relative names, recorded in the root namespace) is read with a
    dataset config that names none of them: the contract names them once."""

    from sage_hl_ros.bags.synthetic import SyntheticBagSpec, write_synthetic_bag
    from sage_hl_ros.core.robot import CameraSpec, CommandSpec, RobotContract, TactileSpec

    src = write_synthetic_bag(tmp_path / "synthetic", OBS, SyntheticBagSpec(episodes=2, steps_per_episode=6))
    rename = {"/camera/image_raw": "/arm_b/wrist/image_raw", "/camera/depth/image_raw": "/arm_b/wrist/depth",
              "/tactile/array": "/arm_b/skin", "/joint_states": "/arm_b/joint_states",
              "/forward_position_controller/commands": "/arm_b_controller/commands"}
    bag = tmp_path / "arm_b"
    _renamed_copy(src, bag, rename)
    robot = RobotContract(name="arm_b", joints=JOINTS, joint_states_topic="arm_b/joint_states",
                          command=CommandSpec(controller="arm_b_controller"),
                          cameras=[CameraSpec(topic="arm_b/wrist/image_raw", depth_topic="arm_b/wrist/depth")],
                          tactile=TactileSpec(topic="/arm_b/skin", taxels=OBS.tactile_taxels))
    assert DatasetConfig().topics.camera is None  # unset: the contract's
    ds = BagDataset(bag, OBS, DatasetConfig(), robot)
    assert (ds.cfg.topics.camera, ds.cfg.topics.joint_states, ds.cfg.topics.commands) == (
        "/arm_b/wrist/image_raw", "/arm_b/joint_states", "/arm_b_controller/commands")
    seqs = all_seqs(ds, "all")
    assert len(seqs) > 0 and all(bool(s.obs.mask[:, 0].all()) for s in seqs)  # the camera was read
    # Without the contract the default topics find no joint states: no usable step.
    assert all_seqs(BagDataset(bag, OBS, DatasetConfig()), "all") == []


def test_a_grippers_own_command_stream_fills_its_column_of_the_executed_command(tmp_path):
    """With a contract gripper the arm's command names the other joints only; the gripper's
    Float64MultiArray fills its column, and a step without a gripper command has no command label."""
    from sage_hl_ros.core.robot import robot_from_mapping

    robot = robot_from_mapping({"name": "gripper_arm", "joints": JOINTS, "gripper": {"joint": "j2"}},
                               tmp_path / "robot.yaml")
    msgs = [("/sage/episode", ms(0), string("start:grip"))]
    for t in range(0, 500, 100):
        msgs.append(("/joint_states", ms(t), joint_state(ms(t), pos_of(t / 100))))
        msgs.append(("/forward_position_controller/commands", ms(t + 1), f64([1000 + t / 100, 3000 + t / 100])))
        if t < 300:  # the gripper's controller is told only in the first three steps
            msgs.append(("/gripper_controller/commands", ms(t + 2), f64([0.5 + t / 1000])))
    msgs.append(("/sage/episode", ms(450), string("end:success")))
    bag = write_bag(tmp_path / "grip", msgs)
    ds = BagDataset(bag, OBS, cfg(sequence_steps=1, command_delay_s=0.005, max_age_s={"action": 0.05}),
                    robot=robot)
    labels = np.array([s.action[0, 0, 0].tolist() for s in ds.iter_sequences()])
    assert np.allclose(labels, [[1000.0, 0.5, 3000.0], [1001.0, 0.6, 3001.0], [1002.0, 0.7, 3002.0]])
    from sage_hl_ros.bags.robot_topics import robot_topic_types

    assert robot_topic_types(robot)["/gripper_controller/commands"] == "std_msgs/msg/Float64MultiArray"
