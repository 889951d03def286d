"""What the project stores about its runs and sweeps, in one place: the keys of Optuna user
attributes and MLflow tags, why each trial stopped, a study's fingerprint, a trial's label and
the ladder's result.

Every module that writes or reads a run or a study (a trained run's tags, the sweep's
workers and parent, recovery, reproduce, the report) goes through these names, so a key is
spelled once. It lives in harness/ because training itself (train_trial.py) writes run tags.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
from dataclasses import dataclass, field

import optuna
from optuna.trial import FrozenTrial, TrialState

from harness.budgets import Budget
from harness.errors import UserError

# --- Keys ---------------------------------------------------------------------------------
# A study's user attributes.
FINGERPRINT = "fingerprint"  # what must not change between invocations (fingerprint())
PARENT_RUN_ID = "mlflow_parent_run_id"  # the study's MLflow run, under which trials nest

# A trial's user attributes.
BASELINE = "baseline"  # the seed recipe's name, for the five enqueued baseline trials
WORKER = "worker"  # "host:pid" of the process that ran it; recovery reads it
SAMPLER_SEED = "sampler_seed"  # the seed of the sampler its worker drew it with
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
# A promoted trial's forecast: the seconds it is expected to train at its rung (sweeps.plan.price).
FORECAST_SECONDS = "forecast_seconds"
# A trial that trained nothing itself: the finished run whose model and figures it took
# (also an MLflow tag, linking the two), and the seconds an epoch cost that run.
REUSED_FROM = "reused_from"
SECONDS_PER_EPOCH = "seconds_per_epoch"
# A top-rung trial that trains a finalist's recipe again with another seed (sweeps.ladder.top_up):
# its seed, which its run is tagged with and its label names.
TRAINING_SEED = "training_seed"
# A trial's validation log-loss at its own temperature (harness.calibration.scores).
CALIBRATED_LOG_LOSS = "calibrated_log_loss"
# A trial enqueued from an earlier study's best: "study#trial".
WARM_START = "warm_start"
EXPLORING_STUDY = "exploring_study"
# The exploring study's user attribute once the ladder has ended: a LadderResult.
LADDER_RESULT = "ladder_result"

# A trial's MLflow run tags (REASON, STOP_CAUSE, FIDELITY and SOURCE_TRIAL too).
STUDY_TAG = "optuna_study"
TRIAL_NUMBER_TAG = "optuna_trial_number"
STATE_TAG = "optuna_state"

# Provenance, on every run and a sweep's parent run (harness.tracking.provenance_tags):
# "version.<package>" for each package that shapes a result, Python's version, the Keras
# backend, and the code's git commit.
VERSION_TAG_PREFIX = "version."
KERAS_BACKEND_TAG = "keras_backend"
GIT_COMMIT_TAG = "git_commit"

# What any training run is tagged with, so it can be re-run: the recipe's baseline name (or
# "none"), the budget, the data and split, the seed (harness.run_logging.run_tags).
BASELINE_TAG = "baseline"
BUDGET_TAG = "budget"
BUDGET_MAX_EPOCHS_TAG = "budget.max_epochs"
BUDGET_PATIENCE_TAG = "budget.patience"
DATA_SOURCE_TAG = "data_source"
DATA_FORMAT_TAG = "data_format"
DATA_SHA256_TAG = "data_sha256"
SPLIT_SEED_TAG = "split_seed"
VALIDATION_SIZE_TAG = "validation_size"
VALIDATION_SHA256_TAG = "validation_sha256"
TRAIN_SIZE_TAG = "train_size"
SEED_TAG = "seed"
FAILURE_REASON_TAG = "failure_reason"  # a run whose loss diverged
# What a training run's result depends on, hashed (training_fingerprint): two runs with the
# same one train the same model, so a sweep reuses the first instead of training it again.
TRAINING_FINGERPRINT_TAG = "training_fingerprint"
PREDICT_THREADS_TAG = "predict_threads"  # CPU threads the prediction latency metrics were timed on
# The runs table's Source column (a sweep worker's own command line is multiprocessing's).
SOURCE_NAME_TAG = "mlflow.source.name"
SOURCE_TYPE_TAG = "mlflow.source.type"

# The sweep's parent run: its settings, and its answer once the ladder has one.
STORAGE_TAG = "optuna_storage"
SWEEP_TRIALS_TAG = "sweep.trials"
SWEEP_SAMPLER_TAG = "sweep.sampler"
SWEEP_PRUNER_TAG = "sweep.pruner"
SWEEP_WORKERS_TAG = "sweep.workers"
SWEEP_BUDGET_TAG = "sweep.budget"
SWEEP_OBJECTIVE_TAG = "sweep.objective"
SWEEP_FINGERPRINT_TAG = "sweep.fingerprint"
BEST_TRIAL_TAG = "best_trial"
TOP_RUNG_WINNER_TAG = "top_rung_winner"
# The ensemble's run: its members, best validation first.
ENSEMBLE_MEMBERS_TAG = "ensemble.members"
ENSEMBLE_FIDELITY = "ensemble"  # its FIDELITY tag

# A registered model version's tags, and a reproduced run's: where it came from.
SOURCE_STUDY_TAG = "source_study"
SOURCE_TRIAL_TAG = "source_trial"
SOURCE_RUN_ID_TAG = "source_run_id"
SOURCE_VALUE_TAG = "source_value"
MEMBERS_TAG = "members"
VALIDATION_ACCURACY_TAG = "validation_accuracy"
TEST_ACCURACY_TAG = "test_accuracy"
# A reused model's run: the run whose one test pass its test figure is (it is not read again).
TEST_READ_BY_TAG = "test_read_by"
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
    trial by the exploring trial it carries up, and a recipe trained again with another seed
    by that and its seed."""
    name = trial.user_attrs[BASELINE] if BASELINE in trial.user_attrs else \
        f"trial {trial.user_attrs.get(SOURCE_TRIAL, trial.number)}"
    return seeded(name, trial.user_attrs.get(TRAINING_SEED))


def seeded(name: str, seed: int | None) -> str:
    """A recipe's name, with the seed it was trained again with, if any."""
    return name if seed is None else f"{name} seed {seed}"


def accuracy(trial: FrozenTrial) -> float | None:
    """A trial's validation accuracy: its value, the first of its values in a multi-objective
    study (whose FrozenTrial.value raises); None for a trial without one."""
    return trial.values[0] if trial.values else None


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The completed trial with the best validation accuracy (Study.best_trial, which a
    multi-objective study does not have); None before any has completed."""
    return max(study.get_trials(deepcopy=False, states=[TrialState.COMPLETE]), key=accuracy, default=None)


def model_run_id(trial: FrozenTrial) -> str | None:
    """The MLflow run that holds a trial's model: its own, or the run it reused."""
    return trial.user_attrs.get(REUSED_FROM) or trial.user_attrs.get(MLFLOW_RUN_ID)


def training_fingerprint(params: dict, budget: Budget, seed: int, data_sha256: str, train_sha256: str,
                         validation_sha256: str, code_version: int, backend: str) -> str:
    """A digest of everything a training run's result depends on: the recipe, the per-trial
    budget, the seed, the data and both halves of its split, the training code's version and
    the Keras backend."""
    payload = {"params": params, "budget": dataclasses.asdict(budget), "seed": seed, "data_sha256": data_sha256,
               "train_sha256": train_sha256, "validation_sha256": validation_sha256,
               "code_version": code_version, "backend": backend}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def rung_study_name(exploring_study: str, budget_name: str) -> str:
    """The Optuna study that holds one upper rung of a sweep's ladder."""
    return f"{exploring_study}@{budget_name}"


def rung_budget_name(rung_study: str) -> str:
    """The budget a ladder rung's study trains at (the inverse of rung_study_name)."""
    return rung_study.rpartition("@")[2]


def exploring_study_name(rung_study: str) -> str:
    """The exploring study a ladder rung's study belongs to."""
    return rung_study.rpartition("@")[0]


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

# A fingerprint's keys. Its budget is the per-trial budget only: older studies recorded the
# ladder's policy there too (promotes_to, and before that the wall-clocks), which matching
# ignores, so they still resume.
SEARCH_SPACE_VERSION_KEY = "search_space_version"
DATA_SHA256_KEY = "data_sha256"
SPLIT_SEED_KEY = "split_seed"
BUDGET_KEY = "budget"
OBJECTIVE_KEY = "objective"  # absent from studies made before multi-objective sweeps: accuracy alone
DEFAULT_OBJECTIVE = ["accuracy"]


def fingerprint(search_space_version: int, data_sha256: str, budget: Budget, split_seed: int,
                objective: tuple[str, ...] = ("accuracy",)) -> dict:
    """What must not change between invocations that add trials to one study."""
    return {SEARCH_SPACE_VERSION_KEY: search_space_version, DATA_SHA256_KEY: data_sha256,
            SPLIT_SEED_KEY: split_seed, BUDGET_KEY: dataclasses.asdict(budget), OBJECTIVE_KEY: list(objective)}


def rung_fingerprint(exploring: dict, budget: Budget) -> dict:
    """A ladder rung's fingerprint: its exploring study's, with the rung's own budget."""
    return {**exploring, BUDGET_KEY: dataclasses.asdict(budget)}


def same_setup(recorded: dict, requested: dict) -> bool:
    """Whether a study recorded with ``recorded`` may take trials set up as ``requested``."""
    return not _differences(recorded, requested)


def _differences(recorded: dict, requested: dict) -> list[str]:
    differences = []
    for key, value in requested.items():
        if key == BUDGET_KEY:
            old = _budget_fields(recorded.get(BUDGET_KEY) or {})
            differences += [f"budget {k} {old.get(k)} -> {v}" for k, v in value.items() if old.get(k) != v]
        elif key == OBJECTIVE_KEY:
            if (old := recorded.get(key, DEFAULT_OBJECTIVE)) != value:
                differences.append(f"objective {','.join(old)} -> {','.join(value)}")
        elif recorded.get(key) != value:
            differences.append(f"{key} {str(recorded.get(key))[:12]} -> {str(value)[:12]}")
    return differences


def _budget_fields(recorded: dict) -> dict:
    """A recorded budget's per-trial fields (what older studies recorded beside them is policy)."""
    names = {f.name for f in dataclasses.fields(Budget)}
    return {k: v for k, v in recorded.items() if k in names}


def recorded_fingerprint(study: optuna.Study) -> dict:
    """The study's fingerprint, or {} for a study sweeps.run did not (finish) setting up."""
    return study.user_attrs.get(FINGERPRINT, {})


def recorded_budget(study: optuna.Study) -> Budget:
    """The budget a sweep's trials were trained at, from its fingerprint."""
    recorded = recorded_fingerprint(study).get(BUDGET_KEY)
    if recorded is None:
        raise UserError(f"study {study.study_name!r} has no recorded budget (not made by sweeps.run); pass --budget")
    # Fingerprints from before first_rung existed: it only steers pruning, not training.
    return Budget(**{"first_rung": 1, **_budget_fields(recorded)})


def recorded_budget_name(study: optuna.Study) -> str:
    """The name of the budget a study's trials trained at, or "?" for a study without one."""
    return (recorded_fingerprint(study).get(BUDGET_KEY) or {}).get("name", "?")


def describe_difference(recorded: dict, requested: dict) -> str:
    return ", ".join(_differences(recorded, requested))


# --- The ladder's result ---------------------------------------------------------------------

@dataclass(frozen=True)
class PairedLead:
    """A model against another on the same validation images: the images only one of them
    gets right, and McNemar's exact two-sided p-value of that difference."""
    against: str  # the other model's label
    against_accuracy: float  # its validation accuracy
    only_this: int
    only_against: int
    p_value: float


@dataclass(frozen=True)
class Registered:
    """A model of the top rung chosen on validation, tested once, and registered."""
    run_id: str
    validation_accuracy: float
    test_accuracy: float
    model: str  # models:/NAME@ALIAS
    version: str


@dataclass(frozen=True)
class Champion(Registered):
    """The top rung's best single model, and its lead over the runner-up on the paired
    validation images (absent when the rung finished one model)."""
    label: str = ""
    runner_up: str | None = None
    only_leader: int = 0  # validation images only the champion gets right
    only_runner_up: int = 0
    p_value: float = 1.0  # McNemar's exact two-sided test of the lead
    versus_baseline: PairedLead | None = None  # against the top rung's best baseline


@dataclass(frozen=True)
class RuleScore:
    """A selection rule as the ensemble step weighed it: over the digit alone or its views,
    chosen on one half of validation and scored on the other (means over the halves), and
    chosen on all of validation."""
    rule: str
    views: int
    held_out_accuracy: float
    held_out_log_loss: float
    held_out_members: float
    validation_accuracy: float
    validation_log_loss: float
    members: int


@dataclass(frozen=True)
class Ensemble(Registered):
    members: list[str] = field(default_factory=list)  # labels, heaviest first
    weights: list[float] = field(default_factory=list)  # the members', summing to 1
    validation_log_loss: float | None = None
    selection_log_loss: list[float] = field(default_factory=list)  # after each round of selection
    versus_baseline: PairedLead | None = None  # against the top rung's best baseline
    views: int = 1  # test-time views each member is averaged over (1: the digit alone)
    log_loss_without_views: float | None = None  # the chosen rule's on all of validation without them
    rule: str = "greedy forward selection"  # how members and weights were chosen (a ladder recorded before rules were weighed: greedy)
    rule_scores: list[RuleScore] = field(default_factory=list)  # every rule tried, as validation weighed it
    # Ladders before selection on log-loss: the accuracy of the best k averaged, k = 1, 2, ...
    validation_by_size: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Small(Registered):
    """The top rung's most accurate model within a size budget (on validation): what to put on
    a phone or a page. It may be the champion itself, registered once under both aliases."""
    label: str = ""
    param_count: int = 0
    params_at_most: int = 0  # the size budget it was chosen under


@dataclass(frozen=True)
class CandidateScore:
    """A top-rung model as the ensemble step weighed it, on the validation images."""
    label: str
    validation_accuracy: float
    validation_log_loss: float
    temperature: float = 1.0  # its softmax's, as the selection weighed it (1.0: a ladder before calibration)
    calibrated_log_loss: float | None = None  # its validation log-loss at that temperature
    views_log_loss: float | None = None  # at it, averaged over the ensemble's test-time views
    model_run_id: str | None = None  # the run that holds its model (None: a ladder before pooling)


@dataclass(frozen=True)
class LadderResult:
    top_rung: str  # the top rung's study
    candidates: list[int]  # its best trials, the ensemble step's own candidates, best validation first
    champion: Champion
    ensemble: Ensemble
    scores: list[CandidateScore] = field(default_factory=list)  # the candidates', in that order
    small: Small | None = None  # None: no top-rung model fits the size budget (or a ladder before @small)
    small_params_at_most: int = 0  # the size budget @small was looked for under
    # The store's other top rungs set up the same, whose best models were candidates too
    # (``scores`` holds the candidates weighed, this sweep's and theirs).
    other_top_rungs: list[str] = field(default_factory=list)

    def to_attr(self) -> dict:
        return dataclasses.asdict(self)


def ladder_result(study: optuna.Study) -> LadderResult | None:
    """The exploring study's recorded ladder result, or None before the ladder has one."""
    recorded = study.user_attrs.get(LADDER_RESULT)
    if not recorded:
        return None
    return LadderResult(top_rung=recorded["top_rung"], candidates=list(recorded["candidates"]),
                        champion=Champion(**_with_lead(recorded["champion"])),
                        ensemble=Ensemble(**_with_lead(recorded["ensemble"])),
                        scores=[CandidateScore(**score) for score in recorded.get("scores", [])],
                        small=Small(**recorded["small"]) if recorded.get("small") else None,
                        small_params_at_most=recorded.get("small_params_at_most", 0),
                        other_top_rungs=list(recorded.get("other_top_rungs", [])))


def _with_lead(recorded: dict) -> dict:
    lead = recorded.get("versus_baseline")
    with_lead = {**recorded, "versus_baseline": PairedLead(**lead) if lead else None}
    if "rule_scores" in recorded:
        with_lead["rule_scores"] = [RuleScore(**score) for score in recorded["rule_scores"]]
    return with_lead


def record_ladder_result(study: optuna.Study, result: LadderResult) -> None:
    study.set_user_attr(LADDER_RESULT, result.to_attr())
