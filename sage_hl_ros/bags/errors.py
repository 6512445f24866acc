"""The one error type for bags: reading, writing, repairing. Its message names the bag first."""

from __future__ import annotations

from pathlib import Path


class BagError(ValueError):
    """A bag (or one message in it) could not be read, written or repaired.

    The message reads ``<bag>: topic <topic>: message #<i> at t=<s> s (<ns> ns): <problem>`` with
    the parts that are known; the same parts are attributes for programs.
    """

    def __init__(self, bag: str | Path, problem: str, *, topic: str | None = None, index: int | None = None,
                 timestamp_ns: int | None = None, reason: str = "error"):
        self.bag = str(bag)
        self.problem = problem
        self.topic = topic
        self.index = index
        self.timestamp_ns = timestamp_ns
        self.reason = reason
        parts = [self.bag]
        if topic:
            parts.append(f"topic {topic}")
        pos = []
        if index is not None:
            pos.append(f"message #{index}")
        if timestamp_ns is not None:
            pos.append(f"at t={timestamp_ns / 1e9:.9f} s ({timestamp_ns} ns)")
        if pos:
            parts.append(" ".join(pos))
        parts.append(problem)
        super().__init__(": ".join(parts))
