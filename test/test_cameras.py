"""Several cameras: the contract's cameras are the model's views, every view reaches the latent,
and a lost camera is left out (not the whole visual modality) from the schema to the dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import small_config

from sage_hl_ros.bags.bag_dataset import BagDataset
from sage_hl_ros.bags.dataset_config import DatasetConfig, TopicsConfig
from sage_hl_ros.bags.robot_topics import robot_topic_types
from sage_hl_ros.bags.synthetic import SyntheticBagSpec, write_synthetic_bag
from sage_hl_ros.core.config import ConfigError, SageConfig
from sage_hl_ros.core.context_step import ContextStep, Reading, declared_inputs
from sage_hl_ros.core.observation import Observation, ObservationSchema
from sage_hl_ros.core.robot import robot_from_mapping
from sage_hl_ros.core.system import build_model
from sage_hl_ros.core.torch_backend import TorchHBackend

NOW = 100.0
TWO_CAMERAS = {"name": "two_cam", "joints": ["a", "b", "c"],
               "cameras": [{"name": "front", "topic": "front/rgb", "depth_topic": "front/depth"},
                           {"name": "wrist", "topic": "wrist/rgb", "compressed": True}]}


def _two_camera_config() -> SageConfig:
    cfg = small_config()
    d = cfg.to_dict()
    d["robot"] = TWO_CAMERAS
    for key in ("joint_names", "sensors", "tactile_taxels", "audio_sample_rate_hz", "num_cameras"):
        d["observation"].pop(key, None)
    return SageConfig.from_dict(d)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(_two_camera_config()).eval()


def _frame(o, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (o.image_height_px, o.image_width_px, 3), dtype=np.uint8)


def _readings(o, **override):
    out = {"camera": Reading(_frame(o, 1), NOW - 0.01, NOW - 0.01, "front"),
           "camera_1": Reading(_frame(o, 2), NOW - 0.01, NOW - 0.02, "wrist"),
           "depth": Reading(np.full((o.depth_height_px, o.depth_width_px), 1.0, np.float32), NOW - 0.01),
           "joint_states": Reading((np.zeros(3), np.zeros(3)), NOW - 0.01, NOW - 0.01, "joints")}
    out.update(override)
    return out


def test_the_contract_sets_the_views_and_the_inputs():
    cfg = _two_camera_config()
    o = cfg.observation
    assert o.num_cameras == 2 and o.sensors == ["camera", "depth"]
    assert declared_inputs(o) == ("camera", "camera_1", "depth", "joint_states")
    robot = cfg.robot_contract()
    assert robot.topic("camera_1") == "wrist/rgb"
    types = robot_topic_types(robot)
    assert types["/wrist/rgb/compressed"] == "sensor_msgs/msg/CompressedImage"
    assert types["/front/rgb"] == "sensor_msgs/msg/Image"
    # a model config stating another view count than its robot's is refused, naming both
    d = cfg.to_dict()
    d["observation"]["num_cameras"] = 1
    with pytest.raises(ConfigError, match=r"num_cameras 1 differs from robot 'two_cam' \(2\)"):
        SageConfig.from_dict(d)
    bad = dict(TWO_CAMERAS, cameras=[{"name": "a"}, {"name": "b", "depth_topic": "b/depth"}])
    with pytest.raises(ConfigError, match=r"cameras\[1\].depth_topic: depth is read from the first camera"):
        robot_from_mapping(bad, "robot.yaml")


def test_each_view_fills_its_channels_and_a_missing_view_is_zeros_with_its_reason():
    o = _two_camera_config().observation
    schema = ObservationSchema(o)
    arrays, problems = schema.prepare_arrays(Observation(image=_frame(o, 1), extra_views=[None],
                                                         joint_position=np.zeros(3)))
    assert arrays["image"].shape == (1, 6, o.image_height_px, o.image_width_px)
    assert arrays["image"][0, :3].max() > 0 and not arrays["image"][0, 3:].any()
    assert arrays["mask"][0, 0] and problems["visual:1"] == "missing"
    arrays, problems = schema.prepare_arrays(Observation(extra_views=[_frame(o, 2)], joint_position=np.zeros(3)))
    assert arrays["mask"][0, 0] and not arrays["image"][0, :3].any() and arrays["image"][0, 3:].max() > 0
    assert problems["visual"] == "missing"
    arrays, _ = schema.prepare_arrays(Observation(joint_position=np.zeros(3)))
    assert not arrays["mask"][0, 0]  # no camera at all: the visual modality is masked


def test_masking_either_camera_changes_the_latent_and_is_reported_per_camera(model):
    o = model.cfg.observation
    z = {}
    for name, readings in (("both", _readings(o)),
                           ("no_front", _readings(o, camera=Reading(_frame(o, 1), NOW - 5.0, NOW - 5.0))),
                           ("no_wrist", _readings(o, camera_1=None)),
                           ("other_wrist", _readings(o, camera_1=Reading(_frame(o, 7), NOW - 0.01, NOW - 0.01)))):
        step = ContextStep(TorchHBackend(model))
        result = step(readings, NOW)
        assert result.z is not None, result.skip_reason
        z[name] = result
    assert z["both"].used == ("camera", "camera_1", "depth", "joint_states")
    assert z["no_front"].masked["camera"].state == "stale" and "camera_1" in z["no_front"].used
    assert z["no_wrist"].masked["camera_1"].state == "missing" and "camera" in z["no_wrist"].used
    for other in ("no_front", "no_wrist", "other_wrist"):
        assert np.abs(z[other].z - z["both"].z).max() > 1e-4, other
    # the wrist frame's stamp (the older one) is not the latent's: the newest header stamp is
    assert z["both"].stamp == "front"


def test_a_two_camera_bag_trains_on_both_views(tmp_path):
    cfg = _two_camera_config()
    o = cfg.observation
    robot = cfg.robot_contract()
    # The synthetic writer records the default contract's topics; this robot names its own.
    write_synthetic_bag(tmp_path / "bag", o, SyntheticBagSpec(episodes=2, steps_per_episode=6, teacher=True))
    dcfg = DatasetConfig(topics=TopicsConfig(camera="/camera/image_raw", depth="/camera/depth/image_raw",
                                             cameras=["/camera_1/image_raw"]))
    seqs = list(BagDataset(tmp_path / "bag", o, dcfg, robot=robot).iter_sequences("all"))
    assert seqs
    img = torch.cat([s.obs.image for s in seqs])
    assert img.shape[1] == 6
    front, wrist = img[:, :3], img[:, 3:]
    assert front.amax(dim=(1, 2, 3)).min() > 0 and wrist.amax(dim=(1, 2, 3)).min() > 0  # every step, both views
    assert (front - wrist).abs().mean() > 0.01  # two different cameras, not one copied
    # a dataset for this robot that names no further camera topic is refused with the reason
    with pytest.raises(ConfigError, match="the model takes 2 cameras, but 0 further camera topics"):
        BagDataset(tmp_path / "bag", o, DatasetConfig(topics=TopicsConfig(cameras=[])), robot=robot)


def test_a_two_camera_model_exports_and_onnx_runtime_sees_both_views(tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    from sage_hl_ros.core.checkpoint import save_checkpoint
    from sage_hl_ros.core.synthetic import SyntheticReachTask
    from sage_hl_ros.deploy.export import ExportConfig, export_model
    from sage_hl_ros.deploy.onnx_backend import OnnxHPath

    cfg = _two_camera_config()
    d = cfg.to_dict()
    d["model"].update({"h_layers": 1, "h_ff_dim": 128, "history_len": 3, "l_hidden_dim": 64, "l_layers": 1})
    model = build_model(SageConfig.from_dict(d))
    data = SyntheticReachTask(model.cfg.observation, seed=0).sequences(16, 2)
    model.fit_normalizer(data.obs.joint_position, data.obs.joint_velocity, data.obs.tactile, data.action.flatten(0, 1))
    model_dir = save_checkpoint(model.eval(), tmp_path / "model")
    manifest = export_model(model_dir, ExportConfig(held_out_sequences=4, held_out_steps=2), log=lambda _: None)["fp32"]
    assert manifest["check"]["passed"]
    image = next(s for s in manifest["inputs"] if s["name"] == "image")
    assert image["shape"][1:] == [6, 32, 32]
    backend = TorchHBackend(model)
    onnx = OnnxHPath.for_checkpoint(model_dir, "fp32")
    o = model.cfg.observation
    schema = ObservationSchema(o)
    arrays, _ = schema.prepare_arrays(Observation(image=_frame(o, 1), extra_views=[_frame(o, 2)],
                                                  joint_position=np.zeros(3)))
    lost, _ = schema.prepare_arrays(Observation(image=_frame(o, 1), joint_position=np.zeros(3)))
    z_both, _ = onnx.run(arrays, onnx.initial_state(1))
    z_lost, _ = onnx.run(lost, onnx.initial_state(1))
    z_torch, _ = backend.encode(arrays, backend.initial_state())
    assert np.abs(z_both[0] - z_torch).max() <= 1e-4
    assert np.abs(z_both - z_lost).max() > 1e-4  # the exported graph leaves the lost view out, too
