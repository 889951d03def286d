"""Reliability of the sweep's fidelity ladder: kill -9 while the top rung trains loses
nothing. Exploration alone (--finalists 0), run next, ends the trial left running; the
ladder's command, run again, retries it once, finishes the rung, builds the ensemble, and
every trial completed before the kill, in the exploring study and in each rung, is still
there with its value."""

import os
import signal
import subprocess
import time

import optuna
import pytest
from optuna.trial import TrialState

from harness import records, tracking
from sweeps import ladder, run as sweep_run, study as sweep_study
from sweeps.settings import ENSEMBLE_CANDIDATES
from test_reliability import as_in_a_terminal, sweep_command, user_environment

pytestmark = pytest.mark.slow  # a whole ladder sweep, twice, in subprocesses

STUDY = "laddered"
# 5 baselines and one sampled trial (it completes: no pruner), carried up to smoke-long and,
# with the baselines, to smoke-full; about 7 minutes in all on 2 cores.
SWEEP = ["--trials", 6, "--study", STUDY, "--budget", "smoke", "--train-size", 300, "--max-epochs", 2,
         "--workers", 1, "--pruner", "none"]
LADDER = [*SWEEP, "--finalists", 1]
EXPLORE_ONLY = [*SWEEP, "--finalists", 0]
RUNGS = {records.rung_study_name(STUDY, budget): budget for budget in ("smoke-long", "smoke-full")}
TOP = records.rung_study_name(STUDY, "smoke-full")


def start(argv, folder):
    """As test_reliability.start, with the output in files: over a whole ladder the progress
    bars and TensorFlow's messages could fill a pipe nobody reads, and stall the sweep."""
    with open(folder / "first.out", "w") as out, open(folder / "first.err", "w") as err:
        return subprocess.Popen(sweep_command(*argv), cwd=folder, stdout=out, stderr=err, text=True,
                                env=user_environment(), preexec_fn=as_in_a_terminal,
                                start_new_session=True)  # its own process group, as in a terminal


def output(folder) -> str:
    return (folder / "first.out").read_text() + (folder / "first.err").read_text()[-5000:]


def load(storage, name) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage)


def all_trials(storage) -> dict[str, list[optuna.trial.FrozenTrial]]:
    return {name: load(storage, name).get_trials() for name in optuna.study.get_all_study_names(storage)}


def top_rung_training(storage_url, process, folder, timeout=600) -> None:
    """Wait until a trial of the top rung is mid-training (its MLflow run started) while another
    of its trials has completed, so the kill leaves finished work in the rung to keep."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, output(folder)
        try:
            trials = load(sweep_study.open_storage(storage_url), TOP).get_trials(deepcopy=False)
        except (KeyError, ValueError, optuna.exceptions.StorageInternalError):
            trials = []  # the rung is not there yet
        if (any(t.state == TrialState.COMPLETE for t in trials)
                and any(t.state == TrialState.RUNNING and records.MLFLOW_RUN_ID in t.user_attrs for t in trials)):
            return
        time.sleep(0.3)
    pytest.fail(f"no trial of {TOP} was training within {timeout} s:\n{output(folder)}")


def test_kill_9_in_the_top_rung_then_the_same_command_loses_nothing(tmp_path):
    storage_url = f"journal:{tmp_path}/mlruns/optuna.journal"
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    process = start(LADDER, tmp_path)
    try:
        top_rung_training(storage_url, process, tmp_path)
        storage = sweep_study.open_storage(storage_url)
        before = {name: {t.number: t.value for t in trials if t.state == TrialState.COMPLETE}
                  for name, trials in all_trials(storage).items()}
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the command and its worker, as a crash or kill -9 would
        process.wait(10)
    storage = sweep_study.open_storage(storage_url)
    [victim] = load(storage, TOP).get_trials(states=[TrialState.RUNNING])  # left running by the kill
    assert records.MLFLOW_RUN_ID in victim.user_attrs
    assert set(before) == {STUDY, *RUNGS} and all(before.values()), before  # explored, and each rung begun
    assert records.LADDER_RESULT not in load(storage, STUDY).user_attrs

    # Exploration alone, run first, climbs nothing but still ends the rung trial left running.
    explored = subprocess.run(sweep_command(*EXPLORE_ONLY), cwd=tmp_path, capture_output=True, text=True,
                              timeout=600, env=user_environment())
    assert explored.returncode == 0, explored.stdout + explored.stderr[-5000:]
    assert f"Rung smoke-full: Ended trial(s) {victim.number}: left running by a worker that is gone" in explored.stdout
    top = load(sweep_study.open_storage(storage_url), TOP).get_trials()
    assert top[victim.number].state == TrialState.FAIL and not any(records.RETRY_OF in t.user_attrs for t in top)
    client = tracking.client(uri)  # its registry too: an earlier test may have pointed MLflow's at its own store
    assert client.get_run(victim.user_attrs[records.MLFLOW_RUN_ID]).info.status == "KILLED"

    again = subprocess.run(sweep_command(*LADDER), cwd=tmp_path, capture_output=True, text=True, timeout=600,
                           env=user_environment())
    assert again.returncode == 0, again.stdout + again.stderr[-5000:]
    assert f"Rung smoke-full: Queued a retry of trial(s) {victim.number} with the same params" in again.stdout

    storage = sweep_study.open_storage(storage_url)
    after = all_trials(storage)
    assert set(after) == {STUDY, *RUNGS}
    for name, completed in before.items():  # nothing finished before the kill is lost or redone
        by_number = {t.number: t for t in after[name]}
        assert {number: (by_number[number].state, by_number[number].value) for number in completed} == \
               {number: (TrialState.COMPLETE, value) for number, value in completed.items()}, name
    for name, trials in after.items():
        assert [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)] == [], name
    top = after[TOP]
    killed = top[victim.number]
    assert killed.state == TrialState.FAIL and killed.user_attrs[records.STOP_CAUSE] == "worker_lost"
    [retry] = [t for t in top if t.user_attrs.get(records.RETRY_OF) == victim.number]
    assert retry.params == killed.params and retry.state != TrialState.FAIL
    for key in (records.SOURCE_TRIAL, records.FIDELITY, records.BASELINE):
        assert retry.user_attrs.get(key) == killed.user_attrs.get(key), key
    # Every recipe promoted to the top rung was trained there, the lost one by its retry.
    assert ladder.requested_trials(load(storage, TOP)) == len(top) - 1

    experiment = client.get_experiment_by_name(sweep_run.EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    assert [(r.info.run_name, r.data.tags.get(records.STUDY_TAG)) for r in runs if r.info.status == "RUNNING"] == []
    for name, budget in RUNGS.items():  # one run per trial of each rung, tagged with its rung and state
        rung_runs = [r for r in runs if r.data.tags.get(records.STUDY_TAG) == name
                     and records.TRIAL_NUMBER_TAG in r.data.tags]
        by_number = {int(r.data.tags[records.TRIAL_NUMBER_TAG]): r for r in rung_runs}
        assert len(by_number) == len(rung_runs) and sorted(by_number) == [t.number for t in after[name]], name
        for trial in after[name]:
            tags = by_number[trial.number].data.tags
            assert (tags[records.FIDELITY], tags[records.STATE_TAG], tags[records.SOURCE_TRIAL]) == \
                   (budget, trial.state.name, str(trial.user_attrs[records.SOURCE_TRIAL])), (name, trial.number)
    killed_run = client.get_run(victim.user_attrs[records.MLFLOW_RUN_ID])
    assert killed_run.info.status == "KILLED" and killed_run.data.tags[records.STOP_CAUSE] == "worker_lost"
    [ensemble_run] = [r for r in runs if r.data.tags.get(records.FIDELITY) == "ensemble"]
    assert ensemble_run.data.tags[records.STUDY_TAG] == TOP and records.TRIAL_NUMBER_TAG not in ensemble_run.data.tags

    exploring = load(storage, STUDY)
    result = records.ladder_result(exploring)
    assert result.top_rung == TOP and result.ensemble.run_id == ensemble_run.info.run_id
    assert not ladder.needs_ensemble(exploring, load(storage, TOP), ENSEMBLE_CANDIDATES)  # it weighed the retry too
    version = client.get_model_version_by_alias(tracking.REGISTERED_MODEL, "ensemble")
    assert version.run_id == ensemble_run.info.run_id
