"""Benchmark 10: which rule for choosing the ensemble's members and weights holds up on
validation images it did not see? Over the ensemble step's candidates (the pooled best 16 of
the store's top rungs), the rules the step chooses between (``sweeps.selection.RULES``: greedy
forward selection, its bagged version, the plain average of every candidate) and variants of
Caruana et al.'s (2004) it does not use (bagging over the images, sorted initialisation, the
plain average of the best k by log-loss); each rule's ensemble chosen on one half of validation
and scored on the other, over the same random halves for every rule (paired), as Markdown;
then each rule's choice on all of validation. Over the digit alone: the step weighs the
test-time views too.

    python -m benchmarks.selection_rules --study mnist-sweep-3

The test set is not read. Costs one prediction of the validation images per distinct model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from benchmarks import halves, store_pool
from harness import cli
from harness.calibration import log_loss
from sweeps import ensemble, selection
from sweeps.settings import ENSEMBLE_ROUNDS


def parse_args(argv: Sequence[str] | None):
    parser = cli.ArgumentParser(prog="python -m benchmarks.selection_rules", description=__doc__.splitlines()[0])
    store_pool.add_ensemble_study_arguments(parser)
    pool = parser.add_mutually_exclusive_group()
    pool.add_argument("--every", action="store_true",
                      help="weigh every distinct model of the store's top rungs, not only the step's best 16")
    pool.add_argument("--candidates", type=cli.positive_int, metavar="N",
                      help="weigh the best N distinct models by validation accuracy (the step's own ordering "
                           "with another cap), not the step's best 16")
    parser.add_argument("--step", action="store_true",
                        help="also make the ensemble step's choice on the step's candidates (its rules over the digit "
                             "alone and over its test-time views) and time it; predicts the views too")
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


def best_k(candidates: list[np.ndarray], labels: np.ndarray) -> dict[int, float]:
    chosen = best_k_by_log_loss(candidates, labels)
    return {index: 1 / len(chosen) for index in chosen}


def sorted_start_then_greedy(candidates: list[np.ndarray], labels: np.ndarray) -> dict[int, float]:
    """Caruana's sorted initialisation: start from the best k (as ``best_k``), then the step's
    greedy rounds on top, with no cap on distinct members."""
    start = best_k_by_log_loss(candidates, labels)
    chosen, _ = selection.greedy_selection(candidates, labels, rounds=len(start) + ENSEMBLE_ROUNDS,
                                          most_members=len(candidates), start=start)
    return selection.weights_of(chosen)


def bagged_over_images(candidates: list[np.ndarray], labels: np.ndarray) -> dict[int, float]:
    """Bagged selection over the images instead of the candidates: the step's greedy selection
    on each of ``selection.BAGS`` bootstrap samples of the validation images, weights averaged."""
    rng = np.random.default_rng(0)
    samples = [rng.integers(0, len(labels), size=len(labels)) for _ in range(selection.BAGS)]
    return selection.mean_weights([selection.greedy([c[images] for c in candidates], labels[images])
                                   for images in samples])


# The ensemble step's rules first (greedy selection first: the others are paired against it),
# then variants it does not use.
RULES = {**selection.RULES,
         f"bagged greedy, {selection.BAGS} bootstrap samples of the images": bagged_over_images,
         "best k by log-loss, then greedy (sorted start)": sorted_start_then_greedy,
         "plain average of the best k by log-loss": best_k}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    store = store_pool.store_models(args.study, args.storage, args.data, args.tracking_uri)
    y = store.y_val
    ids = list(store.model_labels)[:args.candidates] if args.every or args.candidates else store.pooled_ids
    print(f"Top rungs set up as {store.top_rung}: {', '.join([store.top_rung, *store.other_rungs])}; "
          f"{len(ids)} candidates of {len(store.model_labels)} distinct models\n")
    scored = selection.held_out(lambda fit: {"": halves.calibrated_on([store.predicted[i] for i in ids], y, fit)},
                                y, RULES)
    halves.print_table({rule: scores for (_, rule), scores in scored.items()}, "rule", "greedy selection")
    print("\nEach rule's choice on all of validation\n\n| rule | validation accuracy | log-loss | members |\n"
          "| --- | --- | --- | --- |")
    candidates, _ = ensemble.calibrate([store.predicted[i] for i in ids], y)
    names = [store.model_labels[i] for i in ids]
    for name, choose in RULES.items():
        print(halves.choice_row(name, candidates, y, choose(candidates, y), names))
    if args.step:
        print_step_choice(store, args.data)
    return 0


def print_step_choice(store: store_pool.StoreModels, data_path) -> None:
    """The ensemble step's choice of rule and views on its candidates, made as the step makes
    it (``ensemble.chosen_on_halves``), and the seconds the choice took (not the predictions)."""
    import time

    import mlflow

    from harness import data
    from sweeps import answer

    split = data.split(data.load(data_path), data.DEFAULT_SPLIT_SEED)
    views = [ensemble.view_probabilities(mlflow.keras.load_model(f"runs:/{run_id}/model"), split.x_val[..., None])
             for run_id in store.pooled_ids]
    probabilities = [candidate_views[0] for candidate_views in views]
    started = time.perf_counter()
    _, on_all = ensemble.calibrated_sets(probabilities, views, store.y_val)
    rule_scores, view_count, rule, weights = ensemble.chosen_on_halves(probabilities, views, store.y_val, on_all)
    seconds = time.perf_counter() - started
    members = ", ".join(f"{store.model_labels[store.pooled_ids[index]]} x{weight:.2f}" for index, weight in weights.items())
    print(f"\nThe ensemble step's choice on its {len(store.pooled_ids)} candidates ({seconds:.0f} s to choose): "
          f"{rule} over {view_count} view(s); {members}\n")
    print("\n".join(answer.rule_table(rule_scores, rule, view_count)))


if __name__ == "__main__":
    cli.run(main)
