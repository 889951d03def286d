"""The fidelity ladder: exploration's best recipes are carried up rung by rung, the five
baselines join the top rung, the top rung's models are ensembled as validation log-loss chooses,
tested once and registered, and the winner is usable like any model."""

import contextlib
import datetime
import io
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

import search_space
from harness import cli, records, tracking
from harness.budgets import BUDGETS
from sweeps import answer, front_page, ladder, plan, run as sweep_run, selection, study as sweep_study
from sweeps.settings import ENSEMBLE_CANDIDATES

# Sampled trials must complete for the middle rung to get recipes: no pruner here.
LADDER = ["--trials", "7", "--workers", "2", "--finalists", "1", "--pruner", "none",
          "--budget", "smoke", "--train-size", "300", "--max-epochs", "2"]


@pytest.fixture(scope="module")
def climbed(tmp_path_factory):
    """A smoke sweep of 7 trials (5 baselines, 2 sampled) that climbs smoke -> smoke-long ->
    smoke-full and ensembles, then the same command again."""
    folder = tmp_path_factory.mktemp("ladder")
    outputs = []
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        for _ in range(2):
            output = io.StringIO()
            with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stdout(output):
                cli.run(sweep_run.main, LADDER)
            assert exit_info.value.code == 0, output.getvalue()
            outputs.append(output.getvalue())
    storage = sweep_study.open_storage(f"journal:{folder}/mlruns/optuna.journal")
    studies = {name: optuna.load_study(study_name=name, storage=storage)
               for name in ("mnist-sweep", "mnist-sweep@smoke-long", "mnist-sweep@smoke-full")}
    uri = f"sqlite:///{folder}/mlruns/mlflow.db"
    return type("Climbed", (), {"folder": folder, "outputs": outputs, "studies": studies, "uri": uri,
                                "client": tracking.client(uri)})


@pytest.fixture(scope="module")
def pooled(climbed, tmp_path_factory):
    """A second sweep, every model trained anew (--retrain), in a copy of the climbed sweep's
    store (its MLflow records pointed at the copy's artifacts); returns the copy and the output."""
    folder = tmp_path_factory.mktemp("pooled") / "store"
    shutil.copytree(climbed.folder, folder)
    old, new = (Path(f, "mlruns", "artifacts").resolve().as_uri() for f in (climbed.folder, folder))
    with contextlib.closing(sqlite3.connect(folder / "mlruns" / "mlflow.db")) as database, database:
        for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                              ("logged_models", "artifact_location")):
            database.execute(f"UPDATE {table} SET {column} = replace({column}, ?, ?)", (old, new))
    output = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stdout(output):
            cli.run(sweep_run.main, [*LADDER, "--study", "second", "--retrain"])
    assert exit_info.value.code == 0, output.getvalue()
    return folder, output.getvalue()


def rung_runs(climbed, study_name):
    experiment = climbed.client.get_experiment_by_name(sweep_run.EXPERIMENT)
    return climbed.client.search_runs([experiment.experiment_id], f"tags.{records.STUDY_TAG} = '{study_name}'",
                                      max_results=100)


@pytest.mark.slow
def test_the_best_explored_recipes_are_promoted_rung_by_rung(climbed):
    exploring = climbed.studies["mnist-sweep"]
    long, full = climbed.studies["mnist-sweep@smoke-long"], climbed.studies["mnist-sweep@smoke-full"]
    sampled = ladder.ranked(exploring.trials)
    assert len(sampled) == 2  # the two sampled trials, both complete
    assert sorted(t.user_attrs[records.SOURCE_TRIAL] for t in long.trials) == sorted(t.number for t in sampled)
    assert all(t.params == exploring.trials[t.user_attrs[records.SOURCE_TRIAL]].params for t in long.trials)
    [finalist] = [t for t in full.trials if records.BASELINE not in t.user_attrs]
    best_of_long = max((t for t in long.trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert finalist.user_attrs[records.SOURCE_TRIAL] == best_of_long.user_attrs[records.SOURCE_TRIAL]


@pytest.mark.slow
def test_the_top_rung_trains_all_five_baselines_at_its_budget_with_their_own_epochs(climbed):
    full = climbed.studies["mnist-sweep@smoke-full"]
    baselines = {t.user_attrs[records.BASELINE]: t for t in full.trials if records.BASELINE in t.user_attrs}
    assert sorted(baselines) == sorted(["kaggle_cnn", "mlp_3x256", "chollet_cnn", "gradio_cnn", "lenet5"])
    assert all(t.state == TrialState.COMPLETE for t in full.trials)
    assert not any(records.BASELINE in t.user_attrs for t in climbed.studies["mnist-sweep@smoke-long"].trials)
    chollet = climbed.client.get_run(baselines["chollet_cnn"].user_attrs[records.MLFLOW_RUN_ID])
    assert chollet.data.tags["budget"] == "smoke-full" and chollet.data.tags["train_size"] == "1000"
    assert chollet.data.params["epochs"] == "5"  # its seed's own, capped by the rung's 3 epochs
    assert chollet.data.metrics["epochs_run"] <= BUDGETS["smoke-full"].max_epochs


@pytest.mark.slow
def test_each_rung_trial_is_one_child_run_tagged_with_its_fidelity_and_source(climbed):
    parent = climbed.studies["mnist-sweep"].user_attrs[records.PARENT_RUN_ID]
    for name, budget in (("mnist-sweep@smoke-long", "smoke-long"), ("mnist-sweep@smoke-full", "smoke-full")):
        study = climbed.studies[name]
        runs = [r for r in rung_runs(climbed, name) if records.TRIAL_NUMBER_TAG in r.data.tags]
        assert sorted(int(r.data.tags[records.TRIAL_NUMBER_TAG]) for r in runs) == [t.number for t in study.trials]
        for run in runs:
            trial = study.trials[int(run.data.tags[records.TRIAL_NUMBER_TAG])]
            assert run.info.run_id == trial.user_attrs[records.MLFLOW_RUN_ID]
            assert run.data.tags[records.FIDELITY] == budget
            assert run.data.tags[records.SOURCE_TRIAL] == str(trial.user_attrs[records.SOURCE_TRIAL])
            assert run.data.tags[records.PARENT_RUN_TAG] == parent
            assert run.data.tags[records.STATE_TAG] == trial.state.name and run.info.status == "FINISHED"
            assert f"@ {budget}" in run.info.run_name


@pytest.mark.slow
def test_the_ensemble_is_chosen_on_validation_tested_once_and_registered(climbed, mnist):
    import mlflow

    from harness import data
    from sweeps import ensemble

    result = records.ladder_result(climbed.studies["mnist-sweep"])
    averaged, champion = result.ensemble, result.champion
    full = climbed.studies["mnist-sweep@smoke-full"]
    # The stored figures are the candidates' on the validation images, worked out here again
    # from their models, and the members are chosen on them; the test images read otherwise.
    candidates = [full.trials[number] for number in result.candidates]
    assert [t.value for t in candidates] == sorted((t.value for t in full.trials if t.value is not None), reverse=True)[:ENSEMBLE_CANDIDATES]
    mlflow.set_tracking_uri(climbed.uri)
    models = [mlflow.keras.load_model(f"runs:/{t.user_attrs[records.MLFLOW_RUN_ID]}/model") for t in candidates]
    split = data.split(mnist, data.DEFAULT_SPLIT_SEED)
    on_validation = [m.predict(split.x_val[..., None], verbose=0) for m in models]
    on_test = [m.predict(mnist.x_test[..., None], verbose=0) for m in models]
    stored = [(score.validation_accuracy, score.validation_log_loss) for score in result.scores]
    assert stored == pytest.approx([(selection.accuracy(p, split.y_val), ensemble.log_loss(p, split.y_val))
                                    for p in on_validation], abs=2e-4)
    assert stored != pytest.approx([(selection.accuracy(p, mnist.y_test), ensemble.log_loss(p, mnist.y_test))
                                    for p in on_test], abs=2e-4)
    calibrated, temperatures = ensemble.calibrate(on_validation, split.y_val)
    assert [score.temperature for score in result.scores] == pytest.approx(temperatures)
    views = [ensemble.view_probabilities(m, split.x_val[..., None]) for m in models]
    with_views = [ensemble.over_views(v, t) for v, t in zip(views, temperatures)]
    on_all = {1: calibrated, len(ensemble.SHIFTS): with_views}
    rule_scores, view_count, rule, weights = ensemble.chosen_on_halves(on_validation, views, split.y_val, on_all)
    # Validation chose the rule and the views on held-out halves, then the weights on all of it.
    assert (averaged.views, averaged.rule) == (view_count, rule)
    lowest = min(rule_scores, key=lambda score: score.held_out_log_loss)
    assert (lowest.views, lowest.rule) == (view_count, rule)
    assert {(score.views, score.rule) for score in averaged.rule_scores} == \
        {(views_, name) for views_ in on_all for name in selection.RULES}
    assert [score.held_out_log_loss for score in averaged.rule_scores] == \
        pytest.approx([score.held_out_log_loss for score in rule_scores], abs=2e-4)
    assert averaged.members == [records.label(candidates[index]) for index in weights]
    assert averaged.weights == pytest.approx(list(weights.values()))
    mean = selection.weighted_average(on_all[view_count], weights)
    assert averaged.validation_log_loss == pytest.approx(ensemble.log_loss(mean, split.y_val), abs=2e-4)
    if rule == selection.GREEDY:
        assert averaged.selection_log_loss == pytest.approx(selection.greedy_selection(on_all[view_count], split.y_val)[1],
                                                            abs=2e-4)
    assert champion.run_id == candidates[0].user_attrs[records.MLFLOW_RUN_ID]
    registered = {alias: climbed.client.get_model_version_by_alias(tracking.REGISTERED_MODEL, alias)
                  for alias in (tracking.CHAMPION_ALIAS, tracking.ENSEMBLE_ALIAS)}
    assert registered["ensemble"].run_id == averaged.run_id
    assert registered["champion"].run_id == champion.run_id
    ensemble_run = climbed.client.get_run(averaged.run_id)
    assert ensemble_run.data.tags[records.FIDELITY] == records.ENSEMBLE_FIDELITY
    assert ensemble_run.data.metrics["test_accuracy"] == pytest.approx(averaged.test_accuracy)
    # The test set was read for the registered models only (@small too, unless it is the
    # champion), and once each.
    registered_runs = {averaged.run_id, champion.run_id} | ({result.small.run_id} if result.small else set())
    tested = [r for r in rung_runs(climbed, "mnist-sweep@smoke-full") if "test_accuracy" in r.data.metrics]
    assert sorted(r.info.run_id for r in tested) == sorted(registered_runs)
    for run in tested:
        assert len(climbed.client.get_metric_history(run.info.run_id, "test_accuracy")) == 1
        assert "evaluation" in [i.tags[0].value for i in run.inputs.dataset_inputs]


@pytest.mark.slow
def test_predict_labels_a_csv_with_the_registered_ensemble(climbed, mnist, run_command, tmp_path):
    from digits import predict

    images = mnist.x_test[:20].reshape(20, -1)
    (tmp_path / "test.csv").write_text(",".join(f"pixel{i}" for i in range(784)) + "\n"
                                       + "\n".join(",".join(map(str, row)) for row in images) + "\n")
    code, out, err = run_command(predict.main, ["--model", "models:/mnist-digits@ensemble", "--input", tmp_path / "test.csv",
                                                "--output", tmp_path / "labels.csv", "--tracking-uri", climbed.uri])
    assert code == 0, err
    assert "warn" not in err.lower()
    lines = (tmp_path / "labels.csv").read_text().splitlines()
    assert lines[0] == "ImageId,Label" and len(lines) == 21
    assert all(0 <= int(line.split(",")[1]) <= 9 for line in lines[1:])


@pytest.mark.slow
def test_the_summary_and_the_front_page_give_the_top_rungs_answer(climbed):
    first = climbed.outputs[0]
    assert "Ladder: smoke (explore) -> smoke-long" in first
    assert "Rung 3 of 3, smoke-full" in first and "Best single model:" in first and "Ensemble of" in first
    assert "python -m digits.predict --model models:/mnist-digits@ensemble" in first
    parent = climbed.client.get_run(climbed.studies["mnist-sweep"].user_attrs[records.PARENT_RUN_ID])
    note = parent.data.tags[records.NOTE_TAG]
    assert "**Answer (the top rung" in note and "rung `smoke-full`" in note
    assert parent.data.tags["top_rung_winner"] in note


@pytest.mark.slow
def test_running_the_finished_ladder_again_trains_and_registers_nothing_new(climbed):
    assert "nothing new promoted" in climbed.outputs[1]
    assert "Ensembling" not in climbed.outputs[1]
    versions = climbed.client.search_model_versions(f"name = '{tracking.REGISTERED_MODEL}'")
    result = records.ladder_result(climbed.studies["mnist-sweep"])
    assert len(versions) == 2 + (result.small.run_id != result.champion.run_id)
    assert [len(s.trials) for s in climbed.studies.values()] == [7, 2, 6]


@pytest.mark.slow
def test_the_views_benchmark_scores_the_ensembles_candidates_as_the_ensemble_step_did(climbed, run_command, monkeypatch):
    from benchmarks import view_averaging

    monkeypatch.chdir(climbed.folder)
    code, out, err = run_command(view_averaging.main, ["--study", "mnist-sweep", "--tracking-uri", climbed.uri])
    assert code == 0, err
    result = records.ladder_result(climbed.studies["mnist-sweep"])
    rows = {line.split(" | ")[0].removeprefix("| "): line.split(" | ")[1:] for line in out.splitlines()}
    for score in result.scores:  # the digit alone, then its 1-pixel shifts: the ensemble's two choices
        alone, shifted = (tuple(float(number) for number in cell.split(", ")) for cell in rows[score.label][:2])
        assert alone == pytest.approx((score.validation_accuracy, score.calibrated_log_loss), abs=2e-4)
        assert shifted[1] == pytest.approx(score.views_log_loss, abs=2e-4)
    assert rows["the digit alone"][1].startswith("+0.0000 (ahead in 0, behind in 0)")
    assert len([line for line in out.splitlines() if line.startswith("| ") and "---" not in line]) == \
        2 + len(result.scores) + len(view_averaging.VIEW_SETS)


def greedy_without_views(result: records.LadderResult) -> records.RuleScore:
    """The ensemble step's greedy selection over the digit alone, as it scored it."""
    return next(score for score in result.ensemble.rule_scores if (score.rule, score.views) == (selection.GREEDY, 1))


@pytest.mark.slow
def test_the_store_pool_benchmark_chooses_as_the_ensemble_step_did_when_the_store_holds_one_sweep(
        climbed, run_command, monkeypatch):
    from benchmarks import store_pool

    monkeypatch.chdir(climbed.folder)
    code, out, err = run_command(store_pool.main, ["--study", "mnist-sweep", "--tracking-uri", climbed.uri])
    assert code == 0, err
    result = records.ladder_result(climbed.studies["mnist-sweep"])
    assert out.startswith(f"Top rungs set up as {result.top_rung}: {result.top_rung}; ")
    halves, whole = out.split("Each set's choice on all of validation")
    rows = [line.split(" | ") for line in halves.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 3 and all(row[1:] == rows[0][1:] for row in rows)  # one sweep: the same candidates
    assert rows[0][2].startswith("+0.0000 (ahead in 0, behind in 0)")
    chosen = [line.split(" | ") for line in whole.splitlines() if line.startswith("| ") and "---" not in line][1:]
    # The sweep's own set on all of validation is the ensemble step's greedy selection without views.
    greedy_alone = greedy_without_views(result)
    assert float(chosen[0][2]) == pytest.approx(greedy_alone.validation_log_loss, abs=1e-4)
    if (result.ensemble.views, result.ensemble.rule) == (1, selection.GREEDY):
        assert chosen[0][3].removesuffix(" |") == answer.describe_members(result.ensemble)


@pytest.mark.slow
def test_the_selection_rules_benchmark_scores_each_rule_and_the_steps_rule_chooses_as_the_step_did(
        climbed, run_command, monkeypatch):
    from benchmarks import selection_rules

    monkeypatch.chdir(climbed.folder)
    code, out, err = run_command(selection_rules.main, ["--study", "mnist-sweep", "--tracking-uri", climbed.uri,
                                                        "--step"])
    assert code == 0, err
    result = records.ladder_result(climbed.studies["mnist-sweep"])
    halves, whole = out.split("Each rule's choice on all of validation")
    whole, step = whole.split("The ensemble step's choice on its ")
    assert f"to choose): {result.ensemble.rule} over {result.ensemble.views} view(s); " \
           f"{answer.describe_members(result.ensemble)}" in step
    rows = [line.split(" | ") for line in halves.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == len(selection_rules.RULES)
    assert rows[0][2].startswith("+0.0000 (ahead in 0, behind in 0)")
    chosen = [line.split(" | ") for line in whole.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row[0].removeprefix("| ") for row in chosen] == list(selection_rules.RULES)
    assert float(chosen[0][2]) == pytest.approx(greedy_without_views(result).validation_log_loss, abs=1e-4)
    # Held out, the step's own rules over the digit alone score as the step scored them: the same
    # halves, each candidate calibrated on the half it is chosen on.
    step = {score.rule: score for score in result.ensemble.rule_scores if score.views == 1}
    for row in rows[:len(selection.RULES)]:
        assert float(row[3]) == pytest.approx(step[row[0].removeprefix("| ")].held_out_log_loss, abs=1e-4)


@pytest.mark.slow
def test_the_selection_rules_benchmark_weighs_the_best_n_models_in_the_steps_order(climbed, run_command, monkeypatch):
    from benchmarks import selection_rules

    monkeypatch.chdir(climbed.folder)
    store = ["--study", "mnist-sweep", "--tracking-uri", climbed.uri]
    code, default, err = run_command(selection_rules.main, store)
    assert code == 0, err
    scores = records.ladder_result(climbed.studies["mnist-sweep"]).scores
    code, same, err = run_command(selection_rules.main, [*store, "--candidates", str(len(scores))])
    assert code == 0, err
    assert same == default  # the step's candidates are the best of the store by validation accuracy
    code, best, err = run_command(selection_rules.main, [*store, "--candidates", "1"])
    assert code == 0, err
    assert "; 1 candidates of " in best
    most_accurate = max(scores, key=lambda score: score.validation_accuracy)
    chosen = [line.split(" | ") for line in best.split("Each rule's choice on all of validation")[1].splitlines()
              if line.startswith("| ") and "---" not in line][1:]
    assert {row[3].removesuffix(" |") for row in chosen} == {f"{most_accurate.label} x1.00"}


@pytest.mark.slow
def test_a_second_sweep_in_the_store_weighs_the_first_sweeps_top_rung_models_too(climbed, pooled, run_command,
                                                                                  monkeypatch):
    from benchmarks import store_pool

    folder, output = pooled
    storage = sweep_study.open_storage(f"journal:{folder}/mlruns/optuna.journal")
    result = records.ladder_result(optuna.load_study(study_name="second", storage=storage))
    assert result.other_top_rungs == ["mnist-sweep@smoke-full"]
    own = ladder.finished_models(optuna.load_study(study_name="second@smoke-full", storage=storage).trials)
    first = ladder.finished_models(optuna.load_study(study_name="mnist-sweep@smoke-full", storage=storage).trials)
    assert len(own) + len(first) <= ENSEMBLE_CANDIDATES  # so every model of both is a candidate, each once
    weighed = [(score.label, score.model_run_id) for score in result.scores]
    assert sorted(weighed) == sorted([(records.label(t), records.model_run_id(t)) for t in own] +
                                     [(f"mnist-sweep: {records.label(t)}", records.model_run_id(t)) for t in first])
    assert [score.validation_accuracy for score in result.scores] == \
        sorted((score.validation_accuracy for score in result.scores), reverse=True)
    assert set(result.ensemble.members) <= {label for label, _ in weighed}
    # The best single model, its runner-up and @small are this sweep's own.
    assert result.champion.run_id == own[0].user_attrs[records.MLFLOW_RUN_ID]
    assert result.champion.runner_up == records.label(own[1])
    assert result.small.run_id in {t.user_attrs[records.MLFLOW_RUN_ID] for t in own}
    assert result.candidates == [t.number for t in own]
    assert "candidates from this sweep's top rung and the store's mnist-sweep@smoke-full" in output
    assert records.ladder_result(climbed.studies["mnist-sweep"]).other_top_rungs == []
    # The benchmark's pooled set is the ensemble step's, and so is its choice on all of validation.
    monkeypatch.chdir(folder)
    code, out, err = run_command(store_pool.main, ["--study", "second", "--tracking-uri",
                                                   f"sqlite:///{folder}/mlruns/mlflow.db"])
    assert code == 0, err
    chosen = [line.split(" | ") for line in out.split("Each set's choice on all of validation")[1].splitlines()
              if line.startswith("| ") and "---" not in line][1:]
    assert "(as the ensemble step does)" in chosen[1][0]
    assert float(chosen[1][2]) == pytest.approx(greedy_without_views(result).validation_log_loss, abs=1e-4)


@pytest.mark.slow
def test_the_report_ranks_the_top_rung_with_all_five_baselines(climbed, run_command, monkeypatch):
    from analysis import compare

    monkeypatch.chdir(climbed.folder)
    code, out, err = run_command(compare.main, ["--out", "report", "--tracking-uri", climbed.uri])
    assert code == 0, err
    report = (climbed.folder / "report" / "report.md").read_text()
    top = report.split("## Top rung: every model at budget `smoke-full`")[1].split("\n## ")[0]
    ranking = top.split("| rank | model |")[1]
    table = [line for line in ranking.splitlines()[1:] if line.startswith("| ") and "---" not in line]
    assert len(table) == 6
    weighed = top.split("| log-loss at it | over test-time views | weight in the ensemble |")[1]
    assert len([line for line in weighed.split("\n\n")[0].splitlines() if line.startswith("| ")]) == 1 + 6
    for name in ("kaggle_cnn", "mlp_3x256", "chollet_cnn", "gradio_cnn", "lenet5"):
        assert any(f"| {name} |" in line for line in table), name
    assert "**Answer:**" in top and "models:/mnist-digits@ensemble" in top and "Best single model:" in top
    assert "## Rung `smoke-long`" in report


@pytest.mark.slow
def test_every_trained_model_logs_its_prediction_latency_on_the_workers_thread(climbed):
    from train_trial import LATENCY_METRICS

    threads = max(1, (os.cpu_count() or 1) // 2)  # two workers on a CPU
    for study in climbed.studies.values():
        for trial in study.get_trials(deepcopy=False, states=[TrialState.COMPLETE]):
            run = climbed.client.get_run(trial.user_attrs[records.MLFLOW_RUN_ID])
            assert all(run.data.metrics[name] > 0 for name in LATENCY_METRICS), (study.study_name, trial.number)
            assert run.data.tags[records.PREDICT_THREADS_TAG] == str(threads)
    ensemble_run = climbed.client.get_run(records.ladder_result(climbed.studies["mnist-sweep"]).ensemble.run_id)
    assert {"param_count", "train_seconds", *LATENCY_METRICS} <= set(ensemble_run.data.metrics)


@pytest.mark.slow
def test_small_is_the_top_rungs_most_accurate_model_within_the_size_budget_and_labels_a_csv(
        climbed, mnist, run_command, tmp_path):
    from digits import predict

    result = records.ladder_result(climbed.studies["mnist-sweep"])
    full = climbed.studies["mnist-sweep@smoke-full"]
    counts = {t.number: climbed.client.get_run(t.user_attrs[records.MLFLOW_RUN_ID]).data.metrics["param_count"]
              for t in full.trials}
    chosen = ladder.most_accurate_within(full.trials, counts, sweep_run.DEFAULT_SMALL_PARAMS)
    assert result.small.run_id == chosen.user_attrs[records.MLFLOW_RUN_ID]
    assert result.small.param_count == counts[chosen.number] <= 100_000
    registered = climbed.client.get_model_version_by_alias(tracking.REGISTERED_MODEL, tracking.SMALL_ALIAS)
    assert registered.run_id == records.model_run_id(chosen)
    assert len(climbed.client.get_metric_history(result.small.run_id, "test_accuracy")) == 1  # read once
    assert f"Most accurate within 100,000 parameters: {result.small.label}" in climbed.outputs[0]
    images = mnist.x_test[:10].reshape(10, -1)
    (tmp_path / "test.csv").write_text(",".join(f"pixel{i}" for i in range(784)) + "\n"
                                       + "\n".join(",".join(map(str, row)) for row in images) + "\n")
    code, out, err = run_command(predict.main, ["--model", "models:/mnist-digits@small", "--input", tmp_path / "test.csv",
                                                "--output", tmp_path / "labels.csv", "--tracking-uri", climbed.uri])
    assert code == 0, err
    assert len((tmp_path / "labels.csv").read_text().splitlines()) == 11


@pytest.mark.slow
def test_the_report_and_front_page_show_the_fronts_with_the_baselines_marked(climbed, run_command, monkeypatch):
    from analysis import compare

    monkeypatch.chdir(climbed.folder)
    code, out, err = run_command(compare.main, ["--out", "fronts", "--tracking-uri", climbed.uri])
    assert code == 0, err
    report = (climbed.folder / "fronts" / "report.md").read_text()
    section = report.split("## The accuracy-cost fronts")[1].split("\n## ")[0]
    for group in ("Explored at `smoke`", "Top rung at `smoke-full`"):
        for cost in ("parameters", "ms to predict one image", "training seconds"):
            assert f"**{group}: validation accuracy against {cost}**" in section
    rows = [line for line in section.splitlines() if line.startswith("| [")]
    assert rows
    for line in rows:
        name = line.split("]")[0].removeprefix("| [")
        assert (name in search_space.BASELINES) == ("(baseline)" in line.split(" | ")[0]), line
    assert (climbed.folder / "fronts" / "front_top_rung_at_smoke_full_latency.png").is_file()
    parent = climbed.studies["mnist-sweep"].user_attrs[records.PARENT_RUN_ID]
    note = climbed.client.get_run(parent).data.tags[records.NOTE_TAG]
    assert "**Which model wins per size, per millisecond and per training second** (Top rung at `smoke-full`" in note
    assert "- against ms to predict one image: [" in note and len(note) <= front_page.NOTE_LIMIT
    artifacts = [a.path for a in climbed.client.list_artifacts(parent, "sweep_plots")]
    assert "sweep_plots/front_top_rung_at_smoke_full_params.png" in artifacts


# --- Units --------------------------------------------------------------------------------

def test_each_rung_holds_promotion_factor_times_the_rung_above():
    assert plan.promotion_counts(3, 2) == [3 * plan.PROMOTION_FACTOR, 3]
    assert plan.promotion_counts(1, 1) == [1]


def test_a_gpu_explores_at_long_and_climbs_to_full_within_the_same_two_hours(tmp_path, monkeypatch):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-0)'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert sweep_run.gpu_visible()
    budget = BUDGETS[sweep_run.default_budget_name()]
    assert budget.name == "long" and [b.name for b in plan.upper_rungs(budget)] == ["full"]
    assert plan.policy(budget).command_seconds == plan.policy(BUDGETS["quick"]).command_seconds == 2 * 3600
    fake.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")  # a driver that cannot talk to a GPU
    assert sweep_run.default_budget_name() == "quick"


def test_a_recipe_is_promoted_once_even_when_a_retry_repeats_it():
    study = optuna.create_study(direction="maximize")
    for value, x in ((0.9, 1), (0.95, 2), (0.95, 2), (0.8, 3)):
        study.enqueue_trial({"x": x})
        trial = study.ask()
        trial.suggest_int("x", 0, 5)
        study.tell(trial, value)
    assert [t.params["x"] for t in ladder.ranked(study.trials)] == [2, 1, 3]


def timed_trial(x: int, value: float, seconds_per_epoch: float, epochs: int = 2, **user_attrs):
    start = datetime.datetime(2026, 12, 2, 12, 0)
    return optuna.trial.FrozenTrial(
        number=0, trial_id=0, state=TrialState.COMPLETE, value=value, values=None, datetime_start=start,
        datetime_complete=start + datetime.timedelta(seconds=seconds_per_epoch * epochs), params={"x": x},
        distributions={"x": optuna.distributions.IntDistribution(0, 9)}, user_attrs=user_attrs, system_attrs={},
        intermediate_values={epoch: value for epoch in range(epochs)})


def test_rank_decides_what_a_short_rung_trains_and_the_longest_of_those_go_first():
    rung_budget = BUDGETS["long"]  # 10 epochs, a 1200 s time share
    lower = optuna.create_study(direction="maximize")
    for x, value, seconds in ((1, 0.99, 30), (2, 0.98, 100), (3, 0.97, 60), (4, 0.96, 10)):
        lower.add_trial(timed_trial(x, value, seconds))
    # Forecast at the rung (10 epochs): 300, 1000, 600 and 100 s.
    assert [plan.price(t, rung_budget) for t in ladder.ranked(lower.trials)] == [300, 1000, 600, 100]

    def promoted(worker_seconds):  # the lower trials' numbers, in the order the rung holds them
        rung = optuna.create_study(direction="maximize")
        labels = ladder.promote(lower, lower, rung, rung_budget, count=4, top=False, worker_seconds=worker_seconds)
        sources = [t.user_attrs[records.SOURCE_TRIAL] for t in rung.trials]
        assert labels == [f"trial {number}" for number in sources]
        return sources

    # Time for all: longest first, so two workers end close together.
    assert promoted(None) == promoted(10_000) == [1, 2, 0, 3]
    # 1,000 worker-seconds hold the best (300) and, past the second (1,000: no room), the third
    # (600) and the fourth (100); those go first, longest first, the second after them.
    assert promoted(1000) == [2, 0, 3, 1]
    # A price over the time share is capped at it.
    assert plan.price(timed_trial(5, 0.9, 500), rung_budget) == rung_budget.trial_seconds


def test_a_worker_that_comes_free_with_time_left_tops_the_rung_up_with_the_best_recipe_that_fits():
    rung_budget = BUDGETS["long"]  # 10 epochs
    lower = optuna.create_study(direction="maximize")
    for x, value, seconds in ((1, 0.99, 30), (2, 0.98, 100), (3, 0.97, 60), (4, 0.96, 10)):
        lower.add_trial(timed_trial(x, value, seconds))  # forecast: 300, 1000, 600, 100 s
    rung = optuna.create_study(direction="maximize")
    ladder.promote(lower, lower, rung, rung_budget, count=1, top=False)  # holds trial 0
    now = 1_000_000.0
    overhead = plan.TRIAL_OVERHEAD_SECONDS
    # 700 s left: trial 1 (1,000 s) does not fit, trial 2 (600 s) does and is queued next.
    assert ladder.top_up(lower, rung, rung_budget, now + 700 + overhead, now) == "trial 2"
    assert rung.trials[-1].user_attrs[records.SOURCE_TRIAL] == 2 and rung.trials[-1].state == TrialState.WAITING
    assert rung.trials[-1].user_attrs[records.FORECAST_SECONDS] == 600
    assert ladder.top_up(lower, rung, rung_budget, now + 700 + overhead, now) == "trial 3"
    assert ladder.top_up(lower, rung, rung_budget, now + 700 + overhead, now) is None  # trial 1 never fits
    assert ladder.top_up(lower, rung, rung_budget, None, now) is None  # a rung without a deadline loses no time
    assert ladder.top_up(lower, rung, rung_budget, now + 2000, now) == "trial 1"
    assert ladder.top_up(lower, rung, rung_budget, now + 9999, now) is None  # the rung holds every recipe


def seed_leaders(trials):
    """A rung's recipes whose spare seeds go first, whatever the time left."""
    return ladder.seed_recipes(ladder.by_log_loss(trials))[:ladder.SEEDED_RECIPES]


def test_once_the_rung_below_is_used_up_spare_time_trains_the_leaders_again_with_seeds_of_their_own():
    rung_budget = BUDGETS["full"]
    lower = optuna.create_study(direction="maximize")
    lower.add_trial(timed_trial(1, 0.99, 30))
    rung = optuna.create_study(direction="maximize")
    # Trained at the rung: by calibrated validation log-loss the leaders are trial 7 (the
    # lowest, though the least accurate) and kaggle_cnn; trial 0 (lower's only recipe) is held.
    for source, value, seconds, loss, extra in ((0, 0.995, 10, 0.030, {}), (7, 0.990, 20, 0.020, {}),
                                                (9, 0.993, 40, 0.025, {records.BASELINE: "kaggle_cnn"}),
                                                (8, 0.996, 5, None, {})):
        attributes = {records.SOURCE_TRIAL: source, **extra}
        if loss is not None:
            attributes[records.CALIBRATED_LOG_LOSS] = loss
        rung.add_trial(timed_trial(source, value, seconds, epochs=10, **attributes))
    assert [records.label(t) for t in seed_leaders(rung.trials)] == ["trial 7", "kaggle_cnn"]
    now = 1_000_000.0
    overhead = plan.TRIAL_OVERHEAD_SECONDS
    # Each leader's forecast is its first training's wall-clock there (10 epochs): 200 and 400 s.
    assert ladder.top_up(lower, rung, rung_budget, now + 9999, now, seed=0, seeds=False) is None  # multi-objective
    assert ladder.top_up(lower, rung, rung_budget, now + 9999, now, seed=0) == "trial 7 seed 1"
    queued = rung.trials[-1]
    assert queued.state == TrialState.WAITING and queued.user_attrs[records.TRAINING_SEED] == 1
    assert queued.user_attrs[records.FORECAST_SECONDS] == 200 and queued.system_attrs["fixed_params"] == {"x": 7}
    assert records.label(queued) == "trial 7 seed 1"
    # The leader trained the fewest times next; its seeds count up per recipe from the sweep's.
    assert ladder.top_up(lower, rung, rung_budget, now + 9999, now, seed=0) == "kaggle_cnn seed 1"
    assert rung.trials[-1].user_attrs[records.BASELINE] == "kaggle_cnn"
    assert ladder.top_up(lower, rung, rung_budget, now + 9999, now, seed=0) == "trial 7 seed 2"
    # 300 s left: only trial 7 (200 s) fits, whatever kaggle_cnn's count; with 150 s, no
    # leader's seed fits but trial 0's (100 s) does; with 40 s, none.
    assert ladder.top_up(lower, rung, rung_budget, now + 300 + overhead, now, seed=0) == "trial 7 seed 3"
    assert ladder.top_up(lower, rung, rung_budget, now + 150 + overhead, now, seed=0) == "trial 0 seed 1"
    assert ladder.top_up(lower, rung, rung_budget, now + 40 + overhead, now, seed=0) is None
    assert ladder.top_up(lower, rung, rung_budget, None, now) is None
    # The forecast makes the same choices, each counted as a fresh worker's start, its price
    # and the expected overhead (trial 7: 220 s, kaggle_cnn 420 s); whether one fits counts
    # the deadline's margin. Two workers free now, 780 s left, the rung as first trained:
    # trial 7 (ends at 220) and kaggle_cnn (420) start now; at 220 trial 7 again (440); at
    # 420 kaggle_cnn no longer fits, trial 7 does (640); at 440 trial 7 (660); then nothing.
    assert plan.WORKER_START_SECONDS + 200 + plan.EXPECTED_OVERHEAD_SECONDS == 220
    spare = ladder.spare_time(ladder.ranked(lower.trials), rung.trials[:4], rung_budget, now + 700 + overhead)
    assert plan.rung_seconds_left(rung.trials[:4], rung_budget, 2, now, now + 700 + overhead, spare) == \
        pytest.approx(660)


def test_when_no_leaders_seed_fits_the_next_recipes_that_does_is_trained_rather_than_idle():
    rung_budget = BUDGETS["full"]
    lower, rung = optuna.create_study(direction="maximize"), optuna.create_study(direction="maximize")
    # As sweep I's top rung 25 minutes before its deadline: the leaders by log-loss (trial 2,
    # kaggle_cnn) each took 30 and 40 minutes there; trial 7 and trial 6
    # took 14 and 15, and trial 7 leads them by log-loss; trial 5 (18 minutes) is between.
    for source, loss, seconds, extra in ((2, 0.0214, 60, {}), (9, 0.0220, 80, {records.BASELINE: "kaggle_cnn"}),
                                         (7, 0.0234, 28, {}), (6, 0.0287, 30, {}), (5, 0.0284, 36, {}),
                                         (4, 0.0400, 5, {records.BASELINE: "lenet5"})):
        rung.add_trial(timed_trial(source, 0.994, seconds, epochs=30,
                                   **{records.SOURCE_TRIAL: source, records.CALIBRATED_LOG_LOSS: loss, **extra}))
    assert [records.label(t) for t in seed_leaders(rung.trials)] == ["trial 2", "kaggle_cnn"]
    assert [records.label(t) for t in ladder.seed_recipes(ladder.by_log_loss(rung.trials))] == \
        ["trial 2", "kaggle_cnn", "trial 7", "trial 5", "trial 6", "lenet5"]
    now, overhead = 1_000_000.0, plan.TRIAL_OVERHEAD_SECONDS + plan.WORKER_START_SECONDS
    deadline = now + 25 * 60
    assert ladder.top_up(lower, rung, rung_budget, deadline, now, seed=0) == "trial 7 seed 1"
    assert ladder.top_up(lower, rung, rung_budget, deadline, now, seed=0) == "trial 7 seed 2"
    # With time for a leader's seed, the leader's goes first, as before.
    assert ladder.top_up(lower, rung, rung_budget, now + 1800 + overhead, now, seed=0) == "trial 2 seed 1"
    # Under 15 minutes: only what fits (trial 5, 18 minutes, does not); then nothing: a
    # baseline past the leaders (lenet5, 150 s) adds only a copy of a comparison point.
    assert ladder.top_up(lower, rung, rung_budget, now + 860 + overhead, now, seed=0) == "trial 7 seed 3"
    assert ladder.top_up(lower, rung, rung_budget, now + 830 + overhead, now, seed=0) is None
    # The forecast sees the same: two workers free now, 25 minutes left, each takes trial
    # 7's seed (860 s, 920 with start and overhead), then nothing more fits.
    spare = ladder.spare_time([], rung.trials[:6], rung_budget, deadline)
    assert plan.rung_seconds_left(rung.trials[:6], rung_budget, 2, now, deadline, spare) == pytest.approx(
        plan.WORKER_START_SECONDS + 840 + plan.EXPECTED_OVERHEAD_SECONDS)


def test_the_augmented_seed_leader_is_the_best_augmented_recipe_whose_seed_fits_the_time_left():
    rung_budget = BUDGETS["full"]
    lower, rung = optuna.create_study(direction="maximize"), optuna.create_study(direction="maximize")
    # As sweep J's top rung: by log-loss trial 59 and trial 52 lead, both unaugmented; the best
    # augmented recipe is kaggle_cnn (127 s an epoch, 19 epochs: 2413 s), the next trial 8
    # (36 s, 30 epochs: 1080 s). J gave every spare seed to trial 59.
    for source, loss, seconds, epochs, rotation, extra in (
            (59, 0.0195, 28, 30, 0.0, {}), (52, 0.0211, 34, 30, 0.0, {}),
            (0, 0.0261, 127, 19, 10.0, {records.BASELINE: "kaggle_cnn"}), (8, 0.0285, 36, 30, 18.0, {})):
        start = datetime.datetime(2026, 12, 4, 21, 0)
        rung.add_trial(optuna.trial.FrozenTrial(
            number=0, trial_id=0, state=TrialState.COMPLETE, value=0.995, values=None, datetime_start=start,
            datetime_complete=start + datetime.timedelta(seconds=seconds * epochs),
            params={"x": source, "rotation": rotation},
            distributions={"x": optuna.distributions.IntDistribution(0, 99),
                           "rotation": optuna.distributions.FloatDistribution(0.0, 30.0)},
            user_attrs={records.SOURCE_TRIAL: source, records.CALIBRATED_LOG_LOSS: loss, **extra}, system_attrs={},
            intermediate_values={epoch: 0.995 for epoch in range(epochs)}))
    assert [records.label(t) for t in seed_leaders(rung.trials)] == ["trial 59", "kaggle_cnn"]
    now, overhead = 1_000_000.0, plan.TRIAL_OVERHEAD_SECONDS + plan.WORKER_START_SECONDS
    # With time for kaggle_cnn's seed, it is the augmented leader, as before.
    assert ladder.top_up(lower, rung, rung_budget, now + 2500 + overhead, now, seed=0) == "trial 59 seed 1"
    assert ladder.top_up(lower, rung, rung_budget, now + 2500 + overhead, now, seed=0) == "kaggle_cnn seed 1"
    # 40 minutes left: kaggle_cnn's does not fit, so trial 8 takes its place, and the seeds
    # alternate between the two leaders, the one trained the fewest times first.
    deadline = now + 40 * 60
    assert ladder.top_up(lower, rung, rung_budget, deadline, now, seed=0) == "trial 8 seed 1"
    assert ladder.top_up(lower, rung, rung_budget, deadline, now, seed=0) == "trial 59 seed 2"
    assert ladder.top_up(lower, rung, rung_budget, deadline, now, seed=0) == "trial 8 seed 2"
    # 16 minutes left: only trial 59's seed (840 s) fits.
    assert ladder.top_up(lower, rung, rung_budget, now + 900 + overhead, now, seed=0) == "trial 59 seed 3"
    # The forecast sees the same leaders: two workers free now, 40 minutes left, take trial
    # 59's and trial 8's seeds (the rung as first trained), then trial 59's again.
    spare = ladder.spare_time([], rung.trials[:4], rung_budget, deadline)
    assert [spare(now), spare(now)] == [840, 1080]


def test_a_spare_seed_skips_one_another_top_rung_trained_until_the_time_share_cut_it():
    recipe = timed_trial(9, 0.993, 40, epochs=10, **{records.SOURCE_TRIAL: 9, records.BASELINE: "kaggle_cnn"})

    def elsewhere(seed, cause, x=9, state=TrialState.COMPLETE):  # a top-up of another sweep's top rung
        trial = timed_trial(x, 0.994, 40, epochs=10, **{records.SOURCE_TRIAL: 3, records.TRAINING_SEED: seed,
                                                         records.STOP_CAUSE: cause.value})
        trial.state = state
        return trial

    cut, completed = records.StopCause.TIME_SHARE, records.StopCause.COMPLETED
    # Seed 1 ended uncut in another sweep (it is reused, at no cost); seed 2 was cut there:
    # asking for it again would train a near-copy of a model the ensemble already weighs.
    store = [elsewhere(1, completed), elsewhere(2, cut)]
    assert ladder.next_seed(recipe, 0, [recipe], store) == 1
    queued_seed_1 = timed_trial(9, 0.99, 40, **{records.SOURCE_TRIAL: 9, records.TRAINING_SEED: 1})
    assert ladder.next_seed(recipe, 0, [recipe, queued_seed_1], store) == 3
    # The rung's own seeds are never asked for twice, cut or not, though another rung's cut
    # ones are skipped past them.
    queued_seed_3 = timed_trial(9, 0.99, 40, **{records.SOURCE_TRIAL: 9, records.TRAINING_SEED: 3})
    assert ladder.next_seed(recipe, 0, [recipe, queued_seed_1, queued_seed_3], store) == 4
    # Only the same recipe's cut runs count; nor does one that failed (it left no model), nor
    # the sweep's first seed (its first training), which seeds count up from.
    others = [elsewhere(2, cut, x=8), elsewhere(2, cut, state=TrialState.FAIL)]
    assert ladder.next_seed(recipe, 0, [recipe, queued_seed_1], others) == 2
    assert ladder.next_seed(recipe, 5, [recipe], store) == 6
    # top_up asks for the store's trials when it queues a seed (the rung below is used up).
    lower, rung = optuna.create_study(direction="maximize"), optuna.create_study(direction="maximize")
    rung.add_trial(recipe)
    rung.add_trial(queued_seed_1)
    asked = []
    label = ladder.top_up(lower, rung, BUDGETS["full"], 1_000_000.0 + 9999, 1_000_000.0, seed=0,
                          store_trials=lambda: asked.append(True) or store)
    assert label == "kaggle_cnn seed 3" and rung.trials[-1].user_attrs[records.TRAINING_SEED] == 3 and asked == [True]


def test_before_its_leaders_have_trained_the_top_rungs_forecast_still_fills_its_time():
    rung_budget = BUDGETS["full"]
    rung = optuna.create_study(direction="maximize")
    for source, forecast in ((3, 300.0), (4, 100.0)):
        rung.enqueue_trial({"x": source}, user_attrs={records.SOURCE_TRIAL: source, records.FORECAST_SECONDS: forecast})
    now, deadline = 1_000_000.0, 1_000_000.0 + 1000
    spare = ladder.spare_time([], rung.trials, rung_budget, deadline)
    left = plan.rung_seconds_left(rung.trials, rung_budget, 2, now, deadline, spare)
    # The queue alone ends at 305; its two recipes, taken again as spare seeds, fill the rung
    # until no more fits (a 100 s one needs 195 s of margin and start).
    assert plan.rung_seconds_left(rung.trials, rung_budget, 2, now, deadline) == pytest.approx(305)
    assert deadline - now - 195 - 120 < left <= deadline - now


def test_the_top_rung_takes_the_baselines_best_explored_first_after_the_finalists():
    rung_budget = BUDGETS["full"]
    exploring = optuna.create_study(direction="maximize")
    for x, (name, value) in enumerate((("kaggle_cnn", 0.9878), ("mlp_3x256", 0.9258), ("gradio_cnn", 0.9883))):
        exploring.add_trial(timed_trial(x, value, 1, baseline=name))
    exploring.add_trial(timed_trial(7, 0.99, 1))
    rung = optuna.create_study(direction="maximize")
    labels = ladder.promote(exploring, exploring, rung, rung_budget, count=1, top=True, worker_seconds=0)
    assert labels == ["trial 3", "gradio_cnn", "kaggle_cnn", "mlp_3x256"]  # nothing fits: rank order


def constant_network(probabilities):
    """A network that ignores its image and answers ``probabilities``, shaped as train_trial
    builds networks: ending in Dense(softmax)."""
    from harness.backend import keras

    return keras.Sequential([
        keras.Input((28, 28, 1), dtype="uint8"), keras.layers.Rescaling(0.0), keras.layers.Flatten(),
        keras.layers.Dense(2, activation="softmax", kernel_initializer="zeros",
                           bias_initializer=keras.initializers.Constant(np.log(probabilities)))])


def test_the_averaged_model_weighs_its_members_as_chosen():
    from sweeps import ensemble

    model = ensemble.averaged([constant_network([0.8, 0.2]), constant_network([0.2, 0.8])], [0.75, 0.25])
    predicted = model.predict(np.zeros((1, 28, 28, 1), dtype="uint8"), verbose=0)[0]
    assert predicted == pytest.approx([0.65, 0.35], abs=1e-5)


def test_a_candidate_is_weighed_at_its_temperature_so_its_calibration_does_not_decide():
    from sweeps import ensemble

    labels = np.array([0] * 95 + [1] * 5)
    # A label-smoothed model: right on 98 of 100, never more than 0.9 sure; an overconfident
    # one right on 96. Raw log-loss prefers the worse one; at their temperatures the better wins.
    smoothed = np.array([[0.9, 0.1]] * 95 + [[0.1, 0.9]] * 3 + [[0.6, 0.4]] * 2)
    overconfident = np.array([[0.999, 0.001]] * 95 + [[0.001, 0.999]] * 1 + [[0.9, 0.1]] * 4)
    assert ensemble.log_loss(overconfident, labels) < ensemble.log_loss(smoothed, labels)
    calibrated, temperatures = ensemble.calibrate([smoothed, overconfident], labels)
    assert temperatures[0] < 1.0  # sharpened
    assert [ensemble.accuracy(p, labels) for p in calibrated] == [0.98, 0.96]  # the same digits
    assert ensemble.log_loss(calibrated[0], labels) < ensemble.log_loss(calibrated[1], labels)
    assert selection.greedy_selection(calibrated, labels)[0][0] == 0


def test_the_averaged_model_applies_each_members_temperature_and_loads_in_safe_mode(tmp_path):
    from harness.backend import keras
    from sweeps import ensemble

    model = ensemble.averaged([constant_network([0.8, 0.2]), constant_network([0.3, 0.7])], [0.5, 0.5], [0.5, 1.0])
    expected = 0.5 * ensemble.tempered(np.array([[0.8, 0.2]]), 0.5) + 0.5 * np.array([[0.3, 0.7]])
    image = np.zeros((1, 28, 28, 1), dtype="uint8")
    assert model.predict(image, verbose=0) == pytest.approx(expected, abs=1e-5)
    model.save(tmp_path / "ensemble.keras")
    loaded = keras.saving.load_model(tmp_path / "ensemble.keras", safe_mode=True)
    assert loaded.predict(image, verbose=0) == pytest.approx(expected, abs=1e-5)


def test_the_views_are_kept_where_they_hold_up_on_held_out_halves_and_not_otherwise():
    from harness.calibration import temperature, tempered
    from sweeps import ensemble, selection

    rng = np.random.default_rng(7)
    labels = rng.integers(0, 10, size=1000)

    def noisy(signal):
        logits = rng.normal(0, 1, size=(len(labels), 10))
        logits[np.arange(len(labels)), labels] += signal
        return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)

    for other_views_signal, views_kept in [(2.0, True), (0.0, False)]:  # shifts that see the digit, or do not
        views = [[noisy(2.0), *(noisy(other_views_signal) for _ in ensemble.SHIFTS[1:])] for _ in range(4)]
        probabilities = [candidate_views[0] for candidate_views in views]
        temperatures = [temperature(p, labels) for p in probabilities]
        on_all = {1: [tempered(p, t) for p, t in zip(probabilities, temperatures)],
                  len(ensemble.SHIFTS): [ensemble.over_views(v, t) for v, t in zip(views, temperatures)]}
        rule_scores, view_count, rule, weights = ensemble.chosen_on_halves(probabilities, views, labels, on_all)
        assert (view_count > 1) == views_kept
        assert len(rule_scores) == 2 * len(selection.RULES)
        chosen = next(score for score in rule_scores if (score.views, score.rule) == (view_count, rule))
        assert chosen.held_out_log_loss == min(score.held_out_log_loss for score in rule_scores)
        assert weights == selection.RULES[rule](on_all[view_count], labels)
        assert chosen.validation_log_loss == pytest.approx(
            ensemble.log_loss(selection.weighted_average(on_all[view_count], weights), labels))


def test_the_numpy_views_are_the_keras_views():
    from harness.backend import keras
    from sweeps import ensemble

    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
    inputs = keras.Input((28, 28, 1), dtype="uint8")
    for number, (down, right) in enumerate(ensemble.SHIFTS[1:]):
        model = keras.Model(inputs, ensemble.shift_layers(inputs, down, right, str(number)))
        moved = ensemble.shifted(images, down, right)
        assert np.array_equal(keras.ops.convert_to_numpy(model(images)), moved)
        assert np.array_equal(np.roll(moved, (-down, -right), axis=(1, 2))[:, 1:-1, 1:-1], images[:, 1:-1, 1:-1])
        vacated = moved[:, 0] if down > 0 else moved[:, -1] if down < 0 else moved[:, :, 0] if right > 0 else moved[:, :, -1]
        assert not vacated.any()  # black fill


def test_the_averaged_model_over_views_is_what_the_selection_weighed_and_loads_in_safe_mode(tmp_path):
    from harness.backend import keras
    from sweeps import ensemble

    def linear(seed):  # a network that sees where the ink is, ending in Dense(softmax)
        return keras.Sequential([
            keras.Input((28, 28, 1), dtype="uint8"), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax", kernel_initializer=keras.initializers.RandomNormal(0, 0.3, seed))])

    members, temperatures, weights = [linear(1), linear(2)], [0.5, 1.0], [0.7, 0.3]
    images = np.random.default_rng(1).integers(0, 256, (4, 28, 28, 1), dtype=np.uint8)
    expected = sum(weight * ensemble.over_views(ensemble.view_probabilities(member, images), t)
                   for member, t, weight in zip(members, temperatures, weights))
    alone = sum(weight * ensemble.tempered(member.predict(images, verbose=0), t)
                for member, t, weight in zip(members, temperatures, weights))
    assert not np.allclose(expected, alone, atol=1e-3)  # the views count
    model = ensemble.averaged(members, weights, temperatures, ensemble.SHIFTS)
    assert model.predict(images, verbose=0) == pytest.approx(expected, abs=1e-5)
    model.save(tmp_path / "ensemble.keras")
    loaded = keras.saving.load_model(tmp_path / "ensemble.keras", safe_mode=True)
    assert loaded.predict(images, verbose=0) == pytest.approx(expected, abs=1e-5)


def test_a_lead_counts_only_the_images_one_model_gets_right_and_says_when_it_is_noise():
    from sweeps import ensemble

    labels = np.zeros(1000, dtype=int)
    right, wrong = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    leader = np.array([right] * 990 + [wrong] * 10)
    close = np.array([right] * 985 + [wrong] * 15)
    lead = ensemble.paired_lead(leader, close, labels)
    assert (lead["only_leader"], lead["only_runner_up"]) == (5, 0)
    assert lead["p_value"] == pytest.approx(2 / 32)  # exact: both tails of Binomial(5, 1/2) at 0
    assert "within the validation split's noise" in answer.describe_lead(champion_with(lead))
    far = ensemble.paired_lead(leader, np.array([right] * 950 + [wrong] * 50), labels)
    assert far["p_value"] < 1e-6 and "a real lead" in answer.describe_lead(champion_with(far))


def test_a_model_that_is_a_baseline_is_said_to_be_one_not_left_without_a_baseline():
    assert answer.baseline_itself(["gradio_cnn"]) == "gradio_cnn"
    assert answer.baseline_itself(["kaggle_cnn seed 2"]) == "kaggle_cnn seed 2"
    assert answer.baseline_itself(["trial 57"]) is None
    assert answer.baseline_itself(["kaggle_cnn", "trial 57"]) is None
    said = answer.describe_versus_baseline(None, 0.99, answer.baseline_itself(["gradio_cnn"]))
    assert said == "it is the baseline gradio_cnn, so it has no baseline to beat at this budget"
    assert answer.describe_versus_baseline(None, 0.99) == "no baseline finished at the top rung to compare with"


def champion_with(lead: dict) -> records.Champion:
    return records.Champion(run_id="r", validation_accuracy=0.99, test_accuracy=0.99, model="models:/m@champion",
                            version="1", label="a", runner_up="b", **lead)


def recipe_trial(number: int, value: float, **params) -> optuna.trial.FrozenTrial:
    recipe = {"family": "cnn", "conv_blocks": 2, "batch_norm": False, **params}
    return optuna.trial.create_trial(
        value=value, params=recipe, user_attrs={},
        distributions={k: optuna.distributions.CategoricalDistribution([v]) for k, v in recipe.items()})


def ranking(*trials):
    study = optuna.create_study(direction="maximize")
    for trial in trials:
        study.add_trial(trial)
    return ladder.ranked(study.trials)


def test_promotion_keeps_the_best_augmented_recipe_when_one_completed():
    ranked = ranking(*(recipe_trial(i, 0.99 - i / 1000, block1_convs=i) for i in range(6)),
                     recipe_trial(6, 0.95, block1_convs=9, augment=True, rotation=10.0))
    chosen = ladder.finalists(ranked, 3)
    assert [t.value for t in chosen] == [0.99, 0.989, 0.95]  # the augmented one takes the last place
    assert ladder.augmented(chosen[-1])
    # Where one of the best is augmented already, rank alone decides.
    ranked = ranking(recipe_trial(0, 0.99, augment=True, rotation=5.0), recipe_trial(1, 0.98, block1_convs=2),
                     recipe_trial(2, 0.97, block1_convs=3), recipe_trial(3, 0.96, augment=True, zoom=0.1))
    assert [t.value for t in ladder.finalists(ranked, 2)] == [0.99, 0.98]
    # No augmented recipe completed: the best by rank.
    ranked = ranking(*(recipe_trial(i, 0.99 - i / 100, block1_convs=i) for i in range(4)))
    assert [t.value for t in ladder.finalists(ranked, 2)] == [0.99, 0.98]


def test_promotion_keeps_the_best_augmented_recipe_the_pruner_stopped_when_none_completed():
    pruned = []
    for number, reached in ((7, [0.95, 0.97]), (8, [0.98])):
        trial = recipe_trial(number, 0.0, block1_convs=number, augment=True, zoom=0.1)
        pruned.append(optuna.trial.create_trial(state=TrialState.PRUNED, params=trial.params, distributions=trial.distributions,
                                                intermediate_values=dict(enumerate(reached))))
    priced_out = optuna.trial.create_trial(state=TrialState.PRUNED, params=recipe_trial(9, 0.0, augment=True, shift=0.1).params,
                                           distributions=recipe_trial(9, 0.0, augment=True, shift=0.1).distributions)
    reserve = ladder.best_augmented([*pruned, priced_out])
    assert reserve.intermediate_values == {0: 0.98}  # the best any epoch reached; untrained ones never
    ranked = ranking(*(recipe_trial(i, 0.99 - i / 1000, block1_convs=i) for i in range(6)))
    chosen = ladder.finalists(ranked, 3, reserve)
    assert [t.value for t in chosen[:2]] == [0.99, 0.989] and chosen[-1] is reserve
    assert ladder.finalists(ranked[:1], 3, reserve)[-1] is reserve  # fewer recipes than places: added
    assert ladder.best_augmented([priced_out]) is None


def test_promotion_prefers_distinct_architectures_among_the_best():
    same = {"block1_convs": 2, "block2_convs": 2}
    ranked = ranking(recipe_trial(0, 0.995, **same), recipe_trial(1, 0.994, **same),
                     recipe_trial(2, 0.993, block1_convs=1, batch_norm=True, augment=True, shift=0.1),
                     recipe_trial(3, 0.990, conv_blocks=3), recipe_trial(4, 0.980, conv_blocks=1))
    # Of the best four (2 x 2), the near-copy of the winner waits behind other architectures.
    assert [t.value for t in ladder.finalists(ranked, 2)] == [0.995, 0.993]
    assert [t.value for t in ladder.finalists(ranked, 3)] == [0.995, 0.993, 0.990]
    # A window of twice the places: for one place, only the best two are weighed.
    assert [t.value for t in ladder.finalists(ranked, 1)] == [0.995]


def test_the_ensembles_process_reports_a_full_disk_as_one_reason_not_a_traceback(monkeypatch, tmp_path):
    import errno
    import multiprocessing

    from sweeps import ensemble, rungs
    from sweeps.settings import STORE_FAILED_EXIT, EnsembleSettings

    def full_disk(settings):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "mlruns" / "artifacts" / "model.keras"))

    monkeypatch.setattr(ensemble, "main", full_disk)
    failures = multiprocessing.get_context("spawn").SimpleQueue()
    settings = EnsembleSettings(exploring_study="s", rung_study="s@full", storage_url="journal:x",
                                tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="e", parent_run_id="p",
                                budget=BUDGETS["full"], data_path=None, split_seed=0, model_name="m")
    with pytest.raises(SystemExit) as exit_info:
        rungs._ensemble_process(settings, failures)
    assert exit_info.value.code == STORE_FAILED_EXIT
    assert failures.get() == f"{tmp_path}/mlruns/artifacts/model.keras: No space left on device"


def test_the_best_augmented_recipe_takes_the_last_seed_leaders_place_when_none_of_the_best_is_augmented():
    def trained(number, loss, **params):
        trial = recipe_trial(number, 0.99, block1_convs=number, **params)
        trial.set_user_attr(records.SOURCE_TRIAL, number)
        trial.set_user_attr(records.CALIBRATED_LOG_LOSS, loss)
        return trial

    rung = optuna.create_study(direction="maximize")
    for trial in (trained(1, 0.020), trained(2, 0.022), trained(3, 0.026, augment=True, rotation=10.0),
                  trained(4, 0.030, augment=True, zoom=0.1), trained(5, 0.021)):
        rung.add_trial(trial)
    leaders = seed_leaders(rung.trials)
    assert [t.user_attrs[records.SOURCE_TRIAL] for t in leaders] == [1, 3]  # not 5, the second by log-loss
    assert ladder.augmented(leaders[-1])
    # Where one of the best is augmented already, log-loss alone decides.
    rung.add_trial(trained(6, 0.019, augment=True, shift=0.1))
    assert [t.user_attrs[records.SOURCE_TRIAL] for t in seed_leaders(rung.trials)] == [6, 1]
    # No augmented recipe trained there: the best two by log-loss.
    plain = optuna.create_study(direction="maximize")
    for trial in (trained(1, 0.020), trained(2, 0.022), trained(5, 0.021)):
        plain.add_trial(trial)
    assert [t.user_attrs[records.SOURCE_TRIAL] for t in seed_leaders(plain.trials)] == [1, 5]


def model_trial(value: float, run_id: str, source: int, state=TrialState.COMPLETE, **user_attrs):
    """A top-rung trial carrying up exploring trial ``source``, its model in run ``run_id``."""
    return optuna.trial.create_trial(state=state, value=value if state == TrialState.COMPLETE else None,
                                     user_attrs={records.MLFLOW_RUN_ID: run_id, records.SOURCE_TRIAL: source, **user_attrs})


def test_the_ensembles_candidates_are_the_best_distinct_models_of_this_and_the_stores_other_top_rungs():
    own = [model_trial(0.990, "a", 0, **{records.BASELINE: "kaggle_cnn"}), model_trial(0.993, "b", 7),
           model_trial(0.0, "c", 8, state=TrialState.FAIL), model_trial(0.991, "d", 9, **{records.REUSED_FROM: "k2"})]
    other = [model_trial(0.995, "x", 61, **{records.TRAINING_SEED: 2}),
             model_trial(0.991, "y", 3, **{records.REUSED_FROM: "k2"}),  # the model this sweep reused: once, as its own
             model_trial(0.980, "z", 5)]
    pool = ladder.ensemble_candidates(own, {"mnist-sweep-2@full": other}, at_most=4)
    assert [c.label for c in pool] == ["mnist-sweep-2: trial 61 seed 2", "trial 7", "trial 9", "kaggle_cnn"]
    assert [records.model_run_id(c.trial) for c in pool] == ["x", "b", "k2", "a"]
    # Alone, a sweep's candidates are its own best; a failed trial holds no model.
    assert [c.label for c in ladder.ensemble_candidates(own, {}, at_most=16)] == ["trial 7", "trial 9", "kaggle_cnn"]
