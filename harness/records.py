"""What a sweep stores about itself, in one place: the keys of its Optuna user attributes
and MLflow tags, why each trial stopped, the study's fingerprint and a trial's label.

Every module that writes or reads a study (the workers, the parent, recovery, reproduce,
the report) goes through these names, so a key is spelled once.
"""

from __future__ import annotations

import dataclasses
import enum

import optuna
from optuna.trial import FrozenTrial, TrialState

import search_space
from harness.budgets import Budget
from harness.errors import UserError

# --- Keys ---------------------------------------------------------------------------------
# A study's user attributes.
FINGERPRINT = "fingerprint"  # what must not change between invocations (fingerprint())
PARENT_RUN_ID = "mlflow_parent_run_id"  # the study's MLflow run, under which trials nest

# A trial's user attributes.
BASELINE = "baseline"  # the seed recipe's name, for the five enqueued baseline trials
WORKER = "worker"  # "host:pid" of the process that ran it; recovery reads it
MLFLOW_RUN_ID = "mlflow_run_id"  # the trial's MLflow run
WORKER_RSS_MB = "worker_rss_mb"  # the worker's resident size before training, where known: growth shows leaks
STOP_CAUSE = "stop_cause"  # a StopCause value
REASON = "reason"  # the same, in words, with the numbers (also an MLflow tag)
LEGACY_PRICED_OUT = "priced_out"  # studies before stop_cause marked priced-out samples so
RETRY_OF = "retry_of"  # on a retry: the number of the trial lost with its worker that it repeats
# The ladder: a promoted trial's rung (its budget's name; also an MLflow tag) and the trial of
# the exploring study it carries up (also an MLflow tag). A rung study's user attributes name
# the exploring study it belongs to.
FIDELITY = "fidelity"
SOURCE_TRIAL = "source_trial"
EXPLORING_STUDY = "exploring_study"
# The exploring study's user attribute once the ladder has ended: the top rung's champion and
# ensemble, with their validation and (read once) test accuracies and registered versions.
LADDER_RESULT = "ladder_result"

# A trial's MLflow run tags (REASON and STOP_CAUSE too).
STUDY_TAG = "optuna_study"
TRIAL_NUMBER_TAG = "optuna_trial_number"
STATE_TAG = "optuna_state"
# MLflow's own tags (mlflow.utils.mlflow_tags): the one that nests a run under another in the
# UI, and the run's Description (markdown).
PARENT_RUN_TAG = "mlflow.parentRunId"
NOTE_TAG = "mlflow.note.content"


class StopCause(str, enum.Enum):
    """Why a trial stopped training, as a value a reader can branch on."""
    COMPLETED = "completed"  # its epochs ran out, or early stopping ended it
    TIME_SHARE = "time_share"  # it ran past its share of the sweep's time; best epoch kept
    PRUNED = "pruned"  # the pruner judged it behind the others
    PRICED_OUT = "priced_out"  # priced over the budget's compute cap; never trained
    DIVERGED = "diverged"  # its loss became NaN or infinite
    INTERRUPTED = "interrupted"  # the user stopped the sweep (Ctrl-C)
    WORKER_LOST = "worker_lost"  # its worker was killed, crashed, or fell silent
    STORE_FAILED = "store_failed"  # a store could not be written (full disk, size limit, I/O error)
    ERROR = "error"  # anything else raised while it ran


def stop_cause(trial: FrozenTrial) -> StopCause | None:
    """Why the trial stopped; None while it runs or waits. Studies recorded before the
    cause was stored get the nearest cause their state allows."""
    recorded = trial.user_attrs.get(STOP_CAUSE)
    if recorded is not None:
        return StopCause(recorded)
    if trial.user_attrs.get(LEGACY_PRICED_OUT):
        return StopCause.PRICED_OUT
    if trial.state == TrialState.FAIL:  # a storage fails a silent worker's trial without a word
        return StopCause.ERROR if REASON in trial.user_attrs else StopCause.WORKER_LOST
    return {TrialState.COMPLETE: StopCause.COMPLETED, TrialState.PRUNED: StopCause.PRUNED}.get(trial.state)


def label(trial: FrozenTrial | optuna.Trial) -> str:
    """How a trial is named in runs, tables and messages: a baseline by its name, a promoted
    trial by the exploring trial it carries up."""
    if BASELINE in trial.user_attrs:
        return trial.user_attrs[BASELINE]
    return f"trial {trial.user_attrs.get(SOURCE_TRIAL, trial.number)}"


def rung_study_name(exploring_study: str, budget_name: str) -> str:
    """The Optuna study that holds one upper rung of a sweep's ladder."""
    return f"{exploring_study}@{budget_name}"


def rung_budget_name(rung_study: str) -> str:
    """The budget a ladder rung's study trains at (the inverse of rung_study_name)."""
    return rung_study.rpartition("@")[2]


def trial_run_tags(study_name: str, trial_number: int, parent_run_id: str) -> dict[str, str]:
    """The tags that tie a trial's MLflow run to its study, its trial and the parent run."""
    return {PARENT_RUN_TAG: parent_run_id, STUDY_TAG: study_name, TRIAL_NUMBER_TAG: str(trial_number)}


def trial_note(label_: str, study_name: str, recipe: str, layers: list[tuple[str, str]]) -> str:
    """The head of a trial run's Description: what the network is, layer by layer."""
    rows = "\n".join(f"| {layer} | {shape} |" for layer, shape in layers)
    return (f"**{label_}** of study `{study_name}`: {recipe}\n\n"
            f"| layer | output |\n| --- | --- |\n{rows}\n")


def trial_note_ending(note: str, cause: StopCause, reason: str | None, value: float | None) -> str:
    """The Description once the trial has ended: how it stopped, with the reason."""
    result = f"; validation accuracy {value:.4f}" if value is not None else ""
    return f"{note}\n**How it stopped:** `{cause.value}`{result}" + (f": {reason}" if reason else "") + "\n"


# --- Counting ------------------------------------------------------------------------------

def priced_out(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if stop_cause(t) == StopCause.PRICED_OUT]


# Causes outside a trial's own code: such a trial is retried once with the same params.
NOT_THE_TRIALS_FAULT = (StopCause.WORKER_LOST, StopCause.STORE_FAILED)


def lost_first_time(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Trials lost to their worker's end (killed, crashed, silent) or to a store that could not
    be written, that are not themselves retries: each is retried once (sweeps.recovery)."""
    return [t for t in trials if stop_cause(t) in NOT_THE_TRIALS_FAULT and RETRY_OF not in t.user_attrs]


def counted_trials(trials: list[FrozenTrial], total: int) -> int:
    """Trials that count toward --trials: all but those still waiting in the queue, those
    priced over the cap, which cost a second and train nothing, and those lost with their
    worker the first time, whose retry counts instead (a crash costs time, not a sample; a
    retry lost too counts, so a sweep whose workers keep dying still ends). Priced-out
    samples stop being free after ``total`` of them, so a sweep whose space is mostly over
    its cap still ends."""
    started = [t for t in trials if t.state != TrialState.WAITING]
    return len(started) - min(len(priced_out(started)), total) - len(lost_first_time(started))


# --- The fingerprint -----------------------------------------------------------------------

def fingerprint(data_sha256: str, budget: Budget, split_seed: int) -> dict:
    """What must not change between invocations that add trials to one study."""
    return {"search_space_version": search_space.SEARCH_SPACE_VERSION, "data_sha256": data_sha256,
            "split_seed": split_seed, "budget": trials_budget(budget)}


def trials_budget(budget: Budget) -> dict:
    """What of a budget shapes its trials: the wall-clocks bound one invocation, so are left out."""
    return {k: v for k, v in dataclasses.asdict(budget).items() if k not in ("sweep_seconds", "ladder_seconds")}


def rung_fingerprint(exploring: dict, budget: Budget) -> dict:
    """A ladder rung's fingerprint: its exploring study's, with the rung's own budget."""
    return {**exploring, "budget": trials_budget(budget)}


def recorded_fingerprint(study: optuna.Study) -> dict:
    """The study's fingerprint, or {} for a study sweeps.run did not (finish) setting up."""
    return study.user_attrs.get(FINGERPRINT, {})


def recorded_budget(study: optuna.Study) -> Budget:
    """The budget a sweep's trials were trained at, from its fingerprint."""
    recorded = recorded_fingerprint(study).get("budget")
    if recorded is None:
        raise UserError(f"study {study.study_name!r} has no recorded budget (not made by sweeps.run); pass --budget")
    # Fingerprints from before first_rung existed: it only steers pruning, not training.
    return Budget(**{"first_rung": 1, **recorded})


def describe_difference(recorded: dict, requested: dict) -> str:
    differences = []
    for key in requested:
        if key == "budget":
            differences += [f"budget {k} {recorded[key].get(k)} -> {v}"
                            for k, v in requested[key].items() if recorded[key].get(k) != v]
        elif recorded.get(key) != requested[key]:
            differences.append(f"{key} {str(recorded.get(key))[:12]} -> {str(requested[key])[:12]}")
    return ", ".join(differences)
