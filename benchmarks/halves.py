"""Validation halves for the benchmarks that weigh ensembles: the ensemble step's selection
run on one random half of validation and scored on the other, over the same halves for every
set of candidates compared (paired), and the table of the outcome. The test set is not read."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from harness.calibration import log_loss, temperature, tempered
from sweeps import ensemble

HALVES = 30


def random_halves(images: int, count: int = HALVES) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` random splits of ``images`` validation indices into a half to choose on and a
    half to score on; the same ones on every call."""
    rng = np.random.default_rng(0)
    orders = [rng.permutation(images) for _ in range(count)]
    return [(order[: images // 2], order[images // 2:]) for order in orders]


def calibrated_on(probabilities: list[np.ndarray], labels: np.ndarray, fit: np.ndarray) -> list[np.ndarray]:
    """Each candidate at the temperature that makes its log-loss on ``fit`` lowest: the
    ensemble step's calibration, seeing only the half it chooses on."""
    return [tempered(p, temperature(p[fit], labels[fit])) for p in probabilities]


def greedy_weights(candidates: list[np.ndarray], labels: np.ndarray) -> dict[int, float]:
    """The ensemble step's choice: greedy forward selection on log-loss, weights by rounds."""
    return ensemble.weights_of(ensemble.greedy_selection(candidates, labels)[0])


def chosen_and_scored(candidates: list[np.ndarray], labels: np.ndarray, fit: np.ndarray, held: np.ndarray,
                      choose: Callable[[list[np.ndarray], np.ndarray], dict[int, float]] = greedy_weights,
                      ) -> tuple[float, float, int]:
    """The ensemble chosen by ``choose`` (by default as the ensemble step chooses) on ``fit``
    from calibrated candidates: its accuracy and log-loss on ``held``, and how many distinct
    members it has."""
    weights = choose([c[fit] for c in candidates], labels[fit])
    mean = ensemble.weighted_average([c[held] for c in candidates], weights)
    return ensemble.accuracy(mean, labels[held]), log_loss(mean, labels[held]), len(weights)


def print_table(scored: dict[str, list[tuple[float, float, int]]], what: str, against: str) -> None:
    """Each set's held-out scores over the halves, paired against the first set's (``against``
    names it); ``what`` heads the sets' column."""
    print(f"The ensemble chosen on one half of validation, scored on the other ({len(next(iter(scored.values())))} "
          "random halves, the same for every set)\n")
    print(f"| {what} | accuracy (mean ± sd) | against {against} | log-loss | distinct members |\n"
          "| --- | --- | --- | --- | --- |")
    first = np.array(next(iter(scored.values())))
    for name, scores in scored.items():
        rows = np.array(scores)
        gain = rows[:, 0] - first[:, 0]
        print(f"| {name} | {rows[:, 0].mean():.4f} ± {rows[:, 0].std():.4f} | {gain.mean():+.4f} "
              f"(ahead in {(gain > 0).sum()}, behind in {(gain < 0).sum()}) | {rows[:, 1].mean():.4f} | "
              f"{rows[:, 2].mean():.1f} |")


def choice_row(name: str, candidates: list[np.ndarray], labels: np.ndarray, weights: dict[int, float],
               names: list[str]) -> str:
    """A Markdown row for an ensemble chosen on all of validation: its accuracy, log-loss and
    weighted members (``names`` by candidate index)."""
    mean = ensemble.weighted_average(candidates, weights)
    members = ", ".join(f"{names[index]} x{weight:.2f}" for index, weight in weights.items())
    return f"| {name} | {ensemble.accuracy(mean, labels):.4f} | {log_loss(mean, labels):.4f} | {members} |"
