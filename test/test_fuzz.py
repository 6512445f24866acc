"""Fuzz in the suite (issue 9, point 8): >= 2,000 malformed messages on every topic the two node
processes subscribe to, interleaved with valid input, judged from the command stamps and the
control node's own tick counters (sage_hl_ros.tools.fuzz).

The pure judges are tested first on hand-made streams, so a broken judge cannot pass the fuzz.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from ros_harness import ros_env

from sage_hl_ros.tools.fuzz import (
    TOPICS,
    FuzzConfig,
    MalformedMessages,
    ValidMessages,
    check_commands,
    recovery_times,
    run_fuzz,
)

MS = 1_000_000  # ns
LOWER, UPPER, VMAX = np.array([-1.0, -1.0]), np.array([1.0, 1.0]), np.array([1.0, 2.0])


# --------------------------------------------------------------------------- the judges


def test_check_commands_counts_limit_nonfinite_and_speed_by_stamp_gap():
    stamps = np.array([0, 5, 10, 11, 16], dtype=np.int64) * MS
    pos = np.array([[0.0, 0.0],
                    [0.005, 0.010],  # exactly velocity_max x 5 ms on both joints: allowed
                    [0.010, 0.010],
                    [0.015, 0.010],  # 5 mrad in 1 ms on joint 0: 5x its velocity_max
                    [1.5, np.nan]])  # outside the limits and non-finite: judged as non-finite only
    verdict = check_commands(stamps, pos, LOWER, UPPER, VMAX)
    assert verdict["speed_violations"] == 1 and verdict["pairs"] == 3
    assert verdict["max_speed_ratio"] == pytest.approx(5.0)
    assert verdict["nonfinite"] == 1 and verdict["violations"] == 0
    # The node sizes steps from float epoch seconds: 0.5 us of clock slack passes, 10 us does not.
    step = np.array([[0.0, 0.0], [1.0 * 5.0005e-3, 0.0]])
    assert check_commands(stamps[:2], step, LOWER, UPPER, VMAX)["speed_violations"] == 0
    step[1, 0] = 1.0 * 5.01e-3
    assert check_commands(stamps[:2], step, LOWER, UPPER, VMAX)["speed_violations"] == 1
    verdict = check_commands(stamps[:2], np.array([[0.0, 0.0], [0.0, 1.01]]), LOWER, UPPER, VMAX)
    assert verdict["violations"] == 1  # 1.01 > upper
    assert verdict["speed_violations"] == 1  # and 1.01 rad in 5 ms


def test_recovery_is_the_end_of_the_last_holding_interval_or_inf():
    # (stamp s, ticks, holding ticks) every 0.1 s; burst ends at 1.0, the next starts at 3.0.
    def diag(holding_until_s: float | None, stop_ticking_at_s: float = math.inf, later_hold=(math.inf, math.inf)):
        out, ticks, holding = [], 0, 0
        for k in range(31):
            t = 0.1 * k
            if t <= stop_ticking_at_s:
                ticks += 20
                if (holding_until_s is not None and 1.0 < t <= holding_until_s + 1e-9) or \
                        later_hold[0] < t <= later_hold[1] + 1e-9:
                    holding += 20
            out.append((t, ticks, holding))
        return out

    stamps = np.arange(0.0, 3.0, 0.005)
    assert recovery_times([(1.0, 3.0)], diag(1.4), stamps) == [pytest.approx(0.4)]
    assert recovery_times([(1.0, 3.0)], diag(None), stamps) == [0.0]
    assert recovery_times([(1.0, 3.0)], diag(3.0), stamps) == [math.inf]  # still holding at the window's end
    assert recovery_times([(1.0, 3.0)], diag(None, stop_ticking_at_s=2.0), stamps) == [math.inf]  # loop stopped
    assert recovery_times([(1.0, 3.0)], diag(1.4), stamps[stamps < 1.2]) == [math.inf]  # no command arrived
    assert recovery_times([(1.0, 3.0)], [], stamps) == [math.inf]  # no diagnostics at all
    # Sustained: a hold after commands flowed for 0.3 s does not count; never flowing is still inf.
    late_hold = diag(1.4, later_hold=(2.0, 2.5))  # e.g. a latent late on a loaded machine
    assert recovery_times([(1.0, 3.0)], late_hold, stamps) == [pytest.approx(1.5)]
    assert recovery_times([(1.0, 3.0)], late_hold, stamps, sustained=3) == [pytest.approx(0.4)]
    assert recovery_times([(1.0, 3.0)], diag(3.0), stamps, sustained=3) == [math.inf]


def test_generators_cover_every_subscribed_topic_and_build_real_messages():
    names = [f"joint{i}" for i in range(1, 8)]
    valid = ValidMessages(names, np.full(7, -1.0), np.full(7, 1.0), 32, 15.0, seed=0)
    bad = MalformedMessages(valid, seed=0)
    topics = Counter(topic for topic, _, _ in bad.kinds)
    assert set(topics) | {"e_stop"} == set(TOPICS)
    for topic, kind, make in bad.kinds:
        msg = make(1.0e9)
        assert isinstance(msg, TOPICS[topic][1]), (topic, kind)


# --------------------------------------------------------------------------- against the processes


def _log_tails(log_dir: str) -> str:
    logs = sorted(Path(log_dir).glob("*.log"))
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs)


@pytest.mark.ros
def test_fuzz_both_node_processes(tmp_path):
    ros_env()
    cfg = FuzzConfig(malformed_messages=2000, burst_messages=200, window_s=2.0, workdir=str(tmp_path))
    r = run_fuzz(cfg, log=lambda s: None)
    logs = _log_tails(r.log_dir)
    assert r.dead == 0, f"{r.dead_detail}\n{logs}"
    assert all(code == 0 for code in r.exit_codes.values()), f"unclean exits {r.exit_codes}\n{logs}"
    assert r.sent >= 2000 and {k.split(".")[0] for k in r.sent_by_kind} == set(TOPICS), r.sent_by_kind
    assert r.commands > 1000, f"{r.commands} commands\n{logs}"

    # The malformed messages reached both nodes and were refused there, on every topic.
    counters = r.node_counters
    for modality in ("camera", "depth", "audio", "tactile", "joint_states"):
        assert int(counters[f"sage_context: {modality}"]["rejected"]) > 0, (modality, counters)
    loop = counters["sage_control: control loop"]
    assert int(loop["rejected.latent"]) > 0 and int(loop["rejected.joint_states"]) > 0, loop
    assert int(loop["e_stop_triggers"]) > 0 and loop["e_stop_latched"] == "false", loop  # floods, then resets

    assert r.command_publishers == 1, f"{r.command_publishers} publishers on the command topic: a shared domain"
    assert r.violations == 0 and r.nonfinite == 0, (r.violations, r.nonfinite)
    assert r.speed_violations == 0, (
        f"{r.speed_violations} of {r.speed_pairs} consecutive commands exceed velocity_max by their stamp gap "
        f"(worst {r.max_speed_ratio:.2f}x; gap floored at one period {r.max_speed_ratio_period_floor:.2f}x; "
        f"late ticks {r.late_tick_fraction:.1%})")
    # Recovery is an upper bound at the control diagnostics' 0.1 s resolution. On a loaded machine
    # (the nodes' own records: late control ticks, a slow H loop) latents come late and the control
    # node holds for that reason too, so there every burst must be followed by commands flowing
    # (0.3 s of ticks that all commanded) within 2 s (under such load once: recovery median 1.28 s with
    # the H loop at 5.7 Hz, resume max 1.01 s); never resuming is inf and always fails.
    loaded = r.late_tick_fraction >= 0.02 or not r.h_rate_hz >= 8.0
    rec, resume = np.array(r.recovery_s), np.array(r.resume_s)
    detail = (f"recovery {np.round(rec, 2)}, resume {np.round(resume, 2)}; late ticks {r.late_tick_fraction:.1%}, "
              f"H loop {r.h_rate_hz:.1f} Hz; context: {counters.get('sage_context: H loop')}")
    assert len(rec) == r.bursts and np.all(np.isfinite(resume)), f"commands did not resume after bursts: {detail}"
    if loaded:  # full recovery waits for fresh latents, which a starved H loop delays: judged by resume
        assert resume.max() <= 2.0, detail
    else:
        assert rec.max() <= 1.0, detail
