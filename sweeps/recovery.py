"""Ends trials whose worker is gone (killed, crashed, or its machine lost), so none stays
RUNNING forever: FAIL in Optuna and KILLED in MLflow, each with the reason; and retries each
such trial once with the same params.

A worker here that no longer exists is known at once from its process id. A worker on
another machine is known by silence: an RDB storage fails trials whose heartbeat stopped
(see study.HEARTBEAT_SECONDS), and their MLflow runs are then closed here too.
"""

from __future__ import annotations

import os
import socket
import warnings
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from harness import records
from harness.records import StopCause
from sweeps import study as sweep_study


def end_orphaned_trials(study: optuna.Study, storage: optuna.storages.BaseStorage, client,
                        experiment_id: str, parent_run_id: str) -> list[int]:
    """Fail this host's RUNNING trials whose worker process is gone, and close the MLflow
    runs of trials the storage failed for silence; returns the trial numbers ended here."""
    reasons = {}
    for trial in study.get_trials(deepcopy=False, states=[TrialState.RUNNING]):
        pid = local_worker_pid(trial)
        if pid is not None and not process_alive(pid):
            reasons[trial.number] = f"its worker (process {pid} on this machine) is gone: killed or crashed mid-trial"
            trial_id = sweep_study.trial_id(storage, study, trial.number)
            storage.set_trial_user_attr(trial_id, records.STOP_CAUSE, StopCause.WORKER_LOST.value)
            storage.set_trial_user_attr(trial_id, records.REASON, reasons[trial.number])
            study.tell(trial.number, state=TrialState.FAIL)
    if isinstance(storage, optuna.storages.RDBStorage):
        with warnings.catch_warnings():  # marked experimental in Optuna 4
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    for trial in study.get_trials(deepcopy=False, states=[TrialState.FAIL]):
        if trial.number not in reasons and records.REASON in trial.user_attrs:
            continue  # failed and recorded by its own worker
        run = trial_run(client, study, trial, experiment_id)
        if trial.number not in reasons and run is not None and run.info.status != "RUNNING":
            continue  # closed here before
        # Failed by the storage for silence: a finished trial takes no new attributes, so
        # its reason goes to the MLflow run only.
        reasons.setdefault(trial.number, f"its worker ({trial.user_attrs.get(records.WORKER, 'unknown')}) sent no "
                                         f"heartbeat for {sweep_study.GRACE_SECONDS} s: killed, crashed or cut off")
        if run is None:  # the worker died before starting one; runs and trials stay one to one
            run = client.create_run(experiment_id, run_name=records.label(trial),
                                    tags=records.trial_run_tags(study.study_name, trial.number, parent_run_id))
        for key, value in {records.STATE_TAG: TrialState.FAIL.name, records.STOP_CAUSE: StopCause.WORKER_LOST.value,
                           records.REASON: reasons[trial.number]}.items():
            client.set_tag(run.info.run_id, key, value)
        client.set_terminated(run.info.run_id, "KILLED")
    return sorted(reasons)


def retry_lost_trials(study: optuna.Study, storage: optuna.storages.BaseStorage, lock_path: str) -> list[int]:
    """Enqueue, once, a trial with the same params (and baseline name) for each trial lost with
    its worker, as Optuna's retry callbacks do for stale trials on an RDB storage; returns the
    numbers of the trials retried here. A trial that failed by itself (an error, a NaN loss) is
    not retried: it would fail again. Under the ask lock, so two invocations recovering the
    same study enqueue one retry."""
    with sweep_study.ask_lock(storage, study.study_name, lock_path):
        trials = study.get_trials(deepcopy=False)
        retried = {t.user_attrs[records.RETRY_OF] for t in trials if records.RETRY_OF in t.user_attrs}
        lost = [t for t in records.lost_first_time(trials) if t.number not in retried]
        for trial in lost:
            attributes = {records.RETRY_OF: trial.number}
            # What it was enqueued as.
            for key in (records.BASELINE, records.SOURCE_TRIAL, records.FIDELITY, records.FORECAST_SECONDS,
                        records.TRAINING_SEED):
                if key in trial.user_attrs:
                    attributes[key] = trial.user_attrs[key]
            study.enqueue_trial(trial.params, user_attrs=attributes)
    return [trial.number for trial in lost]


# Kept free in the stores' folder, and given back when a store fills up, so that the trials
# in flight and the sweep's parent run can still be closed (SQLite needs room even to update
# a row) and the command ends with nothing left RUNNING.
SPACE_RESERVE = ".space-reserve"
SPACE_RESERVE_BYTES = 1 << 20


def reserve_space(folder: Path) -> None:
    """Make sure the reserve is there; without room for it the sweep goes on without one."""
    path = folder / SPACE_RESERVE
    try:
        if not path.is_file() or path.stat().st_size < SPACE_RESERVE_BYTES:
            with open(path, "wb") as handle:
                handle.write(bytes(SPACE_RESERVE_BYTES))  # written, so the blocks are really taken
                handle.flush()
                os.fsync(handle.fileno())
    except OSError:
        path.unlink(missing_ok=True)


def release_space(folder: Path) -> None:
    (folder / SPACE_RESERVE).unlink(missing_ok=True)


def trial_run(client, study: optuna.Study, trial: FrozenTrial, experiment_id: str):
    """The trial's MLflow run, or None if its worker never started one."""
    if records.MLFLOW_RUN_ID in trial.user_attrs:
        return client.get_run(trial.user_attrs[records.MLFLOW_RUN_ID])
    found = client.search_runs([experiment_id], max_results=1, filter_string=(
        f"tags.{records.STUDY_TAG} = '{study.study_name}' and tags.{records.TRIAL_NUMBER_TAG} = '{trial.number}'"))
    return found[0] if found else None


def local_worker_pid(trial: FrozenTrial) -> int | None:
    host, _, pid = trial.user_attrs.get(records.WORKER, "").rpartition(":")
    return int(pid) if host == socket.gethostname() and pid.isdigit() else None


def process_alive(pid: int) -> bool:
    """Whether a Python process with this id runs here (a reused id of another program is not
    the worker)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return b"python" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
