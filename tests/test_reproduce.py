"""Reproduction of a smoke sweep's best trial: seeds are deterministic, the verdict and the
test figures are printed, the champion alias loads and predicts; bad choices are refused."""

import mlflow
import numpy as np
import pytest

from sweeps import data, reproduce, study as sweep_study

pytestmark = pytest.mark.filterwarnings("ignore")

TINY = ["--budget", "smoke", "--train-size", "300", "--max-epochs", "1"]


def arguments(sweep, tracking_uri, *extra):
    return ["--storage", f"journal:{sweep}/mlruns/optuna.journal", "--tracking-uri", tracking_uri, *TINY, *extra]


@pytest.fixture(scope="module")
def reproduced(sweep, tmp_path_factory):
    """Two invocations, each with seeds 1 and 2 (the default start), into a store of their own."""
    from sweeps import cli
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
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(reproduce.EXPERIMENT)
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def test_the_same_seed_twice_gives_identical_validation_accuracy(reproduced):
    runs = seed_runs(reproduced[0])
    assert [r.data.tags["seed"] for r in runs] == ["1", "2", "1", "2"]
    accuracy = [r.data.metrics["validation_accuracy"] for r in runs]
    assert accuracy[0] == accuracy[2] and accuracy[1] == accuracy[3]


def test_each_seed_run_names_its_source_and_is_evaluated_once_on_the_test_set(reproduced, sweep):
    study = sweep_study.load_existing("mnist-sweep", f"journal:{sweep}/mlruns/optuna.journal")
    client = mlflow.MlflowClient(reproduced[0])
    for run in seed_runs(reproduced[0]):
        assert run.data.tags["source_study"] == "mnist-sweep"
        assert run.data.tags["source_trial"] == str(study.best_trial.number)
        assert run.data.tags["source_run_id"] == study.best_trial.user_attrs["mlflow_run_id"]
        assert len(client.get_metric_history(run.info.run_id, "test_accuracy")) == 1


def test_the_output_gives_a_verdict_with_its_tolerance_then_test_accuracy(reproduced):
    text = reproduced[1][1]
    assert "Validation accuracy over 2 seed(s): " in text
    verdict = text.split("Verdict: ", 1)[1]
    assert verdict.startswith(("REAL: ", "LUCKY SEED: ")) and "tolerance" in verdict
    assert text.index("Verdict: ") < text.index("Test accuracy over 2 seed(s), evaluated once each: ")


def test_the_champion_alias_loads_and_predicts_as_its_run_measured(reproduced, mnist):
    uri, _ = reproduced
    mlflow.set_tracking_uri(uri)
    version = mlflow.MlflowClient(uri).get_model_version_by_alias(reproduce.REGISTERED_MODEL, reproduce.ALIAS)
    assert str(version.version) == "2"  # the second invocation moved the alias
    model = mlflow.keras.load_model(f"models:/{reproduce.REGISTERED_MODEL}@{reproduce.ALIAS}")
    split = data.split(mnist, 0, 300)
    probabilities = model.predict(split.x_val[..., None], verbose=0)
    assert probabilities.shape == (len(split.y_val), 10)
    accuracy = float((probabilities.argmax(axis=1) == split.y_val).mean())
    assert accuracy == pytest.approx(float(version.tags["validation_accuracy"]), abs=5e-5)
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-4)


@pytest.mark.parametrize("extra,message", [
    (["--study", "nope"], "no study named 'nope'"),
    (["--trial", "999"], "study 'mnist-sweep' has no trial 999 (trials 0-8)"),
])
def test_a_missing_study_or_trial_is_one_line_and_exit_2(sweep, tracking_uri, run_command, extra, message):
    code, out, err = run_command(reproduce.main, arguments(sweep, tracking_uri, *extra))
    assert code == 2 and err.count("\n") == 1 and message in err and out == ""
