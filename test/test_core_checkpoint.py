"""Checkpoints and configs: bit-identical round trip, and a named error for every bad case."""

import json
import pickle

import pytest
import torch
from conftest import small_config
from safetensors.torch import load_file, save_file

from sage_hl_ros.core.checkpoint import CheckpointError, load_checkpoint, model_hash, save_checkpoint
from sage_hl_ros.core.config import ConfigError, SageConfig
from sage_hl_ros.core.synthetic import SyntheticReachTask
from sage_hl_ros.core.system import build_model


@pytest.fixture
def saved(tmp_path):
    cfg = small_config()
    model = build_model(cfg)
    task = SyntheticReachTask(cfg.observation)
    batch = task.sequences(4, 2)
    model.fit_normalizer(batch.obs.joint_position, batch.obs.joint_velocity, batch.obs.tactile,
                         batch.action.flatten(0, 1))
    model.eval()
    directory = save_checkpoint(model, tmp_path / "ckpt")
    return model, directory, batch


def _outputs(model, batch):
    obs = batch.obs.index(slice(0, 3))
    z, ctx, state = model.encode(obs)
    z2, _, _ = model.encode(obs, state)
    return z, ctx.vector, z2, model.act(z2, obs.joint_position, obs.joint_velocity)


def test_round_trip_is_bit_identical(saved):
    model, directory, batch = saved
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "model.safetensors", "normalizer.json"]
    loaded = load_checkpoint(directory)
    assert not loaded.training
    for a, b in zip(_outputs(model, batch), _outputs(loaded, batch), strict=True):
        assert torch.equal(a, b)
    meta = json.loads((directory / "config.json").read_text())
    assert meta["format_version"] == 1 and meta["model_sha256"] == model_hash(directory)


def _expect(directory, *fragments):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(directory)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


def test_missing_directory_and_files(saved, tmp_path):
    _, directory, _ = saved
    _expect(tmp_path / "nope", "does not exist")
    (directory / "normalizer.json").unlink()
    _expect(directory, "normalizer.json", "missing")
    (directory / "config.json").unlink()
    _expect(directory, "config.json", "missing")


def test_missing_tensor_names_it(saved):
    _, directory, _ = saved
    path = directory / "model.safetensors"
    tensors = load_file(str(path))
    del tensors["l_module.net.0.weight"]
    save_file(tensors, str(path))
    _expect(directory, "model.safetensors", "missing tensor 'l_module.net.0.weight'", "expected shape")


def test_wrong_shape_names_tensor_and_both_shapes(saved):
    _, directory, _ = saved
    path = directory / "model.safetensors"
    tensors = load_file(str(path))
    expected = tuple(tensors["h_module.pos"].shape)
    tensors["h_module.pos"] = torch.zeros(1, 8, 256)
    save_file(tensors, str(path))
    _expect(directory, "model.safetensors", "'h_module.pos'", "(1, 8, 256)", str(expected))


def test_unexpected_tensor(saved):
    _, directory, _ = saved
    path = directory / "model.safetensors"
    tensors = load_file(str(path))
    tensors["extra.weight"] = torch.zeros(2)
    save_file(tensors, str(path))
    _expect(directory, "unexpected tensor 'extra.weight'")


def test_newer_version_is_refused(saved):
    _, directory, _ = saved
    meta = json.loads((directory / "config.json").read_text())
    meta["format_version"] = 99
    (directory / "config.json").write_text(json.dumps(meta))
    _expect(directory, "config.json", "format_version 99 is newer")


def test_pickle_is_never_loaded(saved):
    _, directory, _ = saved
    (directory / "model.safetensors").write_bytes(pickle.dumps({"l_module.net.0.weight": [1.0]}))
    _expect(directory, "model.safetensors", "not a valid safetensors file")


def test_truncated_weights(saved):
    _, directory, _ = saved
    path = directory / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    _expect(directory, "model.safetensors", "not a valid safetensors file")


def test_bad_config_and_normalizer(saved):
    _, directory, _ = saved
    meta = json.loads((directory / "config.json").read_text())
    meta["config"]["model"]["compressor"] = "zip"
    (directory / "config.json").write_text(json.dumps(meta))
    _expect(directory, "config.json", "model.compressor")
    meta["config"]["model"]["compressor"] = "hybrid"
    (directory / "config.json").write_text(json.dumps(meta))
    stats = json.loads((directory / "normalizer.json").read_text())
    stats["action"]["mean"] = [0.0]
    (directory / "normalizer.json").write_text(json.dumps(stats))
    _expect(directory, "normalizer.json", "'action.mean' expected 7 values, got 1")
    (directory / "config.json").write_text("{not json")
    _expect(directory, "config.json", "unreadable")


def test_config_errors_name_file_and_key(tmp_path):
    path = tmp_path / "model.yaml"
    path.write_text("model:\n  compresor: hybrid\n")
    with pytest.raises(ConfigError, match=r"model.yaml: unknown key 'model.compresor'"):
        SageConfig.from_yaml(path)
    path.write_text("observation:\n  image_height_px: big\n")
    with pytest.raises(ConfigError, match=r"model.yaml: observation.image_height_px: expected an integer"):
        SageConfig.from_yaml(path)
    path.write_text("observation:\n  proprio_features: [torque]\n")
    with pytest.raises(ConfigError, match=r"observation.proprio_features"):
        SageConfig.from_yaml(path)
    path.write_text("observation: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        SageConfig.from_yaml(path)
    with pytest.raises(ConfigError, match="absent.yaml: cannot read"):
        SageConfig.from_yaml(tmp_path / "absent.yaml")


def test_shipped_model_config_loads():
    from pathlib import Path

    cfg = SageConfig.from_yaml(Path(__file__).parent.parent / "config" / "model.yaml")
    assert cfg == SageConfig()  # the YAML documents exactly the defaults
