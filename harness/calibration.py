"""How well a model's probabilities fit the digits it is scored on: log-loss, and the same
after a temperature fitted on those images (Guo et al., 2017). Label smoothing and dropout leave
models under- or overconfident by different amounts; at its own temperature, a model's
log-loss says how much it gets right and how sure it is where it is right, comparably across
recipes. The ensemble selects on it, and the top rung spends its spare time on seeds of the
recipes best by it (sweeps/ladder.py). NumPy only."""

from __future__ import annotations

import numpy as np

# Probabilities are clipped here before the log: a confident error costs a finite loss.
PROBABILITY_FLOOR = 1e-7
# The temperatures a calibration tries: a quarter to four times the softmax's, evenly on a log
# scale (a label-smoothed model wants about 0.5, an overfit one above 1).
TEMPERATURES = np.geomspace(0.25, 4.0, 97)


def log_loss(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-probability of the true digit."""
    chosen = probabilities[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(chosen, PROBABILITY_FLOOR, 1.0)).mean())


def tempered(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): the same ranking of digits, confidence sharpened (T < 1) or softened."""
    scaled = np.log(np.clip(probabilities.astype(np.float64), PROBABILITY_FLOOR, 1.0)) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exponentials = np.exp(scaled)
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The temperature (of TEMPERATURES) with the lowest log-loss on these images: one number per
    model, fitted on the images that then read it, as Caruana's hill-climb fits its weights
    there too."""
    losses = [log_loss(tempered(probabilities, t), labels) for t in TEMPERATURES]
    return float(TEMPERATURES[int(np.argmin(losses))])


def scores(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """A model's validation log-loss, its temperature and its log-loss at it, as logged metrics."""
    fitted = temperature(probabilities, labels)
    return {"validation_log_loss": log_loss(probabilities, labels), "validation_temperature": fitted,
            "calibrated_validation_log_loss": log_loss(tempered(probabilities, fitted), labels)}
