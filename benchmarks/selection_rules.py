"""Benchmark 10: which rule for choosing the ensemble's members and weights holds up on
validation images it did not see? Over the ensemble step's candidates (the pooled best 16 of
the store's top rungs), the step's greedy forward selection against Caruana et al.'s (2004)
variants that resist overfitting the selection set (bagged selection, sorted initialisation)
and against plain averages (every candidate; the best k by log-loss); each rule's ensemble
chosen on one half of validation and scored on the other, over the same random halves for
every rule (paired), as Markdown; then each rule's choice on all of validation.

    python -m benchmarks.selection_rules --study mnist-sweep-3

The test set is not read. Costs one prediction of the validation images per distinct model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from benchmarks import halves, store_pool
from harness import cli
from harness.calibration import log_loss
from sweeps import ensemble
from sweeps.settings import ENSEMBLE_ROUNDS

BAGS = 20


def parse_args(argv: Sequence[str] | None):
    parser = cli.ArgumentParser(prog="python -m benchmarks.selection_rules", description=__doc__.splitlines()[0])
    store_pool.add_ensemble_study_arguments(parser)
    parser.add_argument("--every", action="store_true",
                        help="weigh every distinct model of the store's top rungs, not only the step's best 16")
    return parser.parse_args(argv)


def best_k_by_log_loss(candidates: list[np.ndarray], labels: np.ndarray) -> list[int]:
    """The candidates best by their own log-loss, as many as make the plain average's
    log-loss lowest."""
    order = sorted(range(len(candidates)), key=lambda index: log_loss(candidates[index], labels))
    total, losses = np.zeros_like(candidates[0], dtype=np.float64), []
    for size, index in enumerate(order, 1):
        total += candidates[index]
        losses.append(log_loss(total / size, labels))
    return order[: int(np.argmin(losses)) + 1]


def plain_average(indices: list[int]) -> dict[int, float]:
    return {index: 1 / len(indices) for index in indices}


def every_candidate(candidates: list[np.ndarray], labels: np.ndarray) -> dict[int, float]:
    return plain_average(list(range(len(candidates))))


def best_k(candidates: list[np.ndarray], labels: np.ndarray) -> dict[int, float]:
    return plain_average(best_k_by_log_loss(candidates, labels))


def sorted_start_then_greedy(candidates: list[np.ndarray], labels: np.ndarray) -> dict[int, float]:
    """Caruana's sorted initialisation: start from the best k (as ``best_k``), then the step's
    greedy rounds on top, with no cap on distinct members."""
    start = best_k_by_log_loss(candidates, labels)
    chosen, _ = ensemble.greedy_selection(candidates, labels, rounds=len(start) + ENSEMBLE_ROUNDS,
                                          most_members=len(candidates), start=start)
    return ensemble.weights_of(chosen)


def bagged(over_models: bool):
    """Caruana's bagged selection: the step's greedy selection on each of ``BAGS`` bags, their
    weights averaged. A bag is a random half of the candidates (``over_models``, as Caruana
    bags the model library) or a bootstrap sample of the validation images."""
    def choose(candidates: list[np.ndarray], labels: np.ndarray) -> dict[int, float]:
        rng = np.random.default_rng(0)
        weights: dict[int, float] = {}
        for _ in range(BAGS):
            if over_models:
                kept = sorted(rng.choice(len(candidates), size=max(1, len(candidates) // 2), replace=False))
                chosen = halves.greedy_weights([candidates[index] for index in kept], labels)
                chosen = {int(kept[index]): weight for index, weight in chosen.items()}
            else:
                images = rng.integers(0, len(labels), size=len(labels))
                chosen = halves.greedy_weights([c[images] for c in candidates], labels[images])
            for index, weight in chosen.items():
                weights[index] = weights.get(index, 0.0) + weight / BAGS
        return dict(sorted(weights.items(), key=lambda item: -item[1]))
    return choose


RULES = {
    "greedy forward selection (the ensemble step's)": halves.greedy_weights,
    f"bagged greedy, {BAGS} bags of half the candidates": bagged(over_models=True),
    f"bagged greedy, {BAGS} bootstrap samples of the images": bagged(over_models=False),
    "best k by log-loss, then greedy (sorted start)": sorted_start_then_greedy,
    "plain average of the best k by log-loss": best_k,
    "plain average of every candidate": every_candidate,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    store = store_pool.store_models(args.study, args.storage, args.data, args.tracking_uri)
    y = store.y_val
    ids = list(store.model_labels) if args.every else store.pooled_ids
    print(f"Top rungs set up as {store.top_rung}: {', '.join([store.top_rung, *store.other_rungs])}; "
          f"{len(ids)} candidates of {len(store.model_labels)} distinct models\n")
    scored = {name: [] for name in RULES}
    for fit, held in halves.random_halves(len(y)):
        candidates = halves.calibrated_on([store.predicted[i] for i in ids], y, fit)
        for name, choose in RULES.items():
            scored[name].append(halves.chosen_and_scored(candidates, y, fit, held, choose))
    halves.print_table(scored, "rule", "the ensemble step's")
    print("\nEach rule's choice on all of validation\n\n| rule | validation accuracy | log-loss | members |\n"
          "| --- | --- | --- | --- |")
    candidates, _ = ensemble.calibrate([store.predicted[i] for i in ids], y)
    names = [store.model_labels[i] for i in ids]
    for name, choose in RULES.items():
        print(halves.choice_row(name, candidates, y, choose(candidates, y), names))
    return 0


if __name__ == "__main__":
    cli.run(main)
