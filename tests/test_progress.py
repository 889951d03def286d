"""The sweep's time-left estimate, on a fake clock."""

import pytest

from sweeps.progress import TimeLeft


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_time_left_is_the_mean_time_per_trial_finished_here_times_the_trials_to_go():
    clock = FakeClock()
    time_left = TimeLeft(50, finished_before=0, clock=clock)
    assert time_left.seconds(0) is None
    clock.now += 300  # 5 trials in 5 minutes: a minute each, 45 to go
    assert time_left.seconds(5) == pytest.approx(45 * 60)
    clock.now += 300  # a burst of 15 quick prunes does not make the rest look 3x cheaper
    assert time_left.seconds(20) == pytest.approx(30 * 600 / 20)
    assert time_left.describe(20) == "about 15:00 left"


def test_trials_finished_by_an_earlier_invocation_do_not_count_as_speed():
    clock = FakeClock()
    time_left = TimeLeft(50, finished_before=40, clock=clock)
    clock.now += 120
    assert time_left.seconds(40) is None
    assert time_left.describe(40) == "time left unknown"
    clock.now += 120
    assert time_left.seconds(42) == pytest.approx(8 * 120)


def test_the_sweeps_wall_clock_bounds_the_estimate():
    clock = FakeClock()
    time_left = TimeLeft(50, finished_before=0, ends_by=clock.now + 2700, clock=clock)
    assert time_left.seconds(0) == pytest.approx(2700)  # nothing finished yet: the bound alone
    clock.now += 600
    assert time_left.seconds(5) == pytest.approx(2100)  # 45 x 120 s would overrun it
    clock.now += 3000
    assert time_left.seconds(30) == 0.0
    assert time_left.seconds(50) == 0.0


def test_the_whole_commands_time_left_adds_the_phases_after_this_one():
    clock = FakeClock()
    # The phases after this one are forecast to take an hour from whenever it ends.
    time_left = TimeLeft(50, finished_before=0, ends_by=clock.now + 2700, clock=clock,
                         command_ends=lambda phase_ends: phase_ends + 3600)
    assert time_left.command_seconds(0) == pytest.approx(2700 + 3600)
    clock.now += 600
    assert time_left.command_seconds(25) == pytest.approx(600 + 3600)  # 25 to go at 24 s each
    assert time_left.describe(25) == "about 10:00 left here, 1:10:00 in all"
    assert TimeLeft(50, finished_before=0, clock=clock).describe(0) == "time left unknown"


def test_a_rungs_time_left_is_its_trials_forecast_not_the_mean_per_finished_trial():
    clock = FakeClock()
    time_left = TimeLeft(8, finished_before=0, ends_by=clock.now + 3600, clock=clock,
                         forecast=lambda now: 1500.0)
    clock.now += 600
    assert time_left.seconds(4) == pytest.approx(1500)  # not 4 x 150 s
    clock.now += 2500
    assert time_left.seconds(4) == pytest.approx(500)  # never past the rung's deadline
