"""The closed-loop main job, quick mode: every stage runs for real, and the learned nodes control the arm.

A few expert demonstrations are recorded through the recorder, the sleep-cycle trainer learns from
that bag, and the SAGE context and control nodes then drive the MuJoCo arm on held-out targets. The
learned policy must end closer to the targets than not moving at all and than a random policy on
the same targets: the latent, the L-module and the command path must all work for that to happen.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sage_hl_ros.cli import main

pytestmark = pytest.mark.ros


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ["ROS_DOMAIN_ID"] = str(os.getpid() % 90 + 140)
    workdir = tmp_path_factory.mktemp("sim_demo") / "run"
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["demo", "--quick", "--workdir", str(workdir)])
    return rc, out.getvalue(), workdir


def _line(out: str) -> dict[str, float]:
    line = [x for x in out.splitlines() if x.startswith("demo: ")][-1]
    return {k: float(v) for k, v in (kv.split("=") for kv in line.split(": ", 1)[1].split())}


def test_quick_demo_learned_policy_beats_zero_and_random(quick_run):
    rc, out, workdir = quick_run
    assert rc == 0, out
    values = _line(out)
    assert set(values) == {"expert_success", "learned_success", "mean_final_dist_m", "control_hz", "e2e_p99_ms"}
    summary = json.loads((workdir / "summary.json").read_text())
    learned = summary["learned"]["mean_final_dist_m"]
    zero = summary["baselines"]["zero_motion"]["mean_final_dist_m"]
    random = summary["baselines"]["random"]["mean_final_dist_m"]
    assert learned < 0.75 * zero and learned < 0.75 * random, (learned, zero, random)
    assert values["mean_final_dist_m"] == pytest.approx(learned, abs=1e-3)
    assert summary["expert"]["success_rate"] >= 0.8, summary["expert"]
    # Every evaluation episode ran on the held-out seed's targets, the same for every policy.
    targets = [r["target_m"] for r in summary["episodes"]["expert"]]
    assert targets == [r["target_m"] for r in summary["episodes"]["learned"]]
    assert values["control_hz"] > 50  # the L loop commanded the arm (the rate is the benchmark's business)
    # The checkpoint was validated on the validation targets, and those are not the test targets.
    val = dict(kv.split("=") for kv in [x for x in out.splitlines() if x.startswith("demo_val: ")][-1]
               .split(": ", 1)[1].split())
    assert val["seed"] == "2000" and val["episodes"] == "2" and val["selected"] == "round0", val
    assert [v["name"] for v in summary["validation"]] == ["round0"] and summary["selected"] == "round0"
    val_targets = summary["validation"][0]["targets_m"]
    assert len(val_targets) == 2 and not set(map(tuple, val_targets)) & set(map(tuple, targets))


def test_quick_demo_leaves_bags_model_and_report(quick_run):
    rc, out, workdir = quick_run
    assert rc == 0, out
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    from sage_hl_ros.core.checkpoint import load_checkpoint

    # The demonstrations bag, read by an independent reader: every stream training needs, and one
    # start/end marker pair per recorded episode.
    with AnyReader([workdir / "bags" / "demos"], default_typestore=get_typestore(Stores.ROS2_HUMBLE)) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
        markers = [reader.deserialize(raw, c.msgtype).data for c, _t, raw in
                   reader.messages(connections=[c for c in reader.connections if c.topic == "/sage/episode"])]
    assert {"/rgb", "/depth", "/joint_states", "/joint_command", "/teacher/joint_command", "/audio/frames",
            "/tactile/array"} <= {t for t, n in counts.items() if n > 0}, counts
    assert markers[0::2] == ["start:reach"] * 16 and len(markers) == 32, markers
    model = load_checkpoint(workdir / "models" / "round0")
    assert model.cfg.observation.tactile_taxels == 4
    report = (workdir / "report.md").read_text()
    assert report.startswith("# sage_hl_ros closed-loop demo") and (workdir / "final_distance.png").is_file()


def test_demo_refuses_a_used_workdir(quick_run):
    rc, out, workdir = quick_run
    assert main(["demo", "--quick", "--workdir", str(workdir)]) == 2


def test_demo_config_errors_name_the_key(tmp_path: Path, capsys):
    bad = tmp_path / "demo.yaml"
    bad.write_text("sim_demo:\n  demos: 0\n")
    assert main(["demo", "--config", str(bad), "--workdir", str(tmp_path / "w")]) == 2
    assert "demos: must be >= 1" in capsys.readouterr().out
    bad.write_text("sim_demo:\n  inference_backend: tensorrt\n")
    assert main(["demo", "--config", str(bad), "--workdir", str(tmp_path / "w2")]) == 2
    assert "inference_backend: one of ['torch', 'onnxruntime'], got 'tensorrt'" in capsys.readouterr().out


def test_evaluate_refuses_a_missing_checkpoint(tmp_path: Path, capsys):
    assert main(["demo", "--evaluate", str(tmp_path / "nope"), "--workdir", str(tmp_path / "w")]) == 2
    assert "nope" in capsys.readouterr().out


def test_robot_selects_the_contract_topics_and_limits(tmp_path: Path):
    """``--robot`` picks the arm for the whole loop: its model config, its contract's topics for the
    bridge, the recorder and the SAGE nodes, and the contract's limits file."""
    from sage_hl_ros.core.robot import load_robot
    from sage_hl_ros.tools.sim_demo import SimDemo, load_demo_config

    arm7 = SimDemo(load_demo_config(), tmp_path / "a", log=lambda _m: None)
    assert set(arm7.record_types) == {
        "/rgb", "/depth", "/camera_info", "/audio/frames", "/tactile/array", "/joint_states", "/joint_command",
        "/teacher/joint_command", "/sage/episode", "/sim/episode_result", "/teacher/joint_trajectory"}
    assert arm7.joint_limits_file().endswith("config/joint_limits.yaml") and arm7.camera_topics == ["/rgb"]

    ur6 = SimDemo(load_demo_config(overrides={"robot": "sim_ur6"}), tmp_path / "u", log=lambda _m: None)
    assert ur6.cfg.model_config_path().name == "sim_ur6_model.yaml"
    assert ur6.camera_topics == ["/front/rgb", "/wrist/rgb"]
    assert {"/front/depth", "/front/camera_info", "/wrist/camera_info"} <= set(ur6.record_types)
    assert not {"/rgb", "/audio/frames", "/tactile/array"} & set(ur6.record_types)
    assert set(ur6.record_qos) == {f"{t}:best_effort" for t in ur6.record_types if t.startswith(("/front", "/wrist"))}
    assert ur6.joint_limits_file().endswith("config/sim_ur6_joint_limits.yaml")
    assert load_robot(ur6.robot_file()) == ur6.contract and ur6.contract.name == "sim_ur6"


def test_demo_refuses_a_model_of_another_robot(tmp_path: Path, capsys):
    cfg = tmp_path / "demo.yaml"
    cfg.write_text("sim_demo:\n  model_config: sim_model.yaml\n")
    assert main(["demo", "--robot", "sim_ur6", "--config", str(cfg), "--workdir", str(tmp_path / "w")]) == 2
    assert "are not sim robot sim_ur6's" in capsys.readouterr().out
    assert main(["demo", "--robot", "sim_ur6", "--teacher", "groot", "--workdir", str(tmp_path / "w")]) == 2
    assert "groot is wired for sim_arm7 only" in capsys.readouterr().out
