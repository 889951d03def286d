"""The sweep-efficiency benchmark's verdict: a ratio when both arms reached a threshold, an
upper bound when the no-pruning arm stopped first, and a target called met only when the
figures show it."""

import pytest

from benchmarks.sweep_efficiency import verdict

MINUTE = 60.0


@pytest.mark.parametrize(
    ("ours", "plain", "plain_span", "expected"),
    [
        (10 * MINUTE, 40 * MINUTE, 50 * MINUTE, "= **0.25**; target <= 1/3: met."),
        (10 * MINUTE, 20 * MINUTE, 50 * MINUTE, "= **0.50**; target <= 1/3: **not met**."),
        (25 * MINUTE, None, 80 * MINUTE, "< **0.31** (the no-pruning arm did not reach it in 80.0 min); target <= 1/3: met."),
        (25 * MINUTE, None, 45 * MINUTE, "< **0.56** (the no-pruning arm did not reach it in 45.0 min); "
                                         "target <= 1/3: undecided"),
        (None, 30 * MINUTE, 50 * MINUTE, ": no ratio (the default arm did not reach it)."),
    ],
)
def test_verdict_reports_a_ratio_or_a_bound_and_claims_only_what_it_shows(ours, plain, plain_span, expected):
    text = verdict(0.99, ours, plain, plain_span)
    assert text.startswith("To 99.0%: default / no pruning")
    assert expected in text


@pytest.mark.slow
def test_the_ema_benchmark_validates_both_arms_every_epoch(capsys):
    import json

    from benchmarks import recipe_levers

    assert recipe_levers.main(["--baseline", "gradio_cnn", "--budget", "smoke"]) == 0
    arms = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [arm["ema"] for arm in arms] == [False, True]
    for arm in arms:
        assert len(arm["val_accuracy"]) == 2  # smoke's 2 epochs, no early stopping
        assert 0 < arm["validation_log_loss"] < 3 and 0 <= arm["restored_validation_accuracy"] <= 1
    import train_trial

    assert train_trial.make_optimizer.__name__ == "make_optimizer"  # put back after the EMA arm
