"""One params dict -> a trained, logged model.

    python train_trial.py --baseline chollet_cnn --evaluate-test
    python train_trial.py --params my_recipe.json --budget quick

Reads top to bottom: the model -> its optimizer and schedule -> fit with validation early
stopping -> evaluation -> the MLflow run that records it all -> the command line. The test
set is touched only by ``evaluate_test``, once, after training (``--evaluate-test``).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

import search_space
from harness import backend, calibration, cli, data, records, run_logging, tracking
from harness.backend import keras
from harness.budgets import BUDGETS, Budget
from harness.errors import ParamsError, UserError

DEFAULT_EXPERIMENT = "mnist-trials"

# LeNet-5's step schedule (seed 004) as multiples of the base rate: with 5e-4 it gives
# 5e-4 for epochs 0-2, 2e-4 for 3-5, 5e-5 for 6-9 and 1e-5 after.
STEP_SCHEDULE = ((3, 1.0), (6, 0.4), (10, 0.1), (math.inf, 0.02))
ONE_CYCLE_WARMUP_FRACTION = 0.3  # of all steps, rising from a 25th of the peak rate (Smith's 1cycle)
# Part of every run's training fingerprint: bump it whenever a change here (or in what this
# file calls) changes the model a params dict, budget, seed and split train into, so that
# sweeps stop reusing runs trained by the older code.
TRAINING_CODE_VERSION = 1


# --- The model --------------------------------------------------------------------------

def build_model(params: dict, pixel_mean: float = 0.0, pixel_std: float = 255.0) -> keras.Model:
    """The network ``params`` describes, taking uint8 images of shape (28, 28, 1).

    Scaling and augmentation are layers, so the stored model takes raw pixels and
    augmentation is active only while training. ``pixel_mean``/``pixel_std`` are the
    training images' statistics, used when ``input_scaling`` is "standardize".
    """
    layers = keras.layers
    activation = params["activation"]
    model = keras.Sequential(name="mnist")
    model.add(keras.Input(shape=(28, 28, 1), dtype="uint8"))
    if params["input_scaling"] == "standardize":
        model.add(layers.Rescaling(1.0 / pixel_std, offset=-pixel_mean / pixel_std))
    else:
        model.add(layers.Rescaling(1.0 / 255))
    # fill_mode="nearest" is what seed 000's ImageDataGenerator used. (.get: the ranges are
    # absent when augmentation is off, and studies before search space 4 had no "augment".)
    if params.get("rotation"):
        model.add(layers.RandomRotation(params["rotation"] / 360, fill_mode="nearest"))
    if params.get("zoom"):  # independent height and width zoom, as ImageDataGenerator's zoom_range
        model.add(layers.RandomZoom(params["zoom"], params["zoom"], fill_mode="nearest"))
    if params.get("shift"):
        model.add(layers.RandomTranslation(params["shift"], params["shift"], fill_mode="nearest"))

    if params["family"] == "cnn":
        for block in range(1, params["conv_blocks"] + 1):
            downsample = search_space.block_downsample(params, block)
            convs = params[f"block{block}_convs"]
            for conv in range(1, convs + 1):
                _add(model, layers.Conv2D(
                    params[f"block{block}_filters"], params[f"block{block}_kernel"],
                    strides=search_space.conv_stride(downsample, conv, convs),
                    padding=search_space.block_padding(params, block),
                    activation=None if params["batch_norm"] else activation), block)
                if params["batch_norm"]:
                    model.add(layers.BatchNormalization())
                    model.add(layers.Activation(activation))
            if downsample == "max":
                _add(model, layers.MaxPooling2D(2), block)
            elif downsample == "avg":
                _add(model, layers.AveragePooling2D(2), block)
            if params["block_dropout"]:
                model.add(layers.Dropout(params["block_dropout"]))

    model.add(layers.Flatten())
    for _ in range(params["dense_layers"]):
        model.add(layers.Dense(params["dense_units"], activation=activation))
        if params["head_dropout"]:
            model.add(layers.Dropout(params["head_dropout"]))
    model.add(layers.Dense(10, activation="softmax"))
    return model


def _add(model: keras.Sequential, layer, block: int) -> None:
    try:
        model.add(layer)
    except ValueError as error:  # e.g. "valid" convolutions shrinking the map below the kernel
        raise ParamsError(f"block {block}: impossible layer shapes for 28x28 inputs "
                          f"({str(error).splitlines()[0]})") from None


def layer_table(model: keras.Model) -> list[tuple[str, str]]:
    """Each layer's kind and what it puts out (per image), for a run's description."""
    rows = []
    for layer in model.layers:
        kind = type(layer).__name__
        if isinstance(layer, keras.layers.Conv2D):
            kind += f" {layer.filters} {'x'.join(map(str, layer.kernel_size))} {layer.padding}"
        elif isinstance(layer, keras.layers.Dense):
            kind += f" {layer.units}"
        elif isinstance(layer, keras.layers.Dropout):
            kind += f" {layer.rate:g}"
        rows.append((kind, "x".join(str(d) for d in layer.output.shape[1:])))
    return rows


def forward_multiply_adds(model: keras.Model) -> int:
    """Multiply-adds of one image's forward pass through the convolutions and dense layers,
    which carry nearly all the arithmetic (training costs about three times this, times two
    for FLOPs)."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, height, width, _ = layer.output.shape
            total += height * width * int(np.prod(layer.kernel.shape))
        elif isinstance(layer, keras.layers.Dense):
            total += int(np.prod(layer.kernel.shape))
    return total


# --- Optimizer and learning-rate schedule -------------------------------------------------

def make_optimizer(params: dict, epochs: int, steps_per_epoch: int, plateau_patience: int = 3):
    """The optimizer, and the callbacks its schedule needs (epoch-wise schedules)."""
    rate = search_space.learning_rate(params)
    total_steps = epochs * steps_per_epoch
    callbacks = []
    schedule = params["lr_schedule"]
    if schedule == "plateau":  # seed 000's annealer (patience 3; shorter where early stopping is)
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor="val_accuracy", mode="max", patience=plateau_patience, factor=0.5, min_lr=1e-5))
    elif schedule == "step":
        callbacks.append(keras.callbacks.LearningRateScheduler(
            lambda epoch: rate * next(f for end, f in STEP_SCHEDULE if epoch < end)))
    elif schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(rate, decay_steps=total_steps)
    elif schedule == "one_cycle":
        warmup_steps = max(1, round(total_steps * ONE_CYCLE_WARMUP_FRACTION))
        rate = keras.optimizers.schedules.CosineDecay(
            rate / 25, decay_steps=max(1, total_steps - warmup_steps),
            warmup_target=rate, warmup_steps=warmup_steps)

    # Keras applies weight_decay decoupled (as AdamW does) for every optimizer.
    decay = params["weight_decay"] or None
    optimizers = {
        "sgd": lambda: keras.optimizers.SGD(rate, momentum=params.get("momentum", 0.0), weight_decay=decay),
        "rmsprop": lambda: keras.optimizers.RMSprop(rate, rho=0.9, epsilon=params.get("epsilon"), weight_decay=decay),
        "adam": lambda: keras.optimizers.Adam(rate, epsilon=params.get("epsilon"), weight_decay=decay),
        "adamw": lambda: keras.optimizers.AdamW(rate, epsilon=params.get("epsilon"),
                                                weight_decay=params["weight_decay"]),
    }
    return optimizers[params["optimizer"]](), callbacks


def current_learning_rate(model: keras.Model) -> float:
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


# --- Training -----------------------------------------------------------------------------

class RecordLearningRate(keras.callbacks.Callback):
    """Adds the learning rate in force to each epoch's logs (History and loggers read them)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = current_learning_rate(self.model)


class StopOnDivergence(keras.callbacks.Callback):
    """Stops at the first batch whose loss is NaN or infinite, and remembers that it did."""

    diverged = False

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.diverged = True
            self.model.stop_training = True


@dataclass
class TrainingResult:
    model: keras.Model
    history: dict[str, list[float]]  # per epoch: train_/val_ loss and accuracy, learning_rate
    epochs_run: int
    best_epoch: int  # 1-based; its weights are the ones restored
    validation_accuracy: float  # of the restored model
    validation_probabilities: np.ndarray
    diverged: bool
    train_seconds: float


def train(params: dict, split: data.Split, budget: Budget, *, seed: int = 0,
          callbacks: Sequence[keras.callbacks.Callback] = (), verbose: int = 0) -> TrainingResult:
    keras.utils.set_random_seed(seed)
    model = build_model(params, split.pixel_mean, split.pixel_std)
    epochs = budget.epochs_for(params)
    steps_per_epoch = math.ceil(len(split.x_train) / params["batch_size"])
    optimizer, schedule_callbacks = make_optimizer(params, epochs, steps_per_epoch, budget.plateau_patience)
    model.compile(optimizer=optimizer,
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=params["label_smoothing"]),
                  metrics=["accuracy"])
    divergence = StopOnDivergence()
    started = time.perf_counter()
    history = model.fit(
        split.x_train[..., None], keras.utils.to_categorical(split.y_train, 10),
        batch_size=params["batch_size"], epochs=epochs, verbose=verbose,
        validation_data=(split.x_val[..., None], keras.utils.to_categorical(split.y_val, 10)),
        class_weight=_class_weights(params),
        callbacks=[divergence, *schedule_callbacks, RecordLearningRate(),
                   keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max",
                                                 patience=budget.patience, restore_best_weights=True),
                   *callbacks])
    train_seconds = time.perf_counter() - started
    curves = {run_logging.KERAS_TO_OUR_NAMES.get(k, k): [float(v) for v in values]
              for k, values in history.history.items()}
    probabilities = predict_probabilities(model, split.x_val)
    validation_accuracy = float((probabilities.argmax(axis=1) == split.y_val).mean())
    finite = [v if math.isfinite(v) else -1.0 for v in curves.get("val_accuracy", [])]
    return TrainingResult(
        model=model, history=curves, epochs_run=len(curves.get("train_loss", [])),
        best_epoch=int(np.argmax(finite)) + 1 if finite else 0,
        validation_accuracy=validation_accuracy, validation_probabilities=probabilities,
        diverged=divergence.diverged, train_seconds=train_seconds)


def predict_probabilities(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """The model's digit probabilities for a stack of 28x28 images."""
    return model.predict(images[..., None], batch_size=1000, verbose=0)


def _class_weights(params: dict) -> dict[int, float] | None:
    weights = params.get("class_weights")
    return {digit: float(weights.get(str(digit), 1.0)) for digit in range(10)} if weights else None


# --- Evaluation ---------------------------------------------------------------------------

def evaluate_test(model: keras.Model, dataset: data.Dataset) -> dict[str, float]:
    """The one place the test set is used. From the model's probabilities, so any model that
    gives them (an uncompiled ensemble too) is measured the same way."""
    require_test_set(dataset, "--evaluate-test")
    probabilities = model.predict(dataset.x_test[..., None], batch_size=1000, verbose=0)
    chosen = probabilities[np.arange(len(dataset.y_test)), dataset.y_test]
    return {"test_accuracy": float((probabilities.argmax(axis=1) == dataset.y_test).mean()),
            "test_loss": float(-np.log(np.clip(chosen, 1e-7, 1.0)).mean())}


# How a user meets a model's speed: one digit at a time (a drawing on the page, a request to
# digits.serve) and a batch (digits.predict on a CSV). Timed through Keras' predict_on_batch,
# which runs the model once on the arrays given, without predict()'s per-call dataset set-up.
LATENCY_SINGLE_CALLS = 30
LATENCY_BATCH = 1000
LATENCY_BATCH_CALLS = 3
LATENCY_METRICS = ("predict_ms_one_image", f"predict_ms_{LATENCY_BATCH}_images")


def prediction_latency(model: keras.Model, images: np.ndarray) -> dict[str, float]:
    """Median milliseconds of the model's prediction for one image and for a batch of
    LATENCY_BATCH, on the threads this process trains with (one per worker in a sweep on a
    CPU). The first call of each shape, which traces and allocates, is not timed."""
    one, batch = images[:1, ..., None], images[:LATENCY_BATCH, ..., None]

    def milliseconds(inputs: np.ndarray, calls: int) -> float:
        model.predict_on_batch(inputs)
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            model.predict_on_batch(inputs)
            times.append(time.perf_counter() - started)
        return float(np.median(times)) * 1000

    return dict(zip(LATENCY_METRICS, (milliseconds(one, LATENCY_SINGLE_CALLS), milliseconds(batch, LATENCY_BATCH_CALLS))))


def require_test_set(dataset: data.Dataset, needed_by: str) -> None:
    """Refuse data without a labelled test set where ``needed_by`` will read one."""
    if dataset.x_test is None:
        raise UserError(f"{dataset.source} has no labelled test set ({dataset.format}), which {needed_by} reads; "
                        "use data with test labels")


# --- The MLflow run ------------------------------------------------------------------------

def log_recipe(params: dict, fingerprint: str) -> None:
    """The recipe into the active run: a param per key, params.json, and its training fingerprint."""
    import mlflow

    mlflow.log_params({k: json.dumps(v) if isinstance(v, dict) else v for k, v in params.items()})
    mlflow.log_dict(params, "params.json")
    mlflow.set_tag(records.TRAINING_FINGERPRINT_TAG, fingerprint)


def log_trial(params: dict, dataset: data.Dataset, split: data.Split, budget: Budget, *,
              seed: int = 0, evaluate_on_test: bool = False, title: str = "trial",
              callbacks: Sequence[keras.callbacks.Callback] = (),
              verbose: int = 0) -> tuple[TrainingResult, dict[str, float]]:
    """Train ``params`` and log params, per-epoch curves, final metrics, figures and the model
    into the active MLflow run. A diverged trial gets a ``failure_reason`` tag and no artifacts;
    the caller decides how its run ends."""
    import mlflow

    log_recipe(params, training_fingerprint(params, dataset, split, budget, seed))
    run_logging.log_training_inputs(dataset, split)
    result = train(params, split, budget, seed=seed, verbose=verbose,
                   callbacks=[run_logging.MlflowEpochLogger(), *callbacks])
    metrics = {
        "validation_accuracy": result.validation_accuracy,
        "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
        "train_seconds": result.train_seconds, "param_count": result.model.count_params(),
        "forward_mmacs_per_image": forward_multiply_adds(result.model) / 1e6,
        "images_per_second": len(split.y_train) * result.epochs_run / max(result.train_seconds, 1e-9),
    }
    if result.diverged:
        mlflow.set_tag(records.FAILURE_REASON_TAG, f"loss diverged (NaN or inf) in epoch {result.epochs_run}")
        mlflow.log_metrics(metrics)
        return result, metrics
    metrics.update(calibration.scores(result.validation_probabilities, split.y_val))
    metrics.update(prediction_latency(result.model, split.x_val))
    mlflow.set_tag(records.PREDICT_THREADS_TAG, str(backend.threads_in_use()))
    if evaluate_on_test:
        metrics.update(evaluate_test(result.model, dataset))
        run_logging.log_test_input(dataset)
    mlflow.log_metrics(metrics)
    run_logging.log_artifacts(result.model, result.history, result.validation_probabilities, split, title)
    return result, metrics


def training_fingerprint(params: dict, dataset: data.Dataset, split: data.Split, budget: Budget, seed: int) -> str:
    """What this run's result depends on, as records.training_fingerprint digests it."""
    return records.training_fingerprint(params, budget, seed, dataset.sha256, split.train_sha256,
                                        split.validation_sha256, TRAINING_CODE_VERSION, keras.backend.backend())


def run_logged_trial(params: dict, dataset: data.Dataset, split: data.Split, budget: Budget, *,
                     seed: int = 0, baseline: str | None = None, evaluate_on_test: bool = False,
                     run_name: str | None = None, verbose: int = 0,
                     ) -> tuple[TrainingResult, dict[str, float], str]:
    """``log_trial`` in a run of its own, which ends FAILED if the loss diverged.
    Returns the result, the final metrics and the run id."""
    import mlflow

    name = run_name or baseline or "trial"
    tags = run_logging.run_tags(dataset, split, budget, seed=seed, baseline=baseline)
    with mlflow.start_run(run_name=name, tags=tags) as run:
        result, metrics = log_trial(params, dataset, split, budget, seed=seed, title=name,
                                    evaluate_on_test=evaluate_on_test, verbose=verbose)
        if result.diverged:
            mlflow.end_run(status="FAILED")
    return result, metrics, run.info.run_id


# --- Command line -------------------------------------------------------------------------

def load_params(args) -> tuple[dict, str | None]:
    if args.baseline:
        return search_space.baseline(args.baseline), args.baseline
    try:
        with open(args.params, encoding="utf-8") as file:
            raw = json.load(file)
    except OSError as error:
        raise ParamsError(f"{args.params}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise ParamsError(f"{args.params}: not valid JSON ({error})") from None
    except UnicodeDecodeError as error:
        raise ParamsError(f"{args.params}: not UTF-8 text, as JSON files are ({error.reason} at byte {error.start})") from None
    return search_space.validate(raw, args.params), None


def parse_args(argv: Sequence[str] | None):
    parser = cli.ArgumentParser(prog="train_trial.py", description="Train one params dict and log it to MLflow.")
    recipe = parser.add_mutually_exclusive_group(required=True)
    recipe.add_argument("--baseline", choices=search_space.BASELINES, help="a seed recipe")
    recipe.add_argument("--params", metavar="FILE.json", help="a params dict (see search_space.py)")
    cli.add_training_arguments(parser, default_budget="full")
    parser.add_argument("--split-seed", type=cli.non_negative_int, default=data.DEFAULT_SPLIT_SEED,
                        help="seed of the validation split (default: 0; keep it fixed to compare runs)")
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="MLflow experiment name")
    parser.add_argument("--evaluate-test", action="store_true",
                        help="after training, evaluate once on the test set and log test_accuracy")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    params, baseline = load_params(args)
    budget = BUDGETS[args.budget].overridden(train_size=args.train_size, max_epochs=args.max_epochs)
    dataset = data.load(args.data)
    if args.evaluate_test:
        require_test_set(dataset, "--evaluate-test")
    split = data.split(dataset, args.split_seed, budget.train_size)
    uri = tracking.use_experiment(args.experiment, args.tracking_uri)
    name = baseline or os.path.splitext(os.path.basename(args.params))[0]
    print(f"{name}: budget {budget.name} (train images: {budget.train_size or 'all'}, "
          f"epochs: {budget.epochs_for(params)}, patience {budget.patience}), "
          f"data {dataset.source}", flush=True)
    result, metrics, run_id = run_logged_trial(
        params, dataset, split, budget, seed=args.seed, baseline=baseline,
        evaluate_on_test=args.evaluate_test, run_name=name, verbose=0 if args.quiet else 2)
    if result.diverged:
        print(f"{name}: FAILED: the loss diverged (NaN or inf) in epoch {result.epochs_run}; "
              f"MLflow run {run_id}")
        return 1
    test = f", test accuracy {metrics['test_accuracy']:.4f}" if "test_accuracy" in metrics else ""
    print(f"{name}: validation accuracy {metrics['validation_accuracy']:.4f} (best epoch "
          f"{result.best_epoch} of {result.epochs_run}){test}; {metrics['param_count']:,} params; "
          f"{result.train_seconds:.0f} s training")
    print(f"MLflow run {run_id} in experiment {args.experiment!r} at {uri}")
    return 0


if __name__ == "__main__":
    cli.run(main)
