"""ContextStep without a ROS graph: freshness by both clocks, range masks, commit-only-on-success."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import small_config

from sage_hl_ros.core.config import ConfigError, InputRanges, SageConfig
from sage_hl_ros.core.context_step import ContextStep, ContextStepConfig, Reading, freshness, h_rate_for
from sage_hl_ros.core.system import build_model
from sage_hl_ros.core.torch_backend import TorchHBackend

NOW = 1000.0
CFG = ContextStepConfig(observation_timeout_s=0.5, clock_skew_tolerance_s=0.05)


def _model(**ranges):
    cfg = small_config()
    if ranges:
        cfg.observation.input_ranges = InputRanges(**ranges)
    return build_model(cfg).eval()


@pytest.fixture(scope="module")
def model():
    return _model()


def _readings(cfg: SageConfig, now=NOW, **override):
    """A fresh, plausible reading of every input, stamped 10 ms before ``now``."""
    o = cfg.observation
    j = o.num_joints
    stamp = now - 0.01
    out = {
        "camera": Reading(np.full((o.image_height_px, o.image_width_px, 3), 90, np.uint8), now - 0.005, stamp, "cam"),
        "depth": Reading(np.full((o.depth_height_px, o.depth_width_px), 1.2, np.float32), now - 0.005, stamp - 0.01,
                         "depth"),
        "audio": Reading((0.2 * np.sin(np.arange(o.audio_window_samples) * 0.1)).astype(np.float32), now - 0.01),
        "tactile": Reading(np.linspace(0, 1, o.tactile_taxels).astype(np.float32), now - 0.01),
        "joint_states": Reading((np.linspace(-0.5, 0.5, j), np.zeros(j)), now - 0.002, stamp - 0.02, "joints"),
    }
    out.update(override)
    return out


def _history(step: ContextStep) -> torch.Tensor:
    return step.state.history.clone()


def test_all_fresh_inputs_give_a_latent_with_the_newest_header_stamp(model):
    step = ContextStep(TorchHBackend(model), CFG)
    result = step(_readings(model.cfg), NOW)
    assert result.z is not None and result.z.shape == (256,) and np.isfinite(result.z).all()
    assert result.used == ("camera", "depth", "audio", "tactile", "joint_states") and result.masked == {}
    # newest *header* stamp (camera), passed through as the same object; audio/tactile have no header
    assert result.stamp == "cam" and result.stamp_s == pytest.approx(NOW - 0.01)
    assert result.infer_ms > 0
    assert step.state.valid.any()  # the step was committed


def test_a_1e30_taxel_is_masked_with_a_reason_and_the_latent_still_goes_out(model):
    step = ContextStep(TorchHBackend(model), CFG)
    bad = _readings(model.cfg, tactile=Reading(np.full(16, 1e30, np.float32), NOW - 0.01))
    result = step(bad, NOW)
    assert result.z is not None and np.isfinite(result.z).all()
    mask = result.masked["tactile"]
    assert mask.state == "invalid" and "tactile out of range (16 of 16 values)" in mask.reason, mask
    assert "tactile" not in result.used
    after = step(_readings(model.cfg, now=NOW + 0.1), NOW + 0.1)  # the next H step
    assert after.z is not None and "tactile" in after.used


def test_a_1e308_joint_position_is_masked_and_alone_it_publishes_nothing(model):
    j = model.cfg.observation.num_joints
    joints = Reading((np.full(j, 1e308), np.zeros(j)), NOW - 0.002, NOW - 0.01, "joints")
    step = ContextStep(TorchHBackend(model), CFG)
    result = step(_readings(model.cfg, joint_states=joints), NOW)
    assert result.z is not None
    assert "joint position out of range" in result.masked["joint_states"].reason
    assert "rad" in result.masked["joint_states"].reason
    # Nothing else usable: a skip with the reason; the temporal state is untouched.
    before = _history(step)
    alone = step({"joint_states": joints}, NOW)
    assert alone.z is None and alone.skip_kind == "no_input"
    assert "joint position out of range" in alone.skip_reason
    assert torch.equal(_history(step), before)


def test_a_corrupt_velocity_masks_the_joint_reading(model):
    j = model.cfg.observation.num_joints
    joints = Reading((np.zeros(j), np.full(j, 5e3)), NOW - 0.002, NOW - 0.01, "joints")
    result = ContextStep(TorchHBackend(model), CFG)(_readings(model.cfg, joint_states=joints), NOW)
    assert result.z is not None and "joint velocity out of range" in result.masked["joint_states"].reason


def test_a_non_finite_latent_is_a_skip_and_never_commits_its_state():
    # Ranges wide enough to let a 1e30 taxel through: the real model overflows. The step must
    # refuse the result, keep the previous temporal state, and the next good step must give
    # exactly what it would have given had the bad step never happened.
    model = _model(tactile_abs_max=3e38)
    cfg = model.cfg
    step, twin = ContextStep(TorchHBackend(model), CFG), ContextStep(TorchHBackend(model), CFG)
    for s in (step, twin):
        assert s(_readings(cfg), NOW).z is not None
    before = _history(step)
    poisoned = step(_readings(cfg, tactile=Reading(np.full(16, 1e30, np.float32), NOW)), NOW)
    assert poisoned.z is None and poisoned.skip_kind in ("non_finite_latent", "non_finite_state")
    assert "not committed" in poisoned.skip_reason
    assert torch.equal(_history(step), before)
    good = _readings(cfg, now=NOW + 0.1)
    z, z_twin = step(good, NOW + 0.1).z, twin(good, NOW + 0.1).z
    assert z is not None and np.array_equal(z, z_twin)


def test_old_and_future_stamps_are_masked_naming_the_clock(model):
    step = ContextStep(TorchHBackend(model), CFG)
    j = model.cfg.observation.num_joints
    value = (np.zeros(j), np.zeros(j))
    cases = {
        "old header stamp, arrived now": (Reading(value, NOW, NOW - 2.0, "s"), "stale", "stamp"),
        "fresh stamp, arrived long ago": (Reading(value, NOW - 2.0, NOW - 0.01, "s"), "stale", "arrival"),
        "stamped 1 s ahead": (Reading(value, NOW, NOW + 1.0, "s"), "future", "stamp"),
    }
    for what, (reading, state, clock) in cases.items():
        result = step(_readings(model.cfg, joint_states=reading), NOW)
        mask = result.masked["joint_states"]
        assert (mask.state, mask.clock) == (state, clock), what
        assert result.z is not None, what
    assert "header stamp 1.000 s ahead" in mask.reason and "clock_skew_tolerance_s 0.05" in mask.reason
    # within the skew tolerance a leading stamp is fine
    ok = step(_readings(model.cfg, joint_states=Reading(value, NOW, NOW + 0.03, "s")), NOW)
    assert "joint_states" in ok.used and ok.stamp == "s"  # the newest stamp used, even if slightly ahead


def test_unstamped_inputs_age_by_arrival_and_stamp_the_latent_by_it(model):
    step = ContextStep(TorchHBackend(model), CFG)
    readings = {"tactile": Reading(np.zeros(16, np.float32), NOW - 0.2),
                "audio": Reading(np.zeros(100, np.float32), NOW - 0.7)}
    result = step(readings, NOW)
    assert result.used == ("tactile",) and result.stamp is None and result.stamp_s == NOW - 0.2
    assert (result.masked["audio"].state, result.masked["audio"].clock) == ("stale", "arrival")
    assert "stale by arrival time: 0.700 s old > observation_timeout_s 0.5" in result.masked["audio"].reason
    assert result.masked["camera"].state == "missing"


def test_nothing_fresh_is_a_skip_with_the_state_kept(model):
    step = ContextStep(TorchHBackend(model), CFG)
    step(_readings(model.cfg), NOW)
    before = _history(step)
    later = NOW + 5.0
    result = step(_readings(model.cfg), later)  # everything is 5 s old now
    assert result.z is None and result.skip_kind == "no_input" and result.skip_reason == "no fresh input"
    assert {m.state for m in result.masked.values()} == {"stale"}
    assert torch.equal(_history(step), before)
    problem = step({"camera": Reading(None, later, later, "c", problem="cannot decode jpeg")}, later)
    assert problem.z is None and problem.masked["camera"].reason == "cannot decode jpeg"


def test_freshness_rules():
    f = freshness(NOW - 0.1, NOW - 0.3, NOW, CFG)
    assert f.ok and f.age_s == pytest.approx(0.3)
    f = freshness(NOW - 0.6, None, NOW, CFG)
    assert (f.ok, f.state, f.clock) == (False, "stale", "arrival")
    f = freshness(NOW - 0.6, NOW - 0.4, NOW, CFG)  # stamp fine, arrival too old: the arrival clock decides
    assert (f.state, f.clock) == ("stale", "arrival") and f.age_s == pytest.approx(0.6)
    f = freshness(NOW + 1.0, None, NOW, CFG)  # node clock jumped back (sim time restarted)
    assert (f.state, f.clock) == ("future", "arrival")
    assert freshness(NOW, NOW + 0.05, NOW, CFG).ok and not freshness(NOW, NOW + 0.051, NOW, CFG).ok


def test_configs_are_validated_on_construction():
    with pytest.raises(ConfigError, match="clock_skew_tolerance_s: must be >= 0"):
        ContextStepConfig(clock_skew_tolerance_s=-0.1)
    with pytest.raises(ConfigError, match="observation_timeout_s: must be > 0"):
        ContextStepConfig(observation_timeout_s=0.0)
    with pytest.raises(ConfigError, match="finite"):
        ContextStepConfig(observation_timeout_s=float("nan"))
    with pytest.raises(ConfigError, match=r"model.json: observation.input_ranges.tactile_abs_max: must be > 0"):
        SageConfig.from_dict({"observation": {"input_ranges": {"tactile_abs_max": 0}}}, "model.json")
    with pytest.raises(ConfigError, match=r"input_ranges.depth_valid_min_m"):
        SageConfig.from_dict({"observation": {"input_ranges": {"depth_valid_min_m": 200.0}}}, "model.json")
    with pytest.raises(ConfigError, match=r"unknown key 'observation.input_ranges.joint_abs_max'"):
        SageConfig.from_dict({"observation": {"input_ranges": {"joint_abs_max": 1.0}}}, "model.json")


def _camera_only_model():
    cfg = small_config()
    cfg.observation = dataclasses.replace(cfg.observation, sensors=["camera"])
    return build_model(cfg).eval()


def test_undeclared_sensors_are_neither_used_nor_reported_nor_encoded():
    model = _camera_only_model()
    cfg = model.cfg
    everything = _readings(cfg)
    only_declared = {k: everything[k] for k in ("camera", "joint_states")}
    loud_tactile = _readings(cfg, tactile=Reading(np.full(cfg.observation.tactile_taxels, 0.9, np.float32), NOW - 0.01))

    torch.manual_seed(0)
    outs = []
    for readings in (everything, only_declared, loud_tactile):
        step = ContextStep(TorchHBackend(model), CFG)
        outs.append(step(readings, NOW))
    for r in outs:
        assert r.z is not None
        assert r.used == ("camera", "joint_states")
        assert r.masked == {}  # an absent sensor is not "missing": no mask, no reason, no warning
    # the undeclared readings never reached the encoders: the latents are identical
    np.testing.assert_array_equal(outs[0].z, outs[1].z)
    np.testing.assert_array_equal(outs[0].z, outs[2].z)

    # a declared sensor that is silent is still reported missing
    silent_camera = ContextStep(TorchHBackend(model), CFG)({"joint_states": everything["joint_states"]}, NOW)
    assert set(silent_camera.masked) == {"camera"} and silent_camera.masked["camera"].state == "missing"


def test_a_declared_sensor_changes_the_latent_where_an_undeclared_one_does_not():
    full = _model()
    for m in (full, _camera_only_model()):
        base = _readings(m.cfg)
        other = _readings(m.cfg, tactile=Reading(np.full(m.cfg.observation.tactile_taxels, 0.9, np.float32),
                                                 NOW - 0.01))
        za = ContextStep(TorchHBackend(m), CFG)(base, NOW).z
        zb = ContextStep(TorchHBackend(m), CFG)(other, NOW).z
        assert (not np.array_equal(za, zb)) if m is full else np.array_equal(za, zb)


@pytest.mark.parametrize("sensors, problem", [(["lidar"], "lidar"), (["camera", "camera"], "distinct")])
def test_sensor_lists_are_checked(sensors, problem):
    with pytest.raises(ConfigError, match=problem):
        dataclasses.replace(small_config().observation, sensors=sensors)


def test_the_h_rate_is_the_checkpoints_unless_another_is_asked_for():
    assert h_rate_for("ckpt", 20.0, 0.0) == 20.0  # the rate it was trained at
    assert h_rate_for("ckpt", 20.0, 20.0) == 20.0
    assert h_rate_for("ckpt", 0.0, 0.0) == 10.0  # a checkpoint that records none
    assert h_rate_for("ckpt", 0.0, 15.0) == 15.0
    with pytest.raises(ConfigError, match=r"h_rate_hz 10 Hz, but ckpt was trained at 20 Hz"):
        h_rate_for("ckpt", 20.0, 10.0)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="h_rate_hz must be > 0"):
            h_rate_for("ckpt", 0.0, bad)
