"""Benchmark 1: one trial through the sweep's harness (Optuna + MLflow logging + artifacts)
against the same model, data, epochs and batch size trained by a bare ``model.fit`` script,
alternately in one process. Target: the harness takes at most 1.05x the bare script's time.

    python -m benchmarks.harness_overhead                      # chollet_cnn at the quick budget
    python -m benchmarks.harness_overhead --baseline kaggle_cnn --train-size 12000 --max-epochs 2
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import search_space
import train_trial
from benchmarks import results
from harness import backend, cli, data, records, tracking
from harness.backend import keras
from harness.budgets import BUDGETS
from sweeps import objective, study as sweep_study
from sweeps.settings import SweepSettings

TARGET = 1.05


def parse_args(argv: Sequence[str] | None):
    parser = cli.ArgumentParser(prog="python -m benchmarks.harness_overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", choices=search_space.BASELINES, default="chollet_cnn")
    cli.add_training_arguments(parser, default_budget="quick")
    parser.add_argument("--pairs", type=cli.positive_int, default=2, help="harness/bare pairs (default: 2)")
    parser.add_argument("--threads", type=cli.positive_int, help="CPU threads (default: the backend's)")
    return parser.parse_args(argv)


def bare_fit(params: dict, split: data.Split, epochs: int, seed: int) -> float:
    """What a user's script does: build, compile, fit with validation data. Seconds."""
    started = time.perf_counter()
    keras.utils.set_random_seed(seed)
    model = train_trial.build_model(params, split.pixel_mean, split.pixel_std)
    steps = math.ceil(len(split.y_train) / params["batch_size"])
    optimizer, callbacks = train_trial.make_optimizer(params, epochs, steps)
    model.compile(optimizer=optimizer, loss=keras.losses.CategoricalCrossentropy(
        label_smoothing=params["label_smoothing"]), metrics=["accuracy"])
    model.fit(split.x_train[..., None], keras.utils.to_categorical(split.y_train, 10),
              batch_size=params["batch_size"], epochs=epochs, verbose=0, callbacks=callbacks,
              validation_data=(split.x_val[..., None], keras.utils.to_categorical(split.y_val, 10)))
    return time.perf_counter() - started


class Harness:
    """A study and an MLflow store in a scratch folder; ``trial()`` runs one trial exactly as a
    sweep's worker does (price, train with pruner and time share, log, record) and returns its
    seconds and its training seconds."""

    def __init__(self, folder: Path, params: dict, settings_budget, seed: int):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.params, self.budget, self.seed = params, settings_budget, seed
        self.tracking_uri = f"sqlite:///{folder}/mlflow.db"
        self.storage_url = f"journal:{folder}/optuna.journal"
        self.storage = sweep_study.open_storage(self.storage_url)
        self.study = optuna.create_study(study_name="harness", storage=self.storage, direction="maximize",
                                         pruner=sweep_study.make_pruner("hyperband", settings_budget))
        tracking.use_experiment("harness", self.tracking_uri)
        client = tracking.client(self.tracking_uri)
        parent = client.create_run(client.get_experiment_by_name("harness").experiment_id, run_name="harness")
        self.settings = SweepSettings(
            study_name="harness", storage_url=self.storage_url, tracking_uri=self.tracking_uri,
            experiment="harness", parent_run_id=parent.info.run_id, total_trials=10**6, sampler="tpe",
            pruner="hyperband", seed=seed, budget=settings_budget, data_path=None,
            split_seed=data.DEFAULT_SPLIT_SEED, lock_path=str(folder / "ask.lock"), last_start=None)

    def trial(self, dataset: data.Dataset, split: data.Split) -> tuple[float, float]:
        self.study.enqueue_trial(self.params, user_attrs={records.BASELINE: "benchmark"})
        started = time.perf_counter()
        trial = objective.next_trial(self.study, self.storage, self.settings)
        objective.run_trial(self.study, self.storage, trial, self.settings, dataset, split)
        seconds = time.perf_counter() - started
        frozen = self.study.trials[-1]
        if frozen.state.name != "COMPLETE":
            raise RuntimeError(f"the harness trial ended {frozen.state.name}: {frozen.user_attrs.get(records.REASON)}")
        run = tracking.client(self.tracking_uri).get_run(frozen.user_attrs[records.MLFLOW_RUN_ID])
        return seconds, run.data.metrics["train_seconds"]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        backend.limit_threads(args.threads)
    params = search_space.baseline(args.baseline)
    budget = BUDGETS[args.budget].overridden(train_size=args.train_size, max_epochs=args.max_epochs)
    # Neither the cap nor the time share may end the harness's trial early: same work both ways.
    budget = dataclasses.replace(budget, max_training_tflop=math.inf, trial_seconds=math.inf,
                                 patience=budget.max_epochs)
    epochs = budget.epochs_for(params)
    dataset = data.load(args.data)
    split = data.split(dataset, data.DEFAULT_SPLIT_SEED, budget.train_size)
    with tempfile.TemporaryDirectory(prefix="harness-benchmark-") as folder:
        harness = Harness(Path(folder), params, budget, args.seed)
        # A short warm-up of each path, so neither pays the backend's first-use costs.
        warm = data.split(dataset, data.DEFAULT_SPLIT_SEED, 600)
        bare_fit(params, warm, 1, args.seed)
        harness.trial(dataset, warm)
        rows, ratios = [], []
        for pair in range(1, args.pairs + 1):
            order = ("bare", "harness") if pair % 2 else ("harness", "bare")  # alternate who goes first
            seconds = {}
            for path in order:
                keras.backend.clear_session()  # as a sweep worker does between trials
                if path == "bare":
                    seconds["bare"] = bare_fit(params, split, epochs, args.seed)
                else:
                    seconds["harness"], seconds["harness_fit"] = harness.trial(dataset, split)
            ratio = seconds["harness"] / seconds["bare"]
            ratios.append(ratio)
            rows.append([pair, " then ".join(order), f"{seconds['bare']:.1f} s", f"{seconds['harness']:.1f} s",
                         f"{seconds['harness_fit']:.1f} s", f"{ratio:.3f}"])
    median = statistics.median(ratios)
    verdict = "met" if median <= TARGET else "**not met**"
    body = (f"`{args.baseline}`, budget {budget.name}: {len(split.y_train):,} training images, {epochs} epochs, "
            f"batch {params['batch_size']}, validation on {len(split.y_val):,} images after every epoch.\n\n"
            + results.table(["pair", "order", "bare model.fit", "harness trial", "of which fit", "ratio"], rows)
            + f"\n\nHarness / bare (median of {len(ratios)}): **{median:.3f}x**; target <= {TARGET}x: {verdict}. "
            "The harness trial also prices the model, predicts the validation set once more, draws "
            "three figures and saves the model in MLflow; 'of which fit' is its model.fit alone.")
    results.record("Harness overhead", body)
    return 0


if __name__ == "__main__":
    cli.run(main)
