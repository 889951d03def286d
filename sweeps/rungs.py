"""Carries an explored study up its fidelity ladder, a rung study at a time, and has the top
rung's models ensembled in a process of their own (sweeps/ensemble.py)."""

from __future__ import annotations

import dataclasses
import multiprocessing
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.trial import TrialState

from harness import records
from sweeps import answer, ladder, plan, recovery, study as sweep_study
from sweeps.plan import Phase, Plan, Stop, upper_rungs
from sweeps.settings import STORE_FAILED_EXIT, EnsembleSettings, SweepSettings
from sweeps.supervisor import Outcome, report_orphans, report_retries, supervise


def run_rung(phase: Phase, sweep_plan: Plan, exploring: optuna.Study, lower: optuna.Study, settings: SweepSettings,
             workers: int, storage, client, experiment_id: str, recover: Callable[[optuna.Study], None],
             command_ends: Callable[[float], float] | None = None) -> tuple[Outcome, optuna.Study]:
    """One rung of the ladder: once no trial of ``lower`` runs, promote its best into the rung's
    study, then train what it holds until it holds them all or its time is up. Returns how
    its workers ended."""
    rung = open_rung(exploring, storage, phase.budget)
    lock_path = str(Path(settings.lock_path).with_name(f"ask-{phase.budget.name}.lock"))
    # Another invocation's workers may still be finishing the rung below: promote from all of it.
    wait_for_running(lower, lambda: recover(lower), records.rung_budget_name(lower.study_name)
                     if lower is not exploring else "exploration")
    now = time.time()
    sweep_plan.start(phase, now)
    # Under the rung's lock, so invocations that reach the rung at once promote once.
    with sweep_study.ask_lock(storage, rung.study_name, lock_path):
        promoted = ladder.promote(lower, exploring, rung, phase.budget, phase.trials, top=phase.top,
                                  worker_seconds=(phase.deadline - now) * workers if phase.deadline else None)
    phase.trials = ladder.requested_trials(rung)
    # A rung study is single-objective (open_rung) whatever exploration's objectives: it
    # retrains the recipes exploration's front carried up, for accuracy at a higher fidelity;
    # their latencies are still logged, and the report draws the rung's fronts from them.
    rung_settings = dataclasses.replace(
        settings, study_name=rung.study_name, budget=phase.budget, pruner=phase.pruner, total_trials=phase.trials,
        objective=("accuracy",),
        last_start=phase.last_start, deadline=phase.deadline, fit_forecasts=True,
        any_start_until=phase.any_start_until, lock_path=lock_path)

    def recover_rung() -> None:
        where = f"Rung {phase.budget.name}: "
        report_orphans(recovery.end_orphaned_trials(rung, storage, client, experiment_id, settings.parent_run_id), where)
        report_retries(recovery.retry_lost_trials(rung, storage, rung_settings.lock_path), where)

    recover_rung()
    deadline = f"; ends by {time.strftime('%H:%M', time.localtime(phase.deadline))}" if phase.deadline else ""
    step = sweep_plan.rungs.index(phase) + 2
    print(f"Rung {step} of {len(sweep_plan.rungs) + 1}, {phase.budget.name} ({phase.budget.train_size or 'all'} training images, "
          f"up to {phase.budget.max_epochs} epochs): "
          f"{'promoted ' + ', '.join(promoted) if promoted else 'nothing new promoted'}{deadline}", flush=True)
    single = len(settings.objective) == 1  # only an accuracy sweep's ensemble gains from spare seeds

    def store_trials() -> list:
        return [trial for trials in sweep_study.other_top_rungs(storage, rung.study_name).values() for trial in trials]

    def top_up(now: float) -> str | None:
        with sweep_study.ask_lock(storage, rung.study_name, lock_path):
            added = ladder.top_up(lower, rung, phase.budget, phase.deadline, now, settings.seed, seeds=single,
                                  store_trials=store_trials)
        if added:
            print(f"Rung {phase.budget.name}: {added} queued too: a worker came free with time left that its "
                  "forecast fits", flush=True)
        return added

    ranked_below = ladder.ranked(lower.get_trials(deepcopy=False), ladder.pareto_front(lower))

    def forecast(trials: list, now: float) -> float:
        spare = ladder.spare_time(ranked_below, trials, phase.budget, phase.deadline, seeds=single) if phase.top else None
        return plan.rung_seconds_left(trials, phase.budget, workers, now, phase.deadline, spare)

    # Only the top rung tops up: time a middle rung leaves goes to the rungs above it.
    outcome = supervise(rung, rung_settings, workers, on_worker_lost=recover_rung, title=phase.title,
                        command_ends=command_ends, top_up=top_up if phase.top else None, rung_forecast=forecast)
    phase.trials = ladder.requested_trials(rung)
    if not outcome.interrupted and outcome.store_failure is None:
        recover_rung()
    return outcome, rung


def wait_for_running(study: optuna.Study, recover: Callable[[], None], what: str, poll_seconds: float = 5.0) -> None:
    """Return once no trial of ``study`` runs: those left are another invocation's (on this
    machine or another), finishing. ``recover`` ends the ones whose worker died meanwhile."""
    announced = False
    while running := study.get_trials(deepcopy=False, states=[TrialState.RUNNING]):
        if not announced:
            print(f"Waiting for {len(running)} trial(s) of {what} that another invocation is running", flush=True)
            announced = True
        time.sleep(poll_seconds)
        recover()


def existing_rungs(exploring: optuna.Study, storage, budget) -> list[optuna.Study]:
    """The upper rungs of ``exploring``'s ladder that an invocation has opened."""
    names = set(optuna.study.get_all_study_names(storage))
    return [optuna.load_study(study_name=name, storage=storage) for rung in upper_rungs(budget)
            if (name := records.rung_study_name(exploring.study_name, rung.name)) in names]


def open_rung(exploring: optuna.Study, storage, budget) -> optuna.Study:
    """The study of one upper rung of ``exploring``'s ladder, created on first use."""
    name = records.rung_study_name(exploring.study_name, budget.name)
    rung = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
    if records.EXPLORING_STUDY not in rung.user_attrs:
        rung.set_user_attr(records.EXPLORING_STUDY, exploring.study_name)
        rung.set_user_attr(records.FINGERPRINT, records.rung_fingerprint(records.recorded_fingerprint(exploring), budget))
    return rung


def _ensemble_process(settings: EnsembleSettings, failures) -> None:
    """The ensemble's process. A store it cannot write (a full disk) is put on ``failures``
    and ends it with STORE_FAILED_EXIT, as a worker does, for the parent's one line."""
    from harness import tracking
    from harness.errors import store_failure
    from sweeps import ensemble as top_rung_ensemble  # TensorFlow, in this process only

    try:
        top_rung_ensemble.main(settings)
    except Exception as error:
        if (failure := store_failure(error, tracking.database_file(settings.tracking_uri))) is None:
            raise
        failures.put(failure)
        sys.exit(STORE_FAILED_EXIT)


def ensemble(settings: EnsembleSettings, client, experiment_id: str) -> str | None:
    """Ensemble the top rung in a process of its own (the parent never loads TensorFlow).
    Returns why it failed, or None. An ensemble run left RUNNING (its process killed, here or
    by an earlier invocation) is closed as KILLED: a rerun builds a new one."""
    print("Ensembling the top rung: members chosen on validation log-loss, then one test pass each for the "
          "ensemble and the best single model", flush=True)
    close_stale_ensembles(settings.rung_study, client, experiment_id)
    context = multiprocessing.get_context("spawn")
    failures = context.SimpleQueue()
    process = context.Process(target=_ensemble_process, args=(settings, failures))
    process.start()
    try:
        process.join()
    except KeyboardInterrupt:  # Ctrl-C reached the ensemble's process too
        process.terminate()
        process.join()
        raise
    finally:
        close_stale_ensembles(settings.rung_study, client, experiment_id)
    if process.exitcode == STORE_FAILED_EXIT and not failures.empty():
        return (f"the ensemble step cannot write {failures.get()}; make room and run the same command again "
                "to retry it: every trained rung is kept")
    if process.exitcode != 0:
        return (f"the ensemble step failed (exit code {process.exitcode}); run the same command again "
                "to retry it: every trained rung is kept")
    return None


def close_stale_ensembles(rung_study: str, client, experiment_id: str) -> None:
    stale = client.search_runs([experiment_id], max_results=100, filter_string=(
        f"tags.{records.FIDELITY} = '{records.ENSEMBLE_FIDELITY}' and tags.{records.STUDY_TAG} = '{rung_study}' "
        "and attributes.status = 'RUNNING'"))
    for run in stale:
        client.set_tag(run.info.run_id, records.REASON, "its process ended before the ensemble was registered")
        client.set_terminated(run.info.run_id, "KILLED")


def ladder_summary(study: optuna.Study, climbed: list[tuple[Phase, optuna.Study]]) -> str:
    """Each rung's results, then the headline: the ensemble and the best single model."""
    lines = []
    for phase, rung in climbed:
        trials = sorted((t for t in rung.get_trials(deepcopy=False) if records.accuracy(t) is not None),
                        key=records.accuracy, reverse=True)
        waiting = sum(t.state == TrialState.WAITING for t in rung.get_trials(deepcopy=False))
        why = phase.detail or ("the rung's time ran out" if phase.stopped == Stop.OUT_OF_TIME else "the rung was stopped")
        untrained = f"; {waiting} not started ({why})" if waiting else ""
        lines.append(f"Rung {phase.budget.name}: "
                     + (", ".join(f"{records.label(t)} {records.accuracy(t):.4f}" for t in trials) or "nothing finished") + untrained)
    result = records.ladder_result(study)
    if result:
        lines += answer.answer_lines(result)
        lines.append(f"Label your digits with it: python -m digits.predict --model {result.ensemble.model} YOUR.csv")
    return "\n".join(lines)
