"""The time-left benchmark reads a sweep's plain progress lines and scores its forecasts."""

import datetime as dt
import os

import pytest

from benchmarks import time_left

LOG = """Study 'mnist-sweep': budget quick (...)
23:30:05 explore (quick): 0/50 trials, about 44:54 left here, 1:40:00 in all, pruned 0, failed 0
23:40:05 explore (quick): 9/50 trials, about 30:00 left here, 1:20:00 in all, pruned 0, failed 0, best 0.9915
00:10:00 rung 2/3 (long): 2/6 trials, about 09:00 left here, 1:00:00 in all, pruned 0, failed 0, best 0.9928
00:50:00 rung 3/3 (full): 10/12 trials, about 20:00 left here, 25:00 in all, pruned 0, failed 0, best 0.9932
01:00:05 rung 3/3 (full): 12/12 trials, about 00:00 left here, 01:30 in all, pruned 0, failed 0, best 0.9932
Study 'mnist-sweep': 50 trials (...)
"""


def test_the_readings_follow_a_sweep_past_midnight():
    found = time_left.readings(LOG.splitlines(), dt.date(2026, 12, 3))
    assert [(when.day, phase, said) for when, phase, said in found] == [
        (3, "explore (quick)", 6000), (3, "explore (quick)", 4800), (4, "rung 2/3 (long)", 3600),
        (4, "rung 3/3 (full)", 1500), (4, "rung 3/3 (full)", 90)]


def test_each_share_of_the_wall_clock_takes_the_nearest_reading_against_the_real_end():
    found = time_left.readings(LOG.splitlines(), dt.date(2026, 12, 3))
    started, ended = dt.datetime(2026, 12, 3, 23, 30), dt.datetime(2026, 12, 4, 1, 10)  # 100 min
    rows = time_left.nearest(found, started, ended)
    assert [row["when"].strftime("%H:%M") for row in rows] == ["23:40", "00:10", "01:00"]
    assert [row["real"] for row in rows] == [5395, 3600, 595]
    assert rows[1]["off"] == 0.0 and rows[0]["off"] == pytest.approx(4800 / 5395 - 1)


def test_the_command_prints_the_three_readings_for_a_log_written_the_next_day(tmp_path, run_command):
    log = tmp_path / "out.txt"
    log.write_text(LOG)
    ended = dt.datetime(2026, 12, 4, 1, 10).timestamp()
    os.utime(log, (ended, ended))
    code, out, err = run_command(time_left.main, [log, "--started", "23:30:00"])
    assert code == 0, err
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row.split(" | ")[-1] for row in rows] == ["-11% |", "+0% |", "-85% |"]
    assert "100.0 min" in out
