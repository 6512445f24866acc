"""The ``sage-hl demo --teacher groot`` path, quick: demonstrations driven by the sim expert and
labelled by sage_groot_teacher against the GR00T protocol stand-in, recorded by the recorder; the
bag holds the teacher's chunks (read back by rosbags, not by our writer), its labels are the
teacher's (the expert's own labels are not recorded), the dataset takes its K-step targets from the
chunks, and the teacher's own success is measured through the protocol client. The full demo
(training, closed-loop evaluation) runs once for bench/RESULTS.md, not here: it takes minutes.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from sage_hl_ros.bags.bag_dataset import BagDataset
from sage_hl_ros.bags.dataset_config import load_dataset_config
from sage_hl_ros.cli import main
from sage_hl_ros.core.config import SageConfig
from sage_hl_ros.paths import config_file
from sage_hl_ros.tools.sim_demo import (
    TEACHER_CHUNK_TOPIC,
    SimDemo,
    _Graph,
    _Phase,
    count_teacher_chunks,
    load_demo_config,
    teacher_policy,
)

pytestmark = pytest.mark.ros
JOINTS = [f"joint{i}" for i in range(1, 8)]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("MUJOCO_GL", "egl")
    workdir = tmp_path_factory.mktemp("groot_demo")
    cfg = load_demo_config(overrides={"teacher": "groot", "demos": 2, "eval_episodes": 1})
    demo = SimDemo(cfg, workdir, log=lambda _msg: None)
    demo.graph = _Graph(JOINTS)
    bag = workdir / "bags" / "demos"
    try:
        demo._start_standin()
        _Phase(demo, "record", cfg.train_seed, 2, cfg.record_real_time_factor, expert_drives=True,
               bag_dir=bag, groot_labels=True).run()
        teacher = teacher_policy(cfg.path(cfg.sim_config), cfg.eval_seed, 1, demo.groot_endpoint, cfg)
        served = dict(demo._standin.counts)
    finally:
        demo.graph.close()
        demo._standin.stop()
    return {"cfg": cfg, "bag": bag, "teacher": teacher, "served": served}


def _read(bag, topics):
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    out = {t: [] for t in topics}
    with AnyReader([bag], default_typestore=get_typestore(Stores.ROS2_HUMBLE)) as reader:
        seen = {c.topic for c in reader.connections}
        conns = [c for c in reader.connections if c.topic in out]
        for c, _, raw in reader.messages(connections=conns):
            out[c.topic].append(reader.deserialize(raw, c.msgtype))
    return out, seen


def test_bag_holds_teacher_chunks_and_the_labels_are_the_teachers(recorded):
    msgs, seen = _read(recorded["bag"], [TEACHER_CHUNK_TOPIC, "/teacher/joint_command"])
    chunks, labels = msgs[TEACHER_CHUNK_TOPIC], msgs["/teacher/joint_command"]
    assert len(chunks) >= 10 and count_teacher_chunks(recorded["bag"]) == len(chunks)
    assert recorded["served"]["get_action"] >= len(chunks)
    assert all(len(c.points) == 16 and list(c.joint_names) == JOINTS for c in chunks)
    # Each label is point 0 of the chunk with the same stamp: the GR00T teacher labelled, not the expert
    # (whose own labels went to a topic that was not recorded).
    by_stamp = {(c.header.stamp.sec, c.header.stamp.nanosec): c for c in chunks}
    assert len(labels) == len(chunks)
    for lab in labels:
        chunk = by_stamp[(lab.header.stamp.sec, lab.header.stamp.nanosec)]
        np.testing.assert_allclose(lab.position, chunk.points[0].positions)
    assert "/sim_expert/unrecorded_label" not in seen
    # Time-indexed chunks: point i at (i + 1) x action_step_s.
    tfs = [p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in chunks[0].points]
    np.testing.assert_allclose(tfs, 0.1 * np.arange(1, 17), atol=1e-9)


def test_dataset_takes_targets_from_the_recorded_chunks(recorded):
    sim = SageConfig.from_yaml(config_file("sim_model.yaml"))
    ds = BagDataset(recorded["bag"], sim.observation, load_dataset_config(config_file("sim_dataset.yaml")),
                    sim.robot_contract())
    n = sum(seq.num_sequences for seq in ds.iter_sequences("all"))
    counts = [e.counts for e in ds.episodes()]
    chunk_steps = sum(c["teacher_chunk_steps"] for c in counts)
    # Most steps take their targets from a chunk; the rest fall back to held labels where the teacher
    # answered late (on a loaded 2-core machine 52 of 68 steps had a chunk, 76%). Ignoring the chunks
    # gives 0.
    assert n > 0 and chunk_steps > 0.5 * sum(c["used_steps"] for c in counts), counts


def test_teacher_success_through_the_protocol_client(recorded):
    (episode,) = recorded["teacher"]
    assert episode["success"] and episode["teacher_failures"] == 0, episode


def test_teacher_options_are_checked(tmp_path, capsys):
    rc = main(["demo", "--teacher", "groot", "--groot-endpoint", "localhost:5555", "--workdir", str(tmp_path / "w")])
    assert rc == 2 and "groot_endpoint" in capsys.readouterr().out
