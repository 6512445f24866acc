"""The online-sleep demo (``sage-hl demo --online-cycles``): its bookkeeping as pure functions (which
control ticks fall in the window where the sleeper was idle and where it trained), and one quick
cycle of the real loop."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sage_hl_ros.tools.online_demo import ONLINE_KEYS, state_window, tick_window


def _control(samples):
    return [(t, {"ticks": str(ticks), "missed_ticks": str(missed)}) for t, ticks, missed in samples]


def test_tick_window_is_the_counter_difference_inside_the_window():
    log = _control([(0.0, 0, 0), (1.0, 100, 0), (2.0, 200, 1), (3.0, 300, 4), (4.0, 400, 4)])
    assert tick_window(log, 1.0, 3.0) == (200, 4)
    assert tick_window(log, 0.5, 3.5) == (200, 4)  # reports inside only: 1.0 .. 3.0
    assert tick_window(log, 3.0, 4.0) == (100, 0)


def test_tick_window_needs_two_reports():
    log = _control([(0.0, 0, 0), (5.0, 500, 2)])
    assert tick_window(log, 1.0, 4.0) == (0, 0)
    assert tick_window(log, 4.0, 6.0) == (0, 0)
    assert tick_window([(1.0, {"state": "x"}), (2.0, {"state": "y"})], 0.0, 3.0) == (0, 0)  # not control reports


def test_state_window_finds_the_training_span_after_the_idle_start():
    log = [(t, {"state": s}) for t, s in
           [(0.0, "training"), (1.0, "done"), (5.0, "waiting"), (6.0, "training"), (7.0, "training"), (9.0, "done")]]
    assert state_window(log, "training", 0.0) == (0.0, 1.0)
    assert state_window(log, "training", 2.0) == (6.0, 9.0)  # the earlier cycle's training is before the idle start
    assert state_window(log, "training", 9.5) is None
    still = log[:5]
    assert state_window(still, "training", 2.0) == (6.0, 7.0)  # never left: ends at the last report


# =========================================================================== the loop, quick, for real
@pytest.mark.ros
def test_quick_online_cycle_promotes_hot_reloads_and_tests_the_new_model(tmp_path: Path):
    """One online cycle end to end: the SAGE nodes drive while the expert labels, the recorder's bag
    closes when the robot goes idle, sage_sleeper trains next to the ticking control loop, promotes
    (the gate's ratio is loosened here so the promotion path runs whatever a quick training learns),
    the running nodes hot-reload the new weights, and the test targets are run on them."""
    import contextlib
    import io

    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    from sage_hl_ros.cli import main

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")  # the domain: conftest's, reserved
    config = tmp_path / "online.yaml"
    config.write_text("sim_demo:\n  online_max_error_ratio: 100.0\n  online_idle_settle_s: 10.0\n")
    workdir = tmp_path / "run"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["demo", "--quick", "--config", str(config), "--online-cycles", "1", "--online-episodes", "6",
                   "--workdir", str(workdir)])
    text = out.getvalue()
    assert rc == 0, text[-3000:]
    last = text.strip().splitlines()[-1]
    line = dict(kv.split("=") for kv in last.split(": ", 1)[1].split())
    assert last.startswith("online: ") and list(line) == list(ONLINE_KEYS), last
    assert line["cycles"] == "1" and line["promoted"] == "1" and line["refused"] == "0", last

    summary = json.loads((workdir / "summary.json").read_text())
    cycle, tests = summary["cycles"][0], summary["tests"]
    promoted = json.loads((workdir / "sleep" / "promoted.json").read_text())
    assert Path(promoted[-1]["model_dir"]).name == "cycle-001" and promoted[-1]["sha256"] == cycle["sha256"]
    assert promoted[0]["model_dir"] == str((workdir / "models" / "round0").resolve())
    # The swap came while idle, and the test after the cycle ran on the promoted weights.
    assert cycle["episode_active_at_judge"] is False and cycle["reload_s"] >= 0
    assert [Path(t["model"]).name for t in tests] == ["round0", "cycle-001"] and not tests[1].get("unchanged")
    # The control loop kept ticking on the sim clock while the sleeper waited and while it trained.
    assert cycle["idle_ticks"] > 0 and cycle["training_ticks"] > 0
    assert 0 <= cycle["training_missed"] <= cycle["training_ticks"]
    assert line["missed_ticks_training"] == str(cycle["training_missed"])
    # The cycle's bag, read back by an independent reader: six episodes with the expert's labels.
    with AnyReader([workdir / "bags" / "online" / "cycle01"],
                   default_typestore=get_typestore(Stores.ROS2_HUMBLE)) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
        markers = [reader.deserialize(raw, c.msgtype).data for c, _, raw in
                   reader.messages(connections=[c for c in reader.connections if c.topic == "/sage/episode"])]
    assert sum(m.startswith("end") for m in markers) == 6, markers
    assert counts.get("/teacher/joint_command", 0) > 100 and counts.get("/joint_command", 0) > 100
    assert (workdir / "online_success.png").stat().st_size > 0 and "cycle" in (workdir / "report.md").read_text()
