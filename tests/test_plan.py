"""The sweep's plan of phases and its time rules, on a fake clock: when each phase's last
trial may start, by when it must end, how long a trial may train, what may follow what, and
why each phase stopped."""

import dataclasses

import optuna
import pytest

from harness import records
from harness.budgets import BUDGETS
from sweeps import plan
from sweeps.plan import Stop

T0 = 1_000_000.0  # the fake clock's reading when the command starts
QUICK, LONG, FULL, SMOKE = (BUDGETS[name] for name in ("quick", "long", "full", "smoke"))


def default_plan(**flags) -> plan.Plan:
    """The plan of `python -m sweeps.run --trials 50` on a CPU (budget quick, 3 finalists)."""
    return plan.make(T0, QUICK, "s", 50, "hyperband", finalists=3, **flags)


def test_the_default_command_explores_then_climbs_long_and_full_then_ensembles():
    made = default_plan()
    assert [(p.kind, p.study_name, p.budget.name, p.pruner, p.trials) for p in made.phases] == [
        ("explore", "s", "quick", "hyperband", 50),
        ("rung", "s@long", "long", "none", 3 * plan.PROMOTION_FACTOR),
        ("rung", "s@full", "full", "none", 3),
        ("ensemble", "s@full", "full", "none", 0)]
    assert [p.top for p in made.rungs] == [False, True]
    assert made.command_ends == T0 + 2 * 3600
    assert plan.describe(made).startswith("Ladder: quick (explore) -> long (all images, 10 epochs: best 6) -> "
                                          "full (all images, 30 epochs: best 3 and the 5 baselines)")


def test_explore_only_has_no_rungs_and_no_ensemble():
    made = plan.make(T0, QUICK, "s", 50, "hyperband", finalists=0)
    assert [p.kind for p in made.phases] == ["explore"] and not made.climbs() and plan.describe(made) is None
    assert plan.upper_rungs(FULL) == [] and [b.name for b in plan.upper_rungs(QUICK)] == ["long", "full"]


def test_quicks_45_minutes_bind_exploration_before_its_share_of_two_hours():
    explore = default_plan().explore
    # 45 min < 40 % of 2 h (48 min): the budget's wall-clock binds; one whole trial fits after the last start.
    assert explore.last_start == T0 + 45 * 60 - plan.longest_trial_seconds(QUICK)
    assert explore.deadline == T0 + 45 * 60
    assert explore.limit == "the quick budget's 45-minute wall-clock"
    assert plan.longest_trial_seconds(QUICK) > QUICK.trial_seconds


def test_a_shorter_hours_makes_explorations_share_bind():
    explore = default_plan(hours=1).explore
    assert explore.last_start == T0 + plan.EXPLORE_SHARE * 3600 - plan.longest_trial_seconds(QUICK)
    assert explore.limit == "exploration's share of the sweep's 1-hour wall-clock"


def test_without_a_ladder_the_whole_hours_are_explorations():
    explore = plan.make(T0, QUICK, "s", 50, "hyperband", finalists=0, hours=0.5).explore
    assert explore.last_start == T0 + 1800 - plan.longest_trial_seconds(QUICK)
    assert explore.limit == "the sweep's 0.5-hour wall-clock"


def test_a_sooner_timeout_wins_and_is_a_last_start_itself():
    explore = default_plan(timeout=60).explore
    assert explore.last_start == T0 + 60 and explore.limit == "--timeout 60"


def test_smoke_has_no_wall_clock_unless_asked():
    explore = plan.make(T0, SMOKE, "s", 5, "none", finalists=1).explore
    assert explore.last_start is None and explore.deadline is None and explore.limit is None


def test_each_rungs_deadline_is_its_share_of_the_time_left_when_it_starts():
    made = default_plan()
    explore_ended = T0 + 2700.0
    middle, top = made.rungs
    made.start(middle, explore_ended)
    room = 2 * 3600 - plan.ENSEMBLE_SECONDS - 2700
    assert middle.deadline == pytest.approx(explore_ended + room / (1 + plan.TOP_RUNG_WEIGHT))
    # A middle rung that ends early leaves its time to the top rung.
    made.start(top, middle.deadline - 600)
    assert top.deadline == pytest.approx(T0 + 2 * 3600 - plan.ENSEMBLE_SECONDS)
    assert top.limit == "the rung's share of the sweep's 2-hour wall-clock"


def test_a_rung_starts_any_queued_trial_whose_forecast_fits_the_time_left():
    # Long's time share is 1,200 s; with 1,000 s left, a 600 s forecast fits, a 950 s one does not
    # (its validation and logging would end past the deadline), an unknown one does.
    deadline = T0 + 1000
    assert plan.rung_last_start(deadline) == deadline - plan.TRIAL_OVERHEAD_SECONDS
    assert plan.fits(LONG, deadline, 600, T0) and not plan.fits(LONG, deadline, 950, T0)
    assert plan.fits(LONG, deadline, None, T0)
    assert plan.fits(LONG, T0 + 1300, 5000, T0)  # a forecast past the time share is capped by it
    assert plan.fits(LONG, None, 10**9, T0) and plan.rung_last_start(None) is None
    assert plan.rung_deadline(T0, None, 2) is None


def test_a_rung_starts_its_queue_in_order_until_a_quarter_of_its_time_is_left():
    # A rung of 2,000 s at long (time share 1,200 s) keeps its last quarter, 500 s, for forecasts.
    until = plan.any_start_until(T0, T0 + 2000, LONG)
    assert until == T0 + 2000 - plan.TRIAL_OVERHEAD_SECONDS - 500
    # A rung of 10,000 s keeps a whole time share, not a quarter of it.
    assert plan.any_start_until(T0, T0 + 10_000, LONG) == T0 + 10_000 - plan.TRIAL_OVERHEAD_SECONDS - 1200
    study = optuna.create_study(direction="maximize")
    for forecast in (5000.0, 100.0):
        study.enqueue_trial({}, user_attrs={records.FORECAST_SECONDS: forecast})
    # Before it, the long one starts too (early stopping may end it sooner; its time share cuts it).
    assert len(plan.startable(study.trials, LONG, T0 + 2000, until - 1, any_until=until)) == 2
    assert [t.user_attrs[records.FORECAST_SECONDS] for t in plan.startable(
        study.trials, LONG, T0 + 2000, until + 1, any_until=until)] == [100.0]
    assert plan.any_start_until(T0, None, LONG) is None


def test_only_the_queued_trials_that_fit_are_startable_in_queue_order():
    study = optuna.create_study(direction="maximize")
    for forecast in (3000.0, 500.0, 900.0, 100.0):
        study.enqueue_trial({}, user_attrs={records.FORECAST_SECONDS: forecast})
    startable = plan.startable(study.trials, FULL, T0 + 950, T0)  # 900 s and its overhead do not fit
    assert [t.user_attrs[records.FORECAST_SECONDS] for t in startable] == [500.0, 100.0]


def test_a_trials_time_share_is_cut_to_end_by_the_phases_deadline():
    assert plan.time_share(FULL, None, T0) == FULL.trial_seconds
    assert plan.time_share(FULL, T0 + 10_000, T0) == FULL.trial_seconds
    assert plan.time_share(FULL, T0 + 1000, T0) == 1000 - plan.TRIAL_OVERHEAD_SECONDS
    assert plan.time_share(FULL, T0 + 10, T0) == 1.0  # never nothing: a started trial trains a little


def test_exploring_trials_started_before_the_last_start_keep_their_whole_time_share():
    explore = default_plan().explore
    assert plan.time_share(QUICK, explore.deadline, explore.last_start) == QUICK.trial_seconds


def explored(made: plan.Plan, stop: Stop, ended: float) -> plan.Plan:
    made.explore.stopped, made.explore.ended = stop, ended
    return made


def test_the_ladder_climbs_after_exploration_finished_or_ran_out_of_its_time():
    for stop in (Stop.DONE, Stop.OUT_OF_TIME):
        made = explored(default_plan(), stop, T0 + 2700)
        assert made.may_follow(made.rungs[0])
    for stop in (Stop.INTERRUPTED, Stop.WORKERS_FAILED, Stop.STORE_FAILED):
        made = explored(default_plan(), stop, T0 + 2700)
        assert not made.may_follow(made.rungs[0]) and not made.may_follow(made.phases[-1])


def test_no_phase_follows_exploration_past_the_timeout():
    made = explored(default_plan(timeout=600), Stop.OUT_OF_TIME, T0 + 601)
    assert not made.may_follow(made.rungs[0])
    made = explored(default_plan(timeout=6000), Stop.DONE, T0 + 2700)
    assert made.may_follow(made.rungs[0])


def test_the_ensemble_follows_a_rung_that_ran_and_nothing_follows_an_interrupted_one():
    made = explored(default_plan(), Stop.DONE, T0 + 2700)
    assert not made.may_follow(made.phases[-1])  # no rung has run
    made.rungs[0].stopped = Stop.OUT_OF_TIME
    assert made.may_follow(made.rungs[1])
    made.rungs[1].stopped = Stop.INTERRUPTED
    assert not made.may_follow(made.phases[-1])


def test_why_a_phase_stopped_is_recorded_from_what_its_workers_left():
    phase = dataclasses.replace(default_plan().explore)
    common = {"interrupted": False, "store_failed": False, "crashed": False}
    assert plan.stop_of(phase, **common, counted=50, now=T0) == Stop.DONE
    assert plan.stop_of(phase, **common, counted=30, now=phase.last_start + 1) == Stop.OUT_OF_TIME
    assert plan.stop_of(phase, **{**common, "crashed": True}, counted=30, now=T0) == Stop.WORKERS_FAILED
    # Workers that died but whose retries made up for them leave a finished phase.
    assert plan.stop_of(phase, **{**common, "crashed": True}, counted=50, now=T0) == Stop.DONE
    assert plan.stop_of(phase, **{**common, "interrupted": True}, counted=50, now=T0) == Stop.INTERRUPTED
    assert plan.stop_of(phase, **{**common, "store_failed": True}, counted=3, now=T0) == Stop.STORE_FAILED


def test_a_whole_default_command_on_a_fake_clock_ends_within_its_two_hours():
    """Every phase's deadline falls within the command's, each after the one before, and the
    ensemble keeps its reserve, however early or late the phases before end."""
    for explore_ends_after in (600.0, 2700.0):
        made = default_plan()
        now = T0 + explore_ends_after
        made.explore.stopped, made.explore.ended = Stop.DONE, now
        previous = made.explore.ended
        for rung in made.rungs:
            made.start(rung, now)
            assert now < rung.last_start < rung.deadline <= made.command_ends - plan.ENSEMBLE_SECONDS + 1e-6
            now = rung.deadline
            rung.stopped, rung.ended = Stop.DONE, now
            assert rung.deadline > previous
            previous = rung.deadline
        assert made.may_follow(made.phases[-1])
        assert made.command_ends - now == pytest.approx(plan.ENSEMBLE_SECONDS)


def timed(value: float, seconds_per_epoch: float, **attributes) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(value=value, params={}, distributions={},
                                     user_attrs={records.SECONDS_PER_EPOCH: seconds_per_epoch, **attributes})


def test_the_command_is_expected_to_end_when_its_later_phases_forecast_or_their_shares_run_out():
    made = default_plan()
    # Two workers; each rung forecast from the recipes that would climb (6 at long, 3 at
    # full): 10 s an epoch.
    explore_ends = T0 + 2700

    def candidates(rung):
        return [timed(0.99, 10.0) for _ in range(rung.trials)]

    middle = plan.expected_rung_seconds(LONG, candidates(made.rungs[0]), 2)  # 10 epochs: 100 s + overhead, 3 each
    assert middle == pytest.approx(3 * (100 + plan.EXPECTED_OVERHEAD_SECONDS))
    top = plan.expected_rung_seconds(FULL, candidates(made.rungs[1]), 2)  # 30 epochs: 300 s + overhead, 1.5 each
    assert top == pytest.approx(1.5 * (300 + plan.EXPECTED_OVERHEAD_SECONDS))
    # The middle rung ends with its forecast; the top rung, which tops itself up with spare
    # seeds, with its share of the time.
    assert made.expected_end(made.explore, explore_ends, candidates, 2) == pytest.approx(
        made.command_ends - plan.ENSEMBLE_SECONDS + plan.ENSEMBLE_EXPECTED_SECONDS)
    # Without a wall-clock (a budget whose policy has none, as smoke), each rung ends with its forecast.
    unbounded = plan.make(T0, QUICK, "s", 50, "hyperband", finalists=3)
    unbounded.command_ends = None
    assert unbounded.expected_end(unbounded.explore, explore_ends, candidates, 2) == pytest.approx(
        explore_ends + middle + top + plan.ENSEMBLE_EXPECTED_SECONDS)
    # Recipes that would outrun a rung's share end with the share.
    slow = [timed(0.99, 1000.0)]
    expected = made.expected_end(made.explore, explore_ends, lambda rung: slow, 1)
    room = made.command_ends - plan.ENSEMBLE_SECONDS - explore_ends
    middle_deadline = explore_ends + room / 3
    assert expected == pytest.approx(made.command_ends - plan.ENSEMBLE_SECONDS + plan.ENSEMBLE_EXPECTED_SECONDS)
    assert middle_deadline < expected
    # From the top rung, only the ensemble is left.
    assert made.expected_end(made.rungs[1], T0 + 6000, candidates, 2) == T0 + 6000 + plan.ENSEMBLE_EXPECTED_SECONDS


def test_recipes_not_known_yet_are_forecast_as_the_median_known_one_or_a_time_share():
    # Early in exploration: 1 of the 6 recipes long wants is known, and a baseline untrained.
    known, untrained = timed(0.99, 10.0), timed(0.0, 0.0, baseline="kaggle_cnn")
    each = 100 + plan.EXPECTED_OVERHEAD_SECONDS
    assert plan.expected_rung_seconds(LONG, [known], 2, wanted=6) == pytest.approx(6 * each / 2)
    assert plan.expected_rung_seconds(LONG, [known, untrained], 1, wanted=2) == pytest.approx(2 * each)
    nothing_yet = plan.expected_rung_seconds(LONG, [], 2, wanted=2)
    assert nothing_yet == pytest.approx(LONG.trial_seconds + plan.EXPECTED_OVERHEAD_SECONDS)
    made = default_plan()
    made.command_ends = None  # a top rung with a share ends with it, whatever its recipes
    # The top rung counts the baselines among what it wants: 3 finalists and 1 baseline here.
    ends = made.expected_end(made.rungs[0], T0 + 5000, lambda rung: [known, untrained], 2)
    assert ends == pytest.approx(T0 + 5000 + 2 * (300 + plan.EXPECTED_OVERHEAD_SECONDS) + plan.ENSEMBLE_EXPECTED_SECONDS)


def test_a_rungs_time_left_reads_its_running_trials_epochs_and_its_queued_forecasts():
    import datetime

    budget = plan.BUDGETS["long"]  # 10 epochs a sampled recipe, a 1,200 s time share
    overhead = plan.EXPECTED_OVERHEAD_SECONDS
    started = datetime.datetime(2026, 12, 3, 12, 0)
    now = started.timestamp() + 300

    def running(epochs_done: int, forecast: float) -> optuna.trial.FrozenTrial:
        return optuna.trial.FrozenTrial(
            number=0, trial_id=0, state=optuna.trial.TrialState.RUNNING, value=None, values=None,
            datetime_start=started, datetime_complete=None, params={}, distributions={}, system_attrs={},
            user_attrs={records.FORECAST_SECONDS: forecast}, intermediate_values={e: 0.9 for e in range(epochs_done)})

    queued = optuna.trial.create_trial(state=optuna.trial.TrialState.WAITING, params={}, distributions={},
                                       user_attrs={records.FORECAST_SECONDS: 100.0})
    # 3 epochs in 300 s: 700 s for the other 7, whatever its forecast said; the queued one 100 s.
    assert plan.rung_seconds_left([running(3, 400.0), queued], budget, 2, now) == pytest.approx(700 + overhead)
    # Each queued one to the worker free first: the idle one takes all six (105 s each, ending
    # at 630) while the other's running trial ends at 705; a seventh goes to the first free (735).
    assert plan.rung_seconds_left([running(3, 400.0), *[queued] * 6], budget, 2, now) == pytest.approx(705)
    assert plan.rung_seconds_left([running(3, 400.0), *[queued] * 7], budget, 2, now) == pytest.approx(735)
    # No epoch ended yet: its forecast less the time it has run; never past its time share.
    assert plan.rung_seconds_left([running(0, 1000.0)], budget, 2, now) == pytest.approx(700 + overhead)
    assert plan.rung_seconds_left([running(1, 1000.0)], budget, 2, now) == pytest.approx(900 + overhead)
    assert plan.rung_seconds_left([], budget, 2, now) == 0.0


def test_a_rungs_time_left_skips_what_cannot_end_by_its_deadline_and_fills_its_spare_time():
    budget = plan.BUDGETS["full"]
    overhead = plan.EXPECTED_OVERHEAD_SECONDS
    now = 1_000_000.0
    queued = [optuna.trial.create_trial(state=optuna.trial.TrialState.WAITING, params={}, distributions={},
                                        user_attrs={records.FORECAST_SECONDS: seconds}) for seconds in (300.0, 5000.0)]
    # The 5,000 s one cannot end by a deadline 1,000 s away, so the workers never start it.
    assert plan.rung_seconds_left(queued, budget, 2, now, deadline=now + 1000) == pytest.approx(300 + overhead)
    taken = []
    start = plan.WORKER_START_SECONDS

    def spare(free_at: float) -> float | None:  # 200 s recipes while one ends by the deadline
        if free_at + 200 + overhead <= now + 1000:
            taken.append(free_at)
            return 200.0
        return None
    # Each spare trial costs a fresh worker's start, its 200 s and the expected overhead: 220 s.
    # Worker one ends its queued trial at 305, then 525, 745, 965; worker two, idle, 220, 440,
    # 660, 880; nothing more fits in either: the rung ends at 965.
    assert start + 200 + overhead == 220
    assert plan.rung_seconds_left(queued[:1], budget, 2, now, deadline=now + 1000, spare=spare) == pytest.approx(965)
    assert len(taken) == 7
