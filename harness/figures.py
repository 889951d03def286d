"""The pictures a trial stores: learning curves, confusion matrix, most confident errors.

Pure functions from arrays to a matplotlib Figure, so the report can redraw them from
what MLflow stored.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402


def learning_curves(history: dict[str, list[float]], title: str = "") -> plt.Figure:
    """Loss above, accuracy below, training vs validation, as seed 000 plots them."""
    figure, (loss_axes, accuracy_axes) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    epochs = np.arange(1, len(history["train_loss"]) + 1)
    loss_axes.plot(epochs, history["train_loss"], "b-o", label="Training loss")
    loss_axes.plot(epochs, history["val_loss"], "r-o", label="Validation loss")
    accuracy_axes.plot(epochs, history["train_accuracy"], "b-o", label="Training accuracy")
    accuracy_axes.plot(epochs, history["val_accuracy"], "r-o", label="Validation accuracy")
    loss_axes.set_ylabel("loss")
    accuracy_axes.set_ylabel("accuracy")
    accuracy_axes.set_xlabel("epoch")
    accuracy_axes.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    for axes in (loss_axes, accuracy_axes):
        axes.legend(loc="best")
        axes.grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def confusion_matrix(true_labels: np.ndarray, predicted_labels: np.ndarray) -> np.ndarray:
    """10x10 counts: rows are true digits, columns predicted ones."""
    return np.bincount(true_labels.astype(int) * 10 + predicted_labels.astype(int),
                       minlength=100).reshape(10, 10)


def confusion_matrix_plot(matrix: np.ndarray, title: str = "Confusion matrix") -> plt.Figure:
    figure, axes = plt.subplots(figsize=(6.5, 5.5))
    draw_confusion_matrix(axes, matrix, title)
    figure.tight_layout()
    return figure


def draw_confusion_matrix(axes: plt.Axes, matrix: np.ndarray, title: str) -> None:
    image = axes.imshow(matrix, interpolation="nearest", cmap="Blues")
    axes.figure.colorbar(image, ax=axes)
    axes.set_xticks(range(10))
    axes.set_yticks(range(10))
    threshold = matrix.max() / 2
    for true_digit in range(10):
        for predicted_digit in range(10):
            count = matrix[true_digit, predicted_digit]
            axes.text(predicted_digit, true_digit, count, ha="center", va="center", fontsize=8,
                      color="white" if count > threshold else "black")
    axes.set_xlabel("Predicted label")
    axes.set_ylabel("True label")
    axes.set_title(title)


def most_confident_errors(images: np.ndarray, true_labels: np.ndarray,
                          probabilities: np.ndarray, count: int = 6) -> plt.Figure:
    """The errors where the predicted class beats the true one by the widest margin (seed 000)."""
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != true_labels)
    margin = probabilities[wrong, predicted[wrong]] - probabilities[wrong, true_labels[wrong]]
    worst = wrong[np.argsort(margin)[::-1][:count]]
    figure, grid = plt.subplots(2, 3, figsize=(7, 6.5))
    for axes, index in zip(grid.flat, list(worst) + [None] * count):
        axes.axis("off")
        if index is None:
            continue
        axes.imshow(images[index].reshape(28, 28), cmap="gray")
        axes.set_title(f"Predicted {predicted[index]} ({probabilities[index, predicted[index]]:.2f})\n"
                       f"True {true_labels[index]}", fontsize=9)
    figure.suptitle(f"{len(worst)} most confident errors of {len(wrong)}" if len(wrong) else
                    "No errors")
    figure.tight_layout()
    return figure
