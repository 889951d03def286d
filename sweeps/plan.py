"""A sweep as a plan of phases: exploration, each rung of the fidelity ladder, the ensemble.

The plan is made once, when the command starts, from the budget it explores at, the flags and
the clock. Each phase says its study, its per-trial budget, its pruner, how many trials it
asks for, when its last trial may start and by when it must end, and, once it has run, why
it stopped. The command runs the phases in order; the progress bar and the summary read them.

Every rule of a sweep's schedule and time lives here: which rung follows which, how many
recipes each holds and the wall-clock a command gets (the ladder's policy, kept out of the
per-trial budget so that a change of policy never changes a study's fingerprint), how that
wall-clock is shared among the phases, what a recipe is forecast to cost at a rung, and how
long a trial started at a given moment may train. Which recipes a rung takes, and in what
order, is sweeps/ladder.py's.
"""

from __future__ import annotations

import enum
import heapq
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from optuna.trial import FrozenTrial, TrialState

import search_space
from harness import records
from harness.budgets import BUDGETS, Budget

# What a trial takes besides its time share: the validation pass that ends its last epoch and
# its logging (under 40 s at quick; doubled).
TRIAL_OVERHEAD_SECONDS = 80
# What forecasts count instead, as measured (RESULTS.md, 2026-12-03): a trial's wall-clock
# beyond its training, 1-6 s; and a fresh worker process (each top-up starts one) 12-14 s
# from the trial before it ending to its own trial starting. The deadlines keep the margin
# above; a forecast that kept it too would call a 2-hour sweep's end minutes late.
EXPECTED_OVERHEAD_SECONDS = 5
WORKER_START_SECONDS = 15
# Each rung below the top holds this many times the trials of the rung above it.
PROMOTION_FACTOR = 2
# What exploration may take of the ladder's wall-clock at most (its budget may allow less).
EXPLORE_SHARE = 0.4
# How the time after exploration is shared among the upper rungs: the top rung, which trains
# the finalists and the baselines to the full budget, gets twice a middle rung's share.
TOP_RUNG_WEIGHT = 2
# Kept at the end of the ladder's wall-clock for the ensemble: loading the finalists, choosing
# its members on validation, one test pass, logging and registering.
ENSEMBLE_SECONDS = 300
# What the ensemble step and the closing summary are expected to take on two CPU cores
# (RESULTS.md: 98 s from the top rung's end to the command's in sweep D, 16 candidates each
# predicting five views of validation; choosing the selection rule on held-out halves added
# 32 s on sweep K's 16 candidates).
ENSEMBLE_EXPECTED_SECONDS = 130


@dataclass(frozen=True)
class Policy:
    """How a sweep that starts at a budget is scheduled."""
    # The next rung of the ladder (a budget's name): the sweep carries its best trials there
    # once this budget's trials are done. None: the top rung.
    promotes_to: str | None = None
    # Wall-clock of exploring at this budget: no trial starts once the time left cannot hold a
    # whole one, so exploration ends within it whatever its trials cost. None: no limit.
    explore_seconds: float | None = None
    # Wall-clock of the whole command (explore, the rungs, the ensemble) when it explores at
    # this budget, unless --hours says otherwise. None: no limit.
    command_seconds: float | None = None


POLICIES = {
    "smoke": Policy(promotes_to="smoke-long"),
    "smoke-long": Policy(promotes_to="smoke-full"),
    # 50 trials within 45 minutes on two CPU cores, then long and full within two hours.
    "quick": Policy(promotes_to="long", explore_seconds=45 * 60, command_seconds=2 * 3600),
    # A GPU explores here and climbs to full within the same two hours.
    "long": Policy(promotes_to="full", command_seconds=2 * 3600),
}


def policy(budget: Budget) -> Policy:
    return POLICIES.get(budget.name, Policy())


def upper_rungs(budget: Budget) -> list[Budget]:
    """The budgets above ``budget`` on its ladder, lowest first (empty for a top rung)."""
    rungs = []
    while (above := policy(budget).promotes_to) is not None:
        budget = BUDGETS[above]
        rungs.append(budget)
    return rungs


def promotion_counts(finalists: int, rungs: int) -> list[int]:
    """Sampled recipes each upper rung trains, lowest rung first: ``finalists`` at the top."""
    return [finalists * PROMOTION_FACTOR ** (rungs - 1 - index) for index in range(rungs)]


# --- The time rules -----------------------------------------------------------------------

def longest_trial_seconds(budget: Budget) -> float:
    """What one trial can take at most: its time share, its validation and its logging."""
    return budget.trial_seconds + TRIAL_OVERHEAD_SECONDS


def time_share(budget: Budget, deadline: float | None, now: float) -> float:
    """How long a trial starting ``now`` may train: the budget's share, cut so that the trial,
    its validation and its logging end by the phase's deadline."""
    if deadline is None:
        return budget.trial_seconds
    return max(1.0, min(budget.trial_seconds, deadline - now - TRIAL_OVERHEAD_SECONDS))


def seconds_per_epoch(trial: FrozenTrial) -> float:
    """What an epoch of this recipe cost where it last trained (its wall-clock over the epochs
    it reported; a reused trial's source run's): the rung's relative price of it."""
    if records.SECONDS_PER_EPOCH in trial.user_attrs:
        return trial.user_attrs[records.SECONDS_PER_EPOCH]
    if trial.datetime_start is None or trial.datetime_complete is None or not trial.intermediate_values:
        return 0.0
    return (trial.datetime_complete - trial.datetime_start).total_seconds() / len(trial.intermediate_values)


def price(trial: FrozenTrial, rung_budget: Budget) -> float:
    """A rough forecast of the seconds one worker takes to train ``trial``'s recipe at the rung:
    its seconds per epoch where it last trained times its epochs there, at most a time share."""
    epochs = rung_budget.epochs_for(search_space.with_recipe_keys(trial.params, trial.user_attrs.get(records.BASELINE)))
    return min(seconds_per_epoch(trial) * epochs, rung_budget.trial_seconds)


def retrain_price(trial: FrozenTrial) -> float:
    """What training ``trial``'s recipe again at the rung it trained at is forecast to cost: the
    epochs it ran there (its early stop included) times its seconds per epoch; 0 when unknown
    (a multi-objective trial reports no epochs). A trial not trained yet: its forecast there."""
    if trial.state != TrialState.COMPLETE:
        return trial.user_attrs.get(records.FORECAST_SECONDS) or 0.0
    return seconds_per_epoch(trial) * len(trial.intermediate_values)


def rung_deadline(now: float, command_ends: float | None, rungs_left: int) -> float | None:
    """By when a rung starting ``now`` must end: its share of the time left before the
    ensemble's, ``rungs_left`` counting it and the ones above it (the last is the top)."""
    if command_ends is None:
        return None
    weights = [1] * (rungs_left - 1) + [TOP_RUNG_WEIGHT]
    room = max(0.0, command_ends - ENSEMBLE_SECONDS - now)
    return now + room * weights[0] / sum(weights)


def rung_last_start(deadline: float | None) -> float | None:
    """When a rung's last trial may start: while any time is left to train. Which queued
    trial starts is the forecast's to say (``startable``)."""
    return None if deadline is None else deadline - TRIAL_OVERHEAD_SECONDS


def any_start_until(now: float, deadline: float | None, budget: Budget) -> float | None:
    """Until when a rung starting ``now`` starts its queued trials in order, whatever their
    forecast: while a quarter of its time (or a whole time share, if less) is left. A
    forecast is rough (it cannot see early stopping), and a long recipe cut by its time
    share still keeps its best epoch; after that, only a trial whose forecast fits starts."""
    if deadline is None:
        return None
    return deadline - TRIAL_OVERHEAD_SECONDS - min(budget.trial_seconds, (deadline - now) / 4)


def fits(budget: Budget, deadline: float | None, forecast_seconds: float | None, now: float) -> bool:
    """Whether a trial forecast to train ``forecast_seconds`` (at most a time share; unknown:
    any time will do) ends by the deadline with its validation and logging."""
    if deadline is None:
        return True
    seconds = min(forecast_seconds or 0.0, budget.trial_seconds)
    return now + seconds + TRIAL_OVERHEAD_SECONDS <= deadline


def startable(trials: list[FrozenTrial], budget: Budget, deadline: float | None, now: float,
              any_until: float | None = None) -> list[FrozenTrial]:
    """A rung's queued trials that may start now, in queue order: all of them until
    ``any_until`` (any_start_until), then those whose forecast fits the time left."""
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    if any_until is not None and now <= any_until:
        return waiting
    return [t for t in waiting if fits(budget, deadline, t.user_attrs.get(records.FORECAST_SECONDS), now)]


def expected_rung_seconds(budget: Budget, candidates: list[FrozenTrial], workers: int, wanted: int = 0) -> float:
    """A forecast of a rung's wall-clock: its recipes' prices shared by the workers, never less
    than the longest one, each with its validation and logging. Early in exploration fewer
    than the ``wanted`` recipes are known, and a baseline not yet trained has no price: each
    of those is priced as the median known one (a time share while none is known), so the
    first readings do not forecast an empty rung."""
    known = [cost for cost in (price(trial, budget) for trial in candidates) if cost > 0]
    missing = max(len(candidates), wanted) - len(known)
    typical = statistics.median(known) if known else budget.trial_seconds
    prices = [cost + EXPECTED_OVERHEAD_SECONDS for cost in known + [typical] * missing]
    return max(max(prices, default=0.0), sum(prices) / max(workers, 1))


def rung_seconds_left(trials: list[FrozenTrial], budget: Budget, workers: int, now: float,
                      deadline: float | None = None, spare: Callable[[float], float | None] | None = None) -> float:
    """A rung's time left, from what its trials show, as its workers would take them: a running
    trial ends after its measured seconds per epoch times the epochs it has left (its forecast
    until an epoch has ended; a spare seed's forecast, which is its recipe's whole run there,
    early stop included), within its time share; each queued one goes, in queue order, to
    the worker free first, for its forecast price (none that cannot end by ``deadline``); each
    with its validation and logging. ``spare`` (the top rung's top-up, sweeps.ladder.spare_time)
    then gives a worker free at a given time the price of what it would queue then, until it
    queues nothing. The rung ends when its last worker does. A rung's trials differ too much
    in price (one baseline can outlast the rest together) for the mean time per finished trial
    to say."""
    free = []
    for trial in trials:
        if trial.state == TrialState.RUNNING and trial.datetime_start is not None:
            forecast = trial.user_attrs.get(records.FORECAST_SECONDS) or budget.trial_seconds
            elapsed = now - trial.datetime_start.timestamp()
            epochs_done = len(trial.intermediate_values)
            if records.TRAINING_SEED in trial.user_attrs:  # its forecast is its recipe's run there, early stop and all
                remaining = max(0.0, forecast - elapsed)
            elif epochs_done:
                epochs = budget.epochs_for(search_space.with_recipe_keys(trial.params, trial.user_attrs.get(records.BASELINE)))
                remaining = elapsed / epochs_done * max(0, epochs - epochs_done)
            else:
                remaining = max(0.0, forecast - elapsed)
            free.append(now + max(0.0, min(remaining, budget.trial_seconds - elapsed)) + EXPECTED_OVERHEAD_SECONDS)
    free += [now] * max(0, workers - len(free))
    heapq.heapify(free)
    for trial in sorted((t for t in trials if t.state == TrialState.WAITING), key=lambda t: t.number):
        forecast = trial.user_attrs.get(records.FORECAST_SECONDS) or budget.trial_seconds
        if fits(budget, deadline, forecast, free[0]):
            heapq.heapreplace(free, free[0] + min(forecast, budget.trial_seconds) + EXPECTED_OVERHEAD_SECONDS)
    ends = []
    while free:
        free_at = heapq.heappop(free)
        price_of_next = spare(free_at) if spare is not None else None
        if price_of_next is None:
            ends.append(free_at)
        else:
            heapq.heappush(free, free_at + WORKER_START_SECONDS + price_of_next + EXPECTED_OVERHEAD_SECONDS)
    return max(0.0, max(ends) - now)


# --- Phases -------------------------------------------------------------------------------

class Stop(str, enum.Enum):
    """Why a phase ended."""
    DONE = "done"  # it holds every trial it asked for (or had nothing new to do)
    OUT_OF_TIME = "out_of_time"  # its last start passed before it held them all
    INTERRUPTED = "interrupted"  # the user stopped the command (Ctrl-C)
    STORE_FAILED = "store_failed"  # a store could not be written
    WORKERS_FAILED = "workers_failed"  # workers died and their retries could not make up for them
    FAILED = "failed"  # the ensemble step failed


@dataclass
class Phase:
    kind: str  # "explore", "rung" or "ensemble"
    title: str  # how the progress bar and the summary name it
    study_name: str
    budget: Budget  # of each trial (the ensemble's: the top rung's)
    pruner: str
    trials: int  # asked for; a rung's is its promotion count until it is promoted
    top: bool = False  # the ladder's top rung
    last_start: float | None = None  # time.time() after which no trial starts
    deadline: float | None = None  # time.time() by which the phase must have ended
    any_start_until: float | None = None  # a rung's: until then its queued trials start in order
    limit: str | None = None  # what sets the last start, in words
    stopped: Stop | None = None  # None until it has run
    ended: float | None = None  # time.time() when it stopped
    detail: str = ""  # the stop in words, where there is more to say


@dataclass
class Plan:
    invoked: float
    command_ends: float | None  # the whole command's deadline
    command_seconds: float | None
    timeout_at: float | None  # --timeout: no exploring trial starts after it, and no phase after exploration
    phases: list[Phase] = field(default_factory=list)

    @property
    def explore(self) -> Phase:
        return self.phases[0]

    @property
    def rungs(self) -> list[Phase]:
        return [phase for phase in self.phases if phase.kind == "rung"]

    def climbs(self) -> bool:
        return bool(self.rungs)

    def start(self, phase: Phase, now: float) -> None:
        """Fix a rung's deadline and last start as it begins: its share of the time then left."""
        if phase.kind != "rung":
            return
        rungs_left = len(self.rungs) - self.rungs.index(phase)
        phase.deadline = rung_deadline(now, self.command_ends, rungs_left)
        phase.last_start = rung_last_start(phase.deadline)
        phase.any_start_until = any_start_until(now, phase.deadline, phase.budget)
        if phase.deadline is not None:
            phase.limit = f"the rung's share of the sweep's {self.command_seconds / 3600:g}-hour wall-clock"

    def may_follow(self, phase: Phase) -> bool:
        """Whether ``phase`` may run after the phases before it have: exploration counted its
        trials, or ran out of its share of the time but not past --timeout (which no phase
        after exploration starts past), and no one stopped the command."""
        earlier = self.phases[:self.phases.index(phase)]
        if any(p.stopped in (Stop.INTERRUPTED, Stop.STORE_FAILED) for p in earlier):
            return False
        explored = self.explore
        if explored.stopped not in (Stop.DONE, Stop.OUT_OF_TIME):
            return False
        if self.timeout_at is not None and (explored.ended is None or explored.ended > self.timeout_at):
            return False
        return phase.kind != "ensemble" or any(rung.stopped is not None for rung in self.rungs)

    def expected_end(self, phase: Phase, phase_ends: float, candidates: Callable[[Phase], list[FrozenTrial]],
                     workers: int) -> float:
        """When the command is expected to end if ``phase`` ends at ``phase_ends``: each later
        middle rung takes its recipes' forecast (``candidates`` says which, as things stand) or
        its share of the time, whichever is less; the top rung, with a share, all of it (what
        its recipes leave, its top-up fills); then the ensemble its expected minutes."""
        now = phase_ends
        later = self.phases[self.phases.index(phase) + 1:]
        for other in later:
            if other.kind == "rung":
                rungs_left = len(self.rungs) - self.rungs.index(other)
                deadline = rung_deadline(now, self.command_ends, rungs_left)
                climbing = candidates(other)
                wanted = other.trials + sum(records.BASELINE in t.user_attrs for t in climbing)
                forecast = now + expected_rung_seconds(other.budget, climbing, workers, wanted)
                # The top rung with a deadline tops itself up until nothing more fits in it.
                now = forecast if deadline is None else deadline if other.top else min(forecast, deadline)
            elif other.kind == "ensemble":
                now += ENSEMBLE_EXPECTED_SECONDS
        return now


def make(invoked: float, budget: Budget, study_name: str, trials: int, pruner: str, finalists: int,
         timeout: float | None = None, hours: float | None = None) -> Plan:
    """The plan of a command that explores at ``budget`` and climbs with ``finalists``."""
    rules = policy(budget)
    upper = upper_rungs(budget) if finalists else []
    command_seconds = hours * 3600 if hours else rules.command_seconds
    plan = Plan(invoked=invoked, command_ends=invoked + command_seconds if command_seconds else None,
                command_seconds=command_seconds, timeout_at=invoked + timeout if timeout else None)
    limits = []  # (last start, what sets it)
    if timeout:
        limits.append((invoked + timeout, f"--timeout {timeout:g}"))
    if rules.explore_seconds:
        limits.append((invoked + rules.explore_seconds - longest_trial_seconds(budget),
                       f"the {budget.name} budget's {rules.explore_seconds / 60:g}-minute wall-clock"))
    if command_seconds:
        share = EXPLORE_SHARE if upper else 1.0
        limits.append((invoked + share * command_seconds - longest_trial_seconds(budget),
                       f"exploration's share of the sweep's {command_seconds / 3600:g}-hour wall-clock" if upper
                       else f"the sweep's {command_seconds / 3600:g}-hour wall-clock"))
    last_start, limit = min(limits, key=lambda pair: pair[0]) if limits else (None, None)
    plan.phases.append(Phase(
        kind="explore", title=f"explore ({budget.name})" if upper else study_name, study_name=study_name,
        budget=budget, pruner=pruner, trials=trials, last_start=last_start, limit=limit,
        deadline=last_start + longest_trial_seconds(budget) if last_start is not None else None))
    counts = promotion_counts(finalists, len(upper))
    for index, (rung, count) in enumerate(zip(upper, counts)):
        plan.phases.append(Phase(
            kind="rung", title=f"rung {index + 2}/{len(upper) + 1} ({rung.name})",
            study_name=records.rung_study_name(study_name, rung.name), budget=rung, pruner="none",
            trials=count, top=index == len(upper) - 1))
    if upper:
        plan.phases.append(Phase(kind="ensemble", title="ensemble", study_name=plan.phases[-1].study_name,
                                 budget=upper[-1], pruner="none", trials=0))
    return plan


def stop_of(phase: Phase, *, interrupted: bool, store_failed: bool, crashed: bool, counted: int,
            now: float) -> Stop:
    """Why a phase whose workers have all ended stopped, from what they left."""
    if interrupted:
        return Stop.INTERRUPTED
    if store_failed:
        return Stop.STORE_FAILED
    if counted >= phase.trials:
        return Stop.DONE
    if crashed:
        return Stop.WORKERS_FAILED
    if phase.last_start is not None and now > phase.last_start:
        return Stop.OUT_OF_TIME
    return Stop.DONE  # the rest runs in another invocation's workers


def describe(plan: Plan) -> str | None:
    """The ladder in one line, for the command's opening."""
    if not plan.climbs():
        return None
    steps = [f"{plan.explore.budget.name} (explore)"] + [
        f"{rung.budget.name} ({rung.budget.train_size or 'all'} images, {rung.budget.max_epochs} epochs: best "
        f"{rung.trials}{' and the 5 baselines' if rung.top else ''})" for rung in plan.rungs]
    limit = f", all within {plan.command_seconds / 3600:g} h" if plan.command_seconds else ""
    return f"Ladder: {' -> '.join(steps)}, then an ensemble of the top rung's best{limit}"
