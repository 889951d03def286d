"""How long a sweep has left: the measured time per trial finished in this invocation (a
rung's: its trials' forecasts), bounded by the wall-clock the phase may not outrun, and then
the phases after it (sweeps/plan.py forecasts them).

tqdm's own estimate smooths the rate over the last few updates; a sweep finishes trials in
bursts (pruned and over-cap samples end in seconds, a baseline runs for minutes), so that rate
swings several-fold between updates.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tqdm import tqdm

# tqdm's layout without its own rate and estimate; the postfix carries ours.
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"


class TimeLeft:
    """Seconds until ``total`` trials are finished, from the mean wall-clock per trial
    finished since this invocation started (parallel workers included), and never past
    ``ends_by`` (a ``clock()`` reading by which the sweep ends whatever its trials cost)."""

    def __init__(self, total: int, finished_before: int, *, ends_by: float | None = None,
                 clock: Callable[[], float] = time.time, command_ends: Callable[[float], float] | None = None,
                 forecast: Callable[[float], float] | None = None):
        self.total = total
        self.finished_before = finished_before
        self.ends_by = ends_by
        self.clock = clock
        self.started = clock()
        # When the whole command is expected to end if this phase ends at a given time.
        self.command_ends = command_ends
        # The phase's own seconds left at a clock reading, from its trials (a rung's
        # forecasts), in place of the mean time per finished trial.
        self.forecast = forecast

    def seconds(self, finished: int) -> float | None:
        """None until a trial has finished here and no wall-clock bounds the sweep."""
        now = self.clock()
        bound = max(0.0, self.ends_by - now) if self.ends_by is not None else None
        if self.forecast is not None:  # it knows what a top rung would still top itself up with
            estimate = self.forecast(now)
            return estimate if bound is None else min(estimate, bound)
        if finished >= self.total:
            return 0.0
        done_here = finished - self.finished_before
        if done_here <= 0:
            return bound
        estimate = (self.total - finished) * (now - self.started) / done_here
        return estimate if bound is None else min(estimate, bound)

    def command_seconds(self, finished: int) -> float | None:
        """Seconds until the whole command ends: this phase's, then the phases after it."""
        phase = self.seconds(finished)
        if self.command_ends is None or phase is None:
            return None
        now = self.clock()
        return max(0.0, self.command_ends(now + phase) - now)

    def describe(self, finished: int) -> str:
        seconds = self.seconds(finished)
        if seconds is None:
            return "time left unknown"
        whole = self.command_seconds(finished)
        if whole is None:
            return f"about {tqdm.format_interval(seconds)} left"
        return f"about {tqdm.format_interval(seconds)} left here, {tqdm.format_interval(whole)} in all"
