"""Reliability of sweeps.run: kill -9 and Ctrl-C leave no trial RUNNING and lose nothing, a
rerun reaches the requested total; on a real PostgreSQL, three invocations (as on three
machines) share one study through an mlflow server; a storage password appears nowhere.

The PostgreSQL tests need MNIST_SWEEPS_POSTGRES, a URL like postgresql://user:pass@127.0.0.1:5432
of a role that may create databases; .ci/run starts such a server and sets it, and sets
MNIST_SWEEPS_REQUIRE_POSTGRES=1 so that there they fail rather than skip."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from harness import records, tracking
from sweeps import run as sweep_run, study as sweep_study, supervisor

pytestmark = pytest.mark.slow  # sweeps in subprocesses, PostgreSQL, an mlflow server

SLOW_SMOKE = ["--budget", "smoke", "--train-size", "3000", "--max-epochs", "2", "--workers", "1", "--finalists", "0"]
FAST_SMOKE = ["--budget", "smoke", "--train-size", "300", "--max-epochs", "1", "--workers", "1", "--finalists", "0"]
POSTGRES = os.environ.get("MNIST_SWEEPS_POSTGRES")


def sweep_command(*argv):
    return [sys.executable, "-m", "sweeps.run", *map(str, argv)]


def user_environment():
    """The environment a user's shell would give: in-process tests point MLflow elsewhere
    through these variables, and a child process would inherit them."""
    return {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}


def as_in_a_terminal():
    """In the child before it starts: Ctrl-C's signal handled by default, as a foreground
    command in a terminal has it (a test run may have it ignored or blocked, and children
    would inherit that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def start(argv, folder):
    return subprocess.Popen(sweep_command(*argv), cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=user_environment(), preexec_fn=as_in_a_terminal,
                            start_new_session=True)  # its own process group, as in a terminal


def rerun(argv, folder):
    return subprocess.run(sweep_command(*argv), cwd=folder, capture_output=True, text=True, timeout=300,
                          env=user_environment())


def running_trial(storage_url, study_name, process, timeout=120):
    """Wait until a trial is mid-training (its MLflow run started); return it."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            study = optuna.load_study(study_name=study_name, storage=sweep_study.open_storage(storage_url))
            for trial in study.get_trials(states=[TrialState.RUNNING]):
                if "mlflow_run_id" in trial.user_attrs:
                    time.sleep(1.5)  # into its first epoch
                    return trial
        except (KeyError, ValueError, optuna.exceptions.StorageInternalError):
            pass  # the study is not created yet
        time.sleep(0.5)
    pytest.fail("no trial started")


def trials_and_runs(storage_url, study_name, tracking_uri):
    study = optuna.load_study(study_name=study_name, storage=sweep_study.open_storage(storage_url))
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(sweep_run.EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return study, runs


def check_consistent(study, runs, total, lost=0):
    """The requested total (plus ``lost``, the trials lost with their worker, each retried once;
    None: as many as there are), no duplicate numbers, one child run per trial, nothing RUNNING."""
    trials = study.get_trials()
    if lost is None:
        lost = len(records.lost_first_time(trials))
    assert records.counted_trials(trials, total) == total
    assert len(trials) == total + lost and sorted(t.number for t in trials) == list(range(total + lost))
    assert len(records.lost_first_time(trials)) == lost
    assert not [t.number for t in trials if t.state == TrialState.RUNNING]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert sorted(int(r.data.tags["optuna_trial_number"]) for r in children) == list(range(total + lost))
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    by_number = {int(r.data.tags["optuna_trial_number"]): r for r in children}
    for trial in trials:
        assert by_number[trial.number].data.tags["optuna_state"] == trial.state.name


def test_kill_9_mid_trial_then_the_same_command_recovers_and_completes(tmp_path):
    argv = ["--trials", 2, "--study", "killed", *SLOW_SMOKE]
    storage_url = f"journal:{tmp_path}/mlruns/optuna.journal"
    process = start(argv, tmp_path)
    victim = running_trial(storage_url, "killed", process)
    os.killpg(process.pid, signal.SIGKILL)  # the command and its worker, as a crash or kill -9 would
    process.wait(10)
    again = rerun(argv, tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"Ended trial(s) {victim.number}: left running by a worker that is gone" in again.stdout
    assert f"Queued a retry of trial(s) {victim.number} with the same params" in again.stdout
    study, runs = trials_and_runs(storage_url, "killed", f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    check_consistent(study, runs, 2, lost=1)
    [retry] = [t for t in study.trials if t.user_attrs.get("retry_of") == victim.number]
    assert retry.params == study.trials[victim.number].params and retry.state != TrialState.FAIL
    killed = study.trials[victim.number]
    assert killed.state == TrialState.FAIL and "is gone: killed or crashed" in killed.user_attrs["reason"]
    run = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db").get_run(victim.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and "is gone" in run.data.tags["reason"]


def test_a_killed_worker_costs_time_not_a_sample(tmp_path):
    argv = ["--trials", 2, "--study", "retried", *SLOW_SMOKE]
    storage_url = f"journal:{tmp_path}/mlruns/optuna.journal"
    process = start(argv, tmp_path)
    victim = running_trial(storage_url, "retried", process)
    os.kill(int(victim.user_attrs["worker"].rsplit(":", 1)[1]), signal.SIGKILL)  # the worker only
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    assert "1 worker(s) exited abnormally" in err and "retried once" in err and "Traceback" not in err
    assert f"Queued a retry of trial(s) {victim.number} with the same params" in out
    assert "2 trials (" in out and "1 trials lost with their worker" in out
    study, runs = trials_and_runs(storage_url, "retried", f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    check_consistent(study, runs, 2, lost=1)
    [retry] = [t for t in study.trials if t.user_attrs.get("retry_of") == victim.number]
    assert retry.params == study.trials[victim.number].params and retry.state != TrialState.FAIL
    assert retry.user_attrs.get("baseline") == study.trials[victim.number].user_attrs.get("baseline")


def test_ctrl_c_records_the_running_trial_and_a_second_one_quits_at_once(tmp_path):
    storage_url = f"journal:{tmp_path}/mlruns/optuna.journal"
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    process = start(["--trials", 3, "--study", "stopped", *SLOW_SMOKE], tmp_path)
    victim = running_trial(storage_url, "stopped", process)
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Stopping: each running trial is recorded as failed" in err and "Traceback" not in err
    study, runs = trials_and_runs(storage_url, "stopped", uri)
    stopped = study.trials[victim.number]
    assert stopped.state == TrialState.FAIL and stopped.user_attrs["reason"] == "interrupted by the user (Ctrl-C)"
    assert [r.info.status for r in runs if r.info.run_id == victim.user_attrs["mlflow_run_id"]] == ["KILLED"]
    assert not [r for r in runs if r.info.status == "RUNNING"]  # the parent run too

    # A second Ctrl-C does not wait for the trial to be recorded.
    process = start(["--trials", 4, "--study", "stopped", *SLOW_SMOKE], tmp_path)
    second = running_trial(storage_url, "stopped", process)
    os.killpg(process.pid, signal.SIGINT)
    time.sleep(0.3)
    os.killpg(process.pid, signal.SIGINT)
    started = time.time()
    process.communicate(timeout=30)
    assert process.returncode == 130 and time.time() - started < 5
    # The worker was killed before it recorded its trial, just after, or between trials (a small
    # recipe can finish before the signal lands): whichever it was, the rerun must do exactly
    # what that state calls for.
    left = optuna.load_study(study_name="stopped", storage=sweep_study.open_storage(storage_url)).trials
    running = [t.number for t in left if t.state == TrialState.RUNNING]
    again = rerun(["--trials", 4, "--study", "stopped", *SLOW_SMOKE], tmp_path)
    assert again.returncode == 0, again.stderr
    study, runs = trials_and_runs(storage_url, "stopped", uri)
    if running:  # killed before recording it: ended, retried, not counted
        [lost] = running  # one worker
        assert f"Ended trial(s) {lost}: left running by a worker that is gone" in again.stdout
        assert f"Queued a retry of trial(s) {lost}" in again.stdout
        assert study.trials[lost].user_attrs["stop_cause"] == "worker_lost"
    else:  # it recorded the interruption first (a failed trial of its own) or had none running: nothing retried
        assert "Ended trial(s)" not in again.stdout and "Queued a retry" not in again.stdout
    for trial in left:
        if trial.state == TrialState.FAIL:
            assert study.trials[trial.number].user_attrs["stop_cause"] == "interrupted"
    check_consistent(study, runs, 4, lost=len(running))


# --- PostgreSQL ---------------------------------------------------------------------------

@pytest.fixture
def postgres():
    """Two fresh databases (Optuna's and MLflow's) on the server MNIST_SWEEPS_POSTGRES names."""
    if not POSTGRES:
        if os.environ.get("MNIST_SWEEPS_REQUIRE_POSTGRES") == "1":
            pytest.fail("MNIST_SWEEPS_POSTGRES is not set; .ci/run starts PostgreSQL and sets it")
        pytest.skip("needs a PostgreSQL server: set MNIST_SWEEPS_POSTGRES (.ci/run does)")
    import psycopg

    names = [f"sweeps_test_{uuid.uuid4().hex[:10]}" for _ in range(2)]
    admin = psycopg.connect(f"{POSTGRES}/postgres", autocommit=True)
    with admin.cursor() as cursor:
        for name in names:
            cursor.execute(f"CREATE DATABASE {name}")
    yield [f"{POSTGRES}/{name}" for name in names]
    with admin.cursor() as cursor:
        for name in names:
            cursor.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.close()


@pytest.fixture
def mlflow_server(postgres, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", postgres[1], "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1", "--artifacts-destination", (tmp_path / "artifacts").as_uri()],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=user_environment(), start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                break
        except OSError:
            assert server.poll() is None, server.stderr.read()
            time.sleep(0.5)
    yield url
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(20)


def test_three_invocations_share_one_study_on_postgresql_and_an_mlflow_server(postgres, mlflow_server, tmp_path):
    storage, tracking = postgres[0], mlflow_server
    argv = ["--trials", 6, "--study", "shared", "--storage", storage, "--tracking-uri", tracking, *FAST_SMOKE]
    machines = []
    for index in range(3):  # each in a folder of its own: they share nothing but the two servers
        (tmp_path / f"machine{index}").mkdir()
        machines.append(start(argv, tmp_path / f"machine{index}"))
    outputs = [process.communicate(timeout=400) for process in machines]
    assert [p.returncode for p in machines] == [0, 0, 0], [err for _, err in outputs]
    study, runs = trials_and_runs(storage, "shared", tracking)
    check_consistent(study, runs, 6)
    assert len({t.user_attrs["worker"] for t in study.trials}) == 3  # all three took trials
    assert [t.user_attrs.get("baseline") for t in study.trials[:5]] == list(sweep_run.search_space.BASELINES)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    # The UI's pages hold on a tracking server too: the front page, its plots, the datasets.
    client = mlflow.MlflowClient(tracking)
    assert "Best: " in parents[0].data.tags["mlflow.note.content"]
    assert "sweep_plots/optuna_plots.html" in [a.path for a in client.list_artifacts(parents[0].info.run_id, "sweep_plots")]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert all({i.dataset.name for i in r.inputs.dataset_inputs} >= {"mnist-train", "mnist-validation"} for r in children)
    assert f"{tracking}/#/experiments/" in outputs[0][0]  # the printed links point at the server
    # The password is in none of what was printed or recorded.
    password = storage.split("://", 1)[1].split("@")[0].split(":", 1)[1]
    recorded = [str(v) for r in runs for v in (*r.data.tags.values(), *r.data.params.values())]
    recorded += [str(v) for t in study.trials for v in t.user_attrs.values()] + [str(study.user_attrs)]
    assert not [text for text in [*recorded, *(o for pair in outputs for o in pair)] if password in text]
    assert ":***@" in outputs[0][0]  # the storage is named, redacted


def test_a_sweep_on_postgresql_and_a_tracking_server_prints_no_library_line(postgres, mlflow_server, tmp_path):
    """The terminal of a sweep on the shared stores: no Optuna heartbeat warning, no MLflow
    "View run" lines, nothing but what the project prints."""
    result = subprocess.run(sweep_command("--trials", 3, "--study", "quiet", "--storage", postgres[0],
                                          "--tracking-uri", mlflow_server, *FAST_SMOKE),
                            cwd=tmp_path, capture_output=True, text=True, timeout=400,
                            env={k: v for k, v in user_environment().items() if not k.startswith("PYTHONWARNINGS")})
    assert result.returncode == 0, result.stderr
    lines = (result.stdout + result.stderr.replace("\r", "\n")).splitlines()
    noise = [line for line in lines if "warn" in line.lower() or "View run" in line or "View experiment" in line
             or " INFO " in line]
    assert noise == []
    assert "3 trials" in result.stdout


def test_two_invocations_climb_one_ladder_once_on_postgresql_and_an_mlflow_server(postgres, mlflow_server, tmp_path):
    """Two machines on one study's whole ladder: they sample different recipes, promote and
    train each rung's recipes once, and one of them builds the one ensemble."""
    argv = ["--trials", 12, "--study", "dist", "--storage", postgres[0], "--tracking-uri", mlflow_server,
            "--budget", "smoke", "--train-size", 300, "--max-epochs", 1, "--workers", 1, "--pruner", "none"]
    machines = []
    for index in range(2):
        (tmp_path / f"machine{index}").mkdir()
        machines.append(start(argv, tmp_path / f"machine{index}"))
    outputs = [process.communicate(timeout=900) for process in machines]
    assert [p.returncode for p in machines] == [0, 0], [err[-3000:] for _, err in outputs]
    storage = sweep_study.open_storage(postgres[0])
    exploring, *rungs = (optuna.load_study(study_name=name, storage=storage)
                         for name in ("dist", "dist@smoke-long", "dist@smoke-full"))
    sampled = [t for t in exploring.trials if records.BASELINE not in t.user_attrs and records.RETRY_OF not in t.user_attrs]
    recipes = [json.dumps(t.params, sort_keys=True) for t in sampled]
    assert len(recipes) == 7 and len(set(recipes)) == 7  # no machine drew another's samples
    assert len({t.user_attrs[records.SAMPLER_SEED] for t in sampled}) >= 2
    for rung in rungs:  # each promoted recipe enqueued and trained once
        sources = [t.user_attrs[records.SOURCE_TRIAL] for t in rung.trials if records.RETRY_OF not in t.user_attrs]
        assert len(sources) == len(set(sources)), rung.study_name
        assert all(t.state == TrialState.COMPLETE for t in rung.trials), rung.study_name
    assert len(rungs[1].trials) == 3 + 5  # the finalists and the baselines
    client = tracking.client(mlflow_server)
    experiment = client.get_experiment_by_name(sweep_run.EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    assert len([r for r in runs if r.data.tags.get(records.FIDELITY) == records.ENSEMBLE_FIDELITY]) == 1
    versions = client.search_model_versions("name = 'mnist-digits'")
    result = records.ladder_result(exploring)
    registered = {result.ensemble.run_id, result.champion.run_id} | ({result.small.run_id} if result.small else set())
    # @champion, @ensemble and @small (unless it is the champion): each registered, and tested, once
    assert sorted(v.run_id for v in versions) == sorted(registered)


def test_kill_9_of_a_worker_on_postgresql_is_recovered(postgres, tmp_path):
    storage = postgres[0]
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    argv = ["--trials", 2, "--study", "crash", "--storage", storage, *SLOW_SMOKE]
    process = start(argv, tmp_path)
    victim = running_trial(storage, "crash", process)
    os.kill(int(victim.user_attrs["worker"].rsplit(":", 1)[1]), signal.SIGKILL)  # the worker only
    out, err = process.communicate(timeout=300)
    # At once, by the command whose worker died: the trial ended, retried, and the sweep goes on.
    assert process.returncode == 0 and "1 worker(s) exited abnormally" in err and "error" not in err
    assert f"Ended trial(s) {victim.number}" in out and f"Queued a retry of trial(s) {victim.number}" in out
    assert "1 trials lost with their worker" in out
    study, runs = trials_and_runs(storage, "crash", uri)
    check_consistent(study, runs, 2, lost=1)
    assert study.trials[victim.number].state == TrialState.FAIL
    [retry] = [t for t in study.trials if t.user_attrs.get("retry_of") == victim.number]
    assert retry.params == study.trials[victim.number].params


def test_a_wrong_database_password_is_one_line_without_the_password(postgres, tmp_path, run_command, monkeypatch):
    monkeypatch.chdir(tmp_path)
    user, rest = postgres[0].split("://", 1)[1].split(":", 1)
    wrong = f"postgresql://{user}:not-the-Secret-42@{rest.split('@', 1)[1]}"
    code, out, err = run_command(sweep_run.main, ["--trials", 2, "--storage", wrong, *FAST_SMOKE])
    assert code == 2 and err.count("\n") == 1 and "password authentication failed" in err
    assert "not-the-Secret-42" not in out + err and ":***@" in err


def test_a_trial_that_raises_is_recorded_as_failed_and_the_sweep_goes_on(tmp_path, monkeypatch):
    from test_sweep import worker_settings

    import train_trial
    from sweeps import objective

    real_log_trial, calls = train_trial.log_trial, []

    def out_of_memory_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise MemoryError("simulated: the network did not fit")
        return real_log_trial(*args, **kwargs)

    monkeypatch.setattr(train_trial, "log_trial", out_of_memory_once)
    settings = worker_settings(tmp_path, "raising", total_trials=2)
    study = optuna.load_study(study_name="raising", storage=sweep_study.open_storage(settings.storage_url))
    objective.worker_main(settings, 0)
    failed, completed = study.trials
    assert failed.state == TrialState.FAIL and completed.state == TrialState.COMPLETE
    assert failed.user_attrs["reason"] == "MemoryError: simulated: the network did not fit"
    run = mlflow.MlflowClient(settings.tracking_uri).get_run(failed.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and run.data.tags["reason"] == failed.user_attrs["reason"]
    assert supervisor.counts(study.trials)[TrialState.FAIL] == 1  # what the summary prints


# --- Stop signals land between writes -----------------------------------------------------

@pytest.mark.slow
def test_a_stop_signal_during_study_tell_lets_the_write_finish_then_the_worker_stops(tmp_path, monkeypatch):
    from test_sweep import worker_settings

    from sweeps import objective

    settings = worker_settings(tmp_path, "told", total_trials=3)
    study = optuna.load_study(study_name="told", storage=sweep_study.open_storage(settings.storage_url))
    real_tell, real_fsync, telling, signalled = optuna.Study.tell, os.fsync, [], []

    def tell(self, *args, **kwargs):
        telling.append(1)
        try:
            return real_tell(self, *args, **kwargs)
        finally:
            telling.pop()

    def fsync_signalled(descriptor):
        # Inside the journal's locked append of the tell's record: written, not yet synced.
        if telling and not signalled:
            signalled.append(1)
            os.kill(os.getpid(), signal.SIGTERM)  # what the parent sends on Ctrl-C
        return real_fsync(descriptor)

    monkeypatch.setattr(optuna.Study, "tell", tell)
    monkeypatch.setattr(os, "fsync", fsync_signalled)
    objective.worker_main(settings, 0)
    (trial,) = study.trials  # told once, then no further trial was asked for
    assert signalled == [1] and trial.state == TrialState.COMPLETE and trial.value is not None
    assert trial.user_attrs["stop_cause"] == "completed"
    run = mlflow.MlflowClient(settings.tracking_uri).get_run(trial.user_attrs["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    # The journal reads back whole: a second reader sees the same trial, finished.
    again = optuna.load_study(study_name="told", storage=sweep_study.open_storage(settings.storage_url))
    assert [t.state for t in again.trials] == [TrialState.COMPLETE]


@pytest.mark.slow
def test_a_stop_signal_mid_training_ends_the_trial_at_the_next_batch_as_interrupted(tmp_path, monkeypatch):
    from test_sweep import worker_settings

    import train_trial
    from sweeps import objective

    real_train, batches_after_signal = train_trial.train, []

    class SignalAtSecondBatch(train_trial.keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                os.kill(os.getpid(), signal.SIGTERM)
            elif batch > 1:
                batches_after_signal.append(batch)

    def train_signalled(*args, callbacks=(), **kwargs):
        return real_train(*args, callbacks=[SignalAtSecondBatch(), *callbacks], **kwargs)

    monkeypatch.setattr(train_trial, "train", train_signalled)
    settings = worker_settings(tmp_path, "interrupted", total_trials=3)
    study = optuna.load_study(study_name="interrupted", storage=sweep_study.open_storage(settings.storage_url))
    objective.worker_main(settings, 0)
    (trial,) = study.trials
    assert batches_after_signal == []  # stopped before the next batch ran
    assert trial.state == TrialState.FAIL and trial.user_attrs["reason"] == "interrupted by the user (Ctrl-C)"
    assert trial.user_attrs["stop_cause"] == "interrupted"
    run = mlflow.MlflowClient(settings.tracking_uri).get_run(trial.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags["stop_cause"] == "interrupted"
