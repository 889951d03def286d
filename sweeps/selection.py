"""How the ensemble step chooses its members and their weights, on validation only: the rules it
may use, and the random halves of validation on which it tries each of them -- chosen on one
half, scored on the other -- to apply the one whose held-out log-loss is lowest to all of
validation. NumPy only.

The rules: Caruana et al.'s (2004) greedy forward selection with replacement on log-loss, their
bagged version (the greedy selection on random halves of the candidates, its weights averaged),
and the plain average of every candidate. Greedy selection fits its weights to the very images
it is scored on; on two pools of one store (``benchmarks.selection_rules``, RESULTS.md) it was
the worst of the three held out, and spreading the weight gained 0.02-0.04 points. Which rule
wins depends on the pool (how many good, different models it holds), so the step measures it on
its own pool rather than taking one store's verdict for every sweep.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np

from harness.calibration import log_loss
from sweeps.settings import ENSEMBLE_MEMBERS, ENSEMBLE_ROUNDS

# Bags in the bagged rule, as in Caruana et al.'s own experiments (20 bags of half the models).
BAGS = 20
# Random halves of validation each rule is tried on: enough that the spread of the held-out
# log-loss between rules is well below their differences in the measured pools, for about a
# minute of the ensemble step.
HALVES = 30

Rule = Callable[[list[np.ndarray], np.ndarray], dict[int, float]]
GREEDY = "greedy forward selection"
BAGGED = f"bagged greedy selection ({BAGS} bags of half the candidates)"
AVERAGE = "plain average of every candidate"


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float((probabilities.argmax(axis=1) == labels).mean())


def greedy_selection(probabilities: list[np.ndarray], labels: np.ndarray, rounds: int = ENSEMBLE_ROUNDS,
                     most_members: int = ENSEMBLE_MEMBERS, start: list[int] | None = None,
                     ) -> tuple[list[int], list[float]]:
    """Caruana's forward selection with replacement on validation log-loss. Returns the
    candidates chosen, one entry per round kept (a model chosen twice weighs twice), and the
    log-loss after each round tried. At most ``most_members`` distinct models: past that, a
    round may only weigh up a model already in. ``start`` (Caruana's sorted initialisation)
    is kept whole and counts as its length in rounds; by default the start is the best model."""
    chosen = list(start) if start else [int(np.argmin([log_loss(p, labels) for p in probabilities]))]
    total = sum(probabilities[index].astype(np.float64) for index in chosen)
    curve, started = [log_loss(total / len(chosen), labels)], len(chosen)
    for _ in range(rounds - started):
        allowed = range(len(probabilities)) if len(set(chosen)) < most_members else sorted(set(chosen))
        size = len(chosen) + 1
        trials = {index: log_loss((total + probabilities[index]) / size, labels) for index in allowed}
        best = min(trials, key=lambda index: (trials[index], index))
        chosen.append(best)
        total += probabilities[best]
        curve.append(trials[best])
    kept = started + int(np.argmin(curve))  # the first round with the lowest log-loss
    return chosen[:kept], curve


def weights_of(chosen: list[int]) -> dict[int, float]:
    """Each chosen candidate's weight: its share of the rounds kept, heaviest first."""
    counts = Counter(chosen)
    return {index: count / len(chosen) for index, count in counts.most_common()}


def weighted_average(probabilities: list[np.ndarray], weights: dict[int, float]) -> np.ndarray:
    return sum(weight * probabilities[index] for index, weight in weights.items())


def greedy(candidates: list[np.ndarray], labels: np.ndarray) -> dict[int, float]:
    """Greedy forward selection's weights: each chosen candidate's share of the rounds kept."""
    return weights_of(greedy_selection(candidates, labels)[0])


def mean_weights(bags: list[dict[int, float]]) -> dict[int, float]:
    """The bags' weights averaged, heaviest first (a candidate a bag left out weighs 0 there)."""
    weights: dict[int, float] = {}
    for bag in bags:
        for index, weight in bag.items():
            weights[index] = weights.get(index, 0.0) + weight / len(bags)
    return dict(sorted(weights.items(), key=lambda item: (-item[1], item[0])))


def bagged(candidates: list[np.ndarray], labels: np.ndarray) -> dict[int, float]:
    """Caruana's bagged selection: greedy selection on each of ``BAGS`` random halves of the
    candidates, their weights averaged (heaviest first). The bags are the same on every call."""
    rng = np.random.default_rng(0)
    bags = []
    for _ in range(BAGS):
        kept = sorted(rng.choice(len(candidates), size=max(1, len(candidates) // 2), replace=False))
        bags.append({int(kept[index]): weight
                     for index, weight in greedy([candidates[index] for index in kept], labels).items()})
    return mean_weights(bags)


def average(candidates: list[np.ndarray], labels: np.ndarray) -> dict[int, float]:
    """Every candidate at an equal weight."""
    return {index: 1 / len(candidates) for index in range(len(candidates))}


# In the order a tie in held-out log-loss is settled: the fewest distinct members first.
RULES: dict[str, Rule] = {GREEDY: greedy, BAGGED: bagged, AVERAGE: average}


def random_halves(images: int, count: int = HALVES) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` random splits of ``images`` validation indices into a half to choose on and a
    half to score on; the same ones on every call."""
    rng = np.random.default_rng(0)
    orders = [rng.permutation(images) for _ in range(count)]
    return [(order[: images // 2], order[images // 2:]) for order in orders]


def chosen_and_scored(candidates: list[np.ndarray], labels: np.ndarray, fit: np.ndarray, held: np.ndarray,
                      choose: Rule = greedy) -> tuple[float, float, int]:
    """The ensemble ``choose`` picks on the ``fit`` images: its accuracy and log-loss on the
    ``held`` ones, and how many distinct members it has."""
    weights = choose([c[fit] for c in candidates], labels[fit])
    mean = weighted_average([c[held] for c in candidates], weights)
    return accuracy(mean, labels[held]), log_loss(mean, labels[held]), len(weights)


def held_out(candidate_sets_on: Callable[[np.ndarray], dict], labels: np.ndarray, rules: dict[str, Rule] = RULES,
             halves: list[tuple[np.ndarray, np.ndarray]] | None = None) -> dict[tuple, list[tuple[float, float, int]]]:
    """Every rule on every set of candidates, chosen on one half of validation and scored on the
    other, over the same halves: by (set, rule), the (accuracy, log-loss, distinct members) of
    each half. ``candidate_sets_on(fit)`` gives the sets by name, each candidate calibrated on
    the ``fit`` images only, so that nothing of the held half is fitted."""
    scored: dict[tuple, list[tuple[float, float, int]]] = {}
    for fit, held in halves if halves is not None else random_halves(len(labels)):
        for name, candidates in candidate_sets_on(fit).items():
            for rule, choose in rules.items():
                scored.setdefault((name, rule), []).append(chosen_and_scored(candidates, labels, fit, held, choose))
    return scored


def lowest_held_out_log_loss(scored: dict[tuple, list[tuple[float, float, int]]]) -> tuple:
    """The (set, rule) whose mean held-out log-loss is lowest; a tie goes to the first."""
    return min(scored, key=lambda key: float(np.mean([loss for _, loss, _ in scored[key]])))
