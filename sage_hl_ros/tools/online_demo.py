"""``sage-hl demo --online-cycles C``: learning on the robot, closed in the sim.

A weak start (round 0, trained on ``demos`` expert demonstrations) is tested once on the test targets
(``eval_seed``); then ``sage_sleeper`` starts, one process for the whole run, and each cycle k is:

1. **wake**: the SAGE nodes drive ``online_episodes`` episodes on training targets (``train_seed + k``)
   while the expert only labels and the recorder writes ``bags/online/cycle<k>``;
2. **idle**: the batch ends and the world runs on (the bridge's ``idle_physics``: a robot between
   tasks), the demo disables control on sage_control (as an operator would) and stops the recorder,
   which closes the bag;
3. **sleep**: the sleeper sees the closed bag and the idle robot, waits ``online_idle_settle_s``,
   trains in its low-priority process (wake on the new bag; sleep and dream replaying the older
   ones), gates the candidate against the running model on held-out recent episodes and, if it
   promotes it, hot-reloads the running sage_context and sage_control (their model_dir parameter);
4. **test**: the running model on the test targets, reported for this cycle (a refused candidate
   leaves the model, and so its test figure, as it was).

All the while the control node ticks on the sim clock. Its own counters (``ticks`` and
``missed_ticks`` on /diagnostics) are read over the idle window before training (the sleeper idle)
and over the training (the sleeper training): the cost of sleeping next to the control loop.

Lines: ``online_cycle: ...`` per cycle, ``online_ticks: ...``, and last
``online: cycles=<c> success_start=<a> success_end=<b> promoted=<p> refused=<r> missed_ticks_training=<m>``.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from ..launch_table import NodeSpec
from .bringup import NodeProcesses, node_command
from .sim_demo import SimDemo, _Graph, _Phase, _success_stats, baseline_policies

ONLINE_KEYS = ("cycles", "success_start", "success_end", "promoted", "refused", "missed_ticks_training")
TICK_KEYS = ("idle_ticks", "idle_missed", "training_ticks", "training_missed")
SLEEPER_SPEC = NodeSpec("sage_sleeper", "sage_sleeper", "sage_hl_ros.ros.sleeper_node",
                        "online sleep: trains on new bags while the robot is idle, gates, hot-reloads")
# /diagnostics statuses the run follows, by the key they are logged under.
_STATUSES = {"sage_control: control loop": "control", "sage_control: model": "control_model",
             "sage_context: model": "context_model", "sage_sleeper: sleep": "sleeper"}


def tick_window(samples: list[tuple[float, dict]], t0: float, t1: float) -> tuple[int, int]:
    """(ticks, missed ticks) the control node counted between wall times ``t0`` and ``t1``: the
    difference of its own counters between its first report at or after ``t0`` and its last at or
    before ``t1`` (0, 0 with fewer than two reports inside)."""
    inside = [v for t, v in samples if t0 <= t <= t1 and "ticks" in v and "missed_ticks" in v]
    if len(inside) < 2:
        return 0, 0
    a, b = inside[0], inside[-1]
    return int(b["ticks"]) - int(a["ticks"]), int(b["missed_ticks"]) - int(a["missed_ticks"])


def state_window(samples: list[tuple[float, dict]], state: str, after: float) -> tuple[float, float] | None:
    """Wall times of the first sleeper report in ``state`` after ``after`` and of the first report
    after it in another state (None when it never entered ``state``; the end is the last report
    while it never left)."""
    start = next((t for t, v in samples if t >= after and v.get("state") == state), None)
    if start is None:
        return None
    end = next((t for t, v in samples if t > start and v.get("state") != state), None)
    return start, end if end is not None else max(t for t, _ in samples)


class _DiagLog:
    """/diagnostics of the control node, the context node's model and the sleeper, with arrival
    times; and the operator's switch (enable_control on sage_control)."""

    def __init__(self, graph: _Graph):
        from diagnostic_msgs.msg import DiagnosticArray
        from rcl_interfaces.srv import SetParameters
        from rclpy.node import Node
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        self.graph = graph
        self.node = Node("online_demo_watcher")
        self.lock = threading.Lock()
        self.samples: dict[str, list[tuple[float, dict]]] = {key: [] for key in _STATUSES.values()}
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics,
                                      QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
        self.control_params = self.node.create_client(SetParameters, "/sage_control/set_parameters")
        graph.executor.add_node(self.node)

    def _on_diagnostics(self, msg) -> None:
        now = time.monotonic()
        for st in msg.status:
            key = _STATUSES.get(st.name)
            if key is not None:
                with self.lock:
                    self.samples[key].append((now, {kv.key: kv.value for kv in st.values}))

    def log(self, key: str) -> list[tuple[float, dict]]:
        with self.lock:
            return list(self.samples[key])

    def latest(self, key: str, since: float = 0.0) -> dict | None:
        with self.lock:
            return next((v for t, v in reversed(self.samples[key]) if t >= since), None)

    def set_control(self, enabled: bool, timeout_s: float = 20.0) -> None:
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        if not self.control_params.wait_for_service(timeout_sec=timeout_s):
            raise RuntimeError("sage_control has no set_parameters service")
        request = SetParameters.Request()
        request.parameters = [Parameter("enable_control", value=enabled).to_parameter_msg()]
        future = self.control_params.call_async(request)
        deadline = time.monotonic() + timeout_s
        while not future.done():
            if time.monotonic() > deadline:
                raise RuntimeError("sage_control did not answer set_parameters(enable_control)")
            time.sleep(0.05)
        result = future.result().results[0]
        if not result.successful:
            raise RuntimeError(f"sage_control refused enable_control={enabled}: {result.reason}")

    def close(self) -> None:
        self.graph.executor.remove_node(self.node)
        self.node.destroy_node()


class OnlineDemo:
    """The online-sleep loop on a :class:`SimDemo` (its config, nodes and training)."""

    def __init__(self, demo: SimDemo):
        self.demo, self.cfg, self.wd = demo, demo.cfg, demo.workdir
        self.log = demo.log
        self.cycles: list[dict] = []
        self.diag: _DiagLog | None = None
        self.sleeper: NodeProcesses | None = None

    def run(self) -> dict:
        from ..core.config import ConfigError

        cfg, wd, demo = self.cfg, self.wd, self.demo
        wd.mkdir(parents=True, exist_ok=True)
        for sub in ("bags", "models", "sleep"):
            if (wd / sub).exists() and any((wd / sub).iterdir()):
                raise ConfigError(f"{wd / sub}: not empty; choose a new --workdir (nothing is overwritten)")
        n = 3 + cfg.online_cycles
        timings: dict[str, float] = {}
        t_all = time.monotonic()
        demo.graph = _Graph(list(demo.contract.joints), demo.joint_states_topic, demo.joint_command_topic)
        self.diag = _DiagLog(demo.graph)
        try:
            self.log(f"[1/{n}] weak start: {cfg.demos} expert demonstrations, then round 0")
            t0 = time.monotonic()
            demo_bag = wd / "bags" / "demos"
            _Phase(demo, "record", cfg.train_seed, cfg.demos, cfg.record_real_time_factor, expert_drives=True,
                   bag_dir=demo_bag).run()
            model = demo._train("round0", [demo_bag], cfg.sleep_config, cfg.sleep_overrides, None, None)
            timings["start_s"] = time.monotonic() - t0
            self.log(f"[2/{n}] the expert and round 0 on {cfg.eval_episodes} test targets (seed {cfg.eval_seed}; "
                     "reported, never used to choose)")
            t0 = time.monotonic()
            expert, _ = _Phase(demo, "eval_expert", cfg.eval_seed, cfg.eval_episodes, cfg.record_real_time_factor,
                               expert_drives=True).run()
            start, timing = self._test(model, "test_round0")
            timings["test_start_s"] = time.monotonic() - t0
            tests = [{"cycle": 0, "model": str(model), **start}]
            self._start_sleeper(model)
            for k in range(1, cfg.online_cycles + 1):
                self.log(f"[{2 + k}/{n}] online cycle {k}: the SAGE nodes drive {cfg.online_episodes} episodes "
                         f"(seed {cfg.train_seed + k}), then sleep while idle")
                t0 = time.monotonic()
                cycle = self._cycle(k, model)
                if cycle["promoted"]:
                    model = Path(cycle["model_dir"])
                    result, timing = self._test(model, f"test_cycle{k}")
                else:  # the running model is unchanged: so is its test figure
                    result = {**tests[-1], "unchanged": True}
                    result.pop("cycle", None)
                    result.pop("model", None)
                tests.append({"cycle": k, "model": str(model), **result})
                timings[f"cycle{k}_s"] = time.monotonic() - t0
                cycle["test_success"] = result["success_rate"]
                self.cycles.append(cycle)
                self.log(f"online_cycle: k={k} drive_success={cycle['drive_success']:.2f} "
                         f"decision={'promoted' if cycle['promoted'] else 'refused'} "
                         f"test_success={result['success_rate']:.2f} idle_missed={cycle['idle_missed']}/"
                         f"{cycle['idle_ticks']} training_missed={cycle['training_missed']}/{cycle['training_ticks']} "
                         f"training_s={cycle['training_s']:.0f}")
        finally:
            if self.sleeper is not None:
                codes = self.sleeper.stop(grace_s=30.0)
                if any(c not in (0, -2, 130) for c in codes.values()):
                    self.log(f"      warning: sage_sleeper exited {codes} (log in {wd / 'logs' / 'sleeper'})")
            self.diag.close()
            demo.graph.close()
        self.log(f"[{n}/{n}] baselines on the test targets (in process) and the report")
        baselines = baseline_policies(cfg.path(cfg.sim_config), cfg.eval_seed, cfg.eval_episodes, robot=cfg.robot)
        timings["total_s"] = time.monotonic() - t_all
        summary = self._summary(_success_stats(expert), tests, {k: _success_stats(v) for k, v in baselines.items()},
                                timing, timings)
        (wd / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
        write_online_report(wd, summary, cfg)
        return summary

    # ------------------------------------------------------------------ steps
    def _test(self, model: Path, name: str) -> tuple[dict, dict]:
        cfg = self.cfg
        results, timing = _Phase(self.demo, name, cfg.eval_seed, cfg.eval_episodes, cfg.eval_real_time_factor,
                                 expert_drives=False, model_dir=model).run()
        stats = _success_stats(results)
        self.log(f"      {name}: test success {stats['success_rate']:.2f} (mean final distance "
                 f"{stats['mean_final_dist_m']:.3f} m)")
        return stats, timing

    def _start_sleeper(self, model: Path) -> None:
        cfg, wd = self.cfg, self.wd
        (wd / "bags" / "online").mkdir(parents=True, exist_ok=True)
        self.sleeper = NodeProcesses(wd / "logs" / "sleeper")
        self.sleeper.start("sage_sleeper", node_command(SLEEPER_SPEC, [], {
            "model_dir": str(model.resolve()), "bags_dir": str((wd / "bags" / "online").resolve()),
            "store_dir": str((wd / "sleep").resolve()), "runtime_nodes": ["sage_context", "sage_control"],
            "min_new_episodes": min(5, cfg.online_episodes), "idle_settle_s": cfg.online_idle_settle_s,
            "max_error_ratio": cfg.online_max_error_ratio, "keep_checkpoints": max(5, cfg.online_cycles + 1),
            "sleep_config": str(cfg.path(cfg.dagger_sleep_config).resolve()),
            "dataset_config": str(cfg.path(cfg.dataset_config).resolve()),
            "sleep_set": list(cfg.dagger_overrides) or [""],
            "train_threads": cfg.online_train_threads, "train_nice": cfg.online_train_nice}))
        deadline = time.monotonic() + 120.0
        while self.diag.latest("sleeper") is None:
            if self.sleeper.exited():
                raise RuntimeError(f"sage_sleeper exited {self.sleeper.exited()} (see {wd / 'logs' / 'sleeper'})")
            if time.monotonic() > deadline:
                raise RuntimeError(f"sage_sleeper: no /diagnostics after 120 s (see {wd / 'logs' / 'sleeper'})")
            time.sleep(0.2)
        self.log(f"      sage_sleeper up: bags {wd / 'bags' / 'online'}, store {wd / 'sleep'}, training nice "
                 f"+{cfg.online_train_nice}, {cfg.online_train_threads} thread(s)")

    def _cycle(self, k: int, model: Path) -> dict:
        cfg, wd = self.cfg, self.wd
        record: dict = {"cycle": k, "seed": cfg.train_seed + k}
        results, _ = _Phase(self.demo, f"online{k}", cfg.train_seed + k, cfg.online_episodes,
                            cfg.eval_real_time_factor, expert_drives=False, model_dir=model,
                            bag_dir=wd / "bags" / "online" / f"cycle{k:02d}", groot_labels=cfg.teacher == "groot",
                            label_hold_within_m=cfg.dagger_label_hold_within_m, idle_physics=True,
                            after_batch=lambda nodes: self._sleep(k, nodes, record)).run()
        record["drive_success"] = _success_stats(results)["success_rate"]
        return record

    def _sleep(self, k: int, nodes: NodeProcesses, record: dict) -> None:
        """The batch is over, the nodes still up: idle the robot and wait for the sleeper's verdict."""
        cfg, diag = self.cfg, self.diag
        before = diag.latest("sleeper")
        counts = {key: int(before[key]) for key in ("promoted", "refused", "failed")}
        diag.set_control(False)
        t_idle = time.monotonic()
        code = nodes.stop_one("sage_recorder", grace_s=60.0)
        if code not in (0, -2, 130):
            raise RuntimeError(f"online{k}: the recorder exited {code} closing its bag (see {nodes.log_dir})")
        self.log(f"      online{k}: idle (control disabled, world running); bag closed; waiting for sage_sleeper")
        deadline, shown = t_idle + cfg.online_cycle_timeout_s, time.monotonic()
        while True:
            exited = {n: c for n, c in nodes.exited().items() if n != "sage_recorder"}
            if exited or self.sleeper.exited():
                raise RuntimeError(f"online{k}: node(s) exited {exited or self.sleeper.exited()} while the sleeper "
                                   f"worked (see {nodes.log_dir}, {self.wd / 'logs' / 'sleeper'})")
            now = diag.latest("sleeper", since=t_idle)
            if now is not None and any(int(now[key]) > counts[key] for key in counts):
                break
            if time.monotonic() - shown >= 60.0:
                shown = time.monotonic()
                self.log(f"      online{k}: sage_sleeper {now['state'] if now else '?'}: "
                         f"{now['last_decision'] if now else 'no report'} ({shown - t_idle:.0f} s idle)")
            if time.monotonic() > deadline:
                raise RuntimeError(f"online{k}: the sleep cycle took over {cfg.online_cycle_timeout_s:g} s "
                                   f"(see {self.wd / 'logs' / 'sleeper'} and {self.wd / 'sleep'})")
            time.sleep(0.5)
        t_judged = time.monotonic()
        if int(now["failed"]) > counts["failed"]:
            raise RuntimeError(f"online{k}: the sleep cycle failed: {now['last_error']}")
        record["promoted"] = int(now["promoted"]) > counts["promoted"]
        record["gate"] = now["last_gate"]
        record["model_dir"] = now["current_model_dir"]
        record["sha256"] = now["current_sha256"]
        record["episode_active_at_judge"] = now["episode_active"] == "true"
        self.log(f"      online{k}: {now['last_gate']}")
        if record["promoted"]:  # the sleeper reloads the running nodes: wait until both run the new weights
            sha = now["current_sha256"]
            deadline = time.monotonic() + 180.0
            while not all((diag.latest(key, since=t_judged) or {}).get("model_sha256") == sha
                          for key in ("control_model", "context_model")):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"online{k}: the runtime nodes did not load {sha[:12]} within 180 s")
                time.sleep(0.5)
            record["reload_s"] = time.monotonic() - t_judged
            self.log(f"      online{k}: sage_context and sage_control run {sha[:12]} (hot reload, "
                     f"{record['reload_s']:.1f} s after the verdict, no episode open)")
        sleeper, control = diag.log("sleeper"), diag.log("control")
        training = state_window(sleeper, "training", t_idle)
        if training is None:
            raise RuntimeError(f"online{k}: the sleeper judged a candidate it was never seen training")
        record["training_s"] = training[1] - training[0]
        record["idle_ticks"], record["idle_missed"] = tick_window(control, t_idle, training[0])
        record["training_ticks"], record["training_missed"] = tick_window(control, *training)
        record["idle_window_s"] = training[0] - t_idle

    def _summary(self, expert: dict, tests: list[dict], baselines: dict, timing: dict, timings: dict) -> dict:
        cycles = self.cycles
        ticks = {key: sum(c[key] for c in cycles) for key in TICK_KEYS}
        line = {"cycles": str(len(cycles)), "success_start": f"{tests[0]['success_rate']:.2f}",
                "success_end": f"{tests[-1]['success_rate']:.2f}",
                "promoted": str(sum(c["promoted"] for c in cycles)),
                "refused": str(sum(not c["promoted"] for c in cycles)),
                "missed_ticks_training": str(ticks["training_missed"])}
        return {"expert": expert, "tests": tests, "cycles": cycles, "baselines": baselines, "timing": timing,
                "durations_s": timings, "ticks": ticks, "line": line,
                "tick_line": {key: str(v) for key, v in ticks.items()}}


def write_online_report(wd: Path, summary: dict, cfg) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tests, expert = summary["tests"], summary["expert"]["success_rate"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([t["cycle"] for t in tests], [t["success_rate"] for t in tests], "o-", label="SAGE nodes (running model)")
    ax.axhline(expert, color="g", ls="--", lw=1, label=f"expert {expert:.2f}")
    ax.axhline(0.75 * expert, color="grey", ls=":", lw=1, label="75% of the expert")
    ax.set_xticks([t["cycle"] for t in tests])
    ax.set_xlabel("online sleep cycle (0 = the weak start)")
    ax.set_ylabel("test success rate")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{cfg.eval_episodes} test targets (seed {cfg.eval_seed})")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(wd / "online_success.png", dpi=100)
    plt.close(fig)

    rows = [f"| 0 (weak start, {cfg.demos} demos) | - | - | {tests[0]['success_rate']:.2f} | - | - | - |"]
    for c, t in zip(summary["cycles"], tests[1:], strict=True):
        rows.append(f"| {c['cycle']} (seed {c['seed']}) | {c['drive_success']:.2f} | "
                    f"{'promoted' if c['promoted'] else 'refused'} | {t['success_rate']:.2f}"
                    f"{' (unchanged)' if t.get('unchanged') else ''} | {c['idle_missed']} / {c['idle_ticks']} | "
                    f"{c['training_missed']} / {c['training_ticks']} | {c['training_s']:.0f} |")
    gates = [f"- {c['gate']}" for c in summary["cycles"]]  # the sleeper's verdict: "cycle N: ..."
    t = summary["ticks"]
    lines = ["# sage_hl_ros online sleep in the sim (MuJoCo stand-in for Isaac Sim)", "",
             f"Weak start: round 0 from {cfg.demos} expert demonstrations. Each cycle: the SAGE nodes drive "
             f"{cfg.online_episodes} episodes (the expert labels) -> idle -> sage_sleeper trains (nice "
             f"+{cfg.online_train_nice}, {cfg.online_train_threads} thread(s)), gates, hot-reloads -> "
             f"{cfg.eval_episodes} test targets (seed {cfg.eval_seed}). Expert on the same targets: "
             f"{expert:.2f}; zero motion {summary['baselines']['zero_motion']['success_rate']:.2f}, random "
             f"{summary['baselines']['random']['success_rate']:.2f}.", "",
             "| cycle | on-policy success (training targets) | gate | test success | missed / ticks, sleeper "
             "idle | missed / ticks, sleeper training | training s |", "|---|---|---|---|---|---|---|", *rows, "",
             f"Control ticks over all cycles: sleeper idle {t['idle_missed']} missed of {t['idle_ticks']}, sleeper "
             f"training {t['training_missed']} missed of {t['training_ticks']} (a tick is missed when its period "
             "exceeds 1.5x the control period, on the sim clock).", "", "Gate verdicts (held-out action error, "
             "running -> candidate):", *gates, "", "![test success per cycle](online_success.png)", "",
             "Sleep cycles: `sleep/cycle-*` (checkpoints, reports, logs), `sleep/promoted.json`. Bags: `bags/`.", ""]
    (wd / "report.md").write_text("\n".join(lines))
