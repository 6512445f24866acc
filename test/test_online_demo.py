"""The online-sleep demo's bookkeeping, as pure functions: which control ticks fall in the window
where the sleeper was idle and where it trained (the numbers the demo reports)."""

from __future__ import annotations

from sage_hl_ros.tools.online_demo import state_window, tick_window


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
