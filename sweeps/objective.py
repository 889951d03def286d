"""One worker process of a sweep: asks the study for trials until it holds the requested
number (or this process has trained its share), and runs each one: sample -> price ->
train with pruning -> record in Optuna and MLflow.

Only this module of the sweep loads TensorFlow; the parent process starts it in workers.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import warnings

import mlflow
import optuna
from optuna.trial import TrialState

import search_space
import train_trial
from harness import backend, data, records, run_logging, tracking
from harness.backend import keras
from harness.budgets import Budget
from harness.errors import StoreUnwritable, store_failure
from harness.records import StopCause
from sweeps import plan, reuse, study as sweep_study
from sweeps.settings import STORE_FAILED_EXIT, SweepSettings

# Set by SIGTERM (the parent's "stop": Ctrl-C, or the parent itself being stopped). A flag,
# not an exception raised from the handler: the handler may run in the middle of a journal
# append, a database commit or study.tell, and none of those may be cut short. Training
# looks at the flag at each batch; the worker loop between trials.
stop_requested = threading.Event()


class Interrupted(BaseException):
    """Raised at a batch boundary once a stop is requested: a BaseException, so that no
    ``except Exception`` on the way out of Keras' training loop swallows it."""


class StopWhenAsked(keras.callbacks.Callback):
    """Ends training at the next batch once the sweep is asked to stop. Checked before a
    batch, where Keras passes no logs, so it costs no device synchronisation."""

    def on_train_batch_begin(self, batch, logs=None):
        if stop_requested.is_set():
            raise Interrupted


class ReportToPruner(keras.callbacks.Callback):
    """Reports each epoch's validation accuracy to Optuna; stops the trial when the pruner
    gives up on it. (optuna-integration's Keras callback would be a dependency for this.)

    The last epoch is reported but not judged: the training is done by then, and Hyperband
    would otherwise discard finished trials whenever a rung falls on the budget's last epoch.
    """

    def __init__(self, trial: optuna.Trial, epochs: int):
        super().__init__()
        self.trial = trial
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        accuracy = float(logs["val_accuracy"])
        self.trial.report(accuracy, step=epoch + 1)
        # Not judged when training ends here anyway (last epoch, early stopping, time share).
        if epoch + 1 < self.epochs and not self.model.stop_training and self.trial.should_prune():
            raise optuna.TrialPruned(f"pruner stopped it after epoch {epoch + 1} "
                                     f"(validation accuracy {accuracy:.4f})")


class TimeShare(keras.callbacks.Callback):
    """Ends training once a trial has run past its share of the sweep's time. The trial
    still finishes: its budget ran out, as with an epoch cap, and early stopping restores
    its best validation weights (the partial epoch is validated too). Checked before a
    batch, which costs no device synchronisation."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds
        self.stopped_after: float | None = None

    def on_train_begin(self, logs=None):
        self.started = time.monotonic()

    def on_train_batch_begin(self, batch, logs=None):
        elapsed = time.monotonic() - self.started
        if elapsed > self.seconds and self.stopped_after is None:
            self.stopped_after = elapsed
            self.model.stop_training = True


def price(model: keras.Model, params: dict, train_images: int, budget: Budget) -> dict[str, float]:
    """The network's size and its training arithmetic at this budget, before any training."""
    epochs = budget.epochs_for(params)
    return {"param_count": model.count_params(),
            "training_tflop": 6 * train_trial.forward_multiply_adds(model) * train_images * epochs / 1e12}


def worker_main(settings: SweepSettings, worker_index: int, failures=None) -> None:
    """A worker's life. ``failures``: a queue on which a store that cannot be written is
    reported to the parent before the worker exits with STORE_FAILED_EXIT (None: raised)."""
    # Ctrl-C reaches every process of the terminal's group; the parent decides what it means
    # and asks workers to stop with SIGTERM, so one Ctrl-C is not taken twice.
    stop_requested.clear()
    previous = {number: signal.signal(number, handler) for number, handler in
                ((signal.SIGINT, signal.SIG_IGN), (signal.SIGTERM, lambda signum, frame: stop_requested.set()))}
    try:
        _work(settings, worker_index)
    except StoreUnwritable as failure:
        if failures is None:
            raise
        failures.put(str(failure))
        sys.exit(STORE_FAILED_EXIT)
    finally:  # as they were, for a worker run in-process (tests)
        for number, handler in previous.items():
            signal.signal(number, handler)


def _work(settings: SweepSettings, worker_index: int) -> None:
    if settings.threads:
        backend.limit_threads(settings.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    dataset = data.load(settings.data_path)
    split = data.split(dataset, settings.split_seed, settings.budget.train_size)  # once per worker
    tracking.use_experiment(settings.experiment, settings.tracking_uri)
    storage = sweep_study.open_storage(settings.storage_url)
    study = optuna.load_study(study_name=settings.study_name, storage=storage,
                              pruner=sweep_study.make_pruner(settings.pruner, settings.budget))
    # Seeded by the invocation too: worker numbers start from 0 in every invocation, and two
    # machines joining one study at once (or a resumed sweep's first worker) would otherwise
    # draw the same samples. Each trial records the seed its worker's sampler drew it with.
    sampler_seed = sweep_study.sampler_seed(settings.seed, settings.invocation, worker_index,
                                            len(study.get_trials(deepcopy=False)))
    study.sampler = sweep_study.make_sampler(settings.sampler, sampler_seed)
    parent = multiprocessing.parent_process()
    for _ in range(settings.trials_per_process):
        if stop_requested.is_set() or (parent is not None and not parent.is_alive()):
            return
        trial = next_trial(study, storage, settings)
        if trial is None:
            return
        try:
            run_trial(study, storage, trial, settings, dataset, split, sampler_seed)
        except Exception as error:
            if (failure := store_failure(error, tracking.database_file(settings.tracking_uri))) is None:
                raise
            raise StoreUnwritable(failure) from None
        keras.backend.clear_session()  # the next trial's layer names and graph start afresh


def next_trial(study: optuna.Study, storage: optuna.storages.BaseStorage,
               settings: SweepSettings) -> optuna.Trial | None:
    """A new (or enqueued) trial, or None when the study holds the requested number (or, at a
    rung, when nothing queued fits the time left). The count and the ask happen under a lock,
    so workers never overshoot the total."""
    if settings.last_start is not None and time.time() > settings.last_start:
        return None
    with sweep_study.ask_lock(storage, settings.study_name, settings.lock_path):
        trials = study.get_trials(deepcopy=False)
        if records.counted_trials(trials, settings.total_trials) >= settings.total_trials:
            return None
        if not settings.fit_forecasts:
            with warnings.catch_warnings():
                # On an RDB storage Optuna warns that heartbeats are meant for Study.optimize;
                # this worker records its trial's heartbeats itself (heartbeat() below).
                warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used", UserWarning)
                return study.ask()
        for waiting in plan.startable(trials, settings.budget, settings.deadline, time.time(), settings.any_start_until):
            # Study.ask() would pop the first queued trial, fitting or not: this claims the one
            # that fits as ask() claims its own, through the storage (False: another machine's
            # worker took it first).
            trial_id = sweep_study.trial_id(storage, study, waiting.number)
            if storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                return optuna.Trial(study, trial_id)
        return None


def run_trial(study: optuna.Study, storage: optuna.storages.BaseStorage, trial: optuna.Trial,
              settings: SweepSettings, dataset: data.Dataset, split: data.Split, sampler_seed: int | None = None) -> None:
    baseline = trial.user_attrs.get(records.BASELINE)
    params = search_space.with_recipe_keys(search_space.suggest(trial), baseline)
    name = records.label(trial)
    recipe = search_space.describe(params)
    seed = trial.user_attrs.get(records.TRAINING_SEED, settings.seed)  # the top rung's spare seeds have their own
    tags = {**run_logging.run_tags(dataset, split, settings.budget, seed=seed, baseline=baseline),
            **records.trial_run_tags(settings.study_name, trial.number, settings.parent_run_id),
            # The ladder's rung this run trained at, and the exploring trial it carries up.
            records.FIDELITY: settings.budget.name,
            records.SOURCE_NAME_TAG: "python -m sweeps.run", records.SOURCE_TYPE_TAG: "LOCAL"}
    fingerprint = train_trial.training_fingerprint(params, dataset, split, settings.budget, seed)
    client = tracking.client(settings.tracking_uri)
    source = None if settings.retrain else reuse.find(client, fingerprint)
    promoted = records.SOURCE_TRIAL in trial.user_attrs
    single = len(settings.objective) == 1
    if promoted:
        tags[records.SOURCE_TRIAL] = str(trial.user_attrs[records.SOURCE_TRIAL])
    run_name = f"{name} @ {settings.budget.name}: {recipe}" if promoted else f"{name}: {recipe}"
    trial.set_user_attr(records.WORKER, f"{socket.gethostname()}:{os.getpid()}")  # first: recovery reads it
    if sampler_seed is not None:
        trial.set_user_attr(records.SAMPLER_SEED, sampler_seed)
    # System metrics (CPU, memory, disk every 10 s, as the run's system/ charts): their sampling
    # thread costs well under 1 % of a core (RESULTS.md, "Harness overhead").
    with mlflow.start_run(run_name=run_name, tags=tags, log_system_metrics=True) as run, \
            heartbeat(storage, study, trial):
        trial.set_user_attr(records.MLFLOW_RUN_ID, run.info.run_id)
        if (resident := resident_megabytes()) is not None:
            trial.set_user_attr(records.WORKER_RSS_MB, resident)
        note = ""
        try:
            model = train_trial.build_model(params)
            note = records.trial_note(name, settings.study_name, recipe, train_trial.layer_table(model))
            priced = price(model, params, len(split.y_train), settings.budget)
            del model
            mlflow.log_metrics(priced)
            cost = priced["training_tflop"]
            # Baselines are the sweep's comparison points, so they train even when priced over
            # the cap; the time share still bounds them. An over-cap sample is told PRUNED, which
            # TPE ranks below every trained trial, so it learns to avoid the region. Not Optuna's
            # trial.set_constraint: constraints mark a trial that has a value as infeasible, and
            # an untrained sample has no value to keep or rank.
            if cost > settings.budget.max_training_tflop and not baseline:
                _finish(study, trial, params, note, StopCause.PRICED_OUT,
                        f"priced at {cost:.1f} TFLOP of training, over the {settings.budget.name} "
                        f"budget's {settings.budget.max_training_tflop:g}; not trained")
                return
            if source is not None:
                figures = reuse.record(trial, source, client, params, fingerprint, split.x_val, split.y_val,
                                       report=single)
                trial.set_user_attr(records.CALIBRATED_LOG_LOSS, figures["calibrated_validation_log_loss"])
                _finish(study, trial, params, note, StopCause.COMPLETED,
                        f"reused run {source.info.run_id}: the same recipe, budget, seed, data and split were "
                        "trained there to completion, so its model and figures are this trial's",
                        values=sweep_study.objective_values(settings.objective, figures))
                return
            time_share = TimeShare(plan.time_share(settings.budget, settings.deadline, time.time()))
            epochs = settings.budget.epochs_for(params)
            result, metrics = train_trial.log_trial(
                params, dataset, split, settings.budget, seed=seed, title=name,
                # Optuna prunes single-objective trials only: a multi-objective one trains its budget.
                callbacks=[StopWhenAsked(), *([ReportToPruner(trial, epochs)] if single else []), time_share])
            if not single:  # no reported epochs to price it by at the next rung (plan.seconds_per_epoch)
                trial.set_user_attr(records.SECONDS_PER_EPOCH, result.train_seconds / max(result.epochs_run, 1))
            if "calibrated_validation_log_loss" in metrics:  # not for a diverged trial
                trial.set_user_attr(records.CALIBRATED_LOG_LOSS, metrics["calibrated_validation_log_loss"])
        except Interrupted:
            _finish(study, trial, params, note, StopCause.INTERRUPTED, "interrupted by the user (Ctrl-C)")
        except optuna.TrialPruned as pruned:
            _finish(study, trial, params, note, StopCause.PRUNED, str(pruned) or "pruned")
        except Exception as error:  # the sweep goes on; the reason stays with the trial
            if (failure := store_failure(error, tracking.database_file(settings.tracking_uri))) is not None:
                # As far as the store still lets it; what it does not, the parent's recovery does.
                with contextlib.suppress(Exception):
                    _finish(study, trial, params, note, StopCause.STORE_FAILED, f"could not write {failure}")
                raise
            _finish(study, trial, params, note, StopCause.ERROR,
                    f"{type(error).__name__}: {error}".splitlines()[0][:500])
        else:
            if result.diverged:
                _finish(study, trial, params, note, StopCause.DIVERGED,
                        f"loss diverged (NaN or inf) in epoch {result.epochs_run}")
            elif time_share.stopped_after is not None:
                _finish(study, trial, params, note, StopCause.TIME_SHARE,
                        f"stopped in epoch {result.epochs_run} at its time share of "
                        f"{time_share.seconds:.0f} s; best epoch {result.best_epoch} kept",
                        values=sweep_study.objective_values(settings.objective, metrics))
            else:
                _finish(study, trial, params, note, StopCause.COMPLETED, None,
                        values=sweep_study.objective_values(settings.objective, metrics))


# The Optuna state and MLflow run status each stop cause is recorded with. A pruned trial's
# run ends FINISHED: it did what the sweep asked of it, and the MLflow UI draws KILLED with the
# same red cross as a crash (its optuna_state tag says PRUNED).
_OUTCOMES = {
    StopCause.COMPLETED: (TrialState.COMPLETE, "FINISHED"),
    StopCause.TIME_SHARE: (TrialState.COMPLETE, "FINISHED"),
    StopCause.PRUNED: (TrialState.PRUNED, "FINISHED"),
    StopCause.PRICED_OUT: (TrialState.PRUNED, "FINISHED"),
    StopCause.DIVERGED: (TrialState.FAIL, "FAILED"),
    StopCause.INTERRUPTED: (TrialState.FAIL, "KILLED"),
    StopCause.ERROR: (TrialState.FAIL, "FAILED"),
    StopCause.STORE_FAILED: (TrialState.FAIL, "FAILED"),
}


def _finish(study: optuna.Study, trial: optuna.Trial, params: dict, note: str, cause: StopCause,
            reason: str | None, values: list[float] | None = None) -> None:
    """Record how the trial ended: its cause and reason on both sides, the run's description
    completed, its MLflow run closed, then Optuna told (last, so a trial is never finished in
    Optuna with its run still open). ``values``: the study's objectives, validation accuracy
    first."""
    value = values[0] if values else None
    state, run_status = _OUTCOMES[cause]
    if state != TrialState.COMPLETE:  # also for trials stopped before log_trial logged their params
        mlflow.log_params(params)  # (re-logging equal values is allowed)
    trial.set_user_attr(records.STOP_CAUSE, cause.value)
    tags = {records.STATE_TAG: state.name, records.STOP_CAUSE: cause.value,
            records.NOTE_TAG: records.trial_note_ending(note, cause, reason, value)}
    if reason is not None:
        trial.set_user_attr(records.REASON, reason)
        tags[records.REASON] = reason
    mlflow.set_tags(tags)
    mlflow.end_run(status=run_status)
    if state == TrialState.COMPLETE:
        study.tell(trial, values if len(values) > 1 else values[0])
    else:
        study.tell(trial, state=state)


@contextlib.contextmanager
def heartbeat(storage: optuna.storages.BaseStorage, study: optuna.Study, trial: optuna.Trial):
    """While the trial runs, tell a storage that tracks heartbeats (RDB) that its worker is
    alive, so a worker that dies on another machine has its trial failed once it falls silent."""
    if not isinstance(storage, optuna.storages.RDBStorage):  # local storages: see recovery.py
        yield
        return
    trial_id = sweep_study.trial_id(storage, study, trial.number)
    stopped = threading.Event()

    def beat():
        while True:
            storage.record_heartbeat(trial_id)
            if stopped.wait(sweep_study.HEARTBEAT_SECONDS):
                return

    thread = threading.Thread(target=beat, daemon=True, name="optuna-heartbeat")
    thread.start()
    try:
        yield
    finally:
        stopped.set()
        thread.join()


def resident_megabytes() -> float | None:
    """This process's resident size now, where the system says (Linux's /proc); None elsewhere."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None
