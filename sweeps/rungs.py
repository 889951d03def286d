"""Carries an explored study up its fidelity ladder, a rung study at a time, and has the top
rung's models ensembled in a process of their own (sweeps/ensemble.py)."""

from __future__ import annotations

import dataclasses
import multiprocessing
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from sweeps import ladder, records, recovery
from sweeps.settings import EnsembleSettings, SweepSettings
from sweeps.supervisor import Outcome, report_orphans, report_retries, supervise


def describe_ladder(budget, rungs, finalists: int, seconds: float | None) -> str:
    counts = ladder.promotion_counts(finalists, len(rungs))
    steps = [f"{budget.name} (explore)"] + [
        f"{rung.name} ({rung.train_size or 'all'} images, {rung.max_epochs} epochs: best {count}"
        f"{' and the 5 baselines' if index == len(rungs) - 1 else ''})"
        for index, (rung, count) in enumerate(zip(rungs, counts))]
    limit = f", all within {seconds / 3600:g} h" if seconds else ""
    return f"Ladder: {' -> '.join(steps)}, then an ensemble of the top rung's best{limit}"


def climb(study: optuna.Study, settings: SweepSettings, workers: int, storage, client, experiment_id: str,
          finalists: int, ladder_ends: float | None) -> tuple[Outcome, list[optuna.Study]]:
    """Carry the explored trials up the ladder, a rung at a time: promote, train, go on.
    Returns how the last rung's workers ended and the rung studies climbed so far."""
    rungs = ladder.upper_rungs(settings.budget)
    counts = ladder.promotion_counts(finalists, len(rungs))
    lower, climbed, outcome = study, [], Outcome()
    for index, (budget, count) in enumerate(zip(rungs, counts)):
        rung = open_rung(study, storage, budget)
        climbed.append(rung)
        now = time.time()
        ends = ladder.rung_ends(now, ladder_ends, len(rungs) - index)
        promoted = ladder.promote(lower, study, rung, budget, count, top=index == len(rungs) - 1,
                                  worker_seconds=(ends - now) * workers if ends else None)
        rung_settings = dataclasses.replace(
            settings, study_name=rung.study_name, budget=budget, pruner="none",
            total_trials=ladder.requested_trials(rung), last_start=ladder.rung_last_start(now, ends, budget),
            ends_by=ends, lock_path=str(Path(settings.lock_path).with_name(f"ask-{budget.name}.lock")))

        def recover_rung(rung=rung, lock_path=rung_settings.lock_path) -> None:
            where = f"Rung {records.rung_budget_name(rung.study_name)}: "
            report_orphans(recovery.end_orphaned_trials(rung, storage, client, experiment_id, settings.parent_run_id), where)
            report_retries(recovery.retry_lost_trials(rung, storage, lock_path), where)

        recover_rung()
        deadline = f"; ends by {time.strftime('%H:%M', time.localtime(ends))}" if ends else ""
        print(f"Rung {index + 2} of {len(rungs) + 1}, {budget.name} ({budget.train_size or 'all'} training images, "
              f"up to {budget.max_epochs} epochs): "
              f"{'promoted ' + ', '.join(promoted) if promoted else 'nothing new promoted'}{deadline}", flush=True)
        outcome = supervise(rung, rung_settings, workers, on_worker_lost=recover_rung,
                            phase=f"rung {index + 2}/{len(rungs) + 1} ({budget.name})")
        if outcome.interrupted or outcome.store_failure is not None:
            return outcome, climbed
        recover_rung()
        lower = rung
    return outcome, climbed


def existing_rungs(exploring: optuna.Study, storage, budget) -> list[optuna.Study]:
    """The upper rungs of ``exploring``'s ladder that an invocation has opened."""
    names = set(optuna.study.get_all_study_names(storage))
    return [optuna.load_study(study_name=name, storage=storage) for rung in ladder.upper_rungs(budget)
            if (name := records.rung_study_name(exploring.study_name, rung.name)) in names]


def open_rung(exploring: optuna.Study, storage, budget) -> optuna.Study:
    """The study of one upper rung of ``exploring``'s ladder, created on first use."""
    name = records.rung_study_name(exploring.study_name, budget.name)
    rung = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
    if records.EXPLORING_STUDY not in rung.user_attrs:
        rung.set_user_attr(records.EXPLORING_STUDY, exploring.study_name)
        rung.set_user_attr(records.FINGERPRINT, records.rung_fingerprint(records.recorded_fingerprint(exploring), budget))
    return rung


def _ensemble_process(settings: EnsembleSettings) -> None:
    from sweeps import ensemble as top_rung_ensemble  # TensorFlow, in this process only

    top_rung_ensemble.main(settings)


def ensemble(settings: EnsembleSettings, client, experiment_id: str) -> str | None:
    """Ensemble the top rung in a process of its own (the parent never loads TensorFlow).
    Returns why it failed, or None. An ensemble run left RUNNING (its process killed, here or
    by an earlier invocation) is closed as KILLED: a rerun builds a new one."""
    print("Ensembling the top rung: k chosen on validation, then one test pass each for the ensemble "
          "and the best single model", flush=True)
    close_stale_ensembles(settings.rung_study, client, experiment_id)
    process = multiprocessing.get_context("spawn").Process(target=_ensemble_process, args=(settings,))
    process.start()
    try:
        process.join()
    except KeyboardInterrupt:  # Ctrl-C reached the ensemble's process too
        process.terminate()
        process.join()
        raise
    finally:
        close_stale_ensembles(settings.rung_study, client, experiment_id)
    if process.exitcode != 0:
        return (f"the ensemble step failed (exit code {process.exitcode}); run the same command again "
                "to retry it: every trained rung is kept")
    return None


def close_stale_ensembles(rung_study: str, client, experiment_id: str) -> None:
    stale = client.search_runs([experiment_id], max_results=100, filter_string=(
        f"tags.{records.FIDELITY} = 'ensemble' and tags.{records.STUDY_TAG} = '{rung_study}' "
        "and attributes.status = 'RUNNING'"))
    for run in stale:
        client.set_tag(run.info.run_id, records.REASON, "its process ended before the ensemble was registered")
        client.set_terminated(run.info.run_id, "KILLED")


def ladder_summary(study: optuna.Study, climbed: list[optuna.Study]) -> str:
    """Each rung's results, then the headline: the top rung's winner and the ensemble."""
    lines = []
    for rung in climbed:
        trials = sorted((t for t in rung.get_trials(deepcopy=False) if t.value is not None),
                        key=lambda t: t.value, reverse=True)
        budget = records.rung_budget_name(rung.study_name)
        waiting = sum(t.state == TrialState.WAITING for t in rung.get_trials(deepcopy=False))
        untrained = f"; {waiting} not started (the rung's time ran out)" if waiting else ""
        lines.append(f"Rung {budget}: " + (", ".join(f"{records.label(t)} {t.value:.4f}" for t in trials) or "nothing finished")
                     + untrained)
    result = study.user_attrs.get(records.LADDER_RESULT)
    if result:
        champion, averaged = result["champion"], result["ensemble"]
        lines.append(f"Top rung's winner: {champion['label']}, validation {champion['validation_accuracy']:.4f}, "
                     f"test {champion['test_accuracy']:.4f} (read once): {champion['model']}")
        if "runner_up" in champion:
            lines.append("  " + ladder.describe_lead(champion))
        lines.append(f"Ensemble of {len(averaged['members'])} ({', '.join(averaged['members'])}; k chosen on validation): "
                     f"validation {averaged['validation_accuracy']:.4f}, test {averaged['test_accuracy']:.4f} "
                     f"(read once): {averaged['model']}")
        lines.append(f"Label your digits with it: python -m digits.predict --model {averaged['model']} YOUR.csv")
    return "\n".join(lines)
