"""Validation halves for the benchmarks that weigh ensembles (the halves and the scoring are
``sweeps.selection``'s): candidates calibrated on the half they are chosen on, and the paired
table of the outcome. The test set is not read."""

from __future__ import annotations

import numpy as np

from harness.calibration import log_loss, temperature, tempered
from sweeps import selection


def calibrated_on(probabilities: list[np.ndarray], labels: np.ndarray, fit: np.ndarray) -> list[np.ndarray]:
    """Each candidate at the temperature that makes its log-loss on ``fit`` lowest: the
    ensemble step's calibration, seeing only the half it chooses on."""
    return [tempered(p, temperature(p[fit], labels[fit])) for p in probabilities]


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
    mean = selection.weighted_average(candidates, weights)
    members = ", ".join(f"{names[index]} x{weight:.2f}" for index, weight in weights.items())
    return f"| {name} | {selection.accuracy(mean, labels):.4f} | {log_loss(mean, labels):.4f} | {members} |"
