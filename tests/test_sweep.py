"""The sweep on the smoke budget: Optuna and MLflow agree trial by trial, baselines go first,
a second invocation resumes, two workers share one study, pruning happens, setups don't mix."""

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import mlflow
import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

import search_space
from conftest import SMOKE
from harness import records
from harness.backend import keras
from harness.budgets import BUDGETS
from harness.records import StopCause
from sweeps import objective, recovery, run as sweep_run, study as sweep_study, supervisor
from sweeps.settings import SweepSettings

MLFLOW_STATUS = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "FINISHED", TrialState.FAIL: "FAILED"}


def load(folder, name="mnist-sweep"):
    storage = sweep_study.open_storage(f"journal:{folder}/mlruns/optuna.journal")
    return optuna.load_study(study_name=name, storage=storage)


def mlflow_runs(folder):
    client = mlflow.MlflowClient(f"sqlite:///{folder}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name(sweep_run.EXPERIMENT)
    return client, client.search_runs([experiment.experiment_id], max_results=1000)


@pytest.mark.slow
def test_baselines_are_the_first_five_trials(sweep):
    trials = load(sweep).trials
    assert [t.user_attrs.get("baseline") for t in trials[:5]] == list(search_space.BASELINES)
    for trial in trials[:5]:
        name = trial.user_attrs["baseline"]
        assert search_space.with_recipe_keys(trial.params, name) == search_space.baseline(name)
    assert not any("baseline" in t.user_attrs for t in trials[5:])


@pytest.mark.slow
def test_resuming_reaches_the_requested_total_without_duplicates(sweep):
    trials = load(sweep).trials
    assert len(trials) == 9
    assert [t.number for t in trials] == list(range(9))
    assert all(t.state in MLFLOW_STATUS for t in trials)


@pytest.mark.slow
def test_mlflow_child_runs_match_optuna_trials_one_to_one(sweep):
    study = load(sweep)
    client, runs = mlflow_runs(sweep)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["optuna_study"] == "mnist-sweep"
    assert study.user_attrs["mlflow_parent_run_id"] == parent.info.run_id
    children = {r.info.run_id: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert len(children) == len(study.trials) == len(runs) - 1
    for trial in study.trials:
        child = children[trial.user_attrs["mlflow_run_id"]]
        assert child.data.tags["optuna_trial_number"] == str(trial.number)
        assert child.info.status == MLFLOW_STATUS[trial.state]
        assert child.data.tags["optuna_state"] == trial.state.name
        if trial.state == TrialState.COMPLETE:
            assert child.data.metrics["validation_accuracy"] == pytest.approx(trial.value)
        else:
            assert child.data.tags["reason"] == trial.user_attrs["reason"]


@pytest.mark.slow
def test_hyperband_pruned_at_least_one_trial_on_validation_accuracy(sweep):
    pruned = [t for t in load(sweep).trials if t.state == TrialState.PRUNED]
    assert any(t.user_attrs["reason"].startswith("pruner stopped it after epoch") for t in pruned)
    for trial in pruned:
        assert trial.intermediate_values or "not trained" in trial.user_attrs["reason"]


@pytest.mark.slow
def test_the_summary_files_the_best_params_for_reproduction(sweep):
    study = load(sweep)
    stored = json.loads((sweep / "mlruns/studies/mnist-sweep/best_params.json").read_text())
    best = study.best_trial  # a baseline keeps its seed's epochs there
    assert stored == search_space.with_recipe_keys(best.params, best.user_attrs.get(records.BASELINE))
    assert search_space.validate(stored) == stored


@pytest.mark.slow
def test_the_summary_names_the_best_trial_and_the_command_that_retrains_it(sweep):
    study, text = load(sweep), (sweep / "summary.txt").read_text()
    assert f"Study 'mnist-sweep': 9 trials ({sum(t.state == TrialState.COMPLETE for t in study.trials)} complete" in text
    assert f"Best: trial {study.best_trial.number}" in text and f"{study.best_value:.4f}" in text
    assert "Baselines at this budget: kaggle_cnn " in text
    assert (f"Reproduce the best trial: python train_trial.py --params {sweep}/mlruns/studies/mnist-sweep/"
            "best_params.json --budget smoke --train-size 300 --max-epochs 2 --seed 0") in text


@pytest.mark.slow
def test_resuming_with_another_budget_is_refused(sweep, run_command, monkeypatch):
    monkeypatch.chdir(sweep)
    before = len(load(sweep).trials)
    code, _, err = run_command(sweep_run.main, ["--trials", "12", *SMOKE[:2], "--train-size", "400", *SMOKE[4:]])
    assert code == 2 and err.count("\n") == 1
    assert "study 'mnist-sweep' was recorded with a different setup (budget train_size 300 -> 400)" in err
    assert "--study" in err
    assert len(load(sweep).trials) == before


@pytest.mark.slow
def test_two_workers_share_one_study_without_lock_errors(tmp_path, run_command, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_command(sweep_run.main, ["--trials", "4", "--workers", "2", "--no-baselines",
                                                  "--study", "pair", *SMOKE])
    assert code == 0, err
    assert "locked" not in err.lower()
    trials = load(tmp_path, "pair").trials
    assert len(trials) == 4 and sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both workers trained
    client, runs = mlflow_runs(tmp_path)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert sorted(r.data.tags["optuna_trial_number"] for r in children) == ["0", "1", "2", "3"]
    assert not any(r.info.status == "RUNNING" for r in runs)


def worker_settings(folder, study_name, **changes):
    """A study in ``folder`` with a parent run, and the settings a worker needs for it."""
    from harness import tracking
    from harness.budgets import BUDGETS

    storage_url = f"journal:{folder}/optuna.journal"
    optuna.create_study(study_name=study_name, storage=sweep_study.open_storage(storage_url),
                        direction="maximize")
    uri = tracking.checked_uri(f"sqlite:///{folder}/mlflow.db")
    experiment_id = tracking.ensure_experiment(uri, study_name)
    parent = tracking.client(uri).create_run(experiment_id).info.run_id
    settings = dict(
        study_name=study_name, storage_url=storage_url, tracking_uri=uri, experiment=study_name,
        parent_run_id=parent, total_trials=1, sampler="random", pruner="none", seed=0,
        budget=BUDGETS["smoke"].overridden(train_size=300), data_path=None, split_seed=0,
        lock_path=str(folder / "ask.lock"), last_start=None)
    return SweepSettings(**(settings | changes))


@pytest.mark.slow
def test_an_oversized_network_is_pruned_before_training(tmp_path):
    giant = {**search_space.baseline("kaggle_cnn"), "block1_filters": 64, "block2_filters": 128,
             "block1_convs": 3, "block2_convs": 3}
    settings = worker_settings(tmp_path, "giant", budget=sweep_run.BUDGETS["smoke"])
    study = optuna.load_study(study_name="giant", storage=sweep_study.open_storage(settings.storage_url))
    study.enqueue_trial(giant)
    objective.worker_main(settings, 0)  # asked for one trial
    trial, *others = study.trials
    assert trial.state == TrialState.PRUNED and not trial.intermediate_values
    assert "TFLOP of training, over the smoke budget's 2; not trained" in trial.user_attrs["reason"]
    # A priced-out sample does not use up the requested total: the worker sampled on.
    assert records.stop_cause(trial) == StopCause.PRICED_OUT
    trained = [t for t in others if records.stop_cause(t) != StopCause.PRICED_OUT]
    assert len(trained) == 1 and trained[0].state == TrialState.COMPLETE == others[-1].state
    assert records.stop_cause(trained[0]) == StopCause.COMPLETED
    assert records.counted_trials(study.trials, settings.total_trials) == 1


@pytest.mark.slow
def test_priced_out_samples_stop_being_free_after_as_many_as_requested(tmp_path):
    settings = worker_settings(tmp_path, "capped", total_trials=2,
                               budget=dataclasses.replace(sweep_run.BUDGETS["smoke"], max_training_tflop=1e-9))
    study = optuna.load_study(study_name="capped", storage=sweep_study.open_storage(settings.storage_url))
    objective.worker_main(settings, 0)
    trials = study.trials
    assert len(trials) == 4 and all(records.stop_cause(t) == StopCause.PRICED_OUT for t in trials)
    assert all(t.state == TrialState.PRUNED for t in trials)


@pytest.mark.slow
def test_a_baseline_over_the_cap_is_still_trained_as_a_comparison_point(tmp_path):
    budget = sweep_run.BUDGETS["smoke"].overridden(train_size=300, max_epochs=1)
    settings = worker_settings(tmp_path, "capped", budget=dataclasses.replace(budget, max_training_tflop=1e-6))
    study = optuna.load_study(study_name="capped", storage=sweep_study.open_storage(settings.storage_url))
    study.enqueue_trial(search_space.baseline("gradio_cnn"), user_attrs={"baseline": "gradio_cnn"})
    objective.worker_main(settings, 0)
    (trial,) = study.trials
    assert trial.state == TrialState.COMPLETE and trial.intermediate_values


@pytest.mark.slow
def test_a_worker_that_trained_its_share_is_replaced_and_the_study_completes(tmp_path):
    settings = worker_settings(tmp_path, "recycle", total_trials=3, trials_per_process=2)
    study = optuna.load_study(study_name="recycle", storage=sweep_study.open_storage(settings.storage_url))
    assert supervisor.supervise(study, settings, worker_count=1).crashed == []
    trials = study.trials
    assert len(trials) == 3 and all(t.state != TrialState.RUNNING for t in trials)
    workers = [t.user_attrs["worker"] for t in trials]
    assert workers[0] == workers[1] != workers[2]  # retired after its second trial


def study_under_the_sweeps_pruner(budget, good_trials=3):
    """A study with the sweep's Hyperband pruner, after ``good_trials`` trials at 0.98 every
    epoch: a trial at 0.10 is below them at every rung."""
    study = optuna.create_study(direction="maximize", pruner=sweep_study.make_pruner("hyperband", budget))
    for _ in range(good_trials):
        good = study.ask()
        for epoch in range(1, budget.max_epochs + 1):
            good.report(0.98, epoch)
            good.should_prune()
        study.tell(good, 0.98)
    return study


class PoorValidationAccuracy(keras.callbacks.Callback):
    """Sets each epoch's val_accuracy, which ReportToPruner reads, to 0.10."""

    def on_epoch_end(self, epoch, logs=None):
        logs["val_accuracy"] = 0.10


def test_a_trial_is_never_pruned_after_its_last_epoch():
    study = study_under_the_sweeps_pruner(BUDGETS["smoke"])  # its first rung is epoch 1
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    fit = dict(x=np.zeros((16, 4)), y=np.zeros(16), batch_size=8, verbose=0,
               validation_data=(np.zeros((8, 4)), np.zeros(8)))
    longer = study.ask()
    with pytest.raises(optuna.TrialPruned, match="after epoch 1"):
        model.fit(**fit, epochs=2, callbacks=[PoorValidationAccuracy(), objective.ReportToPruner(longer, epochs=2)])
    study.tell(longer, state=TrialState.PRUNED)
    ending_on_the_rung = study.ask()
    model.fit(**fit, epochs=1, callbacks=[PoorValidationAccuracy(), objective.ReportToPruner(ending_on_the_rung, epochs=1)])
    assert ending_on_the_rung.should_prune()  # the pruner would have: the last epoch was not judged


def test_a_trial_over_its_time_share_is_stopped_and_not_judged_by_the_pruner():
    study = study_under_the_sweeps_pruner(BUDGETS["smoke"])  # its first rung is epoch 1
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    time_share = objective.TimeShare(0.0)
    trial = study.ask()
    history = model.fit(np.zeros((64, 4)), np.zeros(64), batch_size=8, epochs=2, verbose=0,
                        validation_data=(np.zeros((8, 4)), np.zeros(8)),
                        callbacks=[time_share, PoorValidationAccuracy(), objective.ReportToPruner(trial, epochs=2)])
    assert len(history.history["loss"]) == 1  # stopped after its first batch, the epoch validated
    assert time_share.stopped_after is not None
    assert trial.should_prune()  # epoch 1 of 2 is a rung: the pruner would have stopped it there


@pytest.mark.slow
def test_the_mlflow_server_shows_the_sweep_as_a_parent_with_children(sweep):
    """What the README's `mlflow ui` shows, read through the tracking server's REST API."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                               f"sqlite:///{sweep}/mlruns/mlflow.db", "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/api/2.0/mlflow"

    def post(path, body):
        request = urllib.request.Request(f"{base}/{path}", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        return json.load(urllib.request.urlopen(request, timeout=10))

    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                time.sleep(1)
        experiment = json.load(urllib.request.urlopen(
            f"{base}/experiments/get-by-name?experiment_name={sweep_run.EXPERIMENT}", timeout=10))
        runs = post("runs/search", {"experiment_ids": [experiment["experiment"]["experiment_id"]],
                                    "max_results": 1000})["runs"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    tags = [{t["key"]: t["value"] for t in run["data"].get("tags", [])} for run in runs]
    parents = [run for run, tag in zip(runs, tags) if "mlflow.parentRunId" not in tag]
    assert len(parents) == 1
    parent_id = parents[0]["info"]["run_id"]
    assert sum(tag.get("mlflow.parentRunId") == parent_id for tag in tags) == len(load(sweep).trials)


@pytest.mark.parametrize("budget, judged_from", [
    (BUDGETS["quick"], 2), (BUDGETS["smoke"], 1), (BUDGETS["quick"].overridden(max_epochs=2), 1),
    (dataclasses.replace(BUDGETS["quick"], max_epochs=5, first_rung=3), 3)])
def test_hyperband_judges_from_the_budgets_first_rung(budget, judged_from):
    # Before one-cycle's warm-up ends, recipes are compared mid-schedule.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = study_under_the_sweeps_pruner(budget, good_trials=6)
    poor = study.ask()
    for epoch in range(1, judged_from):
        poor.report(0.10, epoch)
        assert not poor.should_prune()
    poor.report(0.10, judged_from)
    assert poor.should_prune()


def test_a_budget_recorded_before_first_rung_existed_still_reads():
    # Studies made before the field (mnist-sweep-v2 to v4 here) are still reproduced and compared.
    study = optuna.create_study(direction="maximize")
    old_record = {k: v for k, v in dataclasses.asdict(BUDGETS["quick"]).items() if k != "first_rung"}
    study.set_user_attr(records.FINGERPRINT, {"budget": old_record})
    budget = records.recorded_budget(study)
    assert budget.first_rung == 1 and budget.train_size == BUDGETS["quick"].train_size


def test_the_wall_clock_is_not_part_of_a_studys_fingerprint():
    # A longer or shorter limit for one invocation does not change what the trials are: the
    # fingerprint holds the per-trial budget only.
    recorded = records.fingerprint(5, "sha", BUDGETS["quick"], 0)
    assert set(recorded[records.BUDGET_KEY]) == {f.name for f in dataclasses.fields(BUDGETS["quick"])}
    assert "promotes_to" not in recorded[records.BUDGET_KEY]


def test_a_study_that_recorded_the_ladders_policy_in_its_budget_still_resumes():
    # Studies before the plan recorded promotes_to (and earlier the wall-clocks) in the budget.
    requested = records.fingerprint(5, "sha", BUDGETS["quick"], 0)
    old = {**requested, records.BUDGET_KEY: {**requested[records.BUDGET_KEY], "promotes_to": "long",
                                             "sweep_seconds": 2700, "ladder_seconds": 7200}}
    assert records.same_setup(old, requested)
    changed = {**old, records.BUDGET_KEY: {**old[records.BUDGET_KEY], "max_epochs": 5}}
    assert not records.same_setup(changed, requested)
    assert records.describe_difference(changed, requested) == "budget max_epochs 5 -> 4"
    assert not records.same_setup({**old, records.SPLIT_SEED_KEY: 1}, requested)


def test_a_worker_starts_no_trial_once_the_last_start_has_passed(tmp_path):
    settings = worker_settings(tmp_path, "late", total_trials=3, last_start=time.time() - 1)
    study = optuna.load_study(study_name="late", storage=sweep_study.open_storage(settings.storage_url))
    objective.worker_main(settings, 0)
    assert study.trials == []


@pytest.mark.slow
def test_a_sweeps_terminal_output_carries_no_library_warning(tmp_path):
    """A new user's first sweep, as a subprocess with the terminal's two streams: nothing
    from Optuna, MLflow, Keras or TensorFlow but what the project prints."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYTHONWARNINGS"))}
    result = subprocess.run([sys.executable, "-m", "sweeps.run", "--trials", "3", "--budget", "smoke",
                             "--train-size", "300", "--max-epochs", "2", "--workers", "2"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600, env=environment)
    assert result.returncode == 0, result.stderr
    lines = (result.stdout + result.stderr.replace("\r", "\n")).splitlines()
    noise = [line for line in lines if "warn" in line.lower() or " INFO " in line or "I0000" in line]
    assert noise == []
    # Not a terminal: a plain line per finished trial with the time left, here and in all.
    progress = [line for line in lines if " trials, " in line and "pruned" in line]
    assert any("left here" in line and " in all" in line for line in progress)
    assert not any("\r" in line or "|" in line for line in progress)  # no bar frames in a log
    assert "3 trials" in result.stdout and "cores busy" in result.stdout


def test_only_a_trial_lost_with_its_worker_is_retried_and_only_once(tmp_path):
    storage = sweep_study.open_storage(f"journal:{tmp_path}/optuna.journal")
    study = optuna.create_study(study_name="retry", storage=storage, direction="maximize")
    space = {"x": optuna.distributions.FloatDistribution(0, 1)}

    def add(state, x, value=None, **attributes):
        study.add_trial(optuna.trial.create_trial(state=state, params={"x": x}, distributions=space, value=value,
                                                  user_attrs=attributes))

    add(TrialState.COMPLETE, 0.1, 0.9, stop_cause="completed")
    add(TrialState.FAIL, 0.2, stop_cause="error", reason="it raised")  # failed by itself
    add(TrialState.FAIL, 0.3, stop_cause="worker_lost", reason="killed", baseline="lenet5")
    add(TrialState.FAIL, 0.4, stop_cause="worker_lost", reason="killed again", retry_of=0)  # a lost retry
    lock = str(tmp_path / "ask.lock")
    assert recovery.retry_lost_trials(study, storage, lock) == [2]
    assert recovery.retry_lost_trials(study, storage, lock) == []  # once, however often recovery runs
    [queued] = study.get_trials(states=[TrialState.WAITING])
    assert queued.system_attrs["fixed_params"] == {"x": 0.3}  # where Optuna keeps an enqueued trial's params
    assert queued.user_attrs == {"retry_of": 2, "baseline": "lenet5"}
    # Counted: the completed one, the one that failed by itself, the lost retry; not the first
    # loss, nor its retry until it starts.
    assert records.counted_trials(study.get_trials(), 10) == 3
    assert supervisor.counts(study.get_trials())["lost"] == 1


@pytest.mark.slow
def test_a_resumed_sweep_does_not_draw_the_first_invocations_samples_again(sweep):
    """Worker numbers restart at 0 in each invocation; the sampler's seed must not."""
    sampled = [t for t in load(sweep).trials if "baseline" not in t.user_attrs and t.params]
    assert len(sampled) >= 2
    assert len({json.dumps(t.params, sort_keys=True) for t in sampled}) == len(sampled)


def test_best_params_of_a_baseline_keep_its_seeds_epochs(tmp_path, monkeypatch):
    # best_params.json is what the summary's reproduce line hands to train_trial.py --params.
    monkeypatch.chdir(tmp_path)
    study = optuna.create_study(study_name="baseline-best", direction="maximize")
    study.enqueue_trial(search_space.baseline("chollet_cnn"), user_attrs={records.BASELINE: "chollet_cnn"})
    trial = study.ask()
    search_space.suggest(trial)
    study.tell(trial, 0.98)
    written = json.loads(sweep_run.write_best_params(study).read_text())
    assert written == search_space.baseline("chollet_cnn") and written["epochs"] == 5


def test_a_rung_worker_starts_the_queued_trial_that_fits_and_none_that_does_not(tmp_path):
    settings = worker_settings(tmp_path, "rung", total_trials=3, fit_forecasts=True,
                               deadline=time.time() + 600, last_start=time.time() + 520)
    storage = sweep_study.open_storage(settings.storage_url)
    study = optuna.load_study(study_name="rung", storage=storage)
    for forecast in (5000.0, 60.0, 3000.0):  # capped at smoke's 120 s time share: 120, 60, 120 s
        study.enqueue_trial(search_space.baseline("gradio_cnn"), user_attrs={records.FORECAST_SECONDS: forecast})
    first = objective.next_trial(study, storage, settings)
    assert first.number == 0  # all fit: queue order
    tight = dataclasses.replace(settings, deadline=time.time() + 170)  # 60 s and its overhead fit; 120 s does not
    assert objective.next_trial(study, storage, tight).number == 1
    assert objective.next_trial(study, storage, tight) is None  # trial 2 waits: it does not fit
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING, TrialState.RUNNING, TrialState.WAITING]


@pytest.mark.slow
def test_a_worker_that_would_idle_with_time_left_trains_what_top_up_queues(tmp_path):
    settings = worker_settings(tmp_path, "topped", total_trials=1)
    study = optuna.load_study(study_name="topped", storage=sweep_study.open_storage(settings.storage_url))
    offered = []

    def top_up(now):  # two more, then nothing fits
        if len(offered) == 2:
            return None
        offered.append(f"extra {len(offered) + 1}")
        return offered[-1]

    outcome = supervisor.supervise(study, settings, worker_count=1, top_up=top_up)
    assert outcome.topped_up == ["extra 1", "extra 2"]
    assert len(study.trials) == 3 and all(t.state != TrialState.RUNNING for t in study.trials)
