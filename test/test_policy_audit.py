"""The policy audit (sage-hl audit): its per-window step statistics against a recomputation from the
dataset's own aligned steps, the label sources it counts, and its errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sage_hl_ros.bags.bag_dataset import BagDataset
from sage_hl_ros.bags.synthetic import SyntheticBagSpec, write_synthetic_bag
from sage_hl_ros.cli import main
from sage_hl_ros.core.config import SageConfig
from sage_hl_ros.paths import config_file
from sage_hl_ros.training.policy_audit import audit_policy, format_audit


class ConstantStep:
    """A stand-in policy that always steps by ``step`` (rad) from the current position."""

    def __init__(self, cfg: SageConfig, step: np.ndarray):
        self.cfg, self.step = cfg, torch.tensor(step, dtype=torch.float32)

    def eval(self):
        return self

    def encode(self, obs):
        return torch.zeros(1, 256), None, None

    def act(self, z, joint_position, joint_velocity=None):
        return (joint_position + self.step)[:, None, :]


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit")
    cfg = SageConfig.from_yaml(config_file("model.yaml"))
    cfg.observation.image_height_px = cfg.observation.image_width_px = 16
    cfg.observation.depth_height_px = cfg.observation.depth_width_px = 16
    write_synthetic_bag(root / "labelled", cfg.observation, SyntheticBagSpec(episodes=4, steps_per_episode=20, seed=1))
    write_synthetic_bag(root / "commands", cfg.observation,
                        SyntheticBagSpec(episodes=2, steps_per_episode=20, seed=2, teacher=False))
    return root, cfg


def test_window_statistics_match_a_recomputation_from_the_aligned_steps(bags):
    root, cfg = bags
    step = np.linspace(-0.02, 0.03, cfg.observation.num_joints)
    result = audit_policy(ConstantStep(cfg, step), [root / "labelled"])
    rows = [(s.time_ns - s.ep.start_ns, s.action[0] - s.obs.joint_position[0].numpy())
            for s in BagDataset([root / "labelled"], cfg.observation).iter_steps("all")]
    assert result["steps"] == len(rows) == sum(w["steps"] for w in result["windows"])
    assert result["teacher_fraction"] == 1.0
    first = [d for t, d in rows if t < 0.3e9]
    w0 = result["windows"][0]
    assert w0["steps"] == len(first)
    assert w0["policy_step_rad"] == pytest.approx(np.linalg.norm(step), rel=1e-5)
    assert w0["label_step_rad"] == pytest.approx(np.mean([np.linalg.norm(d) for d in first]), rel=1e-5)
    assert w0["action_error_rad"] == pytest.approx(np.mean([np.abs(step - d).mean() for d in first]), rel=1e-4)
    assert w0["gain"] == pytest.approx(np.median([step @ d / (d @ d) for d in first]), rel=1e-4)
    assert format_audit(result).splitlines()[-1].startswith("audit: steps=")


def test_steps_labelled_by_executed_commands_are_counted(bags):
    root, cfg = bags
    still = ConstantStep(cfg, np.zeros(cfg.observation.num_joints))
    result = audit_policy(still, [root / "commands", root / "labelled"])
    assert 0.0 < result["teacher_fraction"] < 1.0


def test_cli_names_a_missing_checkpoint(tmp_path, capsys):
    assert main(["audit", str(tmp_path / "none"), "--bags", str(tmp_path)]) == 2
    assert "checkpoint directory does not exist" in capsys.readouterr().err
