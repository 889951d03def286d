"""One worker process of a sweep: asks the study for trials until it holds the requested
number, and runs each one: sample -> price -> train with pruning -> record in Optuna and MLflow.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import mlflow
import optuna
from optuna.trial import TrialState

import search_space
import train_trial
from sweeps import backend, data, study as sweep_study, tracking
from sweeps.backend import keras
from sweeps.budgets import Budget


@dataclass(frozen=True)
class SweepSettings:
    """What a worker needs; sent to each worker process."""
    study_name: str
    storage_url: str
    tracking_uri: str
    experiment: str
    parent_run_id: str
    total_trials: int
    sampler: str
    pruner: str
    seed: int
    budget: Budget
    data_path: str | None
    split_seed: int
    lock_path: str
    deadline: float | None  # time.time() after which no trial starts
    recycle_after_mb: float = 150.0  # growth past the post-warm-up size that retires a worker
    threads: int | None = None  # CPU threads per worker; None: the backend's default


# User attribute of a trial pruned on its price alone, before any training.
PRICED_OUT = "priced_out"

# Exit status of a worker that retires to shed memory: the parent starts a fresh one.
# TensorFlow keeps ~20 MB per trained model here even after clear_session() and gc.
RECYCLE_EXIT_CODE = 75


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
    its best validation weights (the partial epoch is validated too)."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds
        self.stopped_after: float | None = None

    def on_train_begin(self, logs=None):
        self.started = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        elapsed = time.monotonic() - self.started
        if elapsed > self.seconds and self.stopped_after is None:
            self.stopped_after = elapsed
            self.model.stop_training = True


def price(params: dict, train_images: int, budget: Budget) -> dict[str, float]:
    """The network's size and its training arithmetic at this budget, before any training."""
    model = train_trial.build_model(params)
    epochs = min(params["epochs"], budget.max_epochs)
    return {"param_count": model.count_params(),
            "training_tflop": 6 * train_trial.forward_multiply_adds(model) * train_images * epochs / 1e12}


class Interrupted(BaseException):
    """The sweep was asked to stop (Ctrl-C): a BaseException, so that no ``except Exception``
    on the way out of Keras' training loop swallows it."""


def _stop_requested(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once is enough; marking the trial must finish
    raise Interrupted


def worker_main(settings: SweepSettings, worker_index: int) -> None:
    # Ctrl-C reaches every process of the terminal's group; the parent decides what it means
    # and asks workers to stop with SIGTERM, so one Ctrl-C is not taken twice.
    previous = {number: signal.signal(number, handler) for number, handler in
                ((signal.SIGINT, signal.SIG_IGN), (signal.SIGTERM, _stop_requested))}
    try:
        _work(settings, worker_index)
    except Interrupted:
        pass  # the running trial recorded itself as failed, with the reason
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
    study = optuna.load_study(
        study_name=settings.study_name, storage=storage,
        sampler=sweep_study.make_sampler(settings.sampler, settings.seed + worker_index),
        pruner=sweep_study.make_pruner(settings.pruner, settings.budget))
    warmed_up_mb = None
    parent = multiprocessing.parent_process()
    while (parent is None or parent.is_alive()) and (trial := next_trial(study, storage, settings)) is not None:
        run_trial(study, storage, trial, settings, dataset, split)
        release_memory()
        resident = resident_megabytes()
        if warmed_up_mb is None:  # TensorFlow's one-time start-up is done after the first trial
            warmed_up_mb = resident
        elif resident - warmed_up_mb > settings.recycle_after_mb:
            sys.exit(RECYCLE_EXIT_CODE)


def next_trial(study: optuna.Study, storage: optuna.storages.BaseStorage,
               settings: SweepSettings) -> optuna.Trial | None:
    """A new (or enqueued) trial, or None when the study holds the requested number. The
    count and the ask happen under a lock, so workers never overshoot the total."""
    if settings.deadline is not None and time.time() > settings.deadline:
        return None
    with sweep_study.ask_lock(storage, settings.study_name, settings.lock_path):
        return study.ask() if counted_trials(study, settings.total_trials) < settings.total_trials else None


def counted_trials(study: optuna.Study, total: int) -> int:
    """Trials that count toward --trials: all but those still waiting in the queue and those
    priced over the cap, which cost a second and train nothing. Priced-out samples stop being
    free after ``total`` of them, so a sweep whose space is mostly over its cap still ends."""
    started = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
    return len(started) - min(len(priced_out(started)), total)


def priced_out(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    return [t for t in trials if t.user_attrs.get(PRICED_OUT)]


def run_trial(study: optuna.Study, storage: optuna.storages.BaseStorage, trial: optuna.Trial,
              settings: SweepSettings, dataset: data.Dataset, split: data.Split) -> None:
    params = search_space.suggest(trial)
    baseline = trial.user_attrs.get("baseline")
    name = baseline or f"trial {trial.number}"
    tags = {**train_trial.run_tags(dataset, split, settings.budget, seed=settings.seed, baseline=baseline),
            "mlflow.parentRunId": settings.parent_run_id,  # nests the run under the study's row
            "optuna_study": settings.study_name, "optuna_trial_number": str(trial.number)}
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # first: recovery reads it
    with mlflow.start_run(run_name=name, tags=tags) as run, heartbeat(storage, trial):
        trial.set_user_attr("mlflow_run_id", run.info.run_id)
        trial.set_user_attr("worker_rss_mb", resident_megabytes())  # before training: growth shows leaks
        try:
            priced = price(params, len(split.y_train), settings.budget)
            mlflow.log_metrics(priced)
            cost = priced["training_tflop"]
            # Baselines are the sweep's comparison points, so they train even when priced over
            # the cap; the time share still bounds them.
            if cost > settings.budget.max_training_tflop and not baseline:
                trial.set_user_attr(PRICED_OUT, True)  # told PRUNED, so TPE learns to avoid the region
                raise optuna.TrialPruned(
                    f"priced at {cost:.1f} TFLOP of training, over the {settings.budget.name} "
                    f"budget's {settings.budget.max_training_tflop:g}; not trained")
            time_share = TimeShare(settings.budget.trial_seconds)
            result, metrics = train_trial.log_trial(
                params, dataset, split, settings.budget, seed=settings.seed, title=name,
                callbacks=[ReportToPruner(trial, min(params["epochs"], settings.budget.max_epochs)), time_share])
            if result.diverged:
                raise FloatingPointError(f"loss diverged (NaN or inf) in epoch {result.epochs_run}")
            if time_share.stopped_after is not None:
                reason = (f"stopped in epoch {result.epochs_run} at its time share of "
                          f"{time_share.seconds:.0f} s; best epoch {result.best_epoch} kept")
                trial.set_user_attr("reason", reason)
                mlflow.set_tag("reason", reason)
        except Interrupted:
            _finish(study, trial, params, TrialState.FAIL, "interrupted by the user (Ctrl-C)", run_status="KILLED")
            raise
        except optuna.TrialPruned as pruned:
            _finish(study, trial, params, TrialState.PRUNED, str(pruned) or "pruned")
        except Exception as error:  # the sweep goes on; the reason stays with the trial
            _finish(study, trial, params, TrialState.FAIL,
                    f"{type(error).__name__}: {error}".splitlines()[0][:500])
        else:
            mlflow.set_tag("optuna_state", TrialState.COMPLETE.name)
            study.tell(trial, metrics["validation_accuracy"])


@contextmanager
def heartbeat(storage: optuna.storages.BaseStorage, trial: optuna.Trial):
    """While the trial runs, tell a storage that tracks heartbeats (RDB) that its worker is
    alive, so a worker that dies on another machine has its trial failed once it falls silent."""
    if not isinstance(storage, optuna.storages.RDBStorage):  # local storages: see recovery.py
        yield
        return
    stopped = threading.Event()

    def beat():
        while True:
            storage.record_heartbeat(trial._trial_id)
            if stopped.wait(sweep_study.HEARTBEAT_SECONDS):
                return

    thread = threading.Thread(target=beat, daemon=True, name="optuna-heartbeat")
    thread.start()
    try:
        yield
    finally:
        stopped.set()
        thread.join()


def release_memory() -> None:
    """Drop the finished trial's model and graph, and hand freed heap pages back to the OS
    (glibc otherwise keeps them, and a worker's resident size only grows)."""
    keras.backend.clear_session()
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def resident_megabytes() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _finish(study: optuna.Study, trial: optuna.Trial, params: dict, state: TrialState,
            reason: str, run_status: str | None = None) -> None:
    # Also for trials stopped before log_trial logged their params (re-logging equal values is allowed).
    mlflow.log_params(params)
    trial.set_user_attr("reason", reason)
    mlflow.set_tags({"optuna_state": state.name, "reason": reason})
    mlflow.end_run(status=run_status or ("KILLED" if state == TrialState.PRUNED else "FAILED"))
    study.tell(trial, state=state)
