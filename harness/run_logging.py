"""What a training run records in MLflow besides its params: the tags that make it
re-runnable, its per-epoch curves, and its artifacts (figures, confusion matrix, model
summary and the Keras model itself). Logs into the active run of MLflow's fluent API."""

from __future__ import annotations

import math
import time
import warnings

import numpy as np

from harness import data, figures, records, tracking
from harness.backend import keras
from harness.budgets import Budget

# Keras' names for the training metrics, and ours (Keras' validation names are kept).
KERAS_TO_OUR_NAMES = {"loss": "train_loss", "accuracy": "train_accuracy"}

# What a saved model needs besides Keras and NumPy, by the backend it was trained on.
BACKEND_PACKAGES = {"tensorflow": ("tensorflow",), "jax": ("jax", "jaxlib"), "torch": ("torch",)}


def our_names(logs: dict) -> dict[str, float]:
    return {KERAS_TO_OUR_NAMES.get(k, k): float(v) for k, v in logs.items()}


def run_tags(dataset: data.Dataset, split: data.Split, budget: Budget, *, seed: int,
             baseline: str | None) -> dict[str, str]:
    """Everything needed to re-run a trial besides its params: code, data, split, budget."""
    return {
        **tracking.provenance_tags(),
        records.BASELINE_TAG: baseline or "none", records.BUDGET_TAG: budget.name,
        records.BUDGET_MAX_EPOCHS_TAG: str(budget.max_epochs), records.BUDGET_PATIENCE_TAG: str(budget.patience),
        records.DATA_SOURCE_TAG: dataset.source, records.DATA_FORMAT_TAG: dataset.format,
        records.DATA_SHA256_TAG: dataset.sha256, records.SPLIT_SEED_TAG: str(split.seed),
        records.VALIDATION_SIZE_TAG: str(len(split.y_val)), records.VALIDATION_SHA256_TAG: split.validation_sha256,
        records.TRAIN_SIZE_TAG: str(len(split.y_train)), records.SEED_TAG: str(seed),
    }


def log_training_inputs(dataset: data.Dataset, split: data.Split) -> None:
    """The images the active run trains and validates on, as MLflow dataset inputs: named, with
    the split's digest and the data file as source, so the runs table's Dataset column and the
    run page say what each model saw. MLflow keeps the name, digest, source and shapes, never
    a copy of the images."""
    _log_input("mnist-train", "training", dataset, split.x_train, split.y_train, split.train_sha256)
    _log_input("mnist-validation", "validation", dataset, split.x_val, split.y_val, split.validation_sha256)


def log_test_input(dataset: data.Dataset) -> None:
    """The test set as the active run's evaluation input: only on runs that were tested."""
    _log_input("mnist-test", "evaluation", dataset, dataset.x_test, dataset.y_test,
               dataset.array_sha256.get("x_test", dataset.sha256))


def _log_input(name: str, context: str, dataset: data.Dataset, images: np.ndarray, labels: np.ndarray,
               digest: str) -> None:
    import mlflow

    with warnings.catch_warnings():
        # MLflow 3.17 registers its local-file source class twice, then warns that a path is
        # ambiguous between the two.
        warnings.filterwarnings("ignore", "The specified dataset source can be interpreted in multiple ways",
                                UserWarning)
        source = mlflow.data.from_numpy(images, source=dataset.source, targets=labels, name=name, digest=digest[:12])
    from mlflow.exceptions import MlflowException

    # Two workers starting on a split the store has not seen both insert its dataset row; the
    # one that loses the race (a UNIQUE constraint) finds the row there on a second try.
    for attempt in range(3):
        try:
            mlflow.log_input(source, context=context)
            return
        except MlflowException as error:
            if "UNIQUE constraint" not in str(error) and "duplicate key" not in str(error) or attempt == 2:
                raise
            time.sleep(0.2)


class MlflowEpochLogger(keras.callbacks.Callback):
    """Logs each epoch's metrics to the active MLflow run with step = epoch.

    (mlflow.keras.MlflowCallback would also log the optimizer config as params, mixing it
    into the params dict, and a step-less copy of every validation pass.)
    """

    def on_epoch_end(self, epoch, logs=None):
        import mlflow

        metrics = our_names(logs or {})
        mlflow.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)}, step=epoch)


def log_artifacts(model: keras.Model, history: dict[str, list[float]], validation_probabilities: np.ndarray,
                  split: data.Split, title: str) -> None:
    """Learning curves, the validation confusion matrix (picture and CSV), the most
    confident errors, the model summary and the model, into the active run."""
    import matplotlib.pyplot as plt
    import mlflow

    predicted = validation_probabilities.argmax(axis=1)
    matrix = figures.confusion_matrix(split.y_val, predicted)
    for name, figure in {
        "learning_curves.png": figures.learning_curves(history, title),
        "confusion_matrix.png": figures.confusion_matrix_plot(
            matrix, f"{title}: validation confusion matrix"),
        "most_confident_errors.png": figures.most_confident_errors(
            split.x_val, split.y_val, validation_probabilities),
    }.items():
        mlflow.log_figure(figure, name)
        plt.close(figure)
    rows = ["true\\predicted," + ",".join(map(str, range(10)))]
    rows += [f"{digit}," + ",".join(map(str, matrix[digit])) for digit in range(10)]
    mlflow.log_text("\n".join(rows) + "\n", "confusion_matrix.csv")
    summary: list[str] = []
    model.summary(print_fn=lambda line, *args, **kwargs: summary.append(line))
    mlflow.log_text("\n".join(summary), "model_summary.txt")
    # Requirements written out: MLflow would otherwise infer them by re-loading the model
    # in a subprocess, which costs more than a small trial.
    sample = split.x_val[:5, ..., None]
    signature = mlflow.models.infer_signature(sample, validation_probabilities[:5])
    packages = (*BACKEND_PACKAGES[keras.backend.backend()], "keras", "numpy")
    mlflow.keras.log_model(model, name="model", signature=signature,
                           pip_requirements=[f"{name}=={tracking.package_version(name)}" for name in packages])
