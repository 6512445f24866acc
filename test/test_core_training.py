"""A short training run on the synthetic reaching task measurably learns (held-out error >= 5x lower)."""

import torch
from conftest import small_config

from sage_hl_ros.core.synthetic import SyntheticReachTask
from sage_hl_ros.core.system import build_model
from sage_hl_ros.training.fit import action_error, fit


def _setup(seed=0):
    cfg = small_config()
    torch.manual_seed(seed)
    model = build_model(cfg)
    task = SyntheticReachTask(cfg.observation, seed=seed)
    stats = task.sequences(256, 2)
    model.fit_normalizer(stats.obs.joint_position, stats.obs.joint_velocity, stats.obs.tactile,
                         stats.action.flatten(0, 1))
    held_out = SyntheticReachTask(cfg.observation, seed=seed)
    held_out.gen.manual_seed(12345)  # unseen goals and start poses
    return model, task, held_out.sequences(64, 2)


def test_training_cuts_held_out_action_error_5x():
    torch.set_num_threads(2)
    try:
        model, task, val = _setup()
        before = action_error(model, val)
        result = fit(model, lambda step: task.sequences(16, 2), steps=300, lr=2e-3)
        after = action_error(model, val)
    finally:
        torch.set_num_threads(1)
    first, last = result.history[0], result.history[-1]
    assert last["bc"] < first["bc"] / 5
    assert last["dynamics"] < first["dynamics"]
    assert before / after >= 5.0, f"held-out action error {before:.4f} -> {after:.4f} rad"


def test_training_is_reproducible_with_a_seed():
    histories = []
    for _ in range(2):
        torch.manual_seed(0)
        model, task, _ = _setup()
        histories.append(fit(model, lambda step, task=task: task.sequences(2, 2), steps=3, lr=1e-3).history)
    assert histories[0] == histories[1]
