"""Nothing trained twice across sweeps: a trial whose training fingerprint matches a finished
run of the same store takes that run's model and figures (tagged and linked); a new study
starts from the earlier sweeps' best recipes; --retrain trains anyway."""

import contextlib
import dataclasses
import io

import optuna
import pytest
from optuna.trial import TrialState

import search_space
import train_trial
from harness import cli, data, records, tracking
from harness.budgets import BUDGETS
from sweeps import run as sweep_run, study as sweep_study

SMOKE = ["--budget", "smoke", "--train-size", "300", "--max-epochs", "1", "--finalists", "0", "--workers", "1",
         "--pruner", "none"]


def fingerprint(mnist, params=None, budget=BUDGETS["smoke"], seed=0, split_seed=0, train_size=300, dataset=None):
    dataset = dataset or mnist
    split = data.split(dataset, split_seed, train_size)
    return train_trial.training_fingerprint(params or search_space.baseline("gradio_cnn"), dataset, split, budget, seed)


def test_the_fingerprint_changes_with_anything_the_result_depends_on(mnist):
    same = fingerprint(mnist)
    assert fingerprint(mnist) == same
    assert fingerprint(mnist, seed=1) != same
    assert fingerprint(mnist, split_seed=1) != same
    assert fingerprint(mnist, train_size=400) != same  # another training subset
    assert fingerprint(mnist, budget=dataclasses.replace(BUDGETS["smoke"], max_epochs=3)) != same
    assert fingerprint(mnist, params={**search_space.baseline("gradio_cnn"), "batch_size": 32}) != same
    other_data = dataclasses.replace(mnist, sha256="0" * 64)  # another data file
    assert fingerprint(mnist, dataset=other_data) != same
    assert records.training_fingerprint({}, BUDGETS["smoke"], 0, "d", "t", "v", 1, "tensorflow") != \
        records.training_fingerprint({}, BUDGETS["smoke"], 0, "d", "t", "v", 2, "tensorflow")  # the code's version


def sweep_in(folder, *argv):
    output = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(output):
        patch.chdir(folder)
        with pytest.raises(SystemExit) as exit_info:
            cli.run(sweep_run.main, [*argv, *SMOKE])
    assert exit_info.value.code == 0, output.getvalue()
    return output.getvalue()


@pytest.fixture(scope="module")
def two_sweeps(tmp_path_factory):
    """Two studies of 7 trials in one store, then a third with --retrain."""
    folder = tmp_path_factory.mktemp("reuse")
    for study, extra in (("first", ()), ("second", ()), ("third", ("--retrain",))):
        sweep_in(folder, "--trials", "7", "--study", study, *extra)
    storage = sweep_study.open_storage(f"journal:{folder}/mlruns/optuna.journal")
    studies = {name: optuna.load_study(study_name=name, storage=storage) for name in ("first", "second", "third")}
    return studies, tracking.client(f"sqlite:///{folder}/mlruns/mlflow.db"), folder


@pytest.mark.slow
def test_a_second_sweep_reuses_the_baselines_runs_and_links_them(two_sweeps):
    studies, client, _ = two_sweeps
    first = {t.user_attrs[records.BASELINE]: t for t in studies["first"].trials if records.BASELINE in t.user_attrs}
    second = {t.user_attrs[records.BASELINE]: t for t in studies["second"].trials if records.BASELINE in t.user_attrs}
    assert sorted(first) == sorted(second) == sorted(search_space.BASELINES)
    for name, trial in second.items():
        source = first[name]
        assert trial.state == TrialState.COMPLETE and trial.value == source.value, name
        assert trial.user_attrs[records.REUSED_FROM] == source.user_attrs[records.MLFLOW_RUN_ID]
        assert records.model_run_id(trial) == source.user_attrs[records.MLFLOW_RUN_ID]
        assert trial.intermediate_values == source.intermediate_values
        run = client.get_run(trial.user_attrs[records.MLFLOW_RUN_ID])
        assert run.data.tags[records.REUSED_FROM] == source.user_attrs[records.MLFLOW_RUN_ID]
        assert f"reused run {source.user_attrs[records.MLFLOW_RUN_ID]}" in run.data.tags[records.REASON]
        assert run.data.metrics["validation_accuracy"] == source.value
        assert "test_accuracy" not in run.data.metrics
        assert run.data.params["batch_size"] == str(search_space.baseline(name)["batch_size"])


@pytest.mark.slow
def test_a_second_study_starts_from_the_first_ones_best_recipes(two_sweeps):
    studies, _, _ = two_sweeps
    sampled = sorted((t for t in studies["first"].trials if t.state == TrialState.COMPLETE
                      and records.BASELINE not in t.user_attrs), key=lambda t: t.value, reverse=True)
    carried = [t for t in studies["second"].trials if records.WARM_START in t.user_attrs]
    assert [t.params for t in carried] == [t.params for t in sampled][:2]  # 7 trials: 5 baselines and 2
    assert [t.user_attrs[records.WARM_START] for t in carried] == [f"first#{t.number}" for t in sampled][:2]
    assert all(records.REUSED_FROM in t.user_attrs for t in carried)  # trained by the first already


def test_a_new_study_starts_from_what_won_at_the_earlier_top_rungs_before_what_explored_best():
    storage = optuna.storages.InMemoryStorage()
    setup = {records.SEARCH_SPACE_VERSION_KEY: 3, records.DATA_SHA256_KEY: "abc", records.SPLIT_SEED_KEY: 0}
    space = {"x": optuna.distributions.IntDistribution(0, 99)}

    def exploring(name, values, setup=setup):
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
        study.set_user_attr(records.FINGERPRINT, setup)
        for x, value in values:
            if value is None:  # the pruner stopped it before it reported
                study.add_trial(optuna.trial.create_trial(params={"x": x}, distributions=space, state=TrialState.PRUNED))
            else:
                study.add_trial(optuna.trial.create_trial(params={"x": x}, distributions=space, value=value))
        return study

    first = exploring("first", [(0, 0.99), (1, 0.98), (2, None), (3, 0.97), (4, 0.96)])
    exploring("second", [(5, 0.995)])
    exploring("elsewhere", [(6, 0.999)], setup={**setup, records.DATA_SHA256_KEY: "other"})
    # First's top rung trained trial 2 (pruned when explored: an augmented recipe, say) to the
    # lowest log-loss, then trial 3, then trial 0; a spare seed of trial 0 scored lower still
    # and a baseline too, but those are not recipes of its own.
    top = optuna.create_study(study_name="first@full", storage=storage, direction="maximize")
    for source, loss, extra in ((0, 0.030, {}), (3, 0.025, {}), (2, 0.020, {}), (0, 0.010, {records.TRAINING_SEED: 1}),
                                (4, 0.005, {records.BASELINE: "kaggle_cnn"})):
        top.add_trial(optuna.trial.create_trial(
            params={"x": source}, distributions=space, value=0.99,
            user_attrs={records.SOURCE_TRIAL: source, records.CALIBRATED_LOG_LOSS: loss, **extra}))
    registered = records.Registered("run", 0.99, 0.99, "models:/m@a", "1")
    records.record_ladder_result(first, records.LadderResult(
        top_rung="first@full", candidates=[], champion=records.Champion(**dataclasses.asdict(registered)),
        ensemble=records.Ensemble(**dataclasses.asdict(registered))))
    best = sweep_study.earlier_best(storage, "third", setup, count=5)
    assert [(name, trial.params["x"]) for name, trial in best] == \
        [("first", 2), ("first", 3), ("first", 0), ("second", 5), ("first", 1)]
    assert best[0][1].state == TrialState.PRUNED and best[0][1].number == 2  # the exploring trial, as explored
    assert [trial.params["x"] for _, trial in sweep_study.earlier_best(storage, "first", setup, count=2)] == [5]
    optuna.delete_study(study_name="first@full", storage=storage)  # a user tidied the store by hand
    assert [trial.params["x"] for _, trial in sweep_study.earlier_best(storage, "third", setup, count=2)] == [5, 0]


@pytest.mark.slow
def test_retrain_trains_what_it_could_reuse(two_sweeps):
    studies, client, _ = two_sweeps
    third = [t for t in studies["third"].trials if records.BASELINE in t.user_attrs]
    assert len(third) == 5 and not any(records.REUSED_FROM in t.user_attrs for t in third)
    for trial in third:
        run = client.get_run(trial.user_attrs[records.MLFLOW_RUN_ID])
        assert records.REUSED_FROM not in run.data.tags and "model_summary.txt" in \
            [artifact.path for artifact in client.list_artifacts(run.info.run_id)]


@pytest.mark.slow
def test_the_report_draws_a_reused_models_figures_from_its_source_run(two_sweeps, run_command, monkeypatch):
    from analysis import compare

    _, _, folder = two_sweeps
    monkeypatch.chdir(folder)
    code, _, err = run_command(compare.main, ["--study", "second", "--out", "report-second"])
    assert code == 0, err
    report = (folder / "report-second" / "report.md").read_text()
    assert "no stored validation confusion matrix" not in report  # kaggle_cnn's, reused from "first"
    assert (folder / "report-second" / "confusion_matrices.png").is_file()


def test_a_reused_model_tested_before_is_registered_with_that_figure_not_tested_again(tmp_path, monkeypatch):
    import mlflow

    from sweeps import reproduce

    tracking.use_experiment("reuse-test", f"sqlite:///{tmp_path}/mlflow.db")
    with mlflow.start_run() as source:
        mlflow.log_metric("test_accuracy", 0.9940)
    with mlflow.start_run() as untested:
        pass
    with mlflow.start_run() as reused:
        pass
    read = []
    monkeypatch.setattr(reproduce, "record_test", lambda run_id, model, dataset: read.append(run_id) or 0.9)
    monkeypatch.setattr(reproduce, "register", lambda client, run_id, name, alias, tags: "7")
    figures = reproduce.evaluate_and_register(reused.info.run_id, None, None, "m", "champion", {},
                                              model_run_id=source.info.run_id)
    assert figures["test_accuracy"] == 0.9940 and read == []
    run = mlflow.MlflowClient().get_run(reused.info.run_id)
    assert run.data.metrics["test_accuracy"] == 0.9940
    assert run.data.tags[records.TEST_READ_BY_TAG] == source.info.run_id
    assert reproduce.evaluate_and_register(untested.info.run_id, None, None, "m", "champion", {})["test_accuracy"] == 0.9
    assert read == [untested.info.run_id]  # never tested: read once now


@pytest.mark.slow
def test_a_spare_seed_trains_its_recipe_again_with_its_own_seed_tagged_named_and_fingerprinted(tmp_path):
    sweep_in(tmp_path, "--trials", "1", "--study", "seeds", "--no-baselines")
    storage = sweep_study.open_storage(f"journal:{tmp_path}/mlruns/optuna.journal")
    first = optuna.load_study(study_name="seeds", storage=storage).trials[0]
    # As ladder.top_up queues a leader again at the top rung.
    optuna.load_study(study_name="seeds", storage=storage).enqueue_trial(
        first.params, user_attrs={records.TRAINING_SEED: 3})
    sweep_in(tmp_path, "--trials", "2", "--study", "seeds", "--no-baselines")
    again = optuna.load_study(study_name="seeds", storage=storage).trials[1]
    assert again.state == TrialState.COMPLETE and again.params == first.params
    assert records.label(again) == "trial 1 seed 3"
    assert records.REUSED_FROM not in again.user_attrs  # another seed: another fingerprint, trained
    client = tracking.client(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    runs = [client.get_run(trial.user_attrs[records.MLFLOW_RUN_ID]) for trial in (first, again)]
    assert [run.data.tags[records.SEED_TAG] for run in runs] == ["0", "3"]
    assert runs[0].data.tags[records.TRAINING_FINGERPRINT_TAG] != runs[1].data.tags[records.TRAINING_FINGERPRINT_TAG]
    for trial, run in zip((first, again), runs):  # what the top rung picks its leaders by
        assert trial.user_attrs[records.CALIBRATED_LOG_LOSS] == run.data.metrics["calibrated_validation_log_loss"]
        assert run.data.metrics["calibrated_validation_log_loss"] <= run.data.metrics["validation_log_loss"] + 1e-9
