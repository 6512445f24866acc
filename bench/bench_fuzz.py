#!/usr/bin/env python3
"""bench_fuzz: >= 10,000 malformed messages against both runtime node processes (issue 9, point 8).

Same fuzzer as test/test_fuzz.py (sage_hl_ros.tools.fuzz): sage_context and sage_control as
separate processes from config/sage_hl.yaml with control enabled and config/joint_limits.yaml,
valid camera/depth/audio/tactile/joint-state streams the whole time, and bursts of malformed
messages on every subscribed topic (e-stop floods with a reset every third burst), each burst
followed by a window of valid input only. Judged from the command stamps (joint_state command
interface: the stamp is the tick time) and the control node's tick counters in /diagnostics.

    python bench/bench_fuzz.py                     # 10,000 messages, bursts of 200 (about 2.5 min)
    python bench/bench_fuzz.py --messages 2000     # a quicker run

Prints per-topic counts, what the nodes refused, recovery p50/p99/max, the speed check and, last:
  fuzz: sent=<n> commands=<m> violations=<v> nonfinite=<f> dead=<d> speed_violations=<s> recovery_s=<max>
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sage_hl_ros.tools.fuzz import FuzzConfig, ros_isolation_env, run_fuzz  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=10_000, help="malformed messages in all")
    parser.add_argument("--burst", type=int, default=200, help="malformed messages per burst")
    parser.add_argument("--window-s", type=float, default=2.0, help="valid-only time after each burst")
    parser.add_argument("--control-rate-hz", type=float, default=200.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="", help="keep the checkpoint and node logs here")
    args = parser.parse_args(argv)

    ros_isolation_env()
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_fuzz_")
    cfg = FuzzConfig(malformed_messages=args.messages, burst_messages=args.burst, window_s=args.window_s,
                     control_rate_hz=args.control_rate_hz, seed=args.seed, workdir=workdir)
    t0 = time.monotonic()
    r = run_fuzz(cfg, log=lambda s: print(s, flush=True))
    wall = time.monotonic() - t0

    by_topic = Counter()
    for key, n in r.sent_by_kind.items():
        by_topic[key.split(".")[0]] += n
    print(f"\nmalformed sent by topic: {dict(sorted(by_topic.items()))} ({len(r.sent_by_kind)} kinds)")
    print(f"valid sent: {dict(r.valid_sent)}")
    counters = r.node_counters
    for modality in ("camera", "depth", "audio", "tactile", "joint_states"):
        c = counters.get(f"sage_context: {modality}", {})
        reasons = {k[9:]: v for k, v in c.items() if k.startswith("rejected.")}
        print(f"  sage_context {modality:12s} received {c.get('received', '?'):>6s} "
              f"rejected {c.get('rejected', '?'):>5s} {reasons}")
    h = counters.get("sage_context: H loop", {})
    print(f"  sage_context H loop: steps {h.get('steps')} latents {h.get('latents_published')} "
          f"failed steps {h.get('step_errors')} (last: {h.get('last_step_error') or '-'})")
    c = counters.get("sage_control: control loop", {})
    ticks = {k[6:]: v for k, v in c.items() if k.startswith("ticks.")}
    print(f"  sage_control: rejected latents {c.get('rejected.latent')} joint states {c.get('rejected.joint_states')}"
          f"; e-stop triggers {c.get('e_stop_triggers')} (latched at the end: {c.get('e_stop_latched')})")
    print(f"  sage_control ticks: {ticks}; late ticks {r.late_tick_fraction:.2%}")
    print(f"bursts {r.bursts} ({r.estop_bursts} with e-stop floods); recovery p50 {r.recovery_percentile(50):.2f} s, "
          f"p99 {r.recovery_percentile(99):.2f} s, max {r.recovery_max_s:.2f} s "
          f"(upper bounds at the {cfg.control_diagnostics_period_s:g} s diagnostics period); first 0.3 s of "
          f"commanding after a burst: p50 {np.percentile(r.resume_s, 50):.2f} s, max {max(r.resume_s):.2f} s; "
          f"H loop median {r.h_rate_hz:.1f} Hz")
    print(f"speed: {r.speed_violations} of {r.speed_pairs} consecutive command pairs above velocity_max x stamp gap; "
          f"worst {r.max_speed_ratio:.2f}x (gap floored at the nominal period: {r.max_speed_ratio_period_floor:.2f}x)")
    if r.dead_detail:
        print(f"dead: {r.dead_detail}")
    print(f"node exit codes {r.exit_codes}; logs in {r.log_dir}; {wall:.0f} s")
    print(r.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
