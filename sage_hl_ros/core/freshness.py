"""Is an input fresh? One rule for every node (torch-free: the control node uses it every tick).

Age counts by both clocks: ``age = max(now - arrival, now - header stamp)``, so a message that
arrives now but carries an old stamp (late, or replayed from a bag) is stale. A stamp (or an
arrival: the node clock jumped back, e.g. a sim reset) more than ``skew_s`` ahead of the node clock
is "future" and refused. The clock that decided is named, for diagnostics.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CLOCK_WORDS", "Freshness", "freshness"]

CLOCK_WORDS = {"stamp": "header stamp", "arrival": "arrival time"}


@dataclass(frozen=True)
class Freshness:
    ok: bool
    state: str  # ok | stale | future
    clock: str  # "stamp" | "arrival": the clock that made it stale/future ("" when ok)
    age_s: float  # max(arrival age, stamp age)
    reason: str = ""


def freshness(arrival_s: float, stamp_s: float | None, now_s: float, timeout_s: float, skew_s: float,
              timeout_name: str = "timeout") -> Freshness:
    """``stamp_s`` None: unstamped, judged by arrival time alone."""
    arrival_age = now_s - arrival_s
    stamp_age = arrival_age if stamp_s is None else now_s - stamp_s
    if not (arrival_age == arrival_age and stamp_age == stamp_age):  # NaN
        return Freshness(False, "stale", "arrival", float("nan"), "non-finite time")
    clocks = (("stamp", stamp_age),) if stamp_s is not None else ()
    for clock, age in clocks + (("arrival", arrival_age),):
        if age < -skew_s:  # a stamp from the future, or the node clock jumped back (sim time reset)
            return Freshness(False, "future", clock, max(arrival_age, stamp_age),
                             f"{CLOCK_WORDS[clock]} {-age:.3f} s ahead of the node clock "
                             f"(clock_skew_tolerance_s {skew_s:g})")
    clock = "stamp" if stamp_s is not None and stamp_age >= arrival_age else "arrival"
    age = max(arrival_age, stamp_age)
    if age > timeout_s:
        return Freshness(False, "stale", clock, age,
                         f"stale by {CLOCK_WORDS[clock]}: {age:.3f} s old > {timeout_name} {timeout_s:g}")
    return Freshness(True, "ok", "", age)
