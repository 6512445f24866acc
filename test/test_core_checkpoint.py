"""Checkpoints and configs: bit-identical round trip, weights integrity, the torch-free reader, and a
named error for every bad case."""

import json
import os
import pickle
import subprocess
import sys

import pytest
import torch
from conftest import small_config
from safetensors.torch import load_file, save_file

from sage_hl_ros.core import checkpoint_files
from sage_hl_ros.core.checkpoint import (
    CheckpointError,
    UnverifiedWeightsWarning,
    load_checkpoint,
    model_hash,
    save_checkpoint,
)
from sage_hl_ros.core.checkpoint_files import load_tensors_numpy, read_normalizer, sha256_file, verify_weights
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


def _rewrite_weights(directory, tensors=None, raw: bytes | None = None):
    """Replace the weights and record their hash, as a consistent (but maybe incompatible) save would,
    so the checks behind the integrity check are reached."""
    path = directory / "model.safetensors"
    if raw is None:
        save_file(tensors, str(path))
    else:
        path.write_bytes(raw)
    meta = json.loads((directory / "config.json").read_text())
    meta["model_sha256"] = sha256_file(path)
    (directory / "config.json").write_text(json.dumps(meta))


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
    _rewrite_weights(directory, tensors)
    _expect(directory, "model.safetensors", "missing tensor 'l_module.net.0.weight'", "expected shape")


def test_wrong_shape_names_tensor_and_both_shapes(saved):
    _, directory, _ = saved
    path = directory / "model.safetensors"
    tensors = load_file(str(path))
    expected = tuple(tensors["h_module.pos"].shape)
    tensors["h_module.pos"] = torch.zeros(1, 8, 256)
    _rewrite_weights(directory, tensors)
    _expect(directory, "model.safetensors", "'h_module.pos'", "(1, 8, 256)", str(expected))


def test_unexpected_tensor(saved):
    _, directory, _ = saved
    path = directory / "model.safetensors"
    tensors = load_file(str(path))
    tensors["extra.weight"] = torch.zeros(2)
    _rewrite_weights(directory, tensors)
    _expect(directory, "unexpected tensor 'extra.weight'")


def test_newer_version_is_refused(saved):
    _, directory, _ = saved
    meta = json.loads((directory / "config.json").read_text())
    meta["format_version"] = 99
    (directory / "config.json").write_text(json.dumps(meta))
    _expect(directory, "config.json", "format_version 99 is newer")


def test_pickle_is_never_loaded(saved):
    _, directory, _ = saved
    _rewrite_weights(directory, raw=pickle.dumps({"l_module.net.0.weight": [1.0]}))
    _expect(directory, "model.safetensors", "not a valid safetensors file")


def test_truncated_weights(saved):
    _, directory, _ = saved
    path = directory / "model.safetensors"
    _rewrite_weights(directory, raw=path.read_bytes()[:1000])
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


def _flip_one_weight_byte(directory):
    """Change one byte of tensor data (not the header): still a valid safetensors file of the right
    shapes, so only the hash can tell."""
    path = directory / "model.safetensors"
    data = bytearray(path.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    data[8 + header_len + 100] ^= 0x01
    path.write_bytes(bytes(data))
    return path


def test_tampered_weights_are_refused_naming_the_file_and_both_hashes(saved):
    _, directory, _ = saved
    recorded = json.loads((directory / "config.json").read_text())["model_sha256"]
    assert model_hash(directory) == recorded  # verified, and now remembered for this file identity
    path = _flip_one_weight_byte(directory)
    load_file(str(path))  # still loads as safetensors: the hash is the only line of defence
    actual = sha256_file(path)
    assert actual != recorded
    for load in (load_checkpoint, model_hash, verify_weights, load_tensors_numpy):
        with pytest.raises(CheckpointError) as info:
            load(directory)
        message = str(info.value)
        assert str(path) in message and actual in message and recorded in message, message
        assert "config.json" in message


def test_load_reports_the_verified_hash(saved):
    _, directory, _ = saved
    model = load_checkpoint(directory)
    assert model.checkpoint_sha256 == sha256_file(directory / "model.safetensors") == model_hash(directory)


def test_checkpoint_without_recorded_hash_loads_with_a_warning(saved):
    """An older or hand-made checkpoint (config.json without model_sha256) is not refused: the hash is
    computed, returned and named in a warning saying it could not be checked."""
    model, directory, batch = saved
    meta = json.loads((directory / "config.json").read_text())
    del meta["model_sha256"]
    (directory / "config.json").write_text(json.dumps(meta))
    actual = sha256_file(directory / "model.safetensors")
    with pytest.warns(UnverifiedWeightsWarning, match=actual):
        loaded = load_checkpoint(directory)
    assert loaded.checkpoint_sha256 == actual
    for a, b in zip(_outputs(model, batch), _outputs(loaded, batch), strict=True):
        assert torch.equal(a, b)
    with pytest.warns(UnverifiedWeightsWarning):
        assert model_hash(directory) == actual


def test_malformed_recorded_hash_is_refused(saved):
    _, directory, _ = saved
    meta = json.loads((directory / "config.json").read_text())
    meta["model_sha256"] = "abc"
    (directory / "config.json").write_text(json.dumps(meta))
    _expect(directory, "config.json", "'model_sha256' is not a SHA-256 hex digest")


def test_unchanged_weights_are_hashed_once_and_a_replaced_file_again(saved, monkeypatch):
    _, directory, _ = saved
    calls = []
    real = checkpoint_files.sha256_file
    monkeypatch.setattr(checkpoint_files, "sha256_file", lambda p: calls.append(p) or real(p))
    path = directory / "model.safetensors"
    written_ns = os.stat(path).st_mtime_ns
    assert verify_weights(directory) and verify_weights(directory) and len(calls) == 2  # just written: racy
    calls.clear()
    os.utime(path, ns=(written_ns - 10**10, written_ns - 10**10))  # as if saved 10 s ago
    first = verify_weights(directory)
    load_tensors_numpy(directory, prefix="l_module.")
    verify_weights(directory)
    assert calls == [path]
    tmp = directory / "copy.tmp"
    tmp.write_bytes(path.read_bytes())
    os.replace(tmp, path)  # same content, a new file: verified again
    assert verify_weights(directory) == first and calls == [path, path]


def test_numpy_reader_matches_the_torch_model(saved):
    model, directory, _ = saved
    tensors = load_tensors_numpy(directory, prefix="l_module.net.")
    state = {k: v for k, v in model.state_dict().items() if k.startswith("l_module.net.")}
    assert set(tensors) == set(state) and "l_module.net.0.weight" in tensors
    for name, value in state.items():
        assert tensors[name].dtype == value.numpy().dtype
        assert (tensors[name] == value.numpy()).all(), name
    assert set(load_tensors_numpy(directory)) == {k for k in model.state_dict() if not k.startswith("normalizer.")}
    cfg = model.cfg
    stats = read_normalizer(directory, {"joint_position": cfg.observation.num_joints, "action": 7})
    for name in checkpoint_files.NORMALIZER_STATS:
        for field in checkpoint_files.NORMALIZER_FIELDS:
            assert (stats[name][field] == getattr(model.normalizer, f"{name}_{field}").numpy()).all()


def test_numpy_normaliser_errors_name_file_and_entry(saved):
    _, directory, _ = saved
    path = directory / "normalizer.json"
    stats = json.loads(path.read_text())
    stats["action"]["mean"] = [0.0]
    path.write_text(json.dumps(stats))
    with pytest.raises(CheckpointError, match=r"normalizer.json: 'action.mean' expected 7 values, got 1"):
        read_normalizer(directory, {"action": 7})
    stats["action"]["mean"] = "zeros"
    path.write_text(json.dumps(stats))
    with pytest.raises(CheckpointError, match=r"normalizer.json: 'action.mean' is not a list of numbers"):
        read_normalizer(directory)
    del stats["tactile"]
    path.write_text(json.dumps(stats))
    with pytest.raises(CheckpointError, match=r"normalizer.json: missing statistics 'tactile'"):
        read_normalizer(directory)
    path.unlink()
    with pytest.raises(CheckpointError, match=r"normalizer.json: missing"):
        read_normalizer(directory)


def test_checkpoint_files_never_imports_torch():
    code = ("import sys; import sage_hl_ros.core.checkpoint_files; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


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


def test_configs_validate_on_construction_and_replace(tmp_path):
    """Direct construction and dataclasses.replace run the loaders' checks, with the class as the key's
    owner; from a file the message still names the file and the dotted key."""
    import dataclasses

    from sage_hl_ros.bags.dataset_config import DatasetConfig, TopicsConfig
    from sage_hl_ros.core.config import InputRanges, ObservationConfig
    from sage_hl_ros.groot.modality_map import ModalityMap
    from sage_hl_ros.sim.world import SimConfig
    from sage_hl_ros.tools.sim_demo import SimDemoConfig
    from sage_hl_ros.training.config import SleepConfig, TrainConfig

    cfg = SageConfig()
    with pytest.raises(ConfigError, match=r"^ObservationConfig.tactile_taxels: must be > 0, got 0 "
                       r"\(a robot without tactile sensing leaves 'tactile' out of sensors\)$"):
        dataclasses.replace(cfg.observation, tactile_taxels=0)
    with pytest.raises(ConfigError, match=r"^ModelConfig.compressor: choose from"):
        dataclasses.replace(cfg.model, compressor="zip")
    with pytest.raises(ConfigError, match=r"^InputRanges.depth_valid_min_m"):
        InputRanges(depth_valid_min_m=200.0)
    with pytest.raises(ConfigError, match=r"^ObservationConfig.joint_names: duplicate"):
        ObservationConfig(joint_names=["a", "a"])
    with pytest.raises(ConfigError, match=r"^SleepConfig.replay_fraction: must be in \[0, 1\]"):
        SleepConfig(replay_fraction=2.0)
    with pytest.raises(ConfigError, match=r"^TrainConfig.device"):
        dataclasses.replace(TrainConfig(), device="tpu")
    with pytest.raises(ConfigError, match=r"^TopicsConfig.camera: topic must start with '/'"):
        TopicsConfig(camera="camera")
    with pytest.raises(ConfigError, match=r"^DatasetConfig.rate_hz: must be > 0"):
        dataclasses.replace(DatasetConfig(), rate_hz=0.0)
    with pytest.raises(ConfigError, match=r"^SimConfig.image_width_px: must be >= 16"):
        SimConfig(image_width_px=8)
    with pytest.raises(ConfigError, match=r"^SimDemoConfig.eval_seed: must differ"):
        SimDemoConfig(train_seed=5, eval_seed=5)
    with pytest.raises(ConfigError, match=r"^SimDemoConfig.val_seed: must differ from eval_seed"):
        SimDemoConfig(val_seed=1000, eval_seed=1000)
    # DAgger round 2 would draw its training targets from the test seed
    with pytest.raises(ConfigError, match=r"^SimDemoConfig.eval_seed: must differ from the seed of DAgger round 2 "
                                          r"\(train_seed \+ 2 = 1000\)"):
        SimDemoConfig(train_seed=998, eval_seed=1000, dagger_rounds=2)
    with pytest.raises(ConfigError, match=r"^SimDemoConfig.val_seed: must differ from the seed of DAgger round 2 "
                                          r"\(train_seed \+ 2 = 3\)"):
        SimDemoConfig(train_seed=1, val_seed=3, dagger_rounds=2)
    # Online cycle k drives on train_seed + k too, and is checked the same way
    with pytest.raises(ConfigError, match=r"^SimDemoConfig.eval_seed: must differ from the seed of online cycle 3 "
                                          r"\(train_seed \+ 3 = 1000\)"):
        SimDemoConfig(train_seed=997, eval_seed=1000, online_cycles=3)
    with pytest.raises(ConfigError, match=r"^SimDemoConfig.online_cycles: online cycles start from round 0"):
        SimDemoConfig(online_cycles=2, dagger_rounds=1)
    with pytest.raises(ConfigError, match=r"^SimDemoConfig.online_train_nice: 0..19, got 25"):
        SimDemoConfig(online_train_nice=25)
    with pytest.raises(ConfigError, match=r"^ModalityMap.cameras: declare at least one key"):
        ModalityMap()
    # Nested: the file and the dotted key of the nested section.
    path = tmp_path / "model.yaml"
    path.write_text("observation:\n  input_ranges:\n    tactile_abs_max: -1.0\n")
    with pytest.raises(ConfigError, match=r"model.yaml: observation.input_ranges.tactile_abs_max: must be > 0"):
        SageConfig.from_yaml(path)
    path.write_text("model:\n  h_heads: 3\n")
    with pytest.raises(ConfigError, match=r"model.yaml: model.h_heads: must divide"):
        SageConfig.from_yaml(path)


def test_shipped_model_config_loads():
    from pathlib import Path

    cfg = SageConfig.from_yaml(Path(__file__).parent.parent / "config" / "model.yaml")
    assert cfg == SageConfig()  # the YAML documents exactly the defaults


def _flip_tensor_byte(directory, name_prefix):
    """Flip one data byte of the first tensor whose name starts with ``name_prefix``."""
    path = directory / "model.safetensors"
    data = bytearray(path.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + header_len])
    name = sorted(k for k in header if k.startswith(name_prefix))[0]
    data[8 + header_len + header[name]["data_offsets"][0] + 2] ^= 0x10
    path.write_bytes(bytes(data))
    return path


def test_the_l_step_is_verified_by_its_own_digest_without_hashing_the_file(saved, monkeypatch):
    """The control node reads ~0.1 MB of a 56 MB file: its tensors are checked, the file is not hashed."""
    from sage_hl_ros.core.fast_policy import NumpyLPolicy

    _, directory, _ = saved
    meta = json.loads((directory / "config.json").read_text())
    assert set(meta["tensor_group_sha256"]) == {checkpoint_files.L_STEP_PREFIX}

    def no_file_hash(path):
        raise AssertionError(f"hashed the whole {path}")

    monkeypatch.setattr(checkpoint_files, "sha256_file", no_file_hash)
    checkpoint_files._verified.clear()
    policy, info = NumpyLPolicy.from_checkpoint(directory)
    assert info.sha256 == meta["model_sha256"]


def test_a_changed_l_tensor_is_refused_and_a_changed_h_tensor_is_the_full_loaders_to_find(saved):
    from sage_hl_ros.core.fast_policy import NumpyLPolicy

    _, directory, _ = saved
    path = _flip_tensor_byte(directory, "h_module.")
    NumpyLPolicy.from_checkpoint(directory)  # the L step it runs is intact
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(directory)  # the context node's load hashes the whole file
    _flip_tensor_byte(directory, "h_module.")  # restore
    path = _flip_tensor_byte(directory, checkpoint_files.L_STEP_PREFIX)
    with pytest.raises(CheckpointError) as info:
        NumpyLPolicy.from_checkpoint(directory)
    message = str(info.value)
    assert str(path) in message and checkpoint_files.L_STEP_PREFIX in message and "tensor_group_sha256" in message


def test_a_malformed_group_digest_is_named(saved):
    _, directory, _ = saved
    meta = json.loads((directory / "config.json").read_text())
    meta["tensor_group_sha256"] = {"l_module.net.": "not-a-hash"}
    (directory / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="tensor_group_sha256"):
        checkpoint_files.read_meta(directory)
