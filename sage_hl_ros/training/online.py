"""Online sleep on the robot, as pure logic: when to train, when to stop, what to promote.

The ``sage_sleeper`` node (ros/sleeper_node.py) is topics, a timer and a child process over these:

- ``is_idle``: the robot is idle when nothing is being done with it: no episode is open and no
  runtime node has control enabled, or someone said so explicitly on ``/sage/idle``.
- ``SleeperStep``: one decision per tick from what the node observed (idle or busy, how many new
  episodes were recorded, whether a training process runs, whether a candidate waits): start a
  cycle, stop it (the robot became busy: the trainer saves its state and the cycle resumes later),
  or promote / refuse a finished candidate. A swap happens only while idle, so never during an
  episode.
- ``gate``: a candidate is promoted only if it is not worse than the running model, by its held-out
  action error on the recent episodes it did not train on (and on the replayed older experience,
  where there is some: a candidate that forgot is refused too). Both errors come from the same
  trainer run (its report's first stage is the running model on the same data), so they compare
  like with like.
- ``CheckpointStore``: the promoted checkpoints, newest last; keeps the last N and knows the one
  before the current (rollback).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.validated import ConfigError, SelfValidating, require_positive

__all__ = ["Decision", "GateResult", "CheckpointStore", "SleeperConfig", "SleeperInputs", "SleeperStep", "gate",
           "has_trainer_state", "is_idle", "report_errors"]


def has_trainer_state(out_dir: str | Path) -> bool:
    """``training.state.has_state`` without importing torch: the sleeper process never loads it
    (test_online_sleep checks the names agree)."""
    d = Path(out_dir) / "trainer_state"
    return (d / "state.safetensors").is_file() and (d / "state.json").is_file()


@dataclass
class SleeperConfig(SelfValidating):
    """When a sleep cycle runs and what it may promote."""

    min_new_episodes: int = 5  # recorded episodes (end markers) since the last cycle before another
    idle_settle_s: float = 2.0  # the robot must have been idle this long before training starts
    # Promote when candidate_error <= max_error_ratio x running_error on the held-out recent episodes
    # (and on the replayed older data, where there is some). 1.0 = "not worse".
    max_error_ratio: float = 1.0
    keep_checkpoints: int = 5  # promoted checkpoints kept on disk (the current one and rollbacks)

    def validate(self, where: str) -> None:
        require_positive(self, where, "min_new_episodes", "max_error_ratio", "keep_checkpoints")
        if self.idle_settle_s < 0:
            raise ConfigError(f"{where}.idle_settle_s: must be >= 0, got {self.idle_settle_s}")
        if self.keep_checkpoints < 2:
            raise ConfigError(f"{where}.keep_checkpoints: at least 2 (the current one and one to roll back to), "
                              f"got {self.keep_checkpoints}")


def is_idle(episode_active: bool, control_enabled: bool, idle_flag: bool | None) -> bool:
    """Idle: an explicit ``/sage/idle`` true, or no open episode and control disabled everywhere.
    An explicit false is busy whatever the rest says (an operator keeping the robot awake)."""
    if idle_flag is not None:
        return idle_flag
    return not episode_active and not control_enabled


@dataclass(frozen=True)
class SleeperInputs:
    """What the node saw by ``now_s``."""

    now_s: float
    idle: bool
    idle_since_s: float | None  # when the robot last became idle (None while busy)
    new_episodes: int  # end markers since the last cycle's data was taken
    training: bool  # the training process runs
    resumable: bool  # an interrupted cycle waits to be resumed
    candidate_ready: bool  # a finished cycle's checkpoint waits for the gate


@dataclass(frozen=True)
class Decision:
    action: str  # none | start | resume | stop | judge
    reason: str = ""


class SleeperStep:
    """The decision of one tick (pure: the node acts on it)."""

    def __init__(self, cfg: SleeperConfig | None = None):
        self.cfg = cfg or SleeperConfig()

    def __call__(self, x: SleeperInputs) -> Decision:
        cfg = self.cfg
        if x.training:
            if not x.idle:
                return Decision("stop", "the robot became busy: training stops, its state is saved")
            return Decision("none", "training")
        if not x.idle:
            return Decision("none", "busy")
        settled = x.idle_since_s is not None and x.now_s - x.idle_since_s >= cfg.idle_settle_s
        if x.candidate_ready:  # the gate runs (and a promotion reloads the nodes) only while idle
            return Decision("judge", "a candidate waits and the robot is idle")
        if not settled:
            return Decision("none", f"idle for less than {cfg.idle_settle_s:g} s")
        if x.resumable:
            return Decision("resume", "idle again: the interrupted cycle resumes")
        if x.new_episodes >= cfg.min_new_episodes:
            return Decision("start", f"{x.new_episodes} new episodes (>= {cfg.min_new_episodes})")
        return Decision("none", f"{x.new_episodes} new episodes (< {cfg.min_new_episodes})")


@dataclass(frozen=True)
class GateResult:
    promote: bool
    reason: str
    errors: dict[str, tuple[float, float]] = field(default_factory=dict)  # set -> (running, candidate)


def report_errors(report: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """``{eval set: (running model's error, candidate's error)}`` from a trainer report: its
    "initial" stage is the ``--init`` model (the running one) before any step, its last the candidate."""
    try:
        stages = report["stages"]
        first = next((s for s in stages if s["stage"] == "initial"), None)
        if first is None or stages[-1]["stage"] == "initial":
            raise ValueError("no 'initial' and later evaluation (the gate needs the running model's error: "
                             "sleep_train.eval.after_each_phase true)")
        before, after = first["metrics"], stages[-1]["metrics"]
        return {name: (float(before[name]["action_error"]), float(after[name]["action_error"]))
                for name in before if name in after}
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ValueError(f"trainer report has no per-stage action errors ({type(exc).__name__}: {exc})") from None


def gate(errors: dict[str, tuple[float, float]], max_error_ratio: float) -> GateResult:
    """Promote only if the candidate is not worse (by ``max_error_ratio``) on every eval set."""
    if "new" not in errors:
        return GateResult(False, "no held-out error on the new experience: cannot judge the candidate", errors)
    worse = []
    for name, (running, candidate) in errors.items():
        if not (candidate == candidate and running == running):  # NaN
            worse.append(f"{name}: error not finite")
        elif candidate > max_error_ratio * running:
            worse.append(f"{name}: {candidate:.4f} > {max_error_ratio:g} x {running:.4f} rad")
    text = ", ".join(f"{n} {r:.4f} -> {c:.4f} rad" for n, (r, c) in errors.items())
    if worse:
        return GateResult(False, "refused (" + "; ".join(worse) + f"); held-out {text}", errors)
    return GateResult(True, f"promoted: held-out {text}", errors)


class CheckpointStore:
    """Promoted checkpoints under ``root``, in promotion order, in ``root/promoted.json``."""

    def __init__(self, root: str | Path, keep: int = 5):
        self.root = Path(root)
        self.keep = keep
        self.root.mkdir(parents=True, exist_ok=True)
        self._file = self.root / "promoted.json"
        self.entries: list[dict[str, str]] = self._read()

    def _read(self) -> list[dict[str, str]]:
        if not self._file.exists():
            return []
        try:
            data = json.loads(self._file.read_text())
            if not isinstance(data, list) or not all(isinstance(e, dict) and "model_dir" in e for e in data):
                raise ValueError("expected a list of {model_dir, sha256}")
            return data
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{self._file}: unreadable promotion history ({exc})") from None

    def _write(self) -> None:
        tmp = self._file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.entries, indent=1))
        tmp.replace(self._file)

    @property
    def current(self) -> dict[str, str] | None:
        return self.entries[-1] if self.entries else None

    @property
    def previous(self) -> dict[str, str] | None:
        return self.entries[-2] if len(self.entries) >= 2 else None

    def start(self, model_dir: str, sha256: str) -> None:
        """The model the robot runs when the sleeper starts (kept, never deleted)."""
        if self.current is None or self.current["model_dir"] != str(model_dir):
            self.entries.append({"model_dir": str(model_dir), "sha256": sha256, "how": "running at start"})
            self._write()

    def promote(self, model_dir: str, sha256: str, reason: str) -> list[str]:
        """Record a promotion; returns the checkpoint folders deleted (the oldest beyond ``keep``,
        only ones this store made under ``root``)."""
        self.entries.append({"model_dir": str(model_dir), "sha256": sha256, "how": reason})
        deleted = []
        while len(self.entries) > self.keep:
            old = self.entries.pop(0)
            path = Path(old["model_dir"])
            if self.root in path.resolve().parents and path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
                deleted.append(str(path))
        self._write()
        return deleted

    def rollback(self) -> dict[str, str]:
        """Forget the current checkpoint; the previous one is current again (returned)."""
        if self.previous is None:
            raise ValueError("nothing to roll back to: only one checkpoint was ever running")
        self.entries.pop()
        self._write()
        return self.entries[-1]
