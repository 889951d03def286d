"""One tiny trial, end to end: what it logs to MLflow, how it stops, what it refuses."""

import json
import subprocess
from pathlib import Path

import mlflow
import numpy as np
import pytest

import search_space
import train_trial
from harness import data
from harness.budgets import BUDGETS

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--budget", "smoke", "--train-size", "600", "--max-epochs", "2", "--quiet"]
EPOCH_METRICS = ["train_loss", "train_accuracy", "val_loss", "val_accuracy", "learning_rate"]
ARTIFACTS = {"learning_curves.png", "confusion_matrix.png", "confusion_matrix.csv",
             "most_confident_errors.png", "params.json", "model_summary.txt"}


def only_run(tracking_uri, experiment=train_trial.DEFAULT_EXPERIMENT):
    client = mlflow.MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1
    return client, runs[0]


@pytest.fixture(scope="module")
def logged_trial(tmp_path_factory):
    """gradio_cnn with the seed's class weights, 600 images, 2 epochs, evaluated on the test set."""
    folder = tmp_path_factory.mktemp("trial")
    uri = f"sqlite:///{folder}/mlruns/mlflow.db"
    params = {**search_space.baseline("gradio_cnn"), "class_weights": {"9": 2.0}}
    (folder / "recipe.json").write_text(json.dumps(params))
    with pytest.raises(SystemExit) as exit_info:
        from harness import cli
        cli.run(train_trial.main, ["--params", str(folder / "recipe.json"), *TINY,
                                   "--evaluate-test", "--tracking-uri", uri])
    assert exit_info.value.code == 0
    client, run = only_run(uri)
    return client, run, params


@pytest.mark.slow
def test_the_run_finishes_with_every_param(logged_trial):
    client, run, params = logged_trial
    assert run.info.status == "FINISHED"
    expected = {k: json.dumps(v) if isinstance(v, dict) else str(v) for k, v in params.items()}
    assert run.data.params == expected


@pytest.mark.slow
def test_every_epoch_logs_train_and_validation_curves_and_the_learning_rate(logged_trial):
    client, run, _ = logged_trial
    for name in EPOCH_METRICS:
        history = client.get_metric_history(run.info.run_id, name)
        assert [m.step for m in history] == [0, 1], name
    assert [m.value for m in client.get_metric_history(run.info.run_id, "learning_rate")] == pytest.approx([1e-3, 1e-3])


@pytest.mark.slow
def test_final_metrics_include_the_one_test_evaluation(logged_trial):
    _, run, _ = logged_trial
    metrics = run.data.metrics
    for name in ("validation_accuracy", "test_accuracy", "test_loss", "best_epoch", "epochs_run",
                 "train_seconds", "param_count", "images_per_second", "forward_mmacs_per_image"):
        assert name in metrics, name
    assert metrics["param_count"] == 121_930 and metrics["epochs_run"] == 2
    assert 0.1 < metrics["test_accuracy"] <= 1.0


@pytest.mark.slow
def test_every_artifact_is_stored(logged_trial):
    client, run, params = logged_trial
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == ARTIFACTS
    stored = json.loads(open(client.download_artifacts(run.info.run_id, "params.json")).read())
    assert stored == params
    rows = open(client.download_artifacts(run.info.run_id, "confusion_matrix.csv")).read().splitlines()
    counts = np.array([[int(c) for c in row.split(",")[1:]] for row in rows[1:]])
    assert counts.shape == (10, 10) and counts.sum() == 6000  # the whole validation split


@pytest.mark.slow
def test_tags_record_data_split_and_package_versions(logged_trial, mnist):
    _, run, _ = logged_trial
    tags = run.data.tags
    assert tags["baseline"] == "none" and tags["budget"] == "smoke"
    assert tags["data_sha256"] == mnist.sha256 and tags["data_format"] == "npz"
    assert tags["data_source"].endswith("data/mnist.npz")
    assert tags["split_seed"] == "0" and tags["validation_size"] == "6000" and tags["train_size"] == "600"
    assert tags["validation_sha256"] == data.split(mnist).validation_sha256
    for package in ("tensorflow", "keras", "optuna", "mlflow", "numpy", "python"):
        assert tags[f"version.{package}"][0].isdigit(), package


def git(*args):
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.slow
def test_the_commit_tag_is_the_checkouts_head_marked_dirty_when_tracked_files_changed(logged_trial):
    _, run, _ = logged_trial
    dirty = git("status", "--porcelain", "--untracked-files=no") != ""
    assert run.data.tags["git_commit"] == git("rev-parse", "HEAD") + ("-dirty" if dirty else "")


@pytest.mark.slow
def test_the_keras_model_is_logged_with_the_run(logged_trial):
    client, run, _ = logged_trial
    # MLflow 3 keeps models as LoggedModels linked to their run, outside the run's artifacts.
    models = client.search_logged_models([run.info.experiment_id],
                                         filter_string=f"source_run_id = '{run.info.run_id}'")
    assert [m.name for m in models] == ["model"]


@pytest.mark.slow
def test_the_logged_model_reproduces_the_logged_validation_accuracy(logged_trial, mnist):
    _, run, _ = logged_trial
    model = mlflow.keras.load_model(f"runs:/{run.info.run_id}/model")
    split = data.split(mnist)
    predicted = model.predict(split.x_val[..., None], batch_size=1000, verbose=0).argmax(axis=1)
    assert (predicted == split.y_val).mean() == pytest.approx(run.data.metrics["validation_accuracy"])


@pytest.mark.slow
def test_without_evaluate_test_the_test_set_is_not_used(tmp_path, run_command, tracking_uri, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the test set was evaluated")

    monkeypatch.setattr(train_trial, "evaluate_test", forbidden)
    code, out, _ = run_command(train_trial.main, ["--baseline", "mlp_3x256", *TINY, "--tracking-uri", tracking_uri])
    assert code == 0 and "validation accuracy" in out and "test accuracy" not in out
    _, run = only_run(tracking_uri)
    assert run.data.tags["baseline"] == "mlp_3x256"
    assert "test_accuracy" not in run.data.metrics


@pytest.mark.slow
def test_early_stopping_keeps_the_best_epochs_weights(mnist):
    params = {**search_space.baseline("mlp_3x256"), "sgd_learning_rate": 0.1, "epochs": 5}
    split = data.split(mnist, train_size=600)
    result = train_trial.train(params, split, BUDGETS["smoke"].overridden(max_epochs=5))
    best = max(result.history["val_accuracy"])
    assert result.validation_accuracy == pytest.approx(best, abs=1 / 6000)
    assert result.history["val_accuracy"][result.best_epoch - 1] == best


@pytest.mark.slow
def test_a_diverging_trial_stops_at_once_and_is_recorded_as_failed(mnist, tracking_uri):
    params = {**search_space.baseline("mlp_3x256"), "sgd_learning_rate": 1e6, "epochs": 30}
    from harness import tracking
    tracking.use_experiment("divergence", tracking_uri)
    split = data.split(mnist, train_size=600)
    result, _, run_id = train_trial.run_logged_trial(params, mnist, split, BUDGETS["smoke"].overridden(max_epochs=30))
    assert result.diverged and result.epochs_run == 1
    run = mlflow.MlflowClient(tracking_uri).get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_reason"] == "loss diverged (NaN or inf) in epoch 1"


BAD_PARAMS_FILES = {
    "missing file": (None, "No such file or directory"),
    "not JSON": ("{'family': 'cnn'", "not valid JSON"),
    "unknown key": (json.dumps({**search_space.baseline("mlp_3x256"), "colour": 1}), "unknown or inapplicable parameter(s) colour"),
    "out of range": (json.dumps({**search_space.baseline("mlp_3x256"), "dense_units": 4096}), "dense_units=4096 is not in 16..512"),
}


@pytest.mark.parametrize("case", BAD_PARAMS_FILES)
def test_a_bad_params_file_gives_one_line_and_exit_code_2(tmp_path, run_command, tracking_uri, case):
    content, message = BAD_PARAMS_FILES[case]
    path = tmp_path / "recipe.json"
    if content is not None:
        path.write_text(content)
    code, _, err = run_command(train_trial.main, ["--params", path, "--tracking-uri", tracking_uri])
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {path}: ") and message in err


BAD_FLAGS = {
    "no recipe": ([], "one of the arguments --baseline --params is required"),
    "unknown budget": (["--baseline", "lenet5", "--budget", "huge"], "invalid choice: 'huge'"),
    "zero epochs": (["--baseline", "lenet5", "--max-epochs", "0"], "0 must be at least 1"),
    "words for a number": (["--baseline", "lenet5", "--train-size", "abc"], "'abc' is not a whole number"),
    "negative seed": (["--baseline", "lenet5", "--seed", "-5"], "-5 must be at least 0"),
    "too many images": (["--baseline", "lenet5", "--train-size", "60000"], "--train-size 60000 is outside 10-54000"),
}


@pytest.mark.parametrize("case", BAD_FLAGS)
def test_bad_flags_give_one_line_and_exit_code_2(run_command, tracking_uri, case):
    argv, message = BAD_FLAGS[case]
    code, _, err = run_command(train_trial.main, [*argv, "--tracking-uri", tracking_uri])
    assert code == 2 and err.count("\n") == 1 and message in err


def test_an_unwritable_store_gives_one_line_and_exit_code_2(tmp_path, run_command):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the store folder should be")
    code, _, err = run_command(train_trial.main, ["--baseline", "lenet5", "--budget", "smoke",
                                                  "--tracking-uri", f"sqlite:///{blocked}/mlruns/mlflow.db"])
    assert code == 2 and err.count("\n") == 1 and "cannot create the MLflow store folder" in err
