"""Retrain one trial of a sweep with several seeds: is its validation accuracy real or a
lucky seed? Then each seed's model is evaluated once on the test set, and the seed with the
best validation accuracy is registered in the MLflow Model Registry as the champion.

    python -m sweeps.reproduce --study mnist-sweep --seeds 3 --budget full
    python -m sweeps.reproduce --study mnist-sweep --trial 17

Selection uses validation accuracy only; the test set is read after every choice is made.
"""

from __future__ import annotations

import contextlib
import io
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import mlflow
import optuna
from optuna.trial import TrialState

import search_space
import train_trial
from harness import backend, cli, data, records, run_logging, tracking
from harness.budgets import BUDGETS
from harness.errors import DataError, ParamsError, UserError
from sweeps import study as sweep_study
from sweeps.baselines import mean_and_sd

EXPERIMENT = "mnist-reproduce"
REGISTERED_MODEL, ALIAS = tracking.REGISTERED_MODEL, tracking.CHAMPION_ALIAS
# The sweep's figure counts as reproduced when the seeds' mean falls short of it by at most
# this many binomial standard errors of a validation accuracy on the validation set's size.
TOLERANCE_STANDARD_ERRORS = 2.0


def parse_args(argv: Sequence[str] | None):
    parser = cli.ArgumentParser(prog="python -m sweeps.reproduce", description=__doc__.splitlines()[0])
    parser.add_argument("--study", default=sweep_study.DEFAULT_STUDY,
                        help=f"study name (default: {sweep_study.DEFAULT_STUDY})")
    parser.add_argument("--trial", type=cli.non_negative_int, help="trial number (default: the best trial)")
    parser.add_argument("--seeds", type=cli.positive_int, default=3,
                        help="seeds to train, counting up from --seed (default: 3 seeds from 1; "
                             "a sweep trains its trials with seed 0, so these are fresh draws)")
    parser.add_argument("--storage", metavar="URL", help="Optuna storage URL (default: the journal in mlruns/)")
    parser.add_argument("--model-name", default=REGISTERED_MODEL,
                        help=f"registered model that gets the @{ALIAS} alias (default: {REGISTERED_MODEL})")
    cli.add_training_arguments(parser, default_budget=None, chosen_budget="the budget the study was swept at")
    parser.set_defaults(seed=1)
    return parser.parse_args(argv)


def chosen_trial(study: optuna.Study, number: int | None) -> optuna.trial.FrozenTrial:
    trials = study.get_trials(deepcopy=False)
    if number is None:
        if not any(t.state == TrialState.COMPLETE for t in trials):
            raise UserError(f"study {study.study_name!r} has no finished trial to reproduce yet")
        return records.best_trial(study)
    if number >= len(trials):
        raise UserError(f"study {study.study_name!r} has no trial {number} (trials 0-{len(trials) - 1})")
    trial = trials[number]
    if not trial.params or trial.state in (TrialState.WAITING, TrialState.RUNNING):
        raise UserError(f"trial {number} of study {study.study_name!r} is {trial.state.name.lower()}; "
                        "choose a finished trial")
    return trial


def recipe(trial: optuna.trial.FrozenTrial, study_name: str) -> dict:
    """The trial's params as the recipe it trained: a baseline's keeps its seed's epochs."""
    try:
        return search_space.validate(search_space.with_recipe_keys(trial.params, trial.user_attrs.get(records.BASELINE)),
                                     f"study {study_name!r} trial {trial.number}")
    except ParamsError as error:
        raise UserError(f"{error} (was the study swept with another version of search_space.py?)") from None


@dataclass
class SeedRun:
    seed: int
    run_id: str
    result: train_trial.TrainingResult
    test_accuracy: float | None = None


def verdict(sweep_value: float | None, accuracies: Sequence[float], validation_size: int) -> str:
    """Whether the seeds back the sweep's figure, within a stated tolerance."""
    mean = statistics.mean(accuracies)
    if sweep_value is None:
        return f"the trial has no final value in the study to compare with (seeds' mean {mean:.4f})"
    tolerance = TOLERANCE_STANDARD_ERRORS * math.sqrt(sweep_value * (1 - sweep_value) / validation_size)
    gap = sweep_value - mean
    where = (f"the seeds' mean {mean:.4f} is {abs(gap) * 100:.2f} points "
             f"{'below' if gap > 0 else 'above'} the sweep's {sweep_value:.4f} "
             f"(tolerance {tolerance * 100:.2f} points: {TOLERANCE_STANDARD_ERRORS:g} standard errors "
             f"of an accuracy on {validation_size:,} validation images)")
    if gap <= tolerance:
        return f"REAL: {where}"
    return f"LUCKY SEED: {where}"


def best_on_validation(runs: Sequence[SeedRun]) -> SeedRun:
    """The seed to register: the best validation accuracy (the first such seed on a tie),
    whatever the test set says."""
    return max(runs, key=lambda r: r.result.validation_accuracy)


def register(client: mlflow.MlflowClient, run_id: str, model_name: str, alias: str, tags: dict[str, str]) -> str:
    """Register the run's logged model and point the alias at it; returns the version."""
    experiment_id = client.get_run(run_id).info.experiment_id
    models = client.search_logged_models(experiment_ids=[experiment_id], filter_string=f"source_run_id = '{run_id}'")
    if not models:
        raise UserError(f"run {run_id} logged no model to register")
    # MLflow prints its "Created version" lines itself; the commands say what they registered.
    with contextlib.redirect_stderr(io.StringIO()):
        version = mlflow.register_model(f"models:/{models[0].model_id}", model_name, tags=tags)
    client.set_registered_model_alias(model_name, alias, version.version)
    return version.version


def record_test(run_id: str, model, dataset: data.Dataset) -> float:
    """The one test pass of a chosen model, recorded on its run with the test set as input."""
    accuracy = train_trial.evaluate_test(model, dataset)["test_accuracy"]
    with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):  # reopened to record it
        mlflow.log_metric("test_accuracy", accuracy)
        run_logging.log_test_input(dataset)
    return accuracy


def earlier_test_accuracy(model_run_id: str) -> float | None:
    """The test accuracy an earlier one-time test pass recorded on the run that logged a model."""
    return mlflow.MlflowClient().get_run(model_run_id).data.metrics.get("test_accuracy")


def evaluate_and_register(run_id: str, model, dataset: data.Dataset, model_name: str, alias: str,
                          tags: dict[str, str], model_run_id: str | None = None) -> dict:
    """Test a model whose every choice is made, once, recorded on ``run_id``, then register it
    under ``alias`` from the run that logged it (``model_run_id``: a reused trial's source).
    A model tested already (a reused run's, chosen by an earlier sweep too) is not tested
    again: its figure is copied onto ``run_id``, tagged with the run that read it."""
    tested = model_run_id or run_id
    accuracy = earlier_test_accuracy(tested)
    if accuracy is None:
        accuracy = record_test(run_id, model, dataset)
    elif tested != run_id:
        with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
            mlflow.log_metric("test_accuracy", accuracy)
            mlflow.set_tag(records.TEST_READ_BY_TAG, tested)
    version = register(tracking.client(mlflow.get_tracking_uri()), model_run_id or run_id, model_name, alias,
                       {**tags, records.TEST_ACCURACY_TAG: f"{accuracy:.4f}"})
    return {"test_accuracy": accuracy, "model": f"models:/{model_name}@{alias}", "version": version}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    study = sweep_study.load_existing(args.study, sweep_study.storage_url(args.storage))
    trial = chosen_trial(study, args.trial)
    params = recipe(trial, args.study)
    fingerprint = records.recorded_fingerprint(study)
    swept_at = records.recorded_budget_name(study)
    budget = (BUDGETS[args.budget] if args.budget else records.recorded_budget(study)).overridden(
        train_size=args.train_size, max_epochs=args.max_epochs)
    dataset = data.load(args.data)
    if fingerprint.get(records.DATA_SHA256_KEY, dataset.sha256) != dataset.sha256:
        raise DataError(f"{dataset.source} is not the data study {args.study!r} was swept on "
                        "(its checksum differs); pass that data with --data")
    if dataset.x_test is None:
        raise DataError(f"{dataset.source} has no labelled test set ({dataset.format})")
    split = data.split(dataset, fingerprint.get(records.SPLIT_SEED_KEY, data.DEFAULT_SPLIT_SEED), budget.train_size)
    uri = tracking.use_experiment(EXPERIMENT, args.tracking_uri)
    backend.make_deterministic()

    label = records.label(trial)
    source = {records.SOURCE_STUDY_TAG: args.study, records.SOURCE_TRIAL_TAG: str(trial.number),
              records.SOURCE_RUN_ID_TAG: trial.user_attrs.get(records.MLFLOW_RUN_ID, "unknown"),
              records.SOURCE_VALUE_TAG: "none" if records.accuracy(trial) is None else repr(records.accuracy(trial))}
    seeds = range(args.seed, args.seed + args.seeds)
    print(f"Reproducing {label} of study {args.study!r} (validation accuracy "
          f"{'none' if records.accuracy(trial) is None else f'{records.accuracy(trial):.4f}'} at budget {swept_at}) "
          f"with seeds {seeds.start}-{seeds.stop - 1} at budget {budget.name}, deterministic kernels; "
          f"MLflow experiment {EXPERIMENT!r} at {uri}", flush=True)
    runs: list[SeedRun] = []
    for seed in seeds:
        tags = {**run_logging.run_tags(dataset, split, budget, seed=seed, baseline=trial.user_attrs.get(records.BASELINE)),
                **source}
        with mlflow.start_run(run_name=f"{args.study} {label} seed {seed}", tags=tags) as run:
            result, metrics = train_trial.log_trial(params, dataset, split, budget, seed=seed,
                                                    title=f"{label} seed {seed}")
            if result.diverged:
                mlflow.end_run(status="FAILED")
        print(f"  seed {seed}: validation {result.validation_accuracy:.4f}"
              f"{' (DIVERGED)' if result.diverged else ''}, {result.epochs_run} epochs "
              f"(best {result.best_epoch}), {result.train_seconds:.0f} s; run {run.info.run_id}", flush=True)
        if not result.diverged:
            runs.append(SeedRun(seed, run.info.run_id, result))
    if not runs:
        print("Every seed diverged: nothing to evaluate or register.")
        return 1

    accuracies = [r.result.validation_accuracy for r in runs]
    print(f"Validation accuracy over {len(runs)} seed(s): {mean_and_sd(accuracies)}")
    print(f"Verdict: {verdict(records.accuracy(trial), accuracies, len(split.y_val))}")
    if budget.name != swept_at:
        print(f"  (the seeds trained at budget {budget.name}, the sweep's figure at {swept_at}: "
              "a larger budget should land above it)")

    client = tracking.client(uri)
    for seed_run in runs:  # once per model, after every decision that uses validation
        seed_run.test_accuracy = record_test(seed_run.run_id, seed_run.result.model, dataset)
    tests = [r.test_accuracy for r in runs]
    print(f"Test accuracy over {len(runs)} seed(s), evaluated once each: {mean_and_sd(tests)}")

    best = best_on_validation(runs)
    version = register(client, best.run_id, args.model_name, ALIAS, {
        **source, records.SEED_TAG: str(best.seed), records.BUDGET_TAG: budget.name,
        records.VALIDATION_ACCURACY_TAG: f"{best.result.validation_accuracy:.4f}",
        records.TEST_ACCURACY_TAG: f"{best.test_accuracy:.4f}"})
    print(f"Registered seed {best.seed} (best validation accuracy) as {args.model_name} version {version}, "
          f"alias @{ALIAS}: mlflow.keras.load_model(\"models:/{args.model_name}@{ALIAS}\")")
    experiment_id = client.get_run(best.run_id).info.experiment_id
    print(f"MLflow: the seeds' runs, best validation accuracy first: {tracking.ranked_link(uri, experiment_id)}; "
          f"the registered model: {tracking.ui_base(uri)}/#/models/{args.model_name}")
    return 0


if __name__ == "__main__":
    cli.run(main)
