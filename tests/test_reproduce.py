"""Reproduction of a smoke sweep's best trial: seeds are deterministic, the verdict and the
test figures are printed, the champion alias loads and predicts; bad choices are refused."""

import math
import statistics

import mlflow
import numpy as np
import pytest

import search_space
from harness import data, tracking
from sweeps import reproduce, study as sweep_study

pytestmark = pytest.mark.filterwarnings("ignore")

TINY = ["--budget", "smoke", "--train-size", "300", "--max-epochs", "1"]


def arguments(sweep, tracking_uri, *extra):
    return ["--storage", f"journal:{sweep}/mlruns/optuna.journal", "--tracking-uri", tracking_uri, *TINY, *extra]


@pytest.fixture(scope="module")
def reproduced(sweep, tmp_path_factory):
    """Two invocations, each with seeds 1 and 2 (the default start), into a store of their own."""
    from harness import cli
    import contextlib
    import io

    uri = f"sqlite:///{tmp_path_factory.mktemp('reproduce')}/mlflow.db"
    outputs = []
    for _ in range(2):
        output = io.StringIO()
        with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stdout(output):
            cli.run(reproduce.main, arguments(sweep, uri, "--seeds", "2"))
        assert exit_info.value.code == 0, output.getvalue()
        outputs.append(output.getvalue())
    return uri, outputs


def seed_runs(uri):
    client = tracking.client(uri)
    experiment = client.get_experiment_by_name(reproduce.EXPERIMENT)
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


@pytest.mark.slow
def test_the_same_seed_twice_gives_identical_validation_accuracy(reproduced):
    runs = seed_runs(reproduced[0])
    assert [r.data.tags["seed"] for r in runs] == ["1", "2", "1", "2"]
    accuracy = [r.data.metrics["validation_accuracy"] for r in runs]
    assert accuracy[0] == accuracy[2] and accuracy[1] == accuracy[3]


@pytest.mark.slow
def test_each_seed_run_names_its_source_and_is_evaluated_once_on_the_test_set(reproduced, sweep):
    study = sweep_study.load_existing("mnist-sweep", f"journal:{sweep}/mlruns/optuna.journal")
    client = tracking.client(reproduced[0])
    for run in seed_runs(reproduced[0]):
        assert run.data.tags["source_study"] == "mnist-sweep"
        assert run.data.tags["source_trial"] == str(study.best_trial.number)
        assert run.data.tags["source_run_id"] == study.best_trial.user_attrs["mlflow_run_id"]
        assert len(client.get_metric_history(run.info.run_id, "test_accuracy")) == 1


@pytest.mark.slow
def test_the_printed_verdict_is_the_one_the_stored_figures_imply(reproduced):
    uri, outputs = reproduced
    second_invocation = seed_runs(uri)[2:]
    tags = second_invocation[0].data.tags
    sweep_value, validation_size = float(tags["source_value"]), int(tags["validation_size"])
    mean = statistics.mean(run.data.metrics["validation_accuracy"] for run in second_invocation)
    tolerance = 2 * math.sqrt(sweep_value * (1 - sweep_value) / validation_size)  # two standard errors
    expected = "REAL" if sweep_value - mean <= tolerance else "LUCKY SEED"
    verdict = outputs[1].split("\nVerdict: ", 1)[1].splitlines()[0]
    assert verdict.startswith(f"{expected}: the seeds' mean {mean:.4f} is ")
    assert f"(tolerance {tolerance * 100:.2f} points: " in verdict


@pytest.mark.slow
def test_the_verdict_is_printed_before_the_test_set_is_read(reproduced):
    text = reproduced[1][1]
    assert (text.index("Validation accuracy over 2 seed(s): ") < text.index("Verdict: ")
            < text.index("Test accuracy over 2 seed(s), evaluated once each: "))


@pytest.mark.slow
def test_the_champion_alias_loads_and_predicts_as_its_run_measured(reproduced, mnist):
    uri, _ = reproduced
    mlflow.set_tracking_uri(uri)
    version = tracking.client(uri).get_model_version_by_alias(reproduce.REGISTERED_MODEL, reproduce.ALIAS)
    assert str(version.version) == "2"  # the second invocation moved the alias
    model = mlflow.keras.load_model(f"models:/{reproduce.REGISTERED_MODEL}@{reproduce.ALIAS}")
    split = data.split(mnist, 0, 300)
    probabilities = model.predict(split.x_val[..., None], verbose=0)
    assert probabilities.shape == (len(split.y_val), 10)
    accuracy = float((probabilities.argmax(axis=1) == split.y_val).mean())
    assert accuracy == pytest.approx(float(version.tags["validation_accuracy"]), abs=5e-5)
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("extra,message", [
    (["--study", "nope"], "no study named 'nope'"),
    (["--trial", "999"], "study 'mnist-sweep' has no trial 999 (trials 0-8)"),
])
def test_a_missing_study_or_trial_is_one_line_and_exit_2(sweep, tracking_uri, run_command, extra, message):
    code, out, err = run_command(reproduce.main, arguments(sweep, tracking_uri, *extra))
    assert code == 2 and err.count("\n") == 1 and message in err and out == ""


# --- The verdict, on figures worked out by hand --------------------------------------------
# A sweep figure of 0.99 on 6,000 validation images has a binomial standard error of
# sqrt(0.99 * 0.01 / 6000) = 0.00128; the tolerance is two of them: 0.00257, "0.26 points".

def test_a_mean_less_than_two_standard_errors_below_the_sweeps_figure_is_real():
    assert reproduce.verdict(0.99, [0.987, 0.989], 6000) == (
        "REAL: the seeds' mean 0.9880 is 0.20 points below the sweep's 0.9900 "
        "(tolerance 0.26 points: 2 standard errors of an accuracy on 6,000 validation images)")


def test_a_mean_more_than_two_standard_errors_below_the_sweeps_figure_is_a_lucky_seed():
    assert reproduce.verdict(0.99, [0.985, 0.987], 6000) == (
        "LUCKY SEED: the seeds' mean 0.9860 is 0.40 points below the sweep's 0.9900 "
        "(tolerance 0.26 points: 2 standard errors of an accuracy on 6,000 validation images)")


def test_a_mean_above_the_sweeps_figure_is_real():
    assert reproduce.verdict(0.99, [0.993, 0.995], 6000).startswith(
        "REAL: the seeds' mean 0.9940 is 0.40 points above the sweep's 0.9900 ")


def test_the_tolerance_narrows_on_a_larger_validation_set():
    # On 60,000 images two standard errors are 0.00081: the same 0.2-point shortfall is too much.
    assert reproduce.verdict(0.99, [0.987, 0.989], 60000).startswith(
        "LUCKY SEED: the seeds' mean 0.9880 is 0.20 points below the sweep's 0.9900 (tolerance 0.08 points: ")


def test_a_trial_without_a_value_gets_no_verdict_only_the_seeds_mean():
    assert reproduce.verdict(None, [0.987, 0.989], 6000) == (
        "the trial has no final value in the study to compare with (seeds' mean 0.9880)")


@pytest.mark.slow
def test_the_seed_registered_is_the_one_with_the_best_validation_accuracy(reproduced):
    uri, _ = reproduced
    second_invocation = seed_runs(uri)[2:]
    best = max(second_invocation, key=lambda run: run.data.metrics["validation_accuracy"])
    version = tracking.client(uri).get_model_version_by_alias(reproduce.REGISTERED_MODEL, reproduce.ALIAS)
    assert version.run_id == best.info.run_id
    assert version.tags["seed"] == best.data.tags["seed"]


def seed_run(seed: int, validation: float, test: float) -> reproduce.SeedRun:
    result = type("Result", (), {"validation_accuracy": validation})()
    return reproduce.SeedRun(seed, f"run-{seed}", result, test_accuracy=test)


def test_the_best_seed_is_chosen_on_validation_whatever_the_test_set_says():
    runs = [seed_run(1, 0.990, 0.996), seed_run(2, 0.993, 0.991), seed_run(3, 0.993, 0.999)]
    assert reproduce.best_on_validation(runs).seed == 2


def test_a_baseline_trial_is_reproduced_with_its_seeds_own_epochs():
    import optuna

    from harness import records

    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(search_space.baseline("gradio_cnn"), user_attrs={records.BASELINE: "gradio_cnn"})
    trial = study.ask()
    search_space.suggest(trial)
    study.tell(trial, 0.98)
    frozen = study.best_trial
    assert "epochs" not in frozen.params  # the study stores what is searched
    assert reproduce.recipe(frozen, "s") == search_space.baseline("gradio_cnn")
    assert reproduce.recipe(frozen, "s")["epochs"] == 5
